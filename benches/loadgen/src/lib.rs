//! A load generator for any OpenAI-compatible `/v1/embeddings` endpoint, or any of
//! qembed's rerank routes (`api`: one generated query against the request's inputs).
//!
//! Every run is bounded twice, by a request count and by a duration, so a mistake in a
//! test or a CI script cannot turn into an endless flood. Closed loop (N clients each
//! sending as soon as their last answer came back) measures capacity; open loop (a fixed
//! arrival rate, whatever the latency) measures latency at a given load, as production
//! traffic behaves. In open loop a request's latency runs from the moment it was due,
//! not from when a free slot let it go: a server that falls behind shows up as growing
//! response times (see `report`).

mod api;
mod report;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

pub use api::{Api, BadAnswer, RerankApi, RERANK_ROUTES};
pub use report::{Report, Sample};

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
    /// The request shape `url` expects (see `Api::from_route`).
    pub api: Api,
    pub model: Option<String>,
    pub api_key: Option<String>,
    /// Concurrent clients (closed loop), or most requests in flight (open loop).
    pub concurrency: usize,
    /// Open-loop arrival rate in requests/s; `None` for a closed loop.
    pub rate: Option<f64>,
    pub max_requests: usize,
    pub max_duration: Duration,
    /// Texts to embed, or documents to rank, per request.
    pub inputs_per_request: usize,
    pub lengths: Lengths,
    /// Words in a rerank request's query (the documents follow `lengths`).
    pub query_words: usize,
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
            api: Api::Embeddings,
            model: None,
            api_key: None,
            concurrency: 8,
            rate: None,
            max_requests: 1000,
            max_duration: Duration::from_secs(30),
            inputs_per_request: 1,
            lengths: Lengths::Fixed(128),
            query_words: 8,
            dimensions: None,
            timeout: Duration::from_secs(30),
            seed: 1,
            stop: None,
        }
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
                    // A client is due again as soon as its last answer came back.
                    while let Some(n) = shared.claim(deadline) {
                        shared.one(n, Instant::now()).await;
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
                // The instant this arrival was due. With `Burst`, ticks missed while the
                // loop waited for a slot come back at once, each with its own due time.
                let due = tick.tick().await.into_std();
                let Some(n) = shared.claim(deadline) else {
                    break;
                };
                // At the in-flight cap an arrival waits for a slot; its response time
                // runs from `due`, so that wait is counted as a real client's would be.
                let permit = match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                };
                let shared = shared.clone();
                tasks.spawn(async move {
                    shared.one(n, due).await;
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

    /// Sends request `n`, which was due at `due` (at or before now).
    async fn one(&self, n: u64, due: Instant) {
        let mut rng = Rng(self.cfg.seed ^ n.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let input: Vec<String> = (0..self.cfg.inputs_per_request)
            .map(|i| make_text(&mut rng, &self.cfg.lengths, n * 1000 + i as u64))
            .collect();
        let query = match self.cfg.api {
            Api::Embeddings => String::new(),
            Api::Rerank(_) => make_text(&mut rng, &Lengths::Fixed(self.cfg.query_words), n),
        };
        let mut body = self.cfg.api.load_body(&query, &input);
        if let Some(m) = &self.cfg.model {
            body["model"] = json!(m);
        }
        if let (Api::Embeddings, Some(d)) = (self.cfg.api, self.cfg.dimensions) {
            body["dimensions"] = json!(d);
        }
        let request = || {
            let req = self.client.post(&self.cfg.url).json(&body);
            match &self.cfg.api_key {
                Some(k) => req.bearer_auth(k),
                None => req,
            }
        };
        let sent = Instant::now();
        let since_start = |t: Instant| t.saturating_duration_since(self.start).as_secs_f64();
        // A request whose connection failed before any answer came (typically a pooled
        // keep-alive connection that the proxy closed as it reloaded: HTTP lets a server
        // close an idle connection at any moment) is sent once more on a fresh one, as
        // the OpenAI and Cohere SDKs retry connection errors; a timeout is not retried.
        // Retried requests are counted in the report, so they are seen, not hidden.
        let mut retried = false;
        let answer = match request().send().await {
            Err(e) if !e.is_timeout() => {
                retried = true;
                request().send().await
            }
            other => other,
        };
        let (status, color, tokens) = match answer {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let color = resp
                    .headers()
                    .get("x-qembed-color")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                // The body must arrive whole for the request to count as served.
                match resp.json::<serde_json::Value>().await {
                    Ok(v) => (status, color, self.cfg.api.tokens(&v)),
                    Err(_) => (0, color, 0),
                }
            }
            Err(_) => (0, None, 0),
        };
        let done = Instant::now();
        let sample = Sample {
            scheduled_at: since_start(due),
            sent_at: since_start(sent),
            latency_ms: done.saturating_duration_since(due).as_secs_f64() * 1000.0,
            service_ms: done.saturating_duration_since(sent).as_secs_f64() * 1000.0,
            status,
            color,
            tokens,
            retried,
        };
        lock(&self.samples).push(sample);
    }
}
