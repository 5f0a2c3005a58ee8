//! After a switch: watch the new colour's own metrics and say when it breaks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::config::Watch;
use crate::instance::Instance;

/// Totals from one scrape of `/v1/embeddings` metrics.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub requests: f64,
    pub errors: f64,
    /// Cumulative latency histogram buckets: upper bound -> count.
    pub buckets: Vec<(f64, f64)>,
}

pub fn parse(metrics: &str) -> Snapshot {
    let mut s = Snapshot::default();
    let mut buckets: HashMap<String, f64> = HashMap::new();
    for line in metrics.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if name.starts_with("qembed_requests_total{") && name.contains("route=\"/v1/embeddings\"") {
            s.requests += value;
            if name.contains("status=\"5") {
                s.errors += value;
            }
        } else if name.starts_with("qembed_request_duration_seconds_bucket{")
            && name.contains("route=\"/v1/embeddings\"")
        {
            if let Some(le) = name.split("le=\"").nth(1).and_then(|r| r.split('"').next()) {
                buckets.insert(le.to_string(), value);
            }
        }
    }
    s.buckets = buckets
        .into_iter()
        .map(|(le, c)| {
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                },
                c,
            )
        })
        .collect();
    s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    s
}

/// p99 (upper bucket bound, ms) of the requests between two scrapes.
pub fn p99_ms(before: &Snapshot, after: &Snapshot) -> Option<f64> {
    let prior: HashMap<u64, f64> = before
        .buckets
        .iter()
        .map(|(le, c)| (le.to_bits(), *c))
        .collect();
    let delta: Vec<(f64, f64)> = after
        .buckets
        .iter()
        .map(|(le, c)| (*le, c - prior.get(&le.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, c)| *c >= 0.99 * total)
        .map(|(le, _)| le * 1000.0)
}

/// Watches for `window`; returns `Err(reason)` on the first breach.
pub async fn watch(inst: &Instance, w: &Watch) -> Result<std::result::Result<(), String>> {
    let deadline = Instant::now() + Duration::from_secs_f64(w.window_s);
    let interval = Duration::from_secs_f64(w.interval_s.max(0.05));
    let mut last = match inst.metrics().await {
        Ok(m) => parse(&m),
        Err(e) => return Ok(Err(format!("cannot scrape {}: {e}", inst.name))),
    };
    while Instant::now() < deadline {
        tokio::time::sleep(interval).await;
        if !inst.ready().await {
            return Ok(Err(format!("{} is not ready", inst.name)));
        }
        let now = match inst.metrics().await {
            Ok(m) => parse(&m),
            Err(e) => return Ok(Err(format!("cannot scrape {}: {e}", inst.name))),
        };
        let reqs = now.requests - last.requests;
        let errs = now.errors - last.errors;
        let rate = if reqs > 0.0 { errs / reqs } else { 0.0 };
        let p99 = p99_ms(&last, &now);
        tracing::info!(color = %inst.name, requests = reqs, error_rate = rate, p99_ms = ?p99, "watch");
        if rate > w.max_error_rate {
            return Ok(Err(format!("error rate {rate:.4} > {}", w.max_error_rate)));
        }
        if let Some(p) = p99.filter(|p| *p > w.max_p99_ms) {
            return Ok(Err(format!("p99 {p:.0} ms > {} ms", w.max_p99_ms)));
        }
        last = now;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"qembed_requests_total{route="/v1/embeddings",status="200"} 10
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="0.1"} 10
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="1"} 10
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="+Inf"} 10
"#;
    const AFTER: &str = r#"qembed_requests_total{route="/v1/embeddings",status="200"} 108
qembed_requests_total{route="/v1/embeddings",status="503"} 2
qembed_requests_total{route="/health",status="500"} 7
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="0.1"} 98
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="1"} 110
qembed_request_duration_seconds_bucket{route="/v1/embeddings",le="+Inf"} 110
"#;

    #[test]
    fn deltas_between_scrapes() {
        let (a, b) = (parse(BEFORE), parse(AFTER));
        assert_eq!((b.requests - a.requests, b.errors - a.errors), (100.0, 2.0));
        // 88 of 100 new requests under 100 ms, all under 1 s: p99 bucket is 1 s.
        assert_eq!(p99_ms(&a, &b), Some(1000.0));
        assert_eq!(p99_ms(&b, &b), None);
    }
}
