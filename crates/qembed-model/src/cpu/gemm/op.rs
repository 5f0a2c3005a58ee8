//! A CPU kernel's linear layer as a candle op: one wrapper for every kernel whose
//! product takes contiguous f32 rows and returns f32 rows, so that a kernel is its
//! product function and its weight form, not another op struct.

use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp2, Layout, Shape, Tensor};

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

/// A kernel's product added in place: `out += prologue(x) @ w.T` for `(m, width)` rows
/// of `x`, `out` f32 `m x n`.
pub(super) type ProductAdd<W> =
    fn(&[f32], (usize, usize), &W, Prologue<'_>, &mut [f32]) -> candle_core::Result<()>;

/// `out += prologue(x) @ w.T` by `product` on weight `w`, in place on `out` (a
/// contiguous 2-D f32 tensor of `n` columns), as the in-place candle op `name`.
pub(super) fn linear_add<W>(
    (name, product): (&'static str, ProductAdd<W>),
    out: &Tensor,
    x: &Tensor,
    w: &W,
    prologue: Prologue,
) -> crate::Result<()> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    Ok(out.inplace_op2(
        &x,
        &LinearAddOp {
            name,
            product,
            w,
            prologue,
        },
    )?)
}

struct LinearAddOp<'a, W> {
    name: &'static str,
    product: ProductAdd<W>,
    w: &'a W,
    prologue: Prologue<'a>,
}

impl<W> InplaceOp2 for LinearAddOp<'_, W> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let (m, width) = src_l.shape().dims2()?;
        let (rows, _) = dst_l.shape().dims2()?;
        let (CpuStorage::F32(out), Some((from, to))) = (dst, dst_l.contiguous_offsets()) else {
            candle_core::bail!("{}: the output is not contiguous f32", self.name)
        };
        if rows != m {
            candle_core::bail!("{}: {m} input rows for {rows} output rows", self.name);
        }
        (self.product)(
            f32_slice(src, src_l)?,
            (m, width),
            self.w,
            self.prologue,
            &mut out[from..to],
        )
    }
}

/// `Gemm::linear_swiglu` for a kernel (`kernel`) whose weights are `W`: the fused op
/// `(name, product)` with `half` output columns, where `half(w)` says the weight's
/// halves are whole panels; `None` (not fused) where it does not.
pub(super) fn swiglu<W: std::any::Any>(
    (kernel, name, product): (&'static str, &'static str, Product<W>),
    x: &Tensor,
    weight: &super::PreparedWeight,
    prologue: Prologue,
    half: impl Fn(&W) -> Option<usize>,
) -> Option<crate::Result<Tensor>> {
    let w = match weight.form::<W>(kernel) {
        Ok(w) => w,
        Err(e) => return Some(Err(e.into())),
    };
    let half = half(w)?;
    Some(linear((name, product), x, (w, half), prologue))
}

/// `Gemm::linear_add` for a kernel (`kernel`) whose weights are `W`: the in-place op
/// `(name, product)`.
pub(super) fn add<W: std::any::Any>(
    (kernel, name, product): (&'static str, &'static str, ProductAdd<W>),
    out: &Tensor,
    x: &Tensor,
    weight: &super::PreparedWeight,
    prologue: Prologue,
) -> Option<crate::Result<()>> {
    Some(match weight.form::<W>(kernel) {
        Ok(w) => linear_add((name, product), out, x, w, prologue),
        Err(e) => Err(e.into()),
    })
}
