//! The physical limit and how close the GEMM kernels come to it: this machine's peak
//! `VDPBF16PS` and FMA throughput per thread (a loop of independent instructions, no
//! loads), then each CPU GEMM kernel built in and runnable here at the linear-layer
//! shapes of Qwen3-Embedding-0.6B, as GFLOP/s and as a fraction of the peak of the
//! instruction it is built on, at the threads rayon runs (`RAYON_NUM_THREADS`).
//!
//! One JSON line per measurement; the first names the CPU, its flags and the threads.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use qembed_model::{cpu_kernels, BenchLinear, DType, Device};

#[derive(Parser)]
struct Args {
    /// Rows (tokens) of the GEMMs: 512 is a full batch, 16 one short input.
    #[arg(long, value_delimiter = ',', default_value = "16,512")]
    rows: Vec<usize>,
    /// Seconds per measurement (at least one run).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Only these kernels (comma-separated names; default: every one that runs here).
    #[arg(long, value_delimiter = ',')]
    kernels: Vec<String>,
    /// Only these weight dtypes of each kernel (f32, bf16; default: both).
    #[arg(long, value_delimiter = ',')]
    dtypes: Vec<String>,
}

/// `(name, out, in)` of the 0.6B shape's linear layers, fused as the model runs them.
const LAYERS: [(&str, usize, usize); 4] = [
    ("qkv", 4096, 1024),
    ("o", 1024, 2048),
    ("gate_up", 6144, 1024),
    ("down", 1024, 3072),
];

/// Independent accumulators per loop: more than latency x throughput of either
/// instruction on current cores, fewer than the 16/32 vector registers.
const CHAINS: usize = 12;
/// Loop trips per call.
const TRIPS: u64 = 1 << 22;

#[cfg(target_arch = "x86_64")]
mod loops {
    use std::arch::x86_64::*;

    use super::{CHAINS, TRIPS};

    /// `TRIPS * CHAINS` `VDPBF16PS zmm`: 64 flops each. Returns a sum so nothing is
    /// optimised away.
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(seed: f32) -> f32 {
        let a: __m512bh = _mm512_cvtne2ps_pbh(_mm512_set1_ps(seed), _mm512_set1_ps(seed));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..TRIPS {
            for acc in &mut acc {
                *acc = _mm512_dpbf16_ps(*acc, a, a);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    /// `TRIPS * CHAINS` `VPDPBUSD zmm`: 64 multiply-adds, 128 integer ops, each.
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512_VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn dpbusd(seed: f32) -> f32 {
        let a = _mm512_set1_epi32((seed * 1e3) as i32 | 0x0101_0101);
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..TRIPS {
            for acc in &mut acc {
                *acc = _mm512_dpbusd_epi32(*acc, a, a);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_epi32(v) as f32).sum()
    }

    /// `TRIPS * CHAINS` VEX `VPDPBUSD ymm` (AVX-VNNI): 32 multiply-adds, 64 integer ops,
    /// each.
    ///
    /// # Safety
    /// The CPU must have AVX2 and AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn dpbusd256(seed: f32) -> f32 {
        let a = _mm256_set1_epi32((seed * 1e3) as i32 | 0x0101_0101);
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..TRIPS {
            for acc in &mut acc {
                *acc = _mm256_dpbusd_avx_epi32(*acc, a, a);
            }
        }
        let mut out = [0i32; 8];
        let sum = acc
            .iter()
            .fold(_mm256_setzero_si256(), |s, &v| _mm256_add_epi32(s, v));
        // SAFETY: `out` holds 8 i32.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), sum) };
        out.iter().map(|&v| v as f32).sum()
    }

    /// `TRIPS * CHAINS` `VFMADD231PS zmm`: 32 flops each.
    ///
    /// # Safety
    /// The CPU must have AVX512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(seed: f32) -> f32 {
        let a = _mm512_set1_ps(seed);
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..TRIPS {
            for acc in &mut acc {
                *acc = _mm512_fmadd_ps(a, a, *acc);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    /// `TRIPS * CHAINS` `VFMADD231PS ymm`: 16 flops each.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(seed: f32) -> f32 {
        let a = _mm256_set1_ps(seed);
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..TRIPS {
            for acc in &mut acc {
                *acc = _mm256_fmadd_ps(a, a, *acc);
            }
        }
        let mut out = [0f32; 8];
        let sum = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
        // SAFETY: `out` holds 8 f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }
}

/// Peak GFLOP/s of one thread for each instruction this CPU has: `(name, GFLOP/s)`.
#[cfg(target_arch = "x86_64")]
fn peaks() -> Vec<(&'static str, f64)> {
    let run = |flops_per: f64, f: &dyn Fn(f32) -> f32| {
        f(1e-3); // warm-up: clocks and the upper halves of the vector units
        let t = Instant::now();
        let sink = f(1e-3);
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        (TRIPS * CHAINS as u64) as f64 * flops_per / secs / 1e9
    };
    let mut out = Vec::new();
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16") {
        // SAFETY: both features were just detected.
        out.push(("vdpbf16ps_zmm", run(64.0, &|s| unsafe { loops::dpbf16(s) })));
    }
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni") {
        // SAFETY: both features were just detected.
        out.push(("vpdpbusd_zmm", run(128.0, &|s| unsafe { loops::dpbusd(s) })));
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni") {
        // SAFETY: both features were just detected.
        out.push((
            "vpdpbusd_ymm",
            run(64.0, &|s| unsafe { loops::dpbusd256(s) }),
        ));
    }
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: detected.
        out.push(("fma_zmm", run(32.0, &|s| unsafe { loops::fma512(s) })));
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: detected.
        out.push(("fma_ymm", run(16.0, &|s| unsafe { loops::fma256(s) })));
    }
    out
}

#[cfg(not(target_arch = "x86_64"))]
fn peaks() -> Vec<(&'static str, f64)> {
    Vec::new()
}

/// The instruction a kernel's arithmetic runs on, for its fraction of peak.
fn instruction(kernel: &str, dtype: DType) -> Option<&'static str> {
    match (kernel, dtype) {
        ("avx512bf16", _) => Some("vdpbf16ps_zmm"),
        ("avx512vnni", _) => Some("vpdpbusd_zmm"),
        ("avxvnni", _) => Some("vpdpbusd_ymm"),
        ("avx512", _) => Some("fma_zmm"),
        ("avx2", _) => Some("fma_ymm"),
        _ => None,
    }
}

fn cpu_line() -> serde_json::Value {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let wanted = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "avx_vnni",
        "amx_bf16",
        "amx_int8",
    ];
    let flags: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|f| field("flags").split_whitespace().any(|x| x == *f))
        .collect();
    serde_json::json!({"cpu": field("model name"), "family": field("cpu family"),
                       "model": field("model\t"), "flags": flags,
                       "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                       "rayon_threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default()})
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("{}", cpu_line());
    let peaks = peaks();
    for (name, gflops) in &peaks {
        println!(
            "{}",
            serde_json::json!({"peak": name, "gflops_per_thread": gflops})
        );
    }
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    for kernel in cpu_kernels() {
        let named = |list: &[String], name: &str| list.is_empty() || list.iter().any(|n| n == name);
        if kernel.unavailable.is_some() || !named(&args.kernels, kernel.name) {
            continue;
        }
        for &dtype in &kernel.dtypes {
            let dtype_name = format!("{dtype:?}").to_lowercase();
            if dtype == DType::F16 || !named(&args.dtypes, &dtype_name) {
                continue;
            }
            for &m in &args.rows {
                let (mut flops, mut secs) = (0f64, 0f64);
                for (i, &(_, n, k)) in LAYERS.iter().enumerate() {
                    let w = seeded(n * k, 1 + i as u64, (n, k))?.to_dtype(dtype)?;
                    let layer = BenchLinear::new(kernel.name, w)?;
                    let x = seeded(m * k, 100 + i as u64, (m, k))?;
                    layer.forward(&x)?; // warm-up
                    let (started, mut runs) = (Instant::now(), 0u32);
                    while runs == 0 || started.elapsed().as_secs_f64() < args.seconds / 4.0 {
                        std::hint::black_box(layer.forward(&x)?);
                        runs += 1;
                    }
                    secs += started.elapsed().as_secs_f64() / f64::from(runs);
                    flops += 2.0 * (m * n * k) as f64;
                }
                let gflops = flops / secs / 1e9;
                let peak = instruction(kernel.name, dtype)
                    .and_then(|i| peaks.iter().find(|(name, _)| *name == i))
                    .map(|&(name, g)| (name, g * threads as f64));
                println!(
                    "{}",
                    serde_json::json!({"kernel": kernel.name, "dtype": dtype_name,
                                       "rows": m, "layers": "qkv,o,gate_up,down (0.6B)",
                                       "gflops": gflops,
                                       "peak": peak.map(|p| p.0), "peak_gflops": peak.map(|p| p.1),
                                       "fraction_of_peak": peak.map(|p| gflops / p.1)})
                );
            }
        }
    }
    Ok(())
}

/// A `[rows, cols]` f32 tensor of values in [-0.5, 0.5) from `seed`.
fn seeded(len: usize, seed: u64, shape: (usize, usize)) -> Result<qembed_model::Tensor> {
    let mut s = seed;
    let v: Vec<f32> = (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    Ok(qembed_model::Tensor::from_vec(v, shape, &Device::Cpu)?)
}
