//! Tokens/s of qembed's forward pass (model only: ids in, pooled vectors out) for the
//! batch shapes `run.sh` also gives PyTorch, so the two are measured in one run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use qembed_model::{DType, Device, PackedBatch, Quantize, Qwen3Embedding};

#[derive(Parser)]
struct Args {
    /// Checkpoint directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// f32 or bf16: the load dtype (with `--quantize int8`, of the embedding table and
    /// of the weights before they are quantized).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// none or int8.
    #[arg(long, default_value = "none")]
    quantize: Quantize,
    /// Shapes: `BxL` (B sequences of L tokens) or `mixed` (the 16 lengths 8 + 337·i mod
    /// 505: 8 to 349 tokens, 2693 in all).
    #[arg(long, value_delimiter = ',', default_value = "1x16,32x128,8x512,mixed")]
    shapes: Vec<String>,
    /// Timed repetitions per shape (after a warm-up for small batches).
    #[arg(long, default_value_t = 1)]
    reps: usize,
}

/// The lengths of one batch; `mixed` is the same deterministic list run.sh gives torch.
fn lengths(shape: &str) -> Result<Vec<usize>> {
    if shape == "mixed" {
        return Ok((0..16).map(|i| 8 + (i * 337) % 505).collect());
    }
    let (b, l) = shape.split_once('x').context("shape is BxL or mixed")?;
    Ok(vec![l.parse()?; b.parse()?])
}

/// CPU seconds used by this process, all threads. Tokens per CPU-second is what a
/// shared or noisy machine still measures fairly; tokens/s is what users see.
fn cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// This process's resident set (VmRSS) in bytes, from /proc; `None` where there is none.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() -> Result<()> {
    let args = Args::parse();
    qembed_model::retain_freed_memory();
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        d => anyhow::bail!("unknown dtype {d}"),
    };
    let started = Instant::now();
    let model =
        Qwen3Embedding::load_quantized(&args.model, dtype, &Device::Cpu, args.quantize, None)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let rss_after_load = rss_bytes();
    let vocab = model.config().vocab_size as u64;
    for shape in &args.shapes {
        let lens = lengths(shape)?;
        // Deterministic ids away from the special tokens at the end of the vocabulary.
        let seqs: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(s, &l)| {
                (0..l)
                    .map(|t| ((s * 7919 + t * 104729) as u64 % (vocab - 32)) as u32)
                    .collect()
            })
            .collect();
        let batch = PackedBatch::new(&seqs);
        // Warm-up only where one-off costs would show (small batches).
        if batch.num_tokens() < 1024 {
            model.forward(&batch)?;
        }
        let (started, cpu) = (Instant::now(), cpu_time());
        for _ in 0..args.reps {
            model.forward(&batch)?;
        }
        let secs = started.elapsed().as_secs_f64() / args.reps as f64;
        let cpu_secs = (cpu_time() - cpu) / args.reps as f64;
        let tokens = batch.num_tokens();
        println!(
            "{}",
            serde_json::json!({"engine": "qembed", "kernel": model.cpu_kernel(), "dtype": args.dtype,
                               "quantize": args.quantize.to_string(), "shape": shape,
                               "tokens": tokens, "seconds": secs, "tokens_per_s": tokens as f64 / secs,
                               "tokens_per_cpu_s": tokens as f64 / cpu_secs,
                               "load_seconds": load_seconds, "rss_after_load": rss_after_load})
        );
    }
    Ok(())
}
