//! The CPU backend: GEMM kernels per instruction set behind one trait (`gemm`), chosen
//! once at load, and the fused f32 work between the GEMMs (`ops`, `attention`).
//!
//! Dependencies point one way: `simd` and `par` are leaves; `ops` and `attention` use
//! them; the kernels in `gemm` use all of those; nothing here knows the model.

pub(crate) mod attention;
pub mod gemm;
pub(crate) mod ops;
pub(crate) mod par;
pub(crate) mod simd;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};

/// The contiguous f32 values a candle op was given, or an error naming what it got.
pub(crate) fn f32_slice<'s>(s: &'s CpuStorage, l: &Layout) -> candle_core::Result<&'s [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("fused CPU op: expected f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused CPU op: input not contiguous"),
    }
}
