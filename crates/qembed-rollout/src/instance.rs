//! Talking to one qembed instance: readiness, identity, embeddings, metrics.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::config::Color;

pub struct Instance {
    pub name: String,
    pub base: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

/// What `/info` says about an instance.
#[derive(Debug, Clone)]
pub struct Info {
    pub color: String,
    pub model_id: String,
    pub fingerprint: String,
    pub hidden_size: usize,
}

impl Instance {
    pub fn new(name: &str, color: &Color, timeout: Duration) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            base: color.url.trim_end_matches('/').to_string(),
            api_key: color.api_key.clone(),
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.get(format!("{}{path}", self.base));
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    pub async fn ready(&self) -> bool {
        matches!(self.get("/ready").send().await, Ok(r) if r.status() == 200)
    }

    pub async fn info(&self) -> Result<Info> {
        let v: Value = self
            .get("/info")
            .send()
            .await
            .with_context(|| format!("{}: GET /info", self.name))?
            .error_for_status()?
            .json()
            .await?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Ok(Info {
            color: s("color"),
            model_id: s("model_id"),
            fingerprint: s("fingerprint"),
            hidden_size: v["hidden_size"].as_u64().unwrap_or(0) as usize,
        })
    }

    /// Embeds `texts` (all with the same instruction and dimensions).
    pub async fn embed(
        &self,
        texts: &[String],
        instruction: Option<&str>,
        dimensions: Option<usize>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut body = json!({"input": texts, "encoding_format": "float"});
        if let Some(i) = instruction {
            body["instruction"] = json!(i);
        }
        if let Some(d) = dimensions {
            body["dimensions"] = json!(d);
        }
        let mut req = self
            .http
            .post(format!("{}/v1/embeddings", self.base))
            .json(&body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{}: POST /v1/embeddings", self.name))?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!("{}: /v1/embeddings answered {status}: {v}", self.name);
        }
        let data = v["data"].as_array().context("response without data")?;
        data.iter()
            .map(|d| {
                serde_json::from_value::<Vec<f32>>(d["embedding"].clone())
                    .context("embedding is not a float array")
            })
            .collect()
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
