//! What a linear layer applies to its input rows before the product (RMSNorm, SwiGLU),
//! and that work done on one row in f32, for kernels that read their input row by row.

use rayon::prelude::*;

use crate::cpu::simd::{inv_rms, multiversion, silu_mul};

/// What a linear layer applies to its input rows before the product. Kernels that
/// read their input into a buffer of their own apply it on the way in (saving the
/// write and re-read of an f32 activation); the others run the fused op first.
#[derive(Clone, Copy)]
pub(crate) enum Prologue<'a> {
    /// The rows as they are.
    None,
    /// RMSNorm by this weight (`eps`) first: the pre-attention and pre-MLP norms.
    RmsNorm(&'a [f32], f32),
    /// `silu(gate) * up` of rows `[gate | up]` twice the layer's width: the MLP.
    SwiGlu,
}

impl Prologue<'_> {
    /// The width of the input rows to a layer `k` wide: twice `k` for SwiGLU.
    pub(crate) fn input_width(&self, k: usize) -> usize {
        match self {
            Prologue::SwiGlu => 2 * k,
            Prologue::None | Prologue::RmsNorm(..) => k,
        }
    }

    /// Row `r` of a layer's input `x` (rows of [`input_width(k)`](Self::input_width)),
    /// the prologue applied, into `dst` (`k` long), in f32 as `cpu::ops` computes it.
    /// The caller has checked the shapes ([`check`](Self::check)).
    pub(crate) fn row_f32(&self, dst: &mut [f32], x: &[f32], r: usize, k: usize) {
        match *self {
            Prologue::None => dst.copy_from_slice(&x[r * k..][..k]),
            Prologue::RmsNorm(w, eps) => norm_row(dst, &x[r * k..][..k], w, eps),
            Prologue::SwiGlu => {
                let (gate, up) = x[r * 2 * k..][..2 * k].split_at(k);
                swiglu_row(dst, gate, up)
            }
        }
    }

    /// The `m` rows of `x`, the prologue applied, in panels of `mr` rows, `[k][mr]` f32
    /// each, the rows past `m` zero: the activations of the f32 register-tiled kernels
    /// (`avx2`, `avx512`). In parallel, one panel a task.
    pub(crate) fn row_panels(&self, x: &[f32], m: usize, k: usize, mr: usize) -> Vec<f32> {
        let mut a = vec![0f32; m.div_ceil(mr) * k * mr];
        if k == 0 {
            return a;
        }
        a.par_chunks_mut(k * mr)
            .enumerate()
            .for_each(|(panel, dst)| {
                let mut row = vec![0f32; k];
                for i in 0..mr.min(m - panel * mr) {
                    self.row_f32(&mut row, x, panel * mr + i, k);
                    for (kk, &v) in row.iter().enumerate() {
                        dst[kk * mr + i] = v;
                    }
                }
            });
        a
    }

    /// An error (naming `kernel`) unless `x` is `m` rows of `width` values that this
    /// prologue turns into rows of `k`, the norm weight (if any) `k` long.
    pub(crate) fn check(
        &self,
        kernel: &str,
        x: &[f32],
        (m, width): (usize, usize),
        k: usize,
    ) -> candle_core::Result<()> {
        if width != self.input_width(k) || x.len() != m * width {
            candle_core::bail!("{kernel} linear: input rows of {width}, weight width {k}");
        }
        if let Prologue::RmsNorm(w, _) = self {
            if w.len() != k {
                candle_core::bail!(
                    "{kernel} linear: norm weight of {} for rows of {k}",
                    w.len()
                );
            }
        }
        Ok(())
    }
}

/// `x * w / rms(x)`, as `cpu::ops` computes it.
#[inline(always)]
fn norm_row_impl(dst: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let inv = inv_rms(x, eps);
    for ((d, &v), &w) in dst.iter_mut().zip(x).zip(w) {
        *d = v * inv * w;
    }
}

multiversion!(fn norm_row(dst: &mut [f32], x: &[f32], w: &[f32], eps: f32) => norm_row_impl);

#[inline(always)]
fn swiglu_row_impl(dst: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((d, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
        *d = silu_mul(g, u);
    }
}

multiversion!(pub(crate) fn swiglu_row(dst: &mut [f32], gate: &[f32], up: &[f32]) => swiglu_row_impl);
