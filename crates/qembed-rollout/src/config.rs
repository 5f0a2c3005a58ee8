//! The rollout TOML: where the colours live, how to drive nginx, and the thresholds.
//! `deploy/rollout.example.toml` documents every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::secret::{self, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub colors: BTreeMap<String, Color>,
    /// Absent where something else switches traffic (Kubernetes, Argo Rollouts): then
    /// only `verify --against` is available.
    pub nginx: Option<Nginx>,
    /// What the clients send; verify speaks to a colour exactly as they do.
    #[serde(default)]
    pub clients: Clients,
    #[serde(default)]
    pub verify: Verify,
    #[serde(default)]
    pub watch: Watch,
    #[serde(default)]
    pub retire: Retire,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Color {
    /// Base URL of the instance, e.g. `http://127.0.0.1:30001`.
    pub url: String,
    /// `host:port` nginx proxies to (default: from `url`).
    pub upstream: Option<String>,
    /// Command that stops this colour (`retire`), e.g. `["systemctl", "stop", "qembed@blue"]`.
    #[serde(default)]
    pub stop: Vec<String>,
    /// The instance's `--api-key`, for the controller's own calls (`/info`): from this
    /// environment variable or file. Default: the clients' key.
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    /// Refused at load: a key written in the config.
    #[serde(rename = "api_key")]
    inline_api_key: Option<String>,
    #[serde(skip)]
    pub api_key: Option<Secret>,
}

impl Color {
    pub fn upstream_addr(&self) -> Result<String> {
        if let Some(u) = &self.upstream {
            return Ok(u.clone());
        }
        let rest = self
            .url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        let host = rest.split('/').next().unwrap_or(rest);
        if host.is_empty() {
            bail!("cannot derive host:port from url `{}`", self.url);
        }
        Ok(host.to_string())
    }
}

/// The client contract: the `model` names clients put in their requests and the API key
/// they send. A colour that answers these with 4xx would fail every client after the
/// switch, however well it embeds for the controller.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Clients {
    /// Every `model` value clients send; empty: clients send no `model`.
    pub model_names: Vec<String>,
    /// The key clients send as `Authorization: Bearer`, from this environment variable
    /// or file; neither: clients send no key.
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    #[serde(rename = "api_key")]
    inline_api_key: Option<String>,
    #[serde(skip)]
    pub api_key: Option<Secret>,
}

impl Clients {
    /// The `model` values to probe: each configured name, or one request without.
    pub fn models(&self) -> Vec<Option<&str>> {
        if self.model_names.is_empty() {
            vec![None]
        } else {
            self.model_names.iter().map(|m| Some(m.as_str())).collect()
        }
    }

    /// The name the golden set and the load use (the first one clients send).
    pub fn primary_model(&self) -> Option<&str> {
        self.model_names.first().map(String::as_str)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nginx {
    /// The include file holding `upstream qembed_active { ... }`; the switch rewrites it.
    pub upstream_file: PathBuf,
    /// Checks the configuration (default `["nginx", "-t"]`).
    #[serde(default = "default_test")]
    pub test: Vec<String>,
    /// Reloads nginx gracefully (default `["nginx", "-s", "reload"]`).
    #[serde(default = "default_reload")]
    pub reload: Vec<String>,
    /// Where the controller remembers the previous colour and the switch time.
    pub state_file: PathBuf,
    /// Keep-alive connections per worker to the active upstream.
    #[serde(default = "default_keepalive")]
    pub keepalive: u32,
    /// nginx's own address (e.g. `http://127.0.0.1:8080`): `status`, `switch` and
    /// `rollback` probe it to learn which colour really answers, whatever the include
    /// file says.
    pub url: Option<String>,
}

fn default_test() -> Vec<String> {
    vec!["nginx".into(), "-t".into()]
}
fn default_reload() -> Vec<String> {
    vec!["nginx".into(), "-s".into(), "reload".into()]
}
fn default_keepalive() -> u32 {
    32
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Verify {
    /// JSON Lines of `{"text", "instruction"?, "dimensions"?, "embedding"}` (optional).
    pub golden_set: Option<PathBuf>,
    pub golden_min_cosine: f64,
    pub load_requests: usize,
    pub load_duration_s: f64,
    pub load_concurrency: usize,
    /// Words per generated input (about one to two tokens each).
    pub load_words: usize,
    pub max_p99_ms: f64,
    pub max_error_rate: f64,
    pub min_qps: f64,
    /// Probe texts embedded by both colours when fingerprints differ.
    pub probe_texts: Vec<String>,
    pub compat_min_cosine: f64,
    pub timeout_s: f64,
}

impl Default for Verify {
    fn default() -> Self {
        Self {
            golden_set: None,
            golden_min_cosine: 0.999,
            load_requests: 500,
            load_duration_s: 20.0,
            load_concurrency: 8,
            load_words: 256,
            max_p99_ms: 500.0,
            max_error_rate: 0.001,
            min_qps: 50.0,
            probe_texts: vec![
                "What is the capital of China?".into(),
                "Gravity is a force that attracts two bodies towards each other.".into(),
                "def add(a, b):\n    return a + b".into(),
                "在当前AI服务快速迭代的背景下,模型更新频繁".into(),
            ],
            compat_min_cosine: 0.999,
            timeout_s: 30.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Watch {
    pub window_s: f64,
    pub interval_s: f64,
    /// Share of 5xx responses in one interval that triggers a rollback.
    pub max_error_rate: f64,
    pub max_p99_ms: f64,
    /// Client errors whose share since the switch is compared with the old colour's:
    /// a new colour that rejects what clients send shows up here, not as 5xx.
    pub client_error_statuses: Vec<u16>,
    /// How far each of those shares may rise above the old colour's baseline.
    pub max_client_error_increase: f64,
    /// Fewest requests (since the switch, and in the old colour's baseline window)
    /// before a share is judged; below it the old colour's lifetime counts serve.
    pub min_requests: u64,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            window_s: 300.0,
            interval_s: 5.0,
            max_error_rate: 0.01,
            max_p99_ms: 1000.0,
            client_error_statuses: vec![401, 403, 404, 422],
            max_client_error_increase: 0.01,
            min_requests: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retire {
    /// How long the previous colour stays up (for a fast rollback) before `retire`.
    pub keep_hours: f64,
}

impl Default for Retire {
    fn default() -> Self {
        Self { keep_hours: 24.0 }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut cfg: Config =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if cfg.colors.len() != 2 {
            bail!(
                "{}: expected exactly two colours, found {}",
                path.display(),
                cfg.colors.len()
            );
        }
        let c = &mut cfg.clients;
        c.api_key = secret::resolve(
            "[clients]",
            c.inline_api_key.as_deref(),
            c.api_key_env.as_deref(),
            c.api_key_file.as_deref(),
        )?;
        for (name, c) in &mut cfg.colors {
            c.upstream_addr()
                .with_context(|| format!("colour {name}"))?;
            c.api_key = secret::resolve(
                &format!("colour {name}"),
                c.inline_api_key.as_deref(),
                c.api_key_env.as_deref(),
                c.api_key_file.as_deref(),
            )?;
        }
        if let Some(n) = &cfg.nginx {
            if n.test.is_empty() || n.reload.is_empty() {
                bail!("nginx.test and nginx.reload must be commands");
            }
        }
        Ok(cfg)
    }

    pub fn nginx(&self) -> Result<&Nginx> {
        self.nginx
            .as_ref()
            .context("this command needs an [nginx] section in the rollout config")
    }

    pub fn color(&self, name: &str) -> Result<&Color> {
        self.colors.get(name).with_context(|| {
            format!(
                "unknown colour `{name}` (configured: {})",
                self.colors.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// The colour that is not `name`.
    pub fn other(&self, name: &str) -> Result<String> {
        self.colors
            .keys()
            .find(|k| k.as_str() != name)
            .cloned()
            .context("no other colour configured")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example is a valid config (every key known, every type right).
    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rollout.example.toml");
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.clients.models(), vec![None]);
        assert_eq!(cfg.watch.client_error_statuses, vec![401, 403, 404, 422]);
        assert!(cfg.nginx.unwrap().url.is_some());
    }
}
