//! Fused f32 element-wise ops between the GEMMs: RMSNorm, the residual add, SwiGLU.
//!
//! candle's own versions zero-fill their output and then run one scalar task per row
//! (RMSNorm), or run on one thread (add), or make a copy, two temporaries and a
//! product (SwiGLU). These write their output once, in rayon tasks of many rows, with
//! the row loops multiversioned for AVX2/AVX-512. A GEMM kernel that cannot apply a
//! prologue while it reads its input runs these before it (`gemm::portable`).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::f32_slice;
use super::par::par_rows;
use super::simd::{inv_rms, multiversion, silu_mul};

/// Rows of work per rayon task in the element-wise ops: a few hundred KiB of f32.
const ROWS_PER_TASK: usize = 64;

/// RMSNorm of each row of a contiguous f32 `[tokens, width]` tensor by `weight`.
pub(crate) fn rms_norm(x: &Tensor, weight: &[f32], eps: f32) -> candle_core::Result<Tensor> {
    x.apply_op1_no_bwd(&RmsNorm { weight, eps })
}

/// `a + b` for two contiguous f32 tensors of one shape (the residual connections).
pub(crate) fn add(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    a.apply_op2_no_bwd(b, &Add)
}

/// `silu(gate) * up` from the fused gate/up projection `[tokens, 2 I]` to `[tokens, I]`.
pub(crate) fn swiglu(gate_up: &Tensor) -> candle_core::Result<Tensor> {
    gate_up.apply_op1_no_bwd(&SwiGlu)
}

#[inline(always)]
fn swiglu_impl(out: &mut [MaybeUninit<f32>], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        o.write(silu_mul(g, u));
    }
}

multiversion!(fn swiglu_row(out: &mut [MaybeUninit<f32>], gate: &[f32], up: &[f32]) => swiglu_impl);

/// `x * w / rms(x)` of one row (as transformers: `x * rsqrt(mean(x^2) + eps) * w`).
#[inline(always)]
fn rms_row_impl(out: &mut [MaybeUninit<f32>], x: &[f32], w: &[f32], eps: f32) {
    let inv = inv_rms(x, eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        o.write(v * inv * w);
    }
}

multiversion!(fn rms_row(out: &mut [MaybeUninit<f32>], x: &[f32], w: &[f32], eps: f32) => rms_row_impl);

#[inline(always)]
fn add_impl(out: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        o.write(a + b);
    }
}

multiversion!(fn add_rows(out: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32]) => add_impl);

/// `acc[i] = acc[i] + b[i]`: the residual add done in place (the same bits as [`add`]
/// of `acc` and `b`).
#[inline(always)]
fn add_assign_impl(acc: &mut [f32], b: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(b) {
        *a += b;
    }
}

multiversion!(pub(crate) fn add_assign(acc: &mut [f32], b: &[f32]) => add_assign_impl);

/// RMSNorm of each row of `[tokens, width]` by a `[width]` weight.
struct RmsNorm<'a> {
    weight: &'a [f32],
    eps: f32,
}

impl CustomOp1 for RmsNorm<'_> {
    fn name(&self) -> &'static str {
        "rms-norm-par"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, width) = l.shape().dims2()?;
        let (x, w) = (f32_slice(s, l)?, self.weight);
        if w.len() != width {
            candle_core::bail!("rms norm: weight of {} for rows of {width}", w.len())
        }
        // SAFETY: a chunk is whole rows of `width`; rms_row writes each row whole.
        let out = unsafe {
            par_rows(tokens * width, width * ROWS_PER_TASK, |chunk, dst| {
                let x = &x[chunk * width * ROWS_PER_TASK..];
                for (o, x) in dst.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                    rms_row(o, x, w, self.eps);
                }
            })
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `a + b` in parallel: candle's element-wise add runs on one thread.
struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "add-par"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("add: shapes {:?} and {:?}", l1.shape(), l2.shape())
        }
        const CHUNK: usize = 1 << 15;
        // SAFETY: add_rows writes all of `dst` (a and b are as long as the output).
        let out = unsafe {
            par_rows(a.len(), CHUNK, |chunk, dst| {
                let at = chunk * CHUNK;
                add_rows(dst, &a[at..], &b[at..]);
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// SwiGLU in one pass instead of a copy, two temporaries and a product.
struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, width) = l.shape().dims2()?;
        if !width.is_multiple_of(2) {
            candle_core::bail!("swiglu: odd width {width}")
        }
        let inter = width / 2;
        let x = f32_slice(s, l)?;
        // SAFETY: swiglu_row writes all `inter` outputs of a row.
        let out = unsafe {
            par_rows(tokens * inter, inter, |t, o| {
                let (gate, up) = x[t * width..(t + 1) * width].split_at(inter);
                swiglu_row(o, gate, up);
            })
        };
        Ok((CpuStorage::F32(out), Shape::from((tokens, inter))))
    }
}
