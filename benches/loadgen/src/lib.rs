//! A load generator for any OpenAI-compatible `/v1/embeddings` endpoint.
//!
//! Every run is bounded twice, by a request count and by a duration, so a mistake in a
//! test or a CI script cannot turn into an endless flood. Closed loop (N clients each
//! sending as soon as their last answer came back) measures capacity; open loop (a fixed
//! arrival rate, whatever the latency) measures latency at a given load, as production
//! traffic behaves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

/// How long each input is, in words (the fixture tokenizers give about one to two
/// tokens a word; the report counts real tokens from the server's `usage`).
#[derive(Debug, Clone)]
pub enum Lengths {
    Fixed(usize),
    Uniform(usize, usize),
    /// Texts to cycle through, e.g. a file of real queries.
    Texts(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The endpoint, e.g. `http://127.0.0.1:30000/v1/embeddings`.
    pub url: String,
    pub model: Option<String>,
    pub api_key: Option<String>,
    /// Concurrent clients (closed loop), or most requests in flight (open loop).
    pub concurrency: usize,
    /// Open-loop arrival rate in requests/s; `None` for a closed loop.
    pub rate: Option<f64>,
    pub max_requests: usize,
    pub max_duration: Duration,
    pub inputs_per_request: usize,
    pub lengths: Lengths,
    pub dimensions: Option<usize>,
    pub timeout: Duration,
    pub seed: u64,
    /// Set to stop early (e.g. when a test's scenario is over); the bounds still hold.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:30000/v1/embeddings".into(),
            model: None,
            api_key: None,
            concurrency: 8,
            rate: None,
            max_requests: 1000,
            max_duration: Duration::from_secs(30),
            inputs_per_request: 1,
            lengths: Lengths::Fixed(128),
            dimensions: None,
            timeout: Duration::from_secs(30),
            seed: 1,
            stop: None,
        }
    }
}

/// One request as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds from the start of the run to the request being sent.
    pub sent_at: f64,
    pub latency_ms: f64,
    /// HTTP status, or 0 when no response came (connection refused, reset, timeout).
    pub status: u16,
    /// `x-qembed-color` of the instance that answered, if any.
    pub color: Option<String>,
    pub tokens: usize,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.status == 200
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub requests: usize,
    pub ok: usize,
    pub failed: usize,
    pub error_rate: f64,
    pub duration_s: f64,
    pub qps: f64,
    pub tokens_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub by_status: BTreeMap<String, usize>,
    pub by_color: BTreeMap<String, usize>,
}

impl Report {
    pub fn from_samples(samples: &[Sample], duration: Duration) -> Self {
        let mut lat: Vec<f64> = samples
            .iter()
            .filter(|s| s.ok())
            .map(|s| s.latency_ms)
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
            lat[rank.clamp(1, lat.len()) - 1]
        };
        let ok = samples.iter().filter(|s| s.ok()).count();
        let mut by_status = BTreeMap::new();
        let mut by_color = BTreeMap::new();
        for s in samples {
            *by_status.entry(s.status.to_string()).or_insert(0) += 1;
            let c = s.color.clone().unwrap_or_else(|| "-".into());
            *by_color.entry(c).or_insert(0) += 1;
        }
        let secs = duration.as_secs_f64().max(1e-9);
        let tokens: usize = samples.iter().filter(|s| s.ok()).map(|s| s.tokens).sum();
        Self {
            requests: samples.len(),
            ok,
            failed: samples.len() - ok,
            error_rate: if samples.is_empty() {
                0.0
            } else {
                (samples.len() - ok) as f64 / samples.len() as f64
            },
            duration_s: secs,
            qps: ok as f64 / secs,
            tokens_per_s: tokens as f64 / secs,
            p50_ms: pct(50.0),
            p95_ms: pct(95.0),
            p99_ms: pct(99.0),
            max_ms: lat.last().copied().unwrap_or(0.0),
            by_status,
            by_color,
        }
    }

    /// A few lines for a terminal.
    pub fn table(&self) -> String {
        format!(
            "requests {} ok {} failed {} ({:.3}%) in {:.1}s\n\
             qps {:.1}  tokens/s {:.0}\n\
             latency ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}\n\
             status {:?}  color {:?}",
            self.requests,
            self.ok,
            self.failed,
            self.error_rate * 100.0,
            self.duration_s,
            self.qps,
            self.tokens_per_s,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms,
            self.by_status,
            self.by_color
        )
    }
}

/// A small deterministic generator (splitmix64), so runs are repeatable without a
/// dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "search", "model", "vector", "query", "passage", "index", "river", "city", "music", "garden",
    "kernel", "batch", "token", "capital", "history", "science", "the", "a", "of", "and",
];

fn make_text(rng: &mut Rng, lengths: &Lengths, n: u64) -> String {
    let words = match lengths {
        Lengths::Fixed(w) => *w,
        Lengths::Uniform(lo, hi) => lo + rng.below(hi.saturating_sub(*lo) + 1),
        Lengths::Texts(texts) => return texts[(n as usize) % texts.len().max(1)].clone(),
    };
    let mut s = format!("request {n}:");
    for _ in 0..words.max(1) {
        s.push(' ');
        s.push_str(WORDS[rng.below(WORDS.len())]);
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load config: {0}")]
    Config(String),
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Runs the load and returns every sample (in send order) plus the summary.
pub async fn run(cfg: &LoadConfig) -> Result<(Report, Vec<Sample>), LoadError> {
    if cfg.concurrency == 0 || cfg.max_requests == 0 || cfg.inputs_per_request == 0 {
        return Err(LoadError::Config(
            "concurrency, requests and inputs per request must be positive".into(),
        ));
    }
    if let Lengths::Texts(t) = &cfg.lengths {
        if t.is_empty() {
            return Err(LoadError::Config("the text list is empty".into()));
        }
    }
    if matches!(cfg.rate, Some(r) if r.is_nan() || r <= 0.0) {
        return Err(LoadError::Config("rate must be positive".into()));
    }
    let client = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .pool_max_idle_per_host(cfg.concurrency)
        .build()?;
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        client,
        start: Instant::now(),
        next: Mutex::new(0),
        samples: Mutex::new(Vec::new()),
    });
    let deadline = shared.start + cfg.max_duration;
    let mut tasks = tokio::task::JoinSet::new();
    match cfg.rate {
        None => {
            for _ in 0..cfg.concurrency {
                let shared = shared.clone();
                tasks.spawn(async move {
                    while let Some(n) = shared.claim(deadline) {
                        shared.one(n).await;
                    }
                });
            }
        }
        Some(rate) => {
            let slots = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency));
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tick.tick().await;
                let Some(n) = shared.claim(deadline) else {
                    break;
                };
                // At the in-flight cap an arrival waits: recorded latency then includes
                // that wait, as a real client's would.
                let permit = match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                };
                let shared = shared.clone();
                tasks.spawn(async move {
                    shared.one(n).await;
                    drop(permit);
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = shared.start.elapsed();
    let mut samples = std::mem::take(&mut *lock(&shared.samples));
    samples.sort_by(|a, b| a.sent_at.total_cmp(&b.sent_at));
    Ok((Report::from_samples(&samples, elapsed), samples))
}

struct Shared {
    cfg: LoadConfig,
    client: reqwest::Client,
    start: Instant,
    next: Mutex<u64>,
    samples: Mutex<Vec<Sample>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The next request number, or `None` once either bound is reached.
    fn claim(&self, deadline: Instant) -> Option<u64> {
        let mut next = lock(&self.next);
        let stopped = self
            .cfg
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed));
        if stopped || *next as usize >= self.cfg.max_requests || Instant::now() >= deadline {
            return None;
        }
        *next += 1;
        Some(*next - 1)
    }

    async fn one(&self, n: u64) {
        let mut rng = Rng(self.cfg.seed ^ n.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let input: Vec<String> = (0..self.cfg.inputs_per_request)
            .map(|i| make_text(&mut rng, &self.cfg.lengths, n * 1000 + i as u64))
            .collect();
        let mut body = json!({"input": input, "truncate": true});
        if let Some(m) = &self.cfg.model {
            body["model"] = json!(m);
        }
        if let Some(d) = self.cfg.dimensions {
            body["dimensions"] = json!(d);
        }
        let mut req = self.client.post(&self.cfg.url).json(&body);
        if let Some(k) = &self.cfg.api_key {
            req = req.bearer_auth(k);
        }
        let sent = Instant::now();
        let sent_at = sent.duration_since(self.start).as_secs_f64();
        let (status, color, tokens) = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let color = resp
                    .headers()
                    .get("x-qembed-color")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                // The body must arrive whole for the request to count as served.
                match resp.json::<serde_json::Value>().await {
                    Ok(v) => {
                        let tokens = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                        (status, color, tokens)
                    }
                    Err(_) => (0, color, 0),
                }
            }
            Err(_) => (0, None, 0),
        };
        let sample = Sample {
            sent_at,
            latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
            status,
            color,
            tokens,
        };
        lock(&self.samples).push(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: f64, status: u16) -> Sample {
        Sample {
            sent_at: 0.0,
            latency_ms: ms,
            status,
            color: None,
            tokens: 10,
        }
    }

    #[test]
    fn percentiles_and_error_rate() {
        let mut s: Vec<Sample> = (1..=100).map(|i| sample(i as f64, 200)).collect();
        s.push(sample(1.0, 500));
        let r = Report::from_samples(&s, Duration::from_secs(2));
        assert_eq!((r.p50_ms, r.p99_ms, r.max_ms), (50.0, 99.0, 100.0));
        assert_eq!((r.ok, r.failed), (100, 1));
        assert!((r.qps - 50.0).abs() < 1e-9);
        assert!((r.error_rate - 1.0 / 101.0).abs() < 1e-12);
        assert_eq!(r.by_status["500"], 1);
    }
}
