//! The GEMM kernels of the CPU backend, one module per instruction set, behind one
//! trait, and the choice among them, made once when a model loads.
//!
//! A kernel owns the form its weights take (`prepare` packs them at load, and the
//! packed copy is the only one kept), runs a linear layer with a prologue applied to
//! the input rows as it reads them (RMSNorm, SwiGLU), and says how attention's two
//! products run on it. Adding an instruction set is one module here and one line in
//! [`BUILT`].

use std::any::Any;

use candle_core::{DType, Device, Tensor};

use super::attention::AttentionProducts;
use crate::{ModelError, Quantize, Result};

#[cfg(amx)]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
#[cfg(target_arch = "x86_64")]
mod bf16;
#[cfg(target_arch = "x86_64")]
mod blocking;
mod int8;
#[cfg(feature = "mkl")]
pub mod mkl;
mod op;
#[cfg(target_arch = "x86_64")]
mod panels;
mod portable;
mod portable_int8;
mod prologue;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub(crate) use int8::{column_max_abs, QuantizedRows};
pub(crate) use prologue::Prologue;

/// Why a CPU without some of `features` (detected, name) cannot run a kernel; `None`
/// when it has them all.
#[cfg(target_arch = "x86_64")]
fn lacking(features: &[(bool, &str)]) -> Option<String> {
    let missing: Vec<&str> = features
        .iter()
        .filter(|&&(has, _)| !has)
        .map(|&(_, name)| name)
        .collect();
    (!missing.is_empty()).then(|| format!("this CPU lacks {}", missing.join(", ")))
}

/// `prologue(x)` as a tensor of its own (the fused CPU op), for callers that need the
/// input a kernel would see.
pub(crate) fn apply_prologue(x: &Tensor, prologue: Prologue) -> candle_core::Result<Tensor> {
    portable::with_prologue(x, prologue)
}

/// A linear layer's `[out, in]` weight in the form its kernel reads (a tensor, packed
/// tiles, ...): opaque to the model, taken apart only by the kernel that made it.
pub(crate) struct PreparedWeight {
    kernel: &'static str,
    form: Box<dyn Any + Send + Sync>,
}

impl PreparedWeight {
    pub(crate) fn new<T: Any + Send + Sync>(kernel: &'static str, form: T) -> Self {
        Self {
            kernel,
            form: Box::new(form),
        }
    }

    /// The form kernel `kernel` made; an error if another kernel prepared it.
    pub(crate) fn form<T: Any>(&self, kernel: &'static str) -> candle_core::Result<&T> {
        match self.form.downcast_ref() {
            Some(form) if self.kernel == kernel => Ok(form),
            _ => candle_core::bail!(
                "a weight prepared by the {} kernel given to the {kernel} kernel",
                self.kernel
            ),
        }
    }
}

/// One GEMM kernel family for CPUs.
pub(crate) trait Gemm: Send + Sync {
    /// The name `QEMBED_CPU_KERNEL` takes and logs and `/info` show.
    fn name(&self) -> &'static str;

    /// Why this CPU (or process) cannot run the kernel; `None` when it can.
    fn unavailable(&self) -> Option<String>;

    /// Whether the choice at load may take this kernel on this CPU when it runs here:
    /// false where a kernel after it in [`BUILT`] was measured faster on this kind of
    /// CPU although this one runs (`QEMBED_CPU_KERNEL` still forces it).
    fn preferred_here(&self) -> bool {
        true
    }

    /// Whether the kernel runs linear layers whose weights are `dtype` (as loaded:
    /// an int8 kernel quantizes them in [`prepare`](Self::prepare)).
    fn supports(&self, dtype: DType) -> bool;

    /// The form the kernel holds the weights in: what `--quantize` must say for the
    /// kernel to be chosen.
    fn quantize(&self) -> Quantize {
        Quantize::None
    }

    /// A `[out, in]` weight in the kernel's form: called once per layer at load.
    fn prepare(&self, weight: Tensor) -> Result<PreparedWeight>;

    /// A `[out, in]` weight whose activations reach `act_max` (`in` long) per input
    /// channel, smoothed by the int8 rule (`int8`) as it is prepared. Only the int8
    /// kernels smooth; the others refuse.
    fn prepare_smoothed(&self, weight: Tensor, act_max: &[f32]) -> Result<PreparedWeight> {
        let _ = (weight, act_max);
        Err(ModelError::CpuKernel(format!(
            "the {} kernel does not take smoothed weights",
            self.name()
        )))
    }

    /// `prologue(x) @ W.T` for a 2-D f32 `x`, f32 out.
    fn linear(&self, x: &Tensor, weight: &PreparedWeight, prologue: Prologue) -> Result<Tensor>;

    /// `swiglu(prologue(x) @ W.T)` for a gate_up weight (`2 k` output rows: the gate's
    /// `k`, then the up's): f32 `[m, k]`, the SwiGLU applied to each output block while
    /// it is in cache, so that the `2 k`-wide product is never written to memory and
    /// read back (at 4096 tokens of the 0.6B shape, 96 MiB a layer each way; the down
    /// projection then reads half that, with no prologue). `None` where the kernel does
    /// not fuse it for this weight: the caller runs [`linear`](Self::linear) and gives
    /// the next layer a SwiGLU prologue. The same bits either way.
    fn linear_swiglu(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<Result<Tensor>> {
        let _ = (x, weight, prologue);
        None
    }

    /// `out += prologue(x) @ W.T` in place, `out` the f32 `[m, out]` residual stream:
    /// each output block added as it is finished, so that the product is not written
    /// to memory as a tensor of its own and read back by an add (16 MiB each way per
    /// add at 4096 tokens of the 0.6B shape, two adds a layer). `None` where the kernel
    /// does not fuse it; the caller then adds. The same bits either way.
    fn linear_add(
        &self,
        out: &Tensor,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<Result<()>> {
        let _ = (out, x, weight, prologue);
        None
    }

    /// How attention's products run for a model on this kernel.
    fn attention(&self) -> AttentionProducts {
        portable::ATTENTION
    }
}

/// Whether a gate_up weight of `n` output rows splits into a gate and an up half that
/// are whole panels of `cols` columns each (what the kernels that fuse SwiGLU need).
pub(super) fn swiglu_halves(n: usize, cols: usize) -> bool {
    n.is_multiple_of(2) && n > 0 && (n / 2).is_multiple_of(cols)
}

/// The kernels built into this binary, best first: the first one that the CPU can run,
/// that holds the weights in the form `--quantize` asks for and that supports the
/// weights' dtype is chosen.
static BUILT: &[&dyn Gemm] = &[
    #[cfg(amx)]
    amx::AMX,
    #[cfg(target_arch = "x86_64")]
    avx512bf16::AVX512BF16,
    #[cfg(feature = "mkl")]
    &mkl::MKL,
    #[cfg(target_arch = "x86_64")]
    &avx512::AVX512,
    #[cfg(target_arch = "x86_64")]
    &avx2::AVX2,
    &portable::PORTABLE,
    #[cfg(amx)]
    amx::AMX_INT8,
    #[cfg(target_arch = "x86_64")]
    vnni::AVX512VNNI,
    #[cfg(target_arch = "x86_64")]
    vnni::AVXVNNI,
    &portable_int8::PORTABLE_INT8,
    // The instruction-set kernels again, on the software models of their instructions:
    // `--features software-models` only, so that the model-level tests (parity with
    // transformers, int8 quality) run every kernel's packing, tiling and attention on
    // CPUs without the instructions. Last, below the portable kernels, so that none is
    // ever chosen unless named.
    #[cfg(all(amx, feature = "software-models"))]
    amx::AMX_MODEL,
    #[cfg(all(target_arch = "x86_64", feature = "software-models"))]
    avx512bf16::AVX512BF16_MODEL,
    #[cfg(all(amx, feature = "software-models"))]
    amx::AMX_INT8_MODEL,
    #[cfg(all(target_arch = "x86_64", feature = "software-models"))]
    vnni::AVX512VNNI_MODEL,
    #[cfg(all(target_arch = "x86_64", feature = "software-models"))]
    vnni::AVXVNNI_MODEL,
];

/// Every kernel name `QEMBED_CPU_KERNEL` may name, built here or not.
const KNOWN: &[&str] = &[
    "amx",
    "avx512bf16",
    "avx512",
    "avx2",
    "mkl",
    "portable",
    "amx-int8",
    "avx512vnni",
    "avxvnni",
    "portable-int8",
    "amx-model",
    "avx512bf16-model",
    "amx-int8-model",
    "avx512vnni-model",
    "avxvnni-model",
];

/// The environment variable that forces one kernel.
pub(crate) const FORCE_VAR: &str = "QEMBED_CPU_KERNEL";

/// A GEMM kernel built into this binary, as the CPU it runs on sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuKernelInfo {
    /// What `QEMBED_CPU_KERNEL` and [`Qwen3Embedding::cpu_kernel`](crate::Qwen3Embedding::cpu_kernel) call it.
    pub name: &'static str,
    /// The weight dtypes it runs (of f32, bf16, f16).
    pub dtypes: Vec<DType>,
    /// The form it holds the weights in (int8 kernels quantize them at load).
    pub quantize: Quantize,
    /// Why it cannot run here (missing instructions, a library that did not load);
    /// `None` when it can.
    pub unavailable: Option<String>,
    /// Whether attention's two products run as bf16 products on a kernel's tiles (AMX,
    /// AVX512_BF16) rather than in f32: kernels that differ here differ beyond their
    /// GEMMs.
    pub bf16_attention: bool,
    /// How attention's products run (`f32`: the portable product; `f32-avx512`,
    /// `f32-mkl`, `bf16-amx`, `bf16-avx512bf16`, and the software models' `bf16-amx-model`,
    /// `bf16-avx512bf16-model`): kernels with the same name compute attention alike.
    pub attention: &'static str,
}

/// Every GEMM kernel built into this binary, best first, and whether this CPU runs
/// it: for logs, `/info`, and tests that must say which kernels they could not test.
pub fn cpu_kernels() -> Vec<CpuKernelInfo> {
    BUILT
        .iter()
        .map(|k| CpuKernelInfo {
            name: k.name(),
            dtypes: [DType::F32, DType::BF16, DType::F16]
                .into_iter()
                .filter(|&d| k.supports(d))
                .collect(),
            quantize: k.quantize(),
            unavailable: k.unavailable(),
            bf16_attention: matches!(k.attention(), AttentionProducts::PerGroup(..)),
            attention: k.attention().name(),
        })
        .collect()
}

/// One linear layer on a named CPU kernel outside a model, for the GEMM
/// micro-benchmark (`benches/forward`, `qembed-bench-peak`): the weight prepared as a
/// model load would, `x @ W.T` as the model's layers run it. Not a serving API.
#[doc(hidden)]
pub struct BenchLinear {
    kernel: &'static dyn Gemm,
    weight: PreparedWeight,
}

impl BenchLinear {
    /// `weight` (`[out, in]`, in the dtype to run) prepared for kernel `kernel`, which
    /// must run here and support that dtype (an int8 kernel quantizes it).
    pub fn new(kernel: &str, weight: Tensor) -> Result<Self> {
        let quantize = BUILT
            .iter()
            .find(|k| k.name() == kernel)
            .map_or(Quantize::None, |k| k.quantize());
        let kernel = select(weight.dtype(), quantize, &Device::Cpu, Some(kernel))?;
        Ok(Self {
            kernel,
            weight: kernel.prepare(weight)?,
        })
    }

    /// `x @ W.T` for a 2-D f32 `x`, f32 out.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.kernel.linear(x, &self.weight, Prologue::None)
    }
}

/// The kernel for a model whose linear layers are `dtype` on `device`, held as
/// `quantize` says: `forced` (or else `QEMBED_CPU_KERNEL`) when given, which must
/// exist, run on this CPU, hold weights that way and support `dtype`; otherwise the best
/// built kernel that can. On other devices, candle's matmul there (`portable`), and no
/// quantization.
pub(crate) fn select(
    dtype: DType,
    quantize: Quantize,
    device: &Device,
    forced: Option<&str>,
) -> Result<&'static dyn Gemm> {
    if !device.is_cpu() {
        if quantize != Quantize::None {
            return Err(ModelError::CpuKernel(format!(
                "--quantize {quantize} runs on CPU only for now; serve without it on this device"
            )));
        }
        return Ok(&portable::PORTABLE);
    }
    let from_env = std::env::var(FORCE_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let Some(name) = forced.map(str::to_string).or(from_env) else {
        return Ok(best(dtype, quantize));
    };
    let name = name.trim().to_ascii_lowercase();
    let err = |why: String| ModelError::CpuKernel(format!("{FORCE_VAR}={name}: {why}"));
    let Some(kernel) = BUILT.iter().copied().find(|k| k.name() == name) else {
        return Err(err(if KNOWN.contains(&name.as_str()) {
            "this build of qembed has no such kernel".into()
        } else {
            format!("unknown kernel; one of {}", KNOWN.join(", "))
        }));
    };
    if let Some(why) = kernel.unavailable() {
        return Err(err(why));
    }
    if kernel.quantize() != quantize {
        return Err(err(format!(
            "the kernel holds {} weights, and --quantize is {quantize}",
            match kernel.quantize() {
                Quantize::None => "unquantized",
                Quantize::Int8 => "int8",
            }
        )));
    }
    if !kernel.supports(dtype) {
        return Err(err(format!("the kernel does not run {dtype:?} weights")));
    }
    Ok(kernel)
}

/// The best built kernel this CPU runs for weights loaded as `dtype` and held as
/// `quantize`, whatever `QEMBED_CPU_KERNEL` says (the portable ones run everywhere).
pub(crate) fn best(dtype: DType, quantize: Quantize) -> &'static dyn Gemm {
    BUILT
        .iter()
        .copied()
        .find(|k| {
            k.quantize() == quantize
                && k.supports(dtype)
                && k.unavailable().is_none()
                && k.preferred_here()
        })
        .unwrap_or(match quantize {
            Quantize::None => &portable::PORTABLE,
            Quantize::Int8 => &portable_int8::PORTABLE_INT8,
        })
}

/// Whether the tests of kernel `name` can run here. Where they cannot, says so on
/// stderr past the test harness's capture (a line starting `SKIPPED`), or fails when
/// the environment requires the kernel ([`qembed_testkit::kernel_required`]:
/// `QEMBED_REQUIRE_AVX2`, `QEMBED_REQUIRE_AMX`, `QEMBED_REQUIRE_KERNELS=...`).
#[cfg(test)]
pub(crate) fn kernel_or_skip(name: &str) -> bool {
    kernel_or_say(name, |why| {
        format!(
            "SKIPPED: {name} kernel tests ({why}); {} makes this fail",
            qembed_testkit::require_var(name)
        )
    })
}

/// Whether kernel `name`'s real instructions run here, for kernels whose tests also run
/// through a software model of them (AMX, AVX512_BF16): where they do not, says on stderr that the
/// model alone was tested, or fails as [`kernel_or_skip`] does when the kernel is
/// required.
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn kernel_or_model(name: &str) -> bool {
    kernel_or_say(name, |why| {
        format!(
            "{} kernel tested through the software model only: this CPU cannot run its \
             instructions ({why}); {} makes this fail",
            name.to_ascii_uppercase(),
            qembed_testkit::require_var(name)
        )
    })
}

#[cfg(test)]
fn kernel_or_say(name: &str, say: impl FnOnce(&str) -> String) -> bool {
    use std::io::Write;
    let Some(kernel) = BUILT.iter().find(|k| k.name() == name) else {
        panic!("no kernel {name} in this build");
    };
    let Some(why) = kernel.unavailable() else {
        return true;
    };
    assert!(
        !qembed_testkit::kernel_required(name),
        "the {name} kernel is required here, but {why}"
    );
    // Straight to stderr: the harness captures print!/eprint! of passing tests.
    let _ = writeln!(std::io::stderr(), "{}", say(&why));
    false
}

/// `len` pseudo-random values in [-0.5, 0.5) from `seed` (a 64-bit LCG): the kernels'
/// test inputs, the same on every run.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// A kernel's product in a test: `(x, (m, width), prologue)` to `m` rows.
#[cfg(test)]
pub(crate) type TestProduct<'a> = &'a dyn Fn(&[f32], (usize, usize), Prologue) -> Vec<f32>;

/// A kernel's product added in place in a test: `(x, (m, width), prologue, out)`.
#[cfg(test)]
pub(crate) type TestProductAdd<'a> = &'a dyn Fn(&[f32], (usize, usize), Prologue, &mut [f32]);

/// A kernel's fused gate_up product (`fused(x, (m, width), prologue)`: `m x k`) against
/// its plain product of the same weight (`plain`: `m x 2k`) followed by SwiGLU in f32:
/// the same bits, for the input norm and for none, over `rows` counts of input rows
/// `hidden` wide (`named` in failures).
#[cfg(test)]
pub(crate) fn check_fused_swiglu(
    named: &str,
    (k, hidden): (usize, usize),
    rows: &[usize],
    fused: TestProduct,
    plain: TestProduct,
) {
    let norm: Vec<f32> = test_values(hidden, 41).iter().map(|v| 1.0 + v).collect();
    for &m in rows {
        let x: Vec<f32> = test_values(m * hidden, 40 + m as u64);
        for p in [Prologue::None, Prologue::RmsNorm(&norm, 1e-6)] {
            let gate_up = plain(&x, (m, hidden), p);
            let mut want = vec![0f32; m * k];
            for (dst, row) in want.chunks_exact_mut(k).zip(gate_up.chunks_exact(2 * k)) {
                let (gate, up) = row.split_at(k);
                prologue::swiglu_row(dst, gate, up);
            }
            let got = fused(&x, (m, hidden), p);
            assert_eq!(got.len(), want.len(), "{named}: {m} rows");
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{named}: {m} rows of {hidden}, gate_up of 2 x {k}");
        }
    }
}

/// A kernel's product added in place (`fused(x, (m, k), prologue, out)`) against its
/// plain product (`plain`, `m x n`) added to the same residual afterwards: the same
/// bits, for the input norm and for none, over `rows` counts of rows `k` wide.
#[cfg(test)]
pub(crate) fn check_fused_add(
    named: &str,
    (n, k): (usize, usize),
    rows: &[usize],
    fused: TestProductAdd,
    plain: TestProduct,
) {
    let norm: Vec<f32> = test_values(k, 51).iter().map(|v| 1.0 + v).collect();
    for &m in rows {
        let x = test_values(m * k, 50 + m as u64);
        let residual: Vec<f32> = test_values(m * n, 60 + m as u64)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        for p in [Prologue::None, Prologue::RmsNorm(&norm, 1e-6)] {
            let want: Vec<f32> = residual
                .iter()
                .zip(plain(&x, (m, k), p))
                .map(|(r, o)| r + o)
                .collect();
            let mut got = residual.clone();
            fused(&x, (m, k), p, &mut got);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{named}: {m} rows of {k}, {n} columns");
        }
    }
}

#[cfg(test)]
/// The prologue's rows in f64: what an f32 kernel's tests compare it against.#[cfg(test)]
/// The prologue's rows in f64: what an f32 kernel's tests compare it against.
pub(crate) fn reference_rows(x: &[f32], m: usize, k: usize, prologue: Prologue) -> Vec<f64> {
    let mut out = Vec::with_capacity(m * k);
    for r in 0..m {
        match prologue {
            Prologue::None => out.extend(x[r * k..][..k].iter().map(|&v| v as f64)),
            Prologue::RmsNorm(w, eps) => {
                let row = &x[r * k..][..k];
                let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                out.extend(row.iter().zip(w).map(|(&v, &w)| v as f64 * inv * w as f64));
            }
            Prologue::SwiGlu => {
                let (g, u) = x[r * 2 * k..][..2 * k].split_at(k);
                out.extend(g.iter().zip(u).map(|(&g, &u)| {
                    let g = g as f64;
                    g / (1.0 + (-g).exp()) * u as f64
                }));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forced(dtype: DType, name: &str) -> Result<&'static str> {
        select(dtype, Quantize::None, &Device::Cpu, Some(name)).map(|k| k.name())
    }

    #[test]
    fn a_forced_kernel_is_used_or_a_clear_error() {
        assert_eq!(forced(DType::F32, "portable").unwrap(), "portable");
        assert_eq!(forced(DType::BF16, " Portable ").unwrap(), "portable");
        let err = forced(DType::F32, "sse9").unwrap_err().to_string();
        assert!(
            err.contains("unknown kernel") && err.contains("avx2"),
            "{err}"
        );
        // AMX runs bf16 weights only: f32 is refused on every CPU, with or without AMX.
        let err = forced(DType::F32, "amx").unwrap_err().to_string();
        assert!(err.contains("QEMBED_CPU_KERNEL=amx"), "{err}");
    }

    #[test]
    fn the_chosen_kernel_runs_here_and_supports_the_dtype() {
        for quantize in [Quantize::None, Quantize::Int8] {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let k = select(dtype, quantize, &Device::Cpu, None).unwrap();
                assert!(
                    k.supports(dtype) && k.unavailable().is_none() && k.quantize() == quantize,
                    "{}",
                    k.name()
                );
            }
        }
    }

    /// A kernel that runs here but was measured slower on this kind of CPU than one
    /// after it (`avx512bf16` on Intel) is never the choice at load; forcing it works.
    #[test]
    fn the_choice_at_load_passes_over_kernels_not_preferred_here() {
        for quantize in [Quantize::None, Quantize::Int8] {
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                assert!(best(dtype, quantize).preferred_here());
            }
        }
        for k in BUILT
            .iter()
            .filter(|k| k.unavailable().is_none() && !k.preferred_here())
        {
            let dtype = [DType::BF16, DType::F32, DType::F16]
                .into_iter()
                .find(|&d| k.supports(d))
                .unwrap();
            let forced = select(dtype, k.quantize(), &Device::Cpu, Some(k.name())).unwrap();
            assert_eq!(forced.name(), k.name());
        }
    }

    #[test]
    fn int8_takes_an_int8_kernel_and_refuses_the_others() {
        let int8 = |name: &str| {
            select(DType::BF16, Quantize::Int8, &Device::Cpu, Some(name)).map(|k| k.name())
        };
        assert_eq!(int8("portable-int8").unwrap(), "portable-int8");
        let err = int8("portable").unwrap_err().to_string();
        assert!(err.contains("--quantize is int8"), "{err}");
        let err = forced(DType::BF16, "portable-int8")
            .unwrap_err()
            .to_string();
        assert!(err.contains("int8 weights"), "{err}");
        // The best int8 kernel the CPU has: AMX-INT8, else AVX512_VNNI, else AVX-VNNI.
        let best = select(DType::F32, Quantize::Int8, &Device::Cpu, None)
            .unwrap()
            .name();
        #[cfg(amx)]
        if amx::int8_available() {
            assert_eq!(best, "amx-int8");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            assert_eq!(best, "avx512vnni");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avxvnni") {
            assert_eq!(best, "avxvnni");
            return;
        }
        assert_eq!(best, "portable-int8");
    }
}
