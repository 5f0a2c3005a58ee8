//! A CPU kernel's linear layer as a candle op: one wrapper for every kernel whose
//! product takes contiguous f32 rows and returns f32 rows, so that a kernel is its
//! product function and its weight form, not another op struct.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::Prologue;
use crate::cpu::f32_slice;

/// A kernel's product: `prologue(x) @ w.T` for `(m, width)` rows of `x`, f32 `m x n`.
pub(super) type Product<W> =
    fn(&[f32], (usize, usize), &W, Prologue<'_>) -> candle_core::Result<Vec<f32>>;

/// `prologue(x) @ w.T` by `product` on weight `w` (`n` output columns), as the candle op
/// `name` on `x` made a contiguous 2-D f32 tensor.
pub(super) fn linear<W>(
    (name, product): (&'static str, Product<W>),
    x: &Tensor,
    (w, n): (&W, usize),
    prologue: Prologue,
) -> crate::Result<Tensor> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    Ok(x.apply_op1_no_bwd(&LinearOp {
        name,
        product,
        w,
        n,
        prologue,
    })?)
}

struct LinearOp<'a, W> {
    name: &'static str,
    product: Product<W>,
    w: &'a W,
    n: usize,
    prologue: Prologue<'a>,
}

impl<W> CustomOp1 for LinearOp<'_, W> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, width) = l.shape().dims2()?;
        let out = (self.product)(f32_slice(s, l)?, (m, width), self.w, self.prologue)?;
        Ok((CpuStorage::F32(out), Shape::from((m, self.n))))
    }
}
