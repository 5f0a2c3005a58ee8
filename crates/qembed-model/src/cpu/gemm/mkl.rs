//! Linear layers on CPU through Intel MKL, loaded at run time (feature `mkl`).
//!
//! candle's CPU matmul reaches ~165 GFLOP/s in f32 and converts bf16 to f32 on the way,
//! while MKL's `cblas_gemm_bf16bf16f32` runs bf16 on AVX512-BF16 / AMX where the CPU has
//! them. MKL is opened with dlopen on first use (`QEMBED_MKL` names the library, default
//! `libmkl_rt.so.3` on the loader's path, e.g. from the PyPI `mkl` wheel); when it is
//! absent every linear layer falls back to candle's matmul, so a binary built with the
//! feature still runs anywhere.
//!
//! As a kernel of the CPU family it runs f32 and bf16 weights and is chosen ahead of
//! the others (AMX excepted, for bf16) whenever the library loads: building with the
//! feature is the opt-in. Attention's products run on MKL's sgemm.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::portable::{self, dense, with_prologue};
use super::{Gemm, PreparedWeight, Prologue};
use crate::cpu::attention::AttentionProducts;
use crate::cpu::par::SyncPtr;

pub(super) struct MklGemm;

pub(super) static MKL: MklGemm = MklGemm;

const NAME: &str = "mkl";

impl Gemm for MklGemm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn unavailable(&self) -> Option<String> {
        mkl()
            .is_none()
            .then(|| "MKL did not load (QEMBED_MKL or libmkl_rt.so.3 on the loader's path)".into())
    }

    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::BF16)
    }

    fn prepare(&self, weight: Tensor) -> crate::Result<PreparedWeight> {
        Ok(PreparedWeight::new(NAME, weight))
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> crate::Result<Tensor> {
        let w = weight.form::<Tensor>(NAME)?;
        let x = with_prologue(x, prologue)?;
        Ok(match linear(&x, w)? {
            Some(y) => y,
            None => dense(&x, w)?,
        })
    }

    fn attention(&self) -> AttentionProducts {
        AttentionProducts::PerHead("f32-mkl", strided_gemm)
    }
}

/// Attention's f32 products on one single-threaded MKL sgemm (the `gemm` crate if MKL
/// is not loaded).
///
/// # Safety
/// As [`StridedGemm`](crate::cpu::attention::StridedGemm).
unsafe fn strided_gemm(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (*const f32, usize),
    (b, ldb, b_t): (*const f32, usize, bool),
    (c, ldc): (*mut f32, usize),
) {
    let i = |v: usize| v as i32;
    // SAFETY: the caller's contract, which both GEMMs share.
    unsafe {
        if !sgemm_strided(
            (i(m), i(n), i(k)),
            alpha,
            (a, i(lda)),
            (b, i(ldb), b_t),
            (c, i(ldc)),
        ) {
            portable::strided_gemm((m, n, k), alpha, (a, lda), (b, ldb, b_t), (c, ldc));
        }
    }
}

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// `cblas_sgemm` (`E` = f32) and `cblas_gemm_bf16bf16f32` (`E` = u16, MKL_BF16) share
/// one signature: layout, transposes, m, n, k, alpha, a, lda, b, ldb, beta, c (f32), ldc.
type CblasGemm<E> = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const E,
    i32,
    *const E,
    i32,
    f32,
    *mut f32,
    i32,
);
type Sgemm = CblasGemm<f32>;
type GemmBf16 = CblasGemm<u16>;

struct Mkl {
    _lib: libloading::Library,
    sgemm: Sgemm,
    gemm_bf16: GemmBf16,
}

/// MKL's `MKL_THREADING_SEQUENTIAL`: no OpenMP threads of its own.
const THREADING_SEQUENTIAL: i32 = 1;
/// MKL's `MKL_INTERFACE_LP64`: 32-bit integer arguments.
const INTERFACE_LP64: i32 = 0;
type SetLayer = unsafe extern "C" fn(i32) -> i32;

/// Runs `gemm(n0, cols, out)` over column ranges of an `n`-column output on rayon's
/// threads. MKL runs sequentially, one call per range: the rayon pool that runs every
/// other op also runs the GEMMs, instead of MKL's OpenMP threads spinning while rayon
/// works and the other way round (10% of a forward pass went to that).
fn split_columns(n: usize, gemm: impl Fn(usize, usize) + Sync) {
    let threads = rayon::current_num_threads().max(1);
    // Two ranges a thread for balance, each a multiple of 64 columns (AMX tiles).
    let chunk = n.div_ceil(threads * 2).div_ceil(64) * 64;
    let ranges: Vec<(usize, usize)> = (0..n)
        .step_by(chunk.max(1))
        .map(|n0| (n0, chunk.min(n - n0)))
        .collect();
    ranges.into_par_iter().for_each(|(n0, cols)| gemm(n0, cols));
}

impl Mkl {
    /// `out = x @ w.T` for row-major `x` (m×k) and `w` (n×k), f32 out (m×n), with
    /// `gemm` = this library's sgemm (`T` = f32) or bf16 GEMM (`T` = bf16, `E` = u16).
    fn gemm_split<T: Sync, E>(
        gemm: CblasGemm<E>,
        x: &[T],
        w: &[T],
        (m, n, k): (usize, usize, usize),
        out: &mut [MaybeUninit<f32>],
    ) -> candle_core::Result<()> {
        const { assert!(std::mem::size_of::<T>() == std::mem::size_of::<E>()) };
        if x.len() < m * k || w.len() < n * k || out.len() < m * n {
            candle_core::bail!("mkl linear: buffers smaller than the shapes");
        }
        let (mi, ki, ldc) = (dim(m)?, dim(k)?, dim(n)?);
        let ptr = SyncPtr(out.as_mut_ptr().cast());
        split_columns(n, |n0, cols| {
            // SAFETY: rows n0..n0+cols of w (n×k) and columns n0..n0+cols of out (m×n,
            // row stride n) are in bounds (checked above); each task owns its columns.
            // T and E have the same size (checked at compile time): bf16 is MKL_BF16.
            unsafe {
                gemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    TRANS,
                    mi,
                    cols as i32,
                    ki,
                    1.0,
                    x.as_ptr().cast(),
                    ki,
                    w.as_ptr().add(n0 * k).cast(),
                    ki,
                    0.0,
                    ptr.at(n0),
                    ldc,
                )
            }
        });
        Ok(())
    }

    /// One single-threaded row-major sgemm on strided views (for attention, which
    /// runs inside rayon tasks): `c = alpha * a @ op(b)`, `op(b) = b.T` when `b_t`.
    ///
    /// # Safety
    /// The pointers must cover `m x k` (a, row stride lda), `k x n` or `n x k` (b, row
    /// stride ldb) and `m x n` (c, row stride ldc) elements.
    #[allow(clippy::too_many_arguments)]
    unsafe fn sgemm_strided(
        &self,
        (m, n, k): (i32, i32, i32),
        alpha: f32,
        (a, lda): (*const f32, i32),
        (b, ldb, b_t): (*const f32, i32, bool),
        (c, ldc): (*mut f32, i32),
    ) {
        let tb = if b_t { TRANS } else { NO_TRANS };
        // SAFETY: the caller guarantees the views; MKL runs sequentially (set at load).
        unsafe {
            (self.sgemm)(
                ROW_MAJOR, NO_TRANS, tb, m, n, k, alpha, a, lda, b, ldb, 0.0, c, ldc,
            )
        }
    }
}

fn dim(v: usize) -> candle_core::Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg("dimension too large for MKL".into()))
}

/// An `m x n` f32 result written whole by `fill` (a GEMM with beta = 0): the buffer is
/// not zeroed first, which cost as much as a small GEMM for every linear layer.
fn gemm_output(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]) -> candle_core::Result<()>,
) -> candle_core::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len])?;
    // SAFETY: `fill` ran a GEMM with beta = 0 that wrote all `len` elements.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// f32 activations rounded to bf16 for the GEMM, in parallel: single-threaded, this
/// conversion was 5% of a bf16 forward pass.
fn to_bf16(x: &[f32]) -> Vec<half::bf16> {
    let mut out = vec![half::bf16::ZERO; x.len()];
    out.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = half::bf16::from_f32(v);
            }
        });
    out
}

fn mkl() -> Option<&'static Mkl> {
    static MKL: OnceLock<Option<Mkl>> = OnceLock::new();
    MKL.get_or_init(|| {
        let path = std::env::var("QEMBED_MKL").unwrap_or_else(|_| "libmkl_rt.so.3".into());
        // SAFETY: loading MKL runs its initialisers, which have no preconditions; the
        // symbols are looked up with the signatures MKL's cblas.h declares.
        let loaded = unsafe {
            libloading::Library::new(&path).and_then(|lib| {
                // Both must precede every other MKL call to take effect. LP64: our
                // signatures pass 32-bit integers, whatever MKL_INTERFACE_LAYER says.
                let interface = *lib.get::<SetLayer>(b"MKL_Set_Interface_Layer\0")?;
                interface(INTERFACE_LP64);
                let threading = *lib.get::<SetLayer>(b"MKL_Set_Threading_Layer\0")?;
                threading(THREADING_SEQUENTIAL);
                let sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0")?;
                let gemm_bf16 = *lib.get::<GemmBf16>(b"cblas_gemm_bf16bf16f32\0")?;
                Ok(Mkl {
                    _lib: lib,
                    sgemm,
                    gemm_bf16,
                })
            })
        };
        loaded.ok()
    })
    .as_ref()
}

/// `c = alpha * a @ op(b)` as one single-threaded MKL sgemm; false when MKL is not
/// loaded.
///
/// # Safety
/// As [`Mkl::sgemm_strided`].
unsafe fn sgemm_strided(
    mnk: (i32, i32, i32),
    alpha: f32,
    a: (*const f32, i32),
    b: (*const f32, i32, bool),
    c: (*mut f32, i32),
) -> bool {
    match mkl() {
        Some(mkl) => {
            // SAFETY: the caller's contract.
            unsafe { mkl.sgemm_strided(mnk, alpha, a, b, c) };
            true
        }
        None => false,
    }
}

/// Whether linear layers will go through MKL (for logs and /info).
pub fn available() -> bool {
    mkl().is_some()
}

/// `x @ w.T` through MKL for 2-D CPU tensors: f32 x f32, bf16 x bf16, or f32
/// activations with bf16 weights (cast to bf16 for the GEMM, f32 out); `None` where MKL
/// does not apply.
fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let dtypes_ok = matches!(
        (x.dtype(), w.dtype()),
        (DType::F32, DType::F32) | (DType::BF16, DType::BF16) | (DType::F32, DType::BF16)
    );
    let applies =
        x.device().is_cpu() && x.rank() == 2 && w.rank() == 2 && dtypes_ok && mkl().is_some();
    if !applies {
        return Ok(None);
    }
    let x = x.contiguous()?;
    x.apply_op2_no_bwd(&w.contiguous()?, &MklLinear).map(Some)
}

struct MklLinear;

fn slice<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("mkl linear: input not contiguous"),
    }
}

impl CustomOp2 for MklLinear {
    fn name(&self) -> &'static str {
        "mkl-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some(mkl) = mkl() else {
            candle_core::bail!("mkl linear: MKL not loaded")
        };
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("mkl linear: shapes {:?} x {:?}^T", l1.shape(), l2.shape());
        }
        let shape = (m, n, k);
        match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                let (x, w) = (slice(x, l1)?, slice(w, l2)?);
                let out = gemm_output(m * n, |out| Mkl::gemm_split(mkl.sgemm, x, w, shape, out))?;
                Ok((CpuStorage::F32(out), Shape::from((m, n))))
            }
            (CpuStorage::F32(x), CpuStorage::BF16(w)) => {
                let x = to_bf16(slice(x, l1)?);
                let w = slice(w, l2)?;
                let out = gemm_output(m * n, |out| {
                    Mkl::gemm_split(mkl.gemm_bf16, &x, w, shape, out)
                })?;
                Ok((CpuStorage::F32(out), Shape::from((m, n))))
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => {
                let (x, w) = (slice(x, l1)?, slice(w, l2)?);
                let out = gemm_output(m * n, |out| {
                    Mkl::gemm_split(mkl.gemm_bf16, x, w, shape, out)
                })?;
                let out: Vec<half::bf16> = out.into_iter().map(half::bf16::from_f32).collect();
                Ok((CpuStorage::BF16(out), Shape::from((m, n))))
            }
            _ => candle_core::bail!("mkl linear: only f32, bf16, and f32 x bf16"),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// With `QEMBED_REQUIRE_MKL=1` (set where MKL is installed) MKL must load and agree
    /// with candle's matmul; elsewhere the fallback path is what runs.
    #[test]
    fn mkl_linear_matches_candle() {
        let required = std::env::var_os("QEMBED_REQUIRE_MKL").is_some();
        assert!(
            !required || super::available(),
            "MKL required but not loadable"
        );
        let x = Tensor::randn(0f32, 1.0, (37, 64), &Device::Cpu).unwrap();
        // 300 output columns: several column ranges, the last one partial.
        let w = Tensor::randn(0f32, 1.0, (300, 64), &Device::Cpu).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        match super::linear(&x, &w).unwrap() {
            Some(got) => {
                let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-3);
            }
            None => assert!(!required),
        }
        // f32 activations with bf16 weights (the CPU bf16 layout): the activations are
        // rounded to bf16 for the GEMM, which accumulates in f32, so the reference is the
        // f32 product of both operands rounded to bf16 (only summation order differs).
        let bf16 = candle_core::DType::BF16;
        let wb = w.to_dtype(bf16).unwrap();
        let rounded = |t: &Tensor| {
            t.to_dtype(bf16)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
        };
        let want_b = rounded(&x).matmul(&rounded(&w).t().unwrap()).unwrap();
        if let Some(got) = super::linear(&x, &wb).unwrap() {
            assert_eq!(got.dtype(), candle_core::DType::F32);
            let diff = (got - &want_b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-3);
        } else {
            assert!(!required);
        }
    }
}
