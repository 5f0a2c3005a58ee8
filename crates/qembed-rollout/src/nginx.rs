//! The switch itself: one include file naming the active upstream, checked and
//! reloaded with nginx's own commands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const MARK: &str = "# qembed-rollout active colour: ";

/// The include file for `active`, with `backup` as a retry target only when it serves
/// the same model (same fingerprint): retrying onto a different model would mix vector
/// spaces in one response stream.
pub fn render(
    active: &str,
    active_addr: &str,
    backup_addr: Option<&str>,
    keepalive: u32,
) -> String {
    let mut s = format!(
        "{MARK}{active}\n# Written by qembed-rollout; edit the rollout config, not this file.\n\
         upstream qembed_active {{\n    server {active_addr} max_fails=0;\n"
    );
    if let Some(b) = backup_addr {
        s.push_str(&format!("    server {b} backup;\n"));
    }
    s.push_str(&format!("    keepalive {keepalive};\n}}\n"));
    s
}

/// The colour the include file points at, if it exists.
pub fn active(upstream_file: &Path) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(upstream_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", upstream_file.display())),
    };
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(MARK))
        .map(|c| c.trim().to_string()))
}

/// An include written beside the live one (`<name>.tmp`) but not yet in place. Staging
/// first means a switch or rollback learns that it cannot write before it has changed
/// anything; dropped uncommitted, the temporary file is removed.
pub struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

/// Writes `content` to the temporary file beside `upstream_file`, flushed to disk.
pub fn stage(upstream_file: &Path, content: &str) -> Result<Staged> {
    if let Some(dir) = upstream_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = upstream_file.with_extension("tmp");
    let staged = Staged {
        tmp: tmp.clone(),
        target: upstream_file.to_path_buf(),
        done: false,
    };
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    Ok(staged)
}

impl Staged {
    /// Puts the staged file in place atomically (rename), so nginx never reads half.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target)
            .with_context(|| format!("replacing {}", self.target.display()))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes the file atomically (staged, then renamed into place).
pub fn write(upstream_file: &Path, content: &str) -> Result<()> {
    stage(upstream_file, content)?.commit()
}

pub fn run(cmd: &[String], what: &str) -> Result<()> {
    let (prog, args) = cmd.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("{what}: running {}", cmd.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("active.conf");
        assert_eq!(active(&f).unwrap(), None);
        write(&f, &render("green", "127.0.0.1:30002", None, 16)).unwrap();
        assert_eq!(active(&f).unwrap().as_deref(), Some("green"));
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("server 127.0.0.1:30002 max_fails=0;") && !text.contains("backup"));
        let with_backup = render("blue", "127.0.0.1:30001", Some("127.0.0.1:30002"), 16);
        assert!(with_backup.contains("server 127.0.0.1:30002 backup;"));
        // A staged file that is dropped leaves the include as it was.
        drop(stage(&f, &with_backup).unwrap());
        assert_eq!(active(&f).unwrap().as_deref(), Some("green"));
        assert!(!f.with_extension("tmp").exists());
        stage(&f, &with_backup).unwrap().commit().unwrap();
        assert_eq!(active(&f).unwrap().as_deref(), Some("blue"));
    }
}
