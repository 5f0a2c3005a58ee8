//! The dynamic batcher: many concurrent requests, one worker thread that owns the model.
//!
//! Requests wait in a queue bounded twice by admission: a request count
//! ([`Batcher::admit`], before the body is read) and a token budget (in
//! [`Batcher::embed`], once the request is tokenised), so overload turns into a refusal
//! the server can answer with 429, never into unbounded memory.
//!
//! Scheduling is round-robin between requests: in each forward pass every waiting
//! request in turn contributes up to a quarter of the token budget, turn after turn,
//! until the budget, the sequence cap or the request cap is reached, and the next pass
//! goes on from the request where this one stopped. A request within a quarter of the
//! budget runs whole in one pass. A request of thousands of long inputs therefore runs as
//! many passes interleaved with everyone else's, and a small request that arrives behind
//! it waits about one pass's compute, not the whole request's. An idle
//! worker waits up to the batch wait for more requests before it closes the first batch.
//! Sequences in a batch run as one padding-free forward pass; results go back to each
//! request in its own order once all its sequences are done.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::{Embedder, EngineError, MAX_BATCH_SEQUENCES};

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Most tokens in one forward pass.
    pub max_batch_tokens: usize,
    /// Most requests combined into one batch.
    pub max_batch_requests: usize,
    /// Most requests admitted at once (queued or computing); more get refused.
    pub max_concurrent_requests: usize,
    /// Most tokens queued or computing at once, over all requests; a request that would
    /// pass it is refused (429), one larger than it on its own too (413).
    pub max_queued_tokens: usize,
    /// How long an idle worker waits for more requests before closing a batch.
    pub batch_wait: Duration,
}

impl BatcherConfig {
    /// The queued-token budget when none is given: 64 full batches. At the default
    /// 16,384-token batch that is 1,048,576 tokens (4 MiB of token ids), minutes of
    /// compute on a CPU, and room for one request of 2,048 inputs of 512 tokens.
    pub fn default_max_queued_tokens(max_batch_tokens: usize) -> usize {
        max_batch_tokens.saturating_mul(64)
    }
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16_384,
            max_batch_requests: 64,
            max_concurrent_requests: 512,
            max_queued_tokens: Self::default_max_queued_tokens(16_384),
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
    #[error("the server is at capacity ({queued} tokens queued, at most {max}); retry shortly")]
    QueueFull { queued: usize, max: usize },
    #[error("the request has {tokens} tokens, more than the server queues at once ({max}, --max-queued-tokens); split it")]
    TooManyTokens { tokens: usize, max: usize },
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
    enqueued: Instant,
    reply: oneshot::Sender<Reply>,
    /// The job's share of the token budget, given back when the job is answered or dropped.
    tokens: Option<OwnedSemaphorePermit>,
}

impl Job {
    /// Gives the job's token budget back, then answers it: a caller that has its reply
    /// can count on the budget being free again (answering first would race the drop).
    fn answer(&mut self, reply: Reply) {
        self.tokens.take();
        let (closed, _) = oneshot::channel();
        let _ = std::mem::replace(&mut self.reply, closed).send(reply);
    }
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
    tokens: Arc<Semaphore>,
    max_queued_tokens: usize,
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
        let max_queued_tokens = config.max_queued_tokens.clamp(1, u32::MAX as usize);
        thread::Builder::new()
            .name("qembed-worker".into())
            .spawn(move || worker(embedder, config, rx, observer))?;
        Ok(Self {
            tx,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            tokens: Arc::new(Semaphore::new(max_queued_tokens)),
            max_queued_tokens,
        })
    }

    /// Takes a queue slot or refuses at once. Called before the body is read and before
    /// any tokenisation, so that a flood of requests costs nothing but the refusal.
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

    /// Tokens queued or computing.
    pub fn queued_tokens(&self) -> usize {
        self.max_queued_tokens - self.tokens.available_permits()
    }

    /// Queues tokenised sequences and waits for their raw pooled vectors, in order.
    /// Refused at once when the token budget cannot take them. Dropping the returned
    /// future (client gone) lets the worker skip what is left of the job.
    pub async fn embed(&self, _slot: &Admission, seqs: Vec<Vec<u32>>) -> Reply {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: usize = seqs.iter().map(Vec::len).sum();
        let max = self.max_queued_tokens;
        let too_many = || SubmitError::TooManyTokens { tokens, max };
        let n = u32::try_from(tokens).map_err(|_| too_many())?;
        if tokens > max {
            return Err(too_many());
        }
        let permit = match self.tokens.clone().try_acquire_many_owned(n) {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                let queued = self.queued_tokens();
                return Err(SubmitError::QueueFull { queued, max });
            }
            Err(TryAcquireError::Closed) => return Err(SubmitError::WorkerGone),
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            seqs,
            enqueued: Instant::now(),
            reply,
            tokens: Some(permit),
        };
        self.tx.send(job).map_err(|_| SubmitError::WorkerGone)?;
        rx.await.map_err(|_| SubmitError::WorkerGone)?
    }
}

/// A request being worked on: its sequences from `next` on are still to run.
struct Active {
    job: Job,
    next: usize,
    /// Tokens of the sequences from `next` on.
    left_tokens: usize,
    done: Vec<Vec<f32>>,
    started: bool,
}

impl Active {
    fn new(job: Job) -> Self {
        let done = Vec::with_capacity(job.seqs.len());
        let left_tokens = job.seqs.iter().map(Vec::len).sum();
        Self {
            job,
            next: 0,
            left_tokens,
            done,
            started: false,
        }
    }

    fn left(&self) -> &[Vec<u32>] {
        &self.job.seqs[self.next..]
    }

    /// The next `n` sequences are done.
    fn advance(&mut self, n: usize) {
        let tokens: usize = self.left()[..n].iter().map(Vec::len).sum();
        self.left_tokens -= tokens;
        self.next += n;
    }
}

fn worker(
    embedder: Arc<Embedder>,
    config: BatcherConfig,
    rx: mpsc::Receiver<Job>,
    observer: Arc<dyn BatchObserver>,
) {
    let mut active: VecDeque<Active> = VecDeque::new();
    let mut open = true;
    loop {
        if active.is_empty() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(job) => active.push_back(Active::new(job)),
                Err(_) => return,
            }
            gather(&rx, &config, &mut active);
        } else if open {
            // Work is waiting: take what has arrived, without waiting for more.
            loop {
                match rx.try_recv() {
                    Ok(job) => active.push_back(Active::new(job)),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        // Clients that went away cost no more compute.
        active.retain(|a| !a.job.reply.is_closed());
        if active.is_empty() {
            continue;
        }
        let (plan, lead) = plan(&active, &config);
        for (a, &n) in active.iter_mut().zip(&plan) {
            if n > 0 && !a.started {
                a.started = true;
                observer.queue_wait(a.job.enqueued.elapsed());
            }
        }
        run_batch(&embedder, &mut active, &plan, observer.as_ref());
        // Finished (or failed) requests leave; the turn goes on where it stopped.
        let mut rest = VecDeque::with_capacity(active.len());
        for (i, mut a) in active.drain(..).enumerate() {
            if a.next < a.job.seqs.len() && !a.job.reply.is_closed() {
                rest.push_back((i, a));
            } else if a.next == a.job.seqs.len() {
                let done = std::mem::take(&mut a.done);
                a.job.answer(Ok(done));
            }
        }
        if let Some(pos) = rest.iter().position(|(i, _)| *i >= lead) {
            rest.rotate_left(pos);
        }
        active = rest.into_iter().map(|(_, a)| a).collect();
    }
}

/// Waits up to the batch wait for more requests while the first batch is not full.
fn gather(rx: &mpsc::Receiver<Job>, config: &BatcherConfig, active: &mut VecDeque<Active>) {
    let deadline = Instant::now() + config.batch_wait;
    let mut tokens: usize = active.iter().flat_map(Active::left).map(Vec::len).sum();
    while active.len() < config.max_batch_requests && tokens < config.max_batch_tokens {
        let wait = deadline.saturating_duration_since(Instant::now());
        let next = match rx.try_recv() {
            Ok(job) => job,
            Err(_) if wait.is_zero() => break,
            Err(_) => match rx.recv_timeout(wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            },
        };
        tokens += next.seqs.iter().map(Vec::len).sum::<usize>();
        active.push_back(Active::new(next));
    }
}

/// How many sequences of each active request (from its `next`) go into the next batch.
/// Deficit round-robin in queue order: each request's turn takes sequences up to a
/// quantum of tokens (a quarter of the batch budget; at least one sequence), turns go
/// round until the budget, the sequence cap or the request cap is reached. A request
/// whose remainder is within one quantum goes whole or waits for the next batch, so
/// small requests are not split; only larger ones are spread over batches. A sequence
/// longer than the whole budget runs alone. Also returns where the turns stopped: the
/// request that leads the batch after this one.
fn plan(active: &VecDeque<Active>, config: &BatcherConfig) -> (Vec<usize>, usize) {
    let budget = config.max_batch_tokens.max(1);
    let quantum = (budget / 4).max(1);
    let mut take = vec![0usize; active.len()];
    let mut taken_tokens = vec![0usize; active.len()];
    let (mut tokens, mut seqs, mut requests) = (0usize, 0usize, 0usize);
    let mut skipped = None;
    loop {
        let mut progressed = false;
        for (i, a) in active.iter().enumerate() {
            let left = &a.left()[take[i]..];
            if left.is_empty() {
                continue;
            }
            if take[i] == 0 && requests == config.max_batch_requests.max(1) {
                skipped.get_or_insert(i);
                continue;
            }
            let rest = a.left_tokens - taken_tokens[i];
            if rest <= quantum && seqs > 0 && tokens + rest > budget {
                return (take, i);
            }
            let mut turn = 0usize;
            for seq in left {
                if seqs > 0 && (tokens + seq.len() > budget || seqs == MAX_BATCH_SEQUENCES) {
                    return (take, i);
                }
                if turn > 0 && turn + seq.len() > quantum {
                    break;
                }
                if take[i] == 0 {
                    requests += 1;
                }
                take[i] += 1;
                taken_tokens[i] += seq.len();
                tokens += seq.len();
                seqs += 1;
                turn += seq.len();
                progressed = true;
            }
        }
        if !progressed {
            // Everything fitted, or the request cap left some out: they lead next.
            return (take, skipped.unwrap_or(0));
        }
    }
}

/// Runs the planned sequences as one forward pass and files each vector with its
/// request; if the pass fails, runs each request's part alone so that one bad request
/// cannot fail or mix up the others. A request whose part fails is answered with the
/// error and marked finished.
fn run_batch(
    embedder: &Embedder,
    active: &mut VecDeque<Active>,
    plan: &[usize],
    observer: &dyn BatchObserver,
) {
    let started = Instant::now();
    let all: Vec<&[u32]> = active
        .iter()
        .zip(plan)
        .flat_map(|(a, &n)| a.left()[..n].iter().map(Vec::as_slice))
        .collect();
    let result = guarded(|| embedder.embed_ids(&all));
    observer.batch(BatchStats {
        requests: plan.iter().filter(|&&n| n > 0).count(),
        sequences: all.len(),
        tokens: all.iter().map(|s| s.len()).sum(),
        compute: started.elapsed(),
    });
    let requests = plan.iter().filter(|&&n| n > 0).count();
    match result {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for (a, &n) in active.iter_mut().zip(plan) {
                a.done.extend(vectors.by_ref().take(n));
                a.advance(n);
            }
        }
        Err(e) if requests == 1 => {
            if let Some((a, _)) = active.iter_mut().zip(plan).find(|(_, &n)| n > 0) {
                fail(a, e);
            }
        }
        Err(_) => {
            for (a, &n) in active.iter_mut().zip(plan) {
                if n == 0 {
                    continue;
                }
                match guarded(|| embedder.embed_ids(&a.left()[..n])) {
                    Ok(vectors) => {
                        a.done.extend(vectors);
                        a.advance(n);
                    }
                    Err(e) => fail(a, e),
                }
            }
        }
    }
}

/// Answers `a` with `e` now; its slot stays in the queue only until the caller sweeps it.
fn fail(a: &mut Active, e: SubmitError) {
    a.job.answer(Err(e));
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
