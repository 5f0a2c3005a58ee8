//! Where a model's files come from: a local directory, or a Hugging Face hub id.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::{EngineError, Result};

/// Resolves `--model-path`: an existing directory is used as is; otherwise a hub id
/// (`Qwen/Qwen3-Embedding-0.6B`, optionally `@revision`) is looked up in the local hub
/// cache (`HF_HOME`, `HF_HUB_CACHE`) and downloaded when missing, unless
/// `HF_HUB_OFFLINE=1`. Returns the directory holding config.json and the weights.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_hub_id(spec) {
        return Err(EngineError::Setting(format!(
            "model path `{spec}` is neither a directory nor a Hugging Face hub id (org/name)"
        )));
    }
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, rev.to_string()),
        None => (spec, "main".to_string()),
    };
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision);
    let cache = hub_cache();
    let hub_err = |message: String| EngineError::Hub {
        id: spec.to_string(),
        cache: cache.path().clone(),
        message,
    };
    let offline = std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
        .unwrap_or(false);
    let cached = cache.repo(repo.clone());
    let api = if offline {
        None
    } else {
        Some(
            ApiBuilder::from_cache(cache.clone())
                .with_progress(false)
                .build()
                .map_err(|e| hub_err(e.to_string()))?
                .repo(repo),
        )
    };
    let fetch = |file: &str| -> std::result::Result<PathBuf, String> {
        if let Some(p) = cached.get(file) {
            return Ok(p);
        }
        match &api {
            Some(api) => api.get(file).map_err(|e| format!("{file}: {e}")),
            None => Err(format!(
                "{file} is not in the cache and HF_HUB_OFFLINE is set"
            )),
        }
    };
    let config = fetch("config.json").map_err(hub_err)?;
    fetch("tokenizer.json").map_err(hub_err)?;
    // Optional: only some revisions carry it.
    let _ = fetch("tokenizer_config.json");
    match fetch("model.safetensors.index.json") {
        Ok(index) => {
            for shard in shard_names(&index).map_err(hub_err)? {
                fetch(&shard).map_err(hub_err)?;
            }
        }
        Err(_) => {
            fetch("model.safetensors").map_err(hub_err)?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn hub_cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => Cache::new(PathBuf::from(dir)),
        None => Cache::from_env(),
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
