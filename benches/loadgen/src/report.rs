//! What one request looked like to the client, and the summary of a run.
//!
//! Two latencies per request. *Response time* runs from the moment the request was
//! due (its slot in an open-loop schedule) to the whole answer being read: it includes
//! any wait for a free in-flight slot, as a real client arriving at that moment would
//! see it. *Service time* runs from the actual send to the answer. Measuring only the
//! latter hides queueing exactly when the server falls behind (coordinated omission),
//! so the gates (`p99_ms`) use response time. In a closed loop a request is due when
//! its client is free, so the two are equal.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// One request as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds from the start of the run to the moment the request was due.
    pub scheduled_at: f64,
    /// Seconds from the start of the run to the request being sent (`>= scheduled_at`).
    pub sent_at: f64,
    /// Response time: from `scheduled_at` to the answer, queueing included.
    pub latency_ms: f64,
    /// Service time: from `sent_at` to the answer.
    pub service_ms: f64,
    /// HTTP status, or 0 when no response came (connection refused, reset, timeout).
    pub status: u16,
    /// `x-qembed-color` of the instance that answered, if any.
    pub color: Option<String>,
    pub tokens: usize,
    /// The first attempt's connection failed before any answer and it was sent again.
    pub retried: bool,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.status == 200
    }

    /// Seconds from the start of the run to the answer having been read.
    pub fn done_at(&self) -> f64 {
        self.sent_at + self.service_ms / 1000.0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub requests: usize,
    pub ok: usize,
    pub failed: usize,
    /// Requests sent a second time after their connection failed before any answer.
    pub retried: usize,
    pub error_rate: f64,
    pub duration_s: f64,
    pub qps: f64,
    pub tokens_per_s: f64,
    /// Response-time percentiles of successful requests (from the scheduled send).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Service-time percentiles of successful requests (from the actual send).
    pub service_p50_ms: f64,
    pub service_p95_ms: f64,
    pub service_p99_ms: f64,
    pub service_max_ms: f64,
    pub by_status: BTreeMap<String, usize>,
    pub by_color: BTreeMap<String, usize>,
}

/// p50, p95, p99 and max (nearest rank) of `values`; zeros when empty.
fn percentiles(mut values: Vec<f64>) -> [f64; 4] {
    values.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    };
    [
        pct(50.0),
        pct(95.0),
        pct(99.0),
        values.last().copied().unwrap_or(0.0),
    ]
}

impl Report {
    pub fn from_samples(samples: &[Sample], duration: Duration) -> Self {
        let ok_samples = || samples.iter().filter(|s| s.ok());
        let [p50_ms, p95_ms, p99_ms, max_ms] =
            percentiles(ok_samples().map(|s| s.latency_ms).collect());
        let [service_p50_ms, service_p95_ms, service_p99_ms, service_max_ms] =
            percentiles(ok_samples().map(|s| s.service_ms).collect());
        let ok = ok_samples().count();
        let mut by_status = BTreeMap::new();
        let mut by_color = BTreeMap::new();
        for s in samples {
            *by_status.entry(s.status.to_string()).or_insert(0) += 1;
            let c = s.color.clone().unwrap_or_else(|| "-".into());
            *by_color.entry(c).or_insert(0) += 1;
        }
        let secs = duration.as_secs_f64().max(1e-9);
        let tokens: usize = ok_samples().map(|s| s.tokens).sum();
        Self {
            requests: samples.len(),
            ok,
            failed: samples.len() - ok,
            retried: samples.iter().filter(|s| s.retried).count(),
            error_rate: if samples.is_empty() {
                0.0
            } else {
                (samples.len() - ok) as f64 / samples.len() as f64
            },
            duration_s: secs,
            qps: ok as f64 / secs,
            tokens_per_s: tokens as f64 / secs,
            p50_ms,
            p95_ms,
            p99_ms,
            max_ms,
            service_p50_ms,
            service_p95_ms,
            service_p99_ms,
            service_max_ms,
            by_status,
            by_color,
        }
    }

    /// A few lines for a terminal.
    pub fn table(&self) -> String {
        format!(
            "requests {} ok {} failed {} ({:.3}%) retried {} in {:.1}s\n\
             qps {:.1}  tokens/s {:.0}\n\
             response time ms (from scheduled send): p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}\n\
             service time ms (from actual send):     p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}\n\
             status {:?}  color {:?}",
            self.requests,
            self.ok,
            self.failed,
            self.error_rate * 100.0,
            self.retried,
            self.duration_s,
            self.qps,
            self.tokens_per_s,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms,
            self.service_p50_ms,
            self.service_p95_ms,
            self.service_p99_ms,
            self.service_max_ms,
            self.by_status,
            self.by_color
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(latency: f64, service: f64, status: u16) -> Sample {
        Sample {
            scheduled_at: 0.0,
            sent_at: (latency - service) / 1000.0,
            latency_ms: latency,
            service_ms: service,
            status,
            color: None,
            tokens: 10,
            retried: false,
        }
    }

    #[test]
    fn percentiles_and_error_rate() {
        let mut s: Vec<Sample> = (1..=100).map(|i| sample(i as f64, 1.0, 200)).collect();
        s.push(sample(1.0, 1.0, 500));
        let r = Report::from_samples(&s, Duration::from_secs(2));
        assert_eq!((r.p50_ms, r.p99_ms, r.max_ms), (50.0, 99.0, 100.0));
        assert_eq!((r.service_p50_ms, r.service_max_ms), (1.0, 1.0));
        assert_eq!((r.ok, r.failed), (100, 1));
        assert!((r.qps - 50.0).abs() < 1e-9);
        assert!((r.error_rate - 1.0 / 101.0).abs() < 1e-12);
        assert_eq!(r.by_status["500"], 1);
        // Done when sent plus served, not when scheduled plus served.
        assert!((s[99].done_at() - 0.1).abs() < 1e-12);
    }
}
