//! candle's matmul (the `gemm` crate on CPU, cuBLAS on CUDA): runs every dtype on
//! every device, and is what the other kernels are measured against.
//!
//! It reads its input as a tensor, so a prologue runs first as its own fused op
//! (`cpu::ops`). bf16 and f16 weights get their activations converted to the weights'
//! dtype for the product, and the result back to f32.

use ::gemm::Parallelism;
use candle_core::{DType, Tensor};

use super::{Gemm, PreparedWeight, Prologue};
use crate::cpu::attention::AttentionProducts;
use crate::cpu::ops;
use crate::Result;

pub(super) struct Portable;

pub(super) static PORTABLE: Portable = Portable;

const NAME: &str = "portable";

impl Gemm for Portable {
    fn name(&self) -> &'static str {
        NAME
    }

    fn unavailable(&self) -> Option<String> {
        None
    }

    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    fn prepare(&self, weight: Tensor) -> Result<PreparedWeight> {
        Ok(PreparedWeight::new(NAME, weight))
    }

    fn linear(&self, x: &Tensor, weight: &PreparedWeight, prologue: Prologue) -> Result<Tensor> {
        let w = weight.form::<Tensor>(NAME)?;
        Ok(dense(&with_prologue(x, prologue)?, w)?)
    }
}

/// `prologue(x)` as a tensor of its own, for kernels that read their input as one.
pub(super) fn with_prologue(x: &Tensor, prologue: Prologue) -> candle_core::Result<Tensor> {
    match prologue {
        Prologue::None => Ok(x.clone()),
        Prologue::RmsNorm(w, eps) => ops::rms_norm(x, w, eps),
        Prologue::SwiGlu => ops::swiglu(x),
    }
}

/// `x @ w.T` with candle's matmul, in the weights' dtype, the result in `x`'s.
pub(super) fn dense(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() == w.dtype() {
        x.matmul(&w.t()?)
    } else {
        x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(x.dtype())
    }
}

/// Attention's products through [`strided_gemm`]: what every kernel without products
/// of its own runs.
pub(super) const ATTENTION: AttentionProducts = AttentionProducts::PerHead("f32", strided_gemm);

/// Attention's f32 products through the `gemm` crate, single-threaded (see
/// [`StridedGemm`](crate::cpu::attention::StridedGemm)).
///
/// # Safety
/// As [`StridedGemm`](crate::cpu::attention::StridedGemm).
pub(super) unsafe fn strided_gemm(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (*const f32, usize),
    (b, ldb, b_t): (*const f32, usize, bool),
    (c, ldc): (*mut f32, usize),
) {
    // Element (kk, j) of op(b): b[j * ldb + kk] when transposed, else b[kk * ldb + j].
    let (rhs_cs, rhs_rs) = if b_t { (ldb, 1) } else { (1, ldb) };
    // SAFETY: the caller guarantees the views are covered; `c` is written with
    // beta = 0 (read_dst false), single-threaded.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            false,
            a,
            1,
            lda as isize,
            b,
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}
