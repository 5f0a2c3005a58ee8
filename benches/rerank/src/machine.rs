//! What the figures were measured on: the CPU's model and SIMD flags from
//! /proc/cpuinfo, and the kernels qembed-model runs there: the linear layers' kernel as
//! the loaded model reports it, attention as that kernel runs it (bf16 on AMX tiles
//! for `amx` and `amx-int8`, f32 otherwise), and the fused loops between GEMMs (norms,
//! rope, softmax, SwiGLU), compiled for AVX-512 and AVX2+FMA and picked at run time.

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

/// The kernels a forward pass uses: the linear layers' CPU kernel as the model reports
/// it (`kernel`, `Backend::cpu_kernel`), attention's products as that kernel runs them,
/// and the fused element-wise loops' instruction set from the CPU flags.
pub fn kernel_set(cpu: &Cpu, kernel: Option<&str>) -> Value {
    let attention = match kernel {
        Some("amx" | "amx-int8") => "bf16 on AMX tiles, f32 softmax",
        Some(_) => "f32 (cpu_ops)",
        None => "not on the CPU",
    };
    let fused = if cpu.has("avx512f") && cpu.has("avx512vl") {
        "avx512"
    } else if cpu.has("avx2") && cpu.has("fma") {
        "avx2+fma"
    } else {
        "baseline x86-64"
    };
    json!({
        "linear": kernel,
        "attention": attention,
        "fused_loops": fused,
        "mkl_feature": cfg!(feature = "mkl"),
        "source": "linear: the loaded model's cpu_kernel; attention and fused loops follow from it and the CPU flags",
    })
}

/// The 1, 5 and 15 minute load averages when the run ended: other work on the machine.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
