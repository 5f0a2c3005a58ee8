//! `qembed bench`: forward-pass throughput of a Qwen3-Embedding shape on this machine
//! without downloading anything. It writes a random-weight checkpoint of the real shape
//! (`bench_cmd::synth`), loads it with the real loader, and times packed batches of
//! token ids through the model. Random weights cost the same arithmetic as trained
//! ones, so the speed is the model's; the vectors mean nothing.

mod batches;
mod host;
mod mfu;
mod shape;
mod synth;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use qembed_engine::{Backend, DType, DTypeChoice, DeviceSpec, Quantize};
use qembed_model::PackedBatch;
use serde::Serialize;

use batches::{parse_batch, BatchShape};
use shape::Shape;

/// Seed of the random weights: every run of a shape measures the same checkpoint.
const SEED: u64 = 0x5157_454E_3345_4D42;

#[derive(Args)]
pub struct BenchArgs {
    /// Model shape: 0.6b, 4b, 8b (Qwen3-Embedding's) or tiny (models/qwen3-tiny-gqa's).
    /// The checkpoint is written with random bf16 weights to a temporary directory
    /// (under $TMPDIR, removed at exit) unless --save names one.
    #[arg(long)]
    shape: Shape,
    /// Where the model runs: cpu, cuda or cuda:N (needs a build with `--features cuda`).
    #[arg(long, env = "QEMBED_DEVICE", default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype: auto (f32 on CPU, f16 on CUDA), f32, f16, bf16.
    #[arg(long, env = "QEMBED_DTYPE", default_value = "auto")]
    dtype: DTypeChoice,
    /// Quantize the linear layers at load: none or int8 (CPU only; auto then loads bf16).
    #[arg(long, env = "QEMBED_QUANTIZE", default_value = "none")]
    quantize: Quantize,
    /// Batch shapes, comma-separated: BxL (B sequences of L tokens, one forward pass)
    /// or mixed (16 sequences of 8 to 349 tokens, 2693 in all: benches/forward's list).
    #[arg(long, value_delimiter = ',', value_parser = parse_batch,
          default_value = "1x16,32x128,8x512,mixed")]
    batches: Vec<BatchShape>,
    /// Timed runs of each batch shape, after one untimed warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Write the checkpoint to DIR and keep it (e.g. for `qembed serve --model-path
    /// DIR`). `tiny` gets the fixture's tokenizer; for the other shapes add a Qwen3
    /// tokenizer.json and tokenizer_config.json before serving. DIR must be new or empty.
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    /// One JSON object per batch shape on stdout (the header goes to stderr).
    #[arg(long)]
    json: bool,
}

/// The result of one batch shape.
#[derive(Debug, Serialize)]
struct Row {
    model: &'static str,
    device: String,
    dtype: String,
    /// `none` or `int8` (`--quantize`).
    quantize: String,
    kernel: String,
    batch: String,
    sequences: usize,
    tokens: usize,
    repeats: usize,
    /// Median over the repeats, then the slowest and fastest.
    tokens_per_s: f64,
    tokens_per_s_min: f64,
    tokens_per_s_max: f64,
    /// Median wall seconds of one forward pass.
    wall_s: f64,
    /// Median CPU seconds of one forward pass, all threads (CPU only).
    cpu_s: Option<f64>,
    /// Median tokens per CPU-second (CPU only).
    tokens_per_cpu_s: Option<f64>,
    /// The model's arithmetic (`mfu::forward_flops`) over the median wall time.
    model_tflops: f64,
    /// The device's peak (GPUs only) and where the figure comes from.
    peak_tflops: Option<f64>,
    peak_source: Option<String>,
    /// Model FLOPs utilisation: model_tflops / peak_tflops.
    mfu: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let shape = args.shape;
    if let Some(b) = args
        .batches
        .iter()
        .find(|b| b.lengths.iter().any(|&l| l > shape.max_position_embeddings))
    {
        bail!(
            "batch {} is longer than the {} shape's {} positions",
            b.name,
            shape.name,
            shape.max_position_embeddings
        );
    }
    let dtype = args.dtype.resolve_for(args.device, args.quantize);
    check_memory(&shape, dtype, args.device)?;

    let temp;
    let dir = match &args.save {
        Some(dir) => {
            refuse_non_empty(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("qembed-bench-")
                .tempdir()
                .context("creating a temporary directory for the checkpoint")?;
            temp.path().to_path_buf()
        }
    };
    let (embed, rest) = shape.params();
    eprintln!(
        "writing a random-weight {} checkpoint ({:.1} M parameters, {:.1} MB in bf16) to {}",
        shape.name,
        (embed + rest) as f64 / 1e6,
        ((embed + rest) * synth::STORED_BYTES) as f64 / 1e6,
        dir.display()
    );
    let started = Instant::now();
    synth::write_checkpoint(&shape, &dir, SEED)?;
    let written = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let model = Backend::load_quantized(&dir, args.device, dtype, args.quantize, 1)
        .with_context(|| format!("loading {}", dir.display()))?;
    eprintln!(
        "written in {written:.1} s, loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let kernel = model
        .cpu_kernel()
        .map_or_else(|| args.device.to_string(), str::to_string);
    let peak = gpu_peak(args.device, dtype)?;
    let header = format!(
        "qembed bench: {} shape, random weights, {}{} on {}, kernel {kernel}\n{}",
        shape.name,
        dtype_name(dtype),
        match args.quantize {
            Quantize::None => String::new(),
            q => format!(" quantized {q}"),
        },
        args.device,
        if args.device.is_cpu() {
            format!("cpu: {}", host::cpu_description())
        } else {
            format!(
                "gpu: {}",
                host::gpu_names().unwrap_or_else(|| "unknown".into())
            )
        }
    );
    if args.json {
        eprintln!("{header}");
    } else {
        println!("{header}");
        if let Some(p) = &peak {
            println!("peak {:.1} TFLOP/s ({})", p.tflops, p.source);
        }
        println!(
            "{:<10} {:>5} {:>7} {:>12} {:>23} {:>9} {:>9} {:>12} {:>9} {:>6}",
            "batch",
            "seqs",
            "tokens",
            "tokens/s",
            "(min .. max)",
            "wall s",
            "cpu s",
            "tok/cpu-s",
            "TFLOP/s",
            "MFU"
        );
    }
    for batch in &args.batches {
        let row = measure(&model, batch, &args, dtype, &kernel, peak.as_ref())?;
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            print_row(&row);
        }
    }
    if let Some(dir) = &args.save {
        eprintln!("checkpoint kept in {}", dir.display());
    }
    Ok(())
}

/// One warm-up, then `repeats` timed forward passes of `batch`.
fn measure(
    model: &Backend,
    batch: &BatchShape,
    args: &BenchArgs,
    dtype: DType,
    kernel: &str,
    peak: Option<&mfu::Peak>,
) -> Result<Row> {
    let packed = PackedBatch::new(&batch.ids(model.config().vocab_size));
    let tokens = packed.num_tokens();
    model
        .embed(&packed)
        .with_context(|| format!("batch {}", batch.name))?;
    let mut walls = Vec::with_capacity(args.repeats);
    let mut cpus = Vec::with_capacity(args.repeats);
    for _ in 0..args.repeats {
        let (wall, cpu) = (Instant::now(), host::cpu_seconds());
        // The vectors come back to the host, so a GPU pass is complete when this returns.
        model
            .embed(&packed)
            .with_context(|| format!("batch {}", batch.name))?;
        cpus.push(host::cpu_seconds() - cpu);
        walls.push(wall.elapsed().as_secs_f64());
    }
    let rates: Vec<f64> = walls.iter().map(|w| tokens as f64 / w).collect();
    let cpu_rates: Vec<f64> = cpus.iter().map(|c| tokens as f64 / c).collect();
    let on_cpu = args.device.is_cpu();
    let wall = median(&walls);
    let model_tflops = mfu::forward_flops(&args.shape, &batch.lengths) / wall / 1e12;
    Ok(Row {
        model: args.shape.name,
        device: args.device.to_string(),
        dtype: dtype_name(dtype),
        quantize: args.quantize.to_string(),
        kernel: kernel.to_string(),
        batch: batch.name.clone(),
        sequences: packed.num_seqs(),
        tokens,
        repeats: args.repeats,
        tokens_per_s: median(&rates),
        tokens_per_s_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        tokens_per_s_max: rates.iter().copied().fold(0.0, f64::max),
        wall_s: wall,
        cpu_s: on_cpu.then(|| median(&cpus)),
        tokens_per_cpu_s: on_cpu.then(|| median(&cpu_rates)),
        model_tflops,
        peak_tflops: peak.map(|p| p.tflops),
        peak_source: peak.map(|p| p.source.clone()),
        mfu: peak.map(|p| model_tflops / p.tflops),
    })
}

/// The peak MFU is measured against on a GPU: the datasheet's for the device's name
/// (from CUDA), else a matmul measured on the device. None on the CPU, whose peaks
/// `benches/forward`'s `qembed-bench-peak` measures per instruction.
fn gpu_peak(device: DeviceSpec, dtype: DType) -> Result<Option<mfu::Peak>> {
    if device.is_cpu() {
        return Ok(None);
    }
    if let Some(p) = device.gpu_name().and_then(|n| mfu::table_peak(&n, dtype)) {
        return Ok(Some(p));
    }
    let dev = device
        .device(0)
        .context("opening the device for the peak matmul")?;
    mfu::measured_peak(&dev, dtype, 8192).map(Some)
}

/// `--save` must not overwrite anything: pointed at a real checkpoint by mistake, it
/// would replace its config and weights with random ones.
fn refuse_non_empty(dir: &std::path::Path) -> Result<()> {
    let occupied = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        bail!(
            "--save {}: the directory is not empty (it would be overwritten); name a new one",
            dir.display()
        );
    }
    Ok(())
}

/// Refuses a CPU run whose weights alone would not fit in available memory, rather
/// than letting the kernel kill the process half-way through loading.
fn check_memory(shape: &Shape, dtype: DType, device: DeviceSpec) -> Result<()> {
    if !device.is_cpu() {
        return Ok(());
    }
    let need = shape.cpu_weight_bytes(dtype.size_in_bytes()) as u64;
    let gb = |b: u64| b as f64 / 1e9;
    match host::mem_available() {
        Some(avail) if need > avail => bail!(
            "the {} shape in {} needs about {:.1} GB for its weights, but only {:.1} GB is \
             available (MemAvailable); try --dtype bf16 or a smaller --shape",
            shape.name,
            dtype_name(dtype),
            gb(need),
            gb(avail)
        ),
        Some(avail) => eprintln!(
            "weights need about {:.2} GB of memory ({:.1} GB available), activations extra",
            gb(need),
            gb(avail)
        ),
        None => eprintln!(
            "weights need about {:.2} GB of memory (could not read MemAvailable)",
            gb(need)
        ),
    }
    Ok(())
}

fn print_row(r: &Row) {
    let opt = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
    };
    println!(
        "{:<10} {:>5} {:>7} {:>12.1} {:>23} {:>9.4} {:>9} {:>12} {:>9.2} {:>6}",
        r.batch,
        r.sequences,
        r.tokens,
        r.tokens_per_s,
        format!("({:.1} .. {:.1})", r.tokens_per_s_min, r.tokens_per_s_max),
        r.wall_s,
        opt(r.cpu_s, 4),
        opt(r.tokens_per_cpu_s, 1),
        r.model_tflops,
        r.mfu
            .map_or_else(|| "-".to_string(), |m| format!("{:.1}%", m * 100.0))
    );
}

/// The middle value (the mean of the middle two for an even count).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
