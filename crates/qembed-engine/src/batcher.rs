//! The dynamic batcher: many concurrent requests, one worker thread that owns the model.
//!
//! Requests wait in a queue whose length is bounded by admission (see [`Batcher::admit`]),
//! so overload turns into a refusal the server can answer with 429, never into unbounded
//! memory. The worker closes a batch when the token budget or the request count is
//! reached, or when nothing more arrives within the batch wait. Sequences of all
//! requests in a batch run as one padding-free forward pass; results are split back by
//! request, in order.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::{Embedder, EngineError};

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Most tokens in one forward pass.
    pub max_batch_tokens: usize,
    /// Most requests combined into one batch.
    pub max_batch_requests: usize,
    /// Most requests admitted at once (queued or computing); more get refused.
    pub max_concurrent_requests: usize,
    /// How long an idle worker waits for more requests before closing a batch.
    pub batch_wait: Duration,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16_384,
            max_batch_requests: 64,
            max_concurrent_requests: 512,
            batch_wait: Duration::from_millis(2),
        }
    }
}

/// What happened to one batch, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct BatchStats {
    pub requests: usize,
    pub sequences: usize,
    pub tokens: usize,
    pub compute: Duration,
}

/// Hooks for the server's metrics; the engine itself knows nothing of Prometheus.
pub trait BatchObserver: Send + Sync {
    fn queue_wait(&self, waited: Duration);
    fn batch(&self, stats: BatchStats);
}

/// An observer that records nothing.
pub struct NoObserver;

impl BatchObserver for NoObserver {
    fn queue_wait(&self, _: Duration) {}
    fn batch(&self, _: BatchStats) {}
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is at capacity ({0} concurrent requests); retry shortly")]
    Overloaded(usize),
    #[error("the embedding worker has stopped")]
    WorkerGone,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("internal error while embedding: {0}")]
    Internal(String),
}

type Reply = std::result::Result<Vec<Vec<f32>>, SubmitError>;

struct Job {
    seqs: Vec<Vec<u32>>,
    tokens: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Reply>,
}

/// A slot in the bounded queue, held for the life of one request.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
}

impl Batcher {
    /// Starts the worker thread; it runs until every `Batcher` clone is dropped.
    pub fn spawn(
        embedder: Arc<Embedder>,
        config: BatcherConfig,
        observer: Arc<dyn BatchObserver>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let max_concurrent = config.max_concurrent_requests.max(1);
        thread::Builder::new()
            .name("qembed-worker".into())
            .spawn(move || worker(embedder, config, rx, observer))?;
        Ok(Self {
            tx,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
        })
    }

    /// Takes a queue slot or refuses at once. Called before any tokenisation so that a
    /// flood of requests costs nothing but the refusal.
    pub fn admit(&self) -> std::result::Result<Admission, SubmitError> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admission { _permit: permit }),
            Err(TryAcquireError::NoPermits) => Err(SubmitError::Overloaded(self.max_concurrent)),
            Err(TryAcquireError::Closed) => Err(SubmitError::WorkerGone),
        }
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// Queues tokenised sequences and waits for their raw pooled vectors, in order.
    /// Dropping the returned future (client gone) lets the worker skip the job.
    pub async fn embed(&self, _slot: &Admission, seqs: Vec<Vec<u32>>) -> Reply {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        let tokens = seqs.iter().map(Vec::len).sum();
        let job = Job {
            seqs,
            tokens,
            enqueued: Instant::now(),
            reply,
        };
        self.tx.send(job).map_err(|_| SubmitError::WorkerGone)?;
        rx.await.map_err(|_| SubmitError::WorkerGone)?
    }
}

fn worker(
    embedder: Arc<Embedder>,
    config: BatcherConfig,
    rx: mpsc::Receiver<Job>,
    observer: Arc<dyn BatchObserver>,
) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut jobs = vec![first];
        let mut tokens = jobs[0].tokens;
        let deadline = Instant::now() + config.batch_wait;
        while jobs.len() < config.max_batch_requests && tokens < config.max_batch_tokens {
            let wait = deadline.saturating_duration_since(Instant::now());
            let next = match rx.try_recv() {
                Ok(job) => job,
                Err(_) if wait.is_zero() => break,
                Err(_) => match rx.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            if tokens + next.tokens > config.max_batch_tokens {
                carry = Some(next);
                break;
            }
            tokens += next.tokens;
            jobs.push(next);
        }
        // Clients that went away while queued cost no compute.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        for j in &jobs {
            observer.queue_wait(j.enqueued.elapsed());
        }
        run_batch(&embedder, jobs, observer.as_ref());
    }
}

/// Runs the jobs as one forward pass; if that fails, runs each alone so that one bad
/// request cannot fail or mix up the others.
fn run_batch(embedder: &Embedder, jobs: Vec<Job>, observer: &dyn BatchObserver) {
    let started = Instant::now();
    let all: Vec<&[u32]> = jobs
        .iter()
        .flat_map(|j| j.seqs.iter().map(Vec::as_slice))
        .collect();
    let result = guarded(|| embedder.embed_ids(&all));
    observer.batch(BatchStats {
        requests: jobs.len(),
        sequences: all.len(),
        tokens: all.iter().map(|s| s.len()).sum(),
        compute: started.elapsed(),
    });
    match result {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for job in jobs {
                let mine: Vec<Vec<f32>> = vectors.by_ref().take(job.seqs.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(e) if jobs.len() == 1 => {
            if let Some(job) = jobs.into_iter().next() {
                let _ = job.reply.send(Err(e));
            }
        }
        Err(_) => {
            for job in jobs {
                let result = guarded(|| embedder.embed_ids(&job.seqs));
                let _ = job.reply.send(result);
            }
        }
    }
}

/// Runs `f`, turning a panic into an error so that the worker thread survives it.
fn guarded<T>(f: impl FnOnce() -> crate::Result<T>) -> std::result::Result<T, SubmitError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(SubmitError::Engine(e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic in forward pass".into());
            Err(SubmitError::Internal(msg))
        }
    }
}
