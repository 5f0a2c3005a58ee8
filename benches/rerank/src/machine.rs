//! What the figures were measured on: the CPU's model and SIMD flags from
//! /proc/cpuinfo, and which kernels qembed-model picks on it.
//!
//! qembed-model does not report its kernel choice, so `kernel_set` restates its rules
//! from the same inputs it uses: bf16 linear layers and attention run on its own AMX
//! tile kernels when the CPU has AMX-BF16/AMX-TILE and `QEMBED_AMX` does not turn them
//! off (Linux must also grant the tile state, which this cannot see); otherwise the
//! linear layers are candle's CPU matmul, or MKL's with the `mkl` feature for f32.
//! The fused loops between GEMMs (norms, rope, softmax, SwiGLU) are compiled for
//! AVX-512 and AVX2+FMA and picked at run time.

use serde_json::{json, Value};

/// The SIMD features that change which kernels run, in the order they are reported.
const SIMD_FLAGS: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512vl",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
];

pub struct Cpu {
    pub model: String,
    flags: Vec<String>,
}

impl Cpu {
    /// The first processor's entry of /proc/cpuinfo (empty where there is none).
    pub fn read() -> Self {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        Self {
            model: field("model name"),
            flags: field("flags")
                .split_whitespace()
                .map(String::from)
                .collect(),
        }
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The kernel-relevant flags this CPU has.
    pub fn simd_flags(&self) -> Vec<&'static str> {
        SIMD_FLAGS.iter().copied().filter(|f| self.has(f)).collect()
    }
}

fn amx_enabled(cpu: &Cpu) -> bool {
    let off = std::env::var("QEMBED_AMX").is_ok_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "0" | "false" | "off" | "no"
        )
    });
    !off && cpu.has("amx_tile") && cpu.has("amx_bf16")
}

/// The kernels a forward pass in `dtype` uses on `cpu` with this build.
pub fn kernel_set(cpu: &Cpu, dtype: &str) -> Value {
    let bf16 = dtype.eq_ignore_ascii_case("bf16");
    let amx = bf16 && amx_enabled(cpu);
    let linear = if amx {
        "qembed AMX tiles (bf16)"
    } else if cfg!(feature = "mkl") && !bf16 {
        "MKL sgemm"
    } else if cfg!(feature = "mkl") {
        "MKL cblas_gemm_bf16bf16f32"
    } else {
        "candle CPU matmul"
    };
    let fused = if cpu.has("avx512f") && cpu.has("avx512vl") {
        "avx512"
    } else if cpu.has("avx2") && cpu.has("fma") {
        "avx2+fma"
    } else {
        "baseline x86-64"
    };
    json!({
        "linear": linear,
        "attention": if amx {
            "qembed AMX tiles, f32 softmax"
        } else if cfg!(feature = "mkl") {
            "qembed cpu_ops, f32 (MKL sgemm)"
        } else {
            "qembed cpu_ops, f32 (gemm crate)"
        },
        "fused_loops": fused,
        "mkl_feature": cfg!(feature = "mkl"),
        "source": "inferred by the bench from CPU flags, QEMBED_AMX and build features",
    })
}

/// The 1, 5 and 15 minute load averages when the run ended: other work on the machine.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
