//! Rerank throughput of qembed: the pairs of `pairs.json` scored through
//! `Embedder::rerank` (tokenisation, the card's template, padding-free batches of up to
//! `--max-batch-tokens`, the yes/no head), timed over a few repetitions after a warm-up.
//! `run.sh` runs `torch_rerank.py` (the model card's transformers code) on the same
//! pairs in the same run; `compare.py` checks that the two agree on the scores.

mod machine;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use qembed_engine::rerank::sigmoid;
use qembed_engine::{DTypeChoice, Embedder, LoadOptions, Pair, Task};
use serde::Deserialize;

#[derive(Parser)]
struct Args {
    /// Reranker checkpoint directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The pairs file `make_pairs.py` writes.
    #[arg(long, default_value = "benches/rerank/pairs.json")]
    pairs: PathBuf,
    /// f32 or bf16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Timed repetitions over all pairs (after a warm-up on the first pair).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Score only the first N pairs (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Most tokens per forward pass (the server's default).
    #[arg(long, default_value_t = 16_384)]
    max_batch_tokens: usize,
    /// Write each pair's logit and score here, in order, for compare.py.
    #[arg(long)]
    scores: Option<PathBuf>,
}

#[derive(Deserialize)]
struct PairsFile {
    pairs: Vec<PairRow>,
}

#[derive(Deserialize)]
struct PairRow {
    query: String,
    document: String,
    instruction: Option<String>,
}

/// CPU seconds used by this process, all threads: what a shared machine still measures
/// fairly when a neighbour takes a core.
fn cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() -> Result<()> {
    let args = Args::parse();
    qembed_model::retain_freed_memory();
    let dtype: DTypeChoice = args.dtype.parse().map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(&args.pairs)
        .with_context(|| format!("reading {}", args.pairs.display()))?;
    let file: PairsFile = serde_json::from_str(&text).context("parsing the pairs file")?;
    let mut rows = file.pairs;
    if args.limit > 0 {
        rows.truncate(args.limit);
    }
    anyhow::ensure!(!rows.is_empty(), "no pairs");
    let pairs: Vec<Pair<'_>> = rows
        .iter()
        .map(|r| Pair {
            query: &r.query,
            document: &r.document,
            instruction: r.instruction.as_deref(),
        })
        .collect();
    let opts = LoadOptions {
        task: Task::Rerank,
        dtype,
        max_batch_tokens: args.max_batch_tokens,
        ..LoadOptions::default()
    };
    let loading = Instant::now();
    let reranker = Embedder::load(&args.model, &opts)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let load_s = loading.elapsed().as_secs_f64();

    // Warm-up: one pair pages the weights in and runs every kernel once.
    reranker.rerank(&pairs[..1], true)?;
    let mut times = Vec::with_capacity(args.reps);
    let (mut cpu_total, mut scored) = (0.0, Vec::new());
    for _ in 0..args.reps.max(1) {
        let (started, cpu) = (Instant::now(), cpu_time());
        scored = reranker.rerank(&pairs, true)?;
        times.push(started.elapsed().as_secs_f64());
        cpu_total += cpu_time() - cpu;
    }
    let tokens: usize = scored.iter().map(|(_, t)| t).sum();
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let cpu_mean = cpu_total / times.len() as f64;

    if let Some(path) = &args.scores {
        let out: Vec<_> = scored
            .iter()
            .map(|(logit, tokens)| {
                serde_json::json!({"logit": logit, "score": sigmoid(*logit), "tokens": tokens})
            })
            .collect();
        std::fs::write(path, serde_json::to_string(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let cpu = machine::Cpu::read();
    println!(
        "{}",
        serde_json::json!({
            "engine": "qembed", "dtype": args.dtype, "threads": rayon::current_num_threads(),
            "pairs": pairs.len(), "tokens": tokens, "reps": times.len(),
            "max_batch_tokens": args.max_batch_tokens,
            "seconds": mean, "seconds_each": times, "best_seconds": best,
            "pairs_per_s": pairs.len() as f64 / mean, "tokens_per_s": tokens as f64 / mean,
            "tokens_per_cpu_s": tokens as f64 / cpu_mean, "load_seconds": load_s,
            "timed": "Embedder::rerank over all pairs: tokenisation, template, forward, head",
            "cpu_model": cpu.model, "cpu_flags": cpu.simd_flags(),
            "kernels": machine::kernel_set(&cpu, reranker.model().cpu_kernel()),
            "loadavg": machine::loadavg(),
        })
    );
    Ok(())
}
