//! Prometheus metrics: what an operator watches during a blue/green switch.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use qembed_engine::{BatchObserver, BatchStats, GpuMemory};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub queue_wait: Histogram,
    pub batch_sequences: Histogram,
    pub batch_requests: Histogram,
    pub batch_tokens: Histogram,
    pub batch_compute: Histogram,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
    pub queued_tokens: IntGauge,
    pub tokens: IntCounter,
    pub rerank_pairs: IntCounter,
    pub ready: IntGauge,
    pub model_info: IntGaugeVec,
    pub gpu_memory_used: IntGaugeVec,
    pub gpu_memory_total: IntGaugeVec,
    pub resident_memory: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn pow2_buckets(max: f64) -> Vec<f64> {
    let mut b = vec![1.0];
    while *b.last().unwrap_or(&max) < max {
        let next = b.last().copied().unwrap_or(1.0) * 2.0;
        b.push(next);
    }
    b
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("qembed_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("qembed_request_duration_seconds", "HTTP request latency")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        };
        let queue_wait = hist(
            "qembed_queue_wait_seconds",
            "Time a request waited in the batch queue",
            LATENCY_BUCKETS.to_vec(),
        )?;
        let batch_sequences = hist(
            "qembed_batch_size",
            "Sequences per forward batch",
            pow2_buckets(4096.0),
        )?;
        let batch_requests = hist(
            "qembed_batch_requests",
            "Requests combined per batch",
            pow2_buckets(1024.0),
        )?;
        let batch_tokens = hist(
            "qembed_batch_tokens",
            "Tokens per forward batch",
            pow2_buckets(65536.0),
        )?;
        let batch_compute = hist(
            "qembed_batch_compute_seconds",
            "Forward pass time per batch",
            LATENCY_BUCKETS.to_vec(),
        )?;
        let queue_depth = IntGauge::new("qembed_queue_depth", "Requests queued or computing")?;
        let in_flight = IntGauge::new("qembed_in_flight_requests", "HTTP requests being served")?;
        let queued_tokens = IntGauge::new(
            "qembed_queued_tokens",
            "Tokens queued or computing (bounded by --max-queued-tokens)",
        )?;
        let tokens = IntCounter::new("qembed_tokens_total", "Tokens through the model")?;
        let rerank_pairs = IntCounter::new(
            "qembed_rerank_pairs_total",
            "(query, document) pairs scored by the reranker",
        )?;
        let ready = IntGauge::new("qembed_ready", "1 when loaded, warmed and not draining")?;
        let model_info = IntGaugeVec::new(
            Opts::new("qembed_model_info", "The model this instance serves"),
            &["color", "model", "fingerprint", "dtype", "task"],
        )?;
        let gpu_memory_used = IntGaugeVec::new(
            Opts::new(
                "qembed_gpu_memory_used_bytes",
                "Memory in use on each GPU the model runs on, all processes (from the driver)",
            ),
            &["device"],
        )?;
        let gpu_memory_total = IntGaugeVec::new(
            Opts::new(
                "qembed_gpu_memory_total_bytes",
                "Memory of each GPU the model runs on (from the driver)",
            ),
            &["device"],
        )?;
        let resident_memory = IntGauge::new(
            "qembed_process_resident_memory_bytes",
            "Resident memory of this process (VmRSS)",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(batch_sequences.clone()))?;
        registry.register(Box::new(batch_requests.clone()))?;
        registry.register(Box::new(batch_tokens.clone()))?;
        registry.register(Box::new(batch_compute.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(queued_tokens.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(rerank_pairs.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(model_info.clone()))?;
        registry.register(Box::new(gpu_memory_used.clone()))?;
        registry.register(Box::new(gpu_memory_total.clone()))?;
        registry.register(Box::new(resident_memory.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            queue_wait,
            batch_sequences,
            batch_requests,
            batch_tokens,
            batch_compute,
            queue_depth,
            in_flight,
            queued_tokens,
            tokens,
            rerank_pairs,
            ready,
            model_info,
            gpu_memory_used,
            gpu_memory_total,
            resident_memory,
        })
    }

    /// Sets the memory gauges from the driver (each GPU in `gpus`) and /proc, as of
    /// now: called at each scrape, so the figures are never older than the scrape.
    pub fn observe_memory(&self, gpus: &[GpuMemory]) {
        for g in gpus {
            let clamp = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            self.gpu_memory_used
                .with_label_values(&[g.device.as_str()])
                .set(clamp(g.used_bytes));
            self.gpu_memory_total
                .with_label_values(&[g.device.as_str()])
                .set(clamp(g.total_bytes));
        }
        if let Some(rss) = resident_bytes() {
            self.resident_memory.set(rss);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// VmRSS of this process from /proc/self/statm (resident pages), if readable.
fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = i64::try_from(rustix::param::page_size()).ok()?;
    pages.checked_mul(page)
}

impl BatchObserver for Metrics {
    fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    fn batch(&self, stats: BatchStats) {
        self.batch_sequences.observe(stats.sequences as f64);
        self.batch_requests.observe(stats.requests as f64);
        self.batch_tokens.observe(stats.tokens as f64);
        self.batch_compute.observe(stats.compute.as_secs_f64());
        self.tokens.inc_by(stats.tokens as u64);
    }
}
