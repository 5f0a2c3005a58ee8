//! Talking to one qembed instance: readiness, identity, API requests, metrics.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::config::Config;
use crate::secret::Secret;

pub struct Instance {
    pub name: String,
    pub base: String,
    /// The key for the controller's own calls (`/info`).
    admin_key: Option<Secret>,
    http: reqwest::Client,
}

/// Who a request claims to be: the `model` it names and the key it sends. Verify uses
/// the clients' own (`[clients]`), so it sees what they would see.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub model: Option<String>,
    pub key: Option<Secret>,
}

impl Caller {
    /// The clients, naming `model`.
    pub fn client(cfg: &Config, model: Option<&str>) -> Self {
        Self {
            model: model.map(str::to_string),
            key: cfg.clients.api_key.clone(),
        }
    }

    /// How the caller is described in a log line.
    pub fn describe(&self) -> String {
        format!(
            "model={} {}",
            self.model.as_deref().unwrap_or("(none)"),
            if self.key.is_some() {
                "with the clients' API key"
            } else {
                "without an API key"
            }
        )
    }
}

/// What `/info` says about an instance.
#[derive(Debug, Clone)]
pub struct Info {
    pub color: String,
    pub model_id: String,
    pub fingerprint: String,
    pub hidden_size: usize,
}

/// An API answer: its status and JSON body, whatever the status.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// OpenAI-style `error.code` or `error.message`, for a log line.
    pub fn error_text(&self) -> String {
        let e = &self.body["error"];
        match (e["code"].as_str(), e["message"].as_str()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (None, Some(m)) => m.to_string(),
            _ => self.body.to_string().chars().take(200).collect(),
        }
    }

    /// The vectors of an embeddings answer; an error for any non-2xx.
    pub fn embeddings(&self) -> Result<Vec<Vec<f32>>> {
        if !self.success() {
            bail!("answered {}: {}", self.status, self.error_text());
        }
        let data = self.body["data"]
            .as_array()
            .context("response without data")?;
        data.iter()
            .map(|d| {
                serde_json::from_value::<Vec<f32>>(d["embedding"].clone())
                    .context("embedding is not a float array")
            })
            .collect()
    }
}

/// One `/v1/embeddings` request body's content.
#[derive(Debug, Clone, Default)]
pub struct EmbedRequest<'a> {
    pub texts: &'a [String],
    pub instruction: Option<&'a str>,
    pub dimensions: Option<usize>,
}

impl Instance {
    pub fn new(name: &str, cfg: &Config, timeout: Duration) -> Result<Self> {
        let color = cfg.color(name)?;
        Ok(Self {
            name: name.to_string(),
            base: color.url.trim_end_matches('/').to_string(),
            admin_key: color
                .api_key
                .clone()
                .or_else(|| cfg.clients.api_key.clone()),
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.get(format!("{}{path}", self.base));
        match &self.admin_key {
            Some(k) => r.bearer_auth(k.expose()),
            None => r,
        }
    }

    pub async fn ready(&self) -> bool {
        matches!(self.get("/ready").send().await, Ok(r) if r.status() == 200)
    }

    pub async fn info(&self) -> Result<Info> {
        let resp = self
            .get("/info")
            .send()
            .await
            .with_context(|| format!("{}: GET /info", self.name))?;
        let status = resp.status();
        if !status.is_success() {
            bail!("{}: GET /info answered {status}", self.name);
        }
        let v: Value = resp.json().await?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Ok(Info {
            color: s("color"),
            model_id: s("model_id"),
            fingerprint: s("fingerprint"),
            hidden_size: v["hidden_size"].as_u64().unwrap_or(0) as usize,
        })
    }

    /// POSTs `body` to `path` as `caller`; any HTTP status is an answer, only a
    /// transport failure is an error. `model` is set from the caller.
    pub async fn post(&self, caller: &Caller, path: &str, mut body: Value) -> Result<Answer> {
        if let Some(m) = &caller.model {
            body["model"] = json!(m);
        }
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(k) = &caller.key {
            req = req.bearer_auth(k.expose());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{}: POST {path}", self.name))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }

    pub async fn embed(&self, caller: &Caller, req: &EmbedRequest<'_>) -> Result<Answer> {
        let mut body = json!({"input": req.texts, "encoding_format": "float"});
        if let Some(i) = req.instruction {
            body["instruction"] = json!(i);
        }
        if let Some(d) = req.dimensions {
            body["dimensions"] = json!(d);
        }
        self.post(caller, "/v1/embeddings", body).await
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .get("/metrics")
            .send()
            .await
            .with_context(|| format!("{}: GET /metrics", self.name))?
            .error_for_status()?
            .text()
            .await?)
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na * nb)
}
