//! Where a model's files come from: a local directory, or a Hugging Face hub id.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::{EngineError, Result};

mod hub;
mod progress;

use hub::{Fetcher, Miss};
pub use progress::ProgressMode;

/// The public hub, when `HF_ENDPOINT` does not name another (a mirror, a test server).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Retries of an interrupted transfer within one run; each resumes where the last
/// stopped (and a later run resumes too: the partial file stays in the cache).
pub const DEFAULT_RETRIES: usize = 3;

/// Where hub files come from and go to. [`HubSettings::from_env`] reads the
/// environment the Python hub client reads; tests build one directly.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// `HF_ENDPOINT`, without a trailing slash.
    pub endpoint: String,
    /// The hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: use the cache only.
    pub offline: bool,
    /// `HF_TOKEN`; when `None`, hf-hub's token file next to the cache is used.
    pub token: Option<String>,
    pub retries: usize,
    pub progress: ProgressMode,
}

impl HubSettings {
    /// Reads `HF_ENDPOINT`, `HF_HUB_CACHE` / `HF_HOME`, `HF_HUB_OFFLINE`, `HF_TOKEN`;
    /// progress bars when stderr is a terminal, log lines otherwise.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let cache_dir = match (var("HF_HUB_CACHE"), var("HF_HOME")) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(home)) => PathBuf::from(home).join("hub"),
            (None, None) => default_cache_dir().ok_or_else(|| {
                EngineError::Setting(
                    "no hub cache directory: set HF_HOME or HF_HUB_CACHE (HOME is not set)"
                        .to_string(),
                )
            })?,
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        let progress = if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Log
        };
        Ok(Self {
            endpoint,
            cache_dir,
            offline,
            token: var("HF_TOKEN"),
            retries: DEFAULT_RETRIES,
            progress,
        })
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(xdg) => PathBuf::from(xdg),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("huggingface").join("hub"))
}

/// Resolves `--model-path`: an existing directory is used as is; otherwise a hub id
/// (`Qwen/Qwen3-Embedding-0.6B`, optionally `@revision`) is looked up in the local hub
/// cache and downloaded when missing, unless `HF_HUB_OFFLINE=1`; see
/// [`HubSettings::from_env`] for the environment read. Returns the directory holding
/// config.json and the weights.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    check_hub_id(spec)?;
    resolve_model_with(spec, &HubSettings::from_env()?)
}

/// [`resolve_model`] with explicit hub settings instead of the environment.
pub fn resolve_model_with(spec: &str, hub: &HubSettings) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    check_hub_id(spec)?;
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, rev.to_string()),
        None => (spec, "main".to_string()),
    };
    let hub_err = |message: String| EngineError::Hub {
        id: spec.to_string(),
        cache: hub.cache_dir.clone(),
        message,
    };
    let endpoint = hub.endpoint.trim_end_matches('/').to_string();
    let web = endpoint.starts_with("http://") || endpoint.starts_with("https://");
    if !hub.offline && !web {
        return Err(EngineError::Setting(format!(
            "HF_ENDPOINT `{endpoint}` is not an http:// or https:// URL"
        )));
    }
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision);
    let cache = Cache::new(hub.cache_dir.clone());
    let api = if hub.offline {
        None
    } else {
        let mut builder = ApiBuilder::from_cache(cache.clone())
            .with_endpoint(endpoint.clone())
            .with_progress(false)
            .with_retries(hub.retries);
        if let Some(token) = &hub.token {
            builder = builder.with_token(Some(token.clone()));
        }
        Some(
            builder
                .build()
                .map_err(|e| hub_err(e.to_string()))?
                .repo(repo.clone()),
        )
    };
    let fetcher = Fetcher {
        id: id.to_string(),
        repo,
        cache,
        endpoint,
        api,
        progress: hub.progress,
    };
    let required = |file: &str| fetcher.fetch(file).map_err(|m| hub_err(m.message()));
    let config = required("config.json")?;
    required("tokenizer.json")?;
    // Optional: only some revisions carry it; a failure other than "absent" is not.
    match fetcher.fetch("tokenizer_config.json") {
        Ok(_) | Err(Miss::Absent(_)) => {}
        Err(failed) => return Err(hub_err(failed.message())),
    }
    match fetcher.fetch("model.safetensors.index.json") {
        Ok(index) => {
            for shard in shard_names(&index).map_err(hub_err)? {
                required(&shard)?;
            }
        }
        Err(Miss::Absent(_)) => {
            required("model.safetensors")?;
        }
        Err(failed) => return Err(hub_err(failed.message())),
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| hub_err(format!("{} has no parent directory", config.display())))
}

fn check_hub_id(spec: &str) -> Result<()> {
    if looks_like_hub_id(spec) {
        Ok(())
    } else {
        Err(EngineError::Setting(format!(
            "model path `{spec}` is neither a directory nor a Hugging Face hub id (org/name)"
        )))
    }
}

fn looks_like_hub_id(spec: &str) -> bool {
    let id = spec.split('@').next().unwrap_or("");
    let mut parts = id.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn shard_names(index: &Path) -> std::result::Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| e.to_string())?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("index has no weight_map")?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    // The names become paths in the cache: nothing may climb out of the snapshot.
    if let Some(bad) = names.iter().find(|n| {
        n.is_empty()
            || n.starts_with('/')
            || n.contains('\\')
            || n.split('/').any(|c| c.is_empty() || c == "." || c == "..")
    }) {
        return Err(format!("index names an unsafe shard file `{bad}`"));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(looks_like_hub_id("Qwen/Qwen3-Embedding-0.6B"));
        assert!(looks_like_hub_id("Qwen/Qwen3-Embedding-4B@main"));
        assert!(!looks_like_hub_id("models/qwen3-tiny/extra"));
        assert!(!looks_like_hub_id("./x"));
        assert!(!looks_like_hub_id("../a/b"));
        assert!(!looks_like_hub_id("justaname"));
    }
}
