//! The gates a colour must pass before it takes traffic.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use qembed_loadgen::{Lengths, LoadConfig};
use serde::Deserialize;

use crate::config::Config;
use crate::instance::{cosine, Instance};

/// One golden-set line: a text and the vector the new colour must reproduce.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub text: String,
    #[serde(default)]
    pub instruction: Option<String>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    pub embedding: Vec<f32>,
}

pub fn load_golden(path: &Path) -> Result<Vec<Golden>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}: line {}", path.display(), i + 1))
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Compat {
    SameFingerprint,
    SameVectors,
    /// Stored vectors would have to be re-embedded.
    Incompatible(String),
    NoActive,
}

pub struct Outcome {
    pub passed: bool,
    pub compat: Compat,
}

/// Runs every gate on `color`, logging each; `active` is the colour serving now.
pub async fn verify(cfg: &Config, color: &str, active: Option<&str>) -> Result<Outcome> {
    let v = &cfg.verify;
    let timeout = Duration::from_secs_f64(v.timeout_s);
    let inst = Instance::new(color, cfg.color(color)?, timeout)?;
    let mut passed = true;

    if !inst.ready().await {
        tracing::error!(color, url = %inst.base, "gate ready: FAIL (not ready)");
        return Ok(Outcome {
            passed: false,
            compat: Compat::NoActive,
        });
    }
    let info = inst.info().await?;
    tracing::info!(color, model = %info.model_id, fingerprint = %info.fingerprint, "gate ready: ok");
    if !info.color.is_empty() && info.color != color {
        tracing::error!(color, reports = %info.color, "gate identity: FAIL (instance reports another colour)");
        passed = false;
    }

    if let Some(path) = &v.golden_set {
        let golden = load_golden(path)?;
        let mut worst = (1.0f64, String::new());
        for g in &golden {
            let got = inst
                .embed(
                    std::slice::from_ref(&g.text),
                    g.instruction.as_deref(),
                    g.dimensions,
                )
                .await;
            let c = match got {
                Ok(vs) => vs.first().map(|x| cosine(x, &g.embedding)).unwrap_or(0.0),
                Err(e) => {
                    tracing::warn!(error = %e, "golden request failed");
                    0.0
                }
            };
            if c < worst.0 {
                worst = (c, g.text.chars().take(40).collect());
            }
        }
        let ok = worst.0 >= v.golden_min_cosine;
        passed &= ok;
        tracing::info!(
            cases = golden.len(), worst_cosine = worst.0, worst_text = %worst.1,
            threshold = v.golden_min_cosine, "gate golden set: {}", if ok { "ok" } else { "FAIL" }
        );
    }

    let load = LoadConfig {
        url: format!("{}/v1/embeddings", inst.base),
        api_key: cfg.color(color)?.api_key.clone(),
        concurrency: v.load_concurrency,
        max_requests: v.load_requests,
        max_duration: Duration::from_secs_f64(v.load_duration_s),
        lengths: Lengths::Fixed(v.load_words),
        timeout,
        ..LoadConfig::default()
    };
    let (report, _) = qembed_loadgen::run(&load).await?;
    let ok = report.p99_ms <= v.max_p99_ms
        && report.error_rate <= v.max_error_rate
        && report.qps >= v.min_qps;
    passed &= ok;
    tracing::info!(
        requests = report.requests,
        qps = report.qps,
        p99_ms = report.p99_ms,
        error_rate = report.error_rate,
        max_p99_ms = v.max_p99_ms,
        min_qps = v.min_qps,
        max_error_rate = v.max_error_rate,
        "gate load: {}",
        if ok { "ok" } else { "FAIL" }
    );

    let compat = match active.filter(|a| *a != color) {
        None => Compat::NoActive,
        Some(a) => compatibility(cfg, &inst, &info.fingerprint, a, timeout).await?,
    };
    match &compat {
        Compat::Incompatible(why) => tracing::warn!(
            "gate vector space: INCOMPATIBLE with the active colour ({why}). Vectors stored from \
             the active colour cannot be compared with this colour's: RE-INDEX stored vectors \
             before or with this switch."
        ),
        c => tracing::info!(result = ?c, "gate vector space: ok"),
    }
    Ok(Outcome { passed, compat })
}

async fn compatibility(
    cfg: &Config,
    new: &Instance,
    new_fp: &str,
    active: &str,
    timeout: Duration,
) -> Result<Compat> {
    let old = Instance::new(active, cfg.color(active)?, timeout)?;
    let old_info = match old.info().await {
        Ok(i) => i,
        Err(e) => {
            return Ok(Compat::Incompatible(format!(
                "active colour unreachable: {e}"
            )))
        }
    };
    if !new_fp.is_empty() && old_info.fingerprint == new_fp {
        return Ok(Compat::SameFingerprint);
    }
    let probes = &cfg.verify.probe_texts;
    let (a, b) = match (
        old.embed(probes, None, None).await,
        new.embed(probes, None, None).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Ok(Compat::Incompatible(format!("probe failed: {e}"))),
    };
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| cosine(x, y))
        .fold(f64::INFINITY, f64::min);
    if worst >= cfg.verify.compat_min_cosine {
        Ok(Compat::SameVectors)
    } else {
        Ok(Compat::Incompatible(format!(
            "fingerprints {} vs {}, probe cosine {worst:.4} < {}",
            old_info.fingerprint, new_fp, cfg.verify.compat_min_cosine
        )))
    }
}
