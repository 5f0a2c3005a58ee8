//! API keys for the rollout config, read from an environment variable or a file so the
//! config itself (often world-readable, often in version control) never holds one.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// A key that never prints: `Debug` shows `Secret(..)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The key named by `env` or `file` (at most one), for `what` (e.g. `colour green`).
/// `inline` is a key written in the config itself, always refused. A source that is
/// configured but empty or missing is an error, not "no key": the operator said there
/// is one, and verifying without it would test the wrong contract.
pub fn resolve(
    what: &str,
    inline: Option<&str>,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Secret>> {
    if inline.is_some() {
        bail!(
            "{what}: `api_key` in the rollout config is not accepted (a secret in a config \
             file); use `api_key_env = \"VAR\"` or `api_key_file = \"/path\"`"
        );
    }
    let key = match (env, file) {
        (Some(_), Some(_)) => bail!("{what}: set api_key_env or api_key_file, not both"),
        (None, None) => return Ok(None),
        (Some(var), None) => std::env::var(var)
            .with_context(|| format!("{what}: api_key_env names `{var}`, which is not set"))?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("{what}: reading api_key_file {}", path.display()))?,
    };
    let key = key.trim();
    if key.is_empty() {
        bail!("{what}: the configured API key is empty");
    }
    Ok(Some(Secret(key.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "s3cret\n").unwrap();
        let k = resolve("t", None, None, Some(&f)).unwrap().unwrap();
        assert_eq!(k.expose(), "s3cret");
        assert_eq!(format!("{k:?}"), "Secret(..)");
        assert_eq!(resolve("t", None, None, None).unwrap(), None);
        assert!(resolve("t", Some("inline"), None, None).is_err());
        assert!(resolve("t", None, Some("QEMBED_ROLLOUT_TEST_UNSET_VAR"), None).is_err());
        assert!(resolve("t", None, Some("PATH"), Some(&f)).is_err());
        std::fs::write(&f, " \n").unwrap();
        assert!(resolve("t", None, None, Some(&f)).is_err());
    }
}
