//! The load gate: a bounded closed-loop run straight at the colour, as the clients
//! (their model name, their key), against the p99, error-rate and QPS thresholds.

use std::time::Duration;

use anyhow::Result;
use qembed_loadgen::{Lengths, LoadConfig};

use crate::config::Config;
use crate::instance::{Caller, Instance};

pub async fn check(
    cfg: &Config,
    inst: &Instance,
    caller: &Caller,
    timeout: Duration,
) -> Result<bool> {
    let v = &cfg.verify;
    let load = LoadConfig {
        url: format!("{}/v1/embeddings", inst.base),
        model: caller.model.clone(),
        api_key: caller.key.as_ref().map(|k| k.expose().to_string()),
        concurrency: v.load_concurrency,
        max_requests: v.load_requests,
        max_duration: Duration::from_secs_f64(v.load_duration_s),
        lengths: Lengths::Fixed(v.load_words),
        timeout,
        ..LoadConfig::default()
    };
    let (report, _) = qembed_loadgen::run(&load).await?;
    // p99 is the loadgen's response time; in this closed loop it equals service time.
    let ok = report.p99_ms <= v.max_p99_ms
        && report.error_rate <= v.max_error_rate
        && report.qps >= v.min_qps;
    tracing::info!(
        requests = report.requests,
        qps = report.qps,
        p99_ms = report.p99_ms,
        error_rate = report.error_rate,
        by_status = ?report.by_status,
        max_p99_ms = v.max_p99_ms,
        min_qps = v.min_qps,
        max_error_rate = v.max_error_rate,
        "gate load ({}): {}",
        caller.describe(),
        if ok { "ok" } else { "FAIL" }
    );
    Ok(ok)
}
