//! The batcher's scheduling with the real model: a request is split into forward passes
//! within the token budget, a small request behind a huge one is answered within about
//! one batch, every request gets exactly its own vectors in order, and the queued-token
//! budget refuses what it cannot hold.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qembed_engine::{
    BatchObserver, BatchStats, Batcher, BatcherConfig, Embedder, LoadOptions, SubmitError,
};
use qembed_testkit::fixture;

const FIXTURE: &str = "qwen3-tiny-gqa";
const BUDGET: usize = 256;

#[derive(Default)]
struct Recorder {
    batches: Mutex<Vec<BatchStats>>,
}

impl Recorder {
    fn count(&self) -> usize {
        self.batches.lock().unwrap().len()
    }
    fn all(&self) -> Vec<BatchStats> {
        self.batches.lock().unwrap().clone()
    }
}

impl BatchObserver for Recorder {
    fn queue_wait(&self, _: Duration) {}
    fn batch(&self, stats: BatchStats) {
        self.batches.lock().unwrap().push(stats);
    }
}

fn embedder() -> Arc<Embedder> {
    let opts = LoadOptions {
        max_batch_tokens: BUDGET,
        ..LoadOptions::default()
    };
    Arc::new(Embedder::load(&fixture(FIXTURE), &opts).unwrap())
}

fn start(embedder: &Arc<Embedder>, config: BatcherConfig) -> (Batcher, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let b = Batcher::spawn(embedder.clone(), config, rec.clone()).unwrap();
    (b, rec)
}

fn config() -> BatcherConfig {
    BatcherConfig {
        max_batch_tokens: BUDGET,
        ..BatcherConfig::default()
    }
}

/// `n` sequences of `len` valid token ids, different per sequence and per `seed`.
fn seqs(n: usize, len: usize, seed: u32) -> Vec<Vec<u32>> {
    (0..n as u32)
        .map(|i| {
            (0..len as u32)
                .map(|j| 1 + (seed * 31 + i * 7 + j * 13) % 700)
                .collect()
        })
        .collect()
}

fn assert_same(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let diff = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-5, "{what}[{i}]: max |diff| {diff}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_request_runs_in_budget_sized_batches() {
    let e = embedder();
    let (b, rec) = start(&e, config());
    let huge = seqs(40, 60, 1);
    let slot = b.admit().unwrap();
    let got = b.embed(&slot, huge.clone()).await.unwrap();
    assert_same(&got, &e.embed_ids(&huge).unwrap(), "huge");
    let batches = rec.all();
    // 60-token sequences, 256-token budget: four per pass, ten passes.
    assert_eq!(batches.len(), 10, "{batches:?}");
    assert!(batches
        .iter()
        .all(|s| s.tokens <= BUDGET && s.sequences == 4));
    assert_eq!(batches.iter().map(|s| s.tokens).sum::<usize>(), 40 * 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_request_behind_a_huge_one_waits_about_one_batch() {
    let e = embedder();
    let (b, rec) = start(&e, config());
    let huge = seqs(60, 60, 2);
    let small = seqs(1, 5, 3);
    let want_huge = e.embed_ids(&huge).unwrap();
    let want_small = e.embed_ids(&small).unwrap();

    let hb = b.clone();
    let h = tokio::spawn(async move {
        let slot = hb.admit().unwrap();
        hb.embed(&slot, huge).await
    });
    // Wait until the worker is inside the huge request (its first pass is done).
    while rec.count() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = rec.count();
    let slot = b.admit().unwrap();
    let got_small = b.embed(&slot, small).await.unwrap();
    assert_same(&got_small, &want_small, "small");
    let got_huge = h.await.unwrap().unwrap();
    assert_same(&got_huge, &want_huge, "huge");

    let batches = rec.all();
    // The first pass that carried two requests is the small one's.
    let with_small = batches
        .iter()
        .position(|s| s.requests == 2)
        .expect("the small request shared a pass with the huge one");
    assert!(
        with_small < before + 2,
        "small answered in pass {} of {}, having arrived after pass {before}",
        with_small + 1,
        batches.len()
    );
    // The huge request went on after it: 60 sequences need 15 passes of four.
    assert!(
        batches.len() >= 15 && with_small + 1 < batches.len(),
        "{batches:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_own_vectors_in_order() {
    let e = embedder();
    let (b, _rec) = start(&e, config());
    let mut tasks = Vec::new();
    for r in 0..12u32 {
        let (b, e) = (b.clone(), e.clone());
        tasks.push(tokio::spawn(async move {
            let mine = seqs(
                1 + (r as usize * 5) % 17,
                3 + (r as usize * 11) % 70,
                r + 10,
            );
            let slot = b.admit().unwrap();
            let got = b.embed(&slot, mine.clone()).await.unwrap();
            let want = tokio::task::spawn_blocking(move || e.embed_ids(&mine).unwrap())
                .await
                .unwrap();
            assert_same(&got, &want, &format!("request {r}"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queued_token_budget_refuses_what_it_cannot_hold() {
    let e = embedder();
    let (b, rec) = start(
        &e,
        // A wide budget and a long batch wait hold the first job in the worker's
        // gathering window, so the second arrives while the first is still queued.
        BatcherConfig {
            max_queued_tokens: 1000,
            max_batch_tokens: 4096,
            batch_wait: Duration::from_millis(500),
            ..config()
        },
    );
    let slot = b.admit().unwrap();
    match b.embed(&slot, seqs(11, 100, 4)).await {
        Err(SubmitError::TooManyTokens {
            tokens: 1100,
            max: 1000,
        }) => {}
        other => panic!("expected TooManyTokens, got {other:?}"),
    }
    // 900 tokens in flight leave no room for 200 more; afterwards there is.
    let hb = b.clone();
    let h = tokio::spawn(async move {
        let slot = hb.admit().unwrap();
        hb.embed(&slot, seqs(15, 60, 5)).await
    });
    while b.queued_tokens() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(b.queued_tokens(), 900);
    assert_eq!(rec.count(), 0, "still gathering");
    let refused = b.embed(&slot, seqs(2, 100, 6)).await;
    assert!(
        matches!(refused, Err(SubmitError::QueueFull { max: 1000, .. })),
        "{refused:?}"
    );
    assert_eq!(h.await.unwrap().unwrap().len(), 15);
    assert_eq!(b.queued_tokens(), 0, "the budget is given back");
    assert_eq!(b.embed(&slot, seqs(2, 100, 6)).await.unwrap().len(), 2);
    assert_eq!(rec.count(), 2, "one pass for each accepted job");
}
