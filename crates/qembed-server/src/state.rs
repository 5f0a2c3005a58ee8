//! What every handler shares: the flags, the loaded model once it is ready, the drain
//! flag and the metrics. Its own module so that the router and the start-up code both
//! depend on it and not on each other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use qembed_engine::{Batcher, Embedder};

use crate::args::ServeArgs;
use crate::metrics::Metrics;

/// What exists once the model is loaded and warmed.
pub struct Loaded {
    pub embedder: Arc<Embedder>,
    pub batcher: Batcher,
    pub fingerprint: String,
    pub dtype: String,
    pub model_dir: PathBuf,
}

pub struct AppState {
    pub args: ServeArgs,
    pub served_names: Vec<String>,
    pub prompts: HashMap<String, String>,
    pub color: String,
    pub loaded: OnceLock<Loaded>,
    pub draining: AtomicBool,
    pub metrics: Arc<Metrics>,
    /// Unix time of start-up, the `created` of /v1/models entries.
    pub created_unix: u64,
}

impl AppState {
    /// The state of a server that has not loaded its model yet.
    pub fn new(args: ServeArgs) -> Result<Self, prometheus::Error> {
        let served_names = if args.served_model_names.is_empty() {
            vec![default_served_name(&args.model.model_path)]
        } else {
            args.served_model_names.clone()
        };
        Ok(Self {
            served_names,
            prompts: args.prompts.iter().cloned().collect(),
            color: args.color.clone().unwrap_or_default(),
            loaded: OnceLock::new(),
            draining: AtomicBool::new(false),
            metrics: Arc::new(Metrics::new()?),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            args,
        })
    }

    pub fn is_ready(&self) -> bool {
        self.loaded.get().is_some() && !self.draining.load(Ordering::SeqCst)
    }
}

/// The name a model is served under when `--served-model-name` is not given.
fn default_served_name(model_path: &str) -> String {
    let trimmed = model_path.trim_end_matches('/');
    if std::path::Path::new(trimmed).is_dir() {
        std::path::Path::new(trimmed)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| trimmed.to_string())
    } else {
        trimmed.split('@').next().unwrap_or(trimmed).to_string()
    }
}
