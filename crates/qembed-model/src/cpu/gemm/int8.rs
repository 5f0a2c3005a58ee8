//! The int8 rule every int8 kernel follows, in one place, so that their results are
//! the same bits: only the order of exact integer additions differs between them.
//!
//! - Weights: symmetric per output channel (row of `[out, in]`): `scale = max |w| / 127`,
//!   `q = round_half_even(w * 127 / max |w|)` in −127..=127 (−128 is never used, so
//!   that a negated value is representable and the unsigned-by-signed instructions'
//!   bias trick stays exact).
//! - Activations: the same per row (token) at run time, after the layer's prologue
//!   (RMSNorm, SwiGLU) has been applied in f32.
//! - Products: exact in int32 (a row of 12288 products of ±127 stays below 2^28).
//! - Output: `sum as f32 * (row_scale * col_scale)`, f32.
//! - Smoothing (SmoothQuant, Xiao et al. 2023, with α = 1/2), where the model measured
//!   its activations at load: input channel `c` of the weight is multiplied by
//!   `s_c = sqrt(max |x_c| / max |w_c|)` before it is quantized, and the activations
//!   are divided by it before theirs. The product is the same; a channel whose
//!   activations are 30x the rest no longer takes every row's int8 range for itself,
//!   it shares the difficulty with the weights.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::Prologue;
use crate::cpu::simd::{inv_rms, multiversion};
use crate::Result;

/// A `[n, k]` weight quantized per output channel: row-major int8 values and one f32
/// scale per row, and the smoothing its activations take, if any.
pub(super) struct QuantRows {
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) q: Vec<i8>,
    pub(super) scale: Vec<f32>,
    /// What each input channel of the activations is multiplied by before they are
    /// quantized (`1 / s_c`); `None` without smoothing.
    pub(super) input_scale: Option<Vec<f32>>,
}

impl QuantRows {
    /// Quantizes a 2-D weight of any float dtype (in parallel: called at load),
    /// smoothed for activations whose channels reach `act_max` (`k` of them) when given.
    pub(super) fn from_weight(weight: &Tensor, act_max: Option<&[f32]>) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        let mut values = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let Some(act_max) = act_max else {
            return Ok(Self::from_f32(&values, n, k));
        };
        if act_max.len() != k {
            return Err(crate::ModelError::CpuKernel(format!(
                "int8: activation maxima of {} channels for a weight {k} wide",
                act_max.len()
            )));
        }
        let s = smoothing(&values, k, act_max);
        if k > 0 {
            values.par_chunks_mut(k).for_each(|row| {
                for (v, &s) in row.iter_mut().zip(&s) {
                    *v *= s;
                }
            });
        }
        let mut rows = Self::from_f32(&values, n, k);
        rows.input_scale = Some(s.iter().map(|s| 1.0 / s).collect());
        Ok(rows)
    }

    /// Quantizes row-major `[n, k]` f32 values (`values.len() == n * k`).
    pub(super) fn from_f32(values: &[f32], n: usize, k: usize) -> Self {
        debug_assert_eq!(values.len(), n * k);
        let mut q = vec![0i8; n * k];
        let mut scale = vec![0f32; n];
        if k > 0 {
            q.par_chunks_mut(k)
                .zip(values.par_chunks(k))
                .zip(scale.par_iter_mut())
                .for_each(|((dst, src), s)| *s = quantize_row(dst, src));
        }
        Self {
            n,
            k,
            q,
            scale,
            input_scale: None,
        }
    }

    /// Row `j`'s int8 values.
    pub(super) fn row(&self, j: usize) -> &[i8] {
        &self.q[j * self.k..][..self.k]
    }
}

/// `max[c] = max(max[c], |v|)` over every row-major row of `rows` (each `max.len()`
/// wide): the per-channel maxima that smoothing, the lookup table's column scales and
/// the calibration's activation measurements all take.
pub(crate) fn column_max_abs(rows: &[f32], max: &mut [f32]) {
    for row in rows.chunks_exact(max.len().max(1)) {
        for (m, &v) in max.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
}

/// SmoothQuant's per-input-channel factor for row-major `[_, k]` weights `values` and
/// activation channel maxima `act_max`: `sqrt(max |x_c| / max |w_c|)`, kept within
/// 1e-4..1e4, and 1 for a channel that is zero on either side.
fn smoothing(values: &[f32], k: usize, act_max: &[f32]) -> Vec<f32> {
    let mut w_max = vec![0f32; k];
    column_max_abs(values, &mut w_max);
    w_max
        .iter()
        .zip(act_max)
        .map(|(&w, &a)| {
            if w > 0.0 && a > 0.0 && a.is_finite() {
                (a / w).sqrt().clamp(1e-4, 1e4)
            } else {
                1.0
            }
        })
        .collect()
}

/// A 2-D tensor quantized for lookups rather than products (the token embeddings):
/// each column first divided by its largest |value| (so that a channel far above the
/// rest, as real checkpoints have, does not take every row's range), then each row by
/// the rule; a row is widened back to f32 on demand.
pub(crate) struct QuantizedRows {
    rows: QuantRows,
    /// Each column's largest |value| (1 for an all-zero column).
    col_scale: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `table` (any float dtype) in blocks of rows, so that no f32 copy of
    /// the whole table is made: two passes, the column maxima first.
    pub(crate) fn new(table: &Tensor) -> Result<Self> {
        /// Rows converted to f32 at a time (16 MiB at 1024 columns).
        const BLOCK: usize = 4096;
        let (n, k) = table.dims2()?;
        let block = |r0: usize| -> Result<Vec<f32>> {
            Ok(table
                .narrow(0, r0, BLOCK.min(n - r0))?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let mut col_scale = vec![0f32; k];
        let mut rows = QuantRows::from_f32(&[], 0, k);
        if n == 0 || k == 0 {
            col_scale.fill(1.0);
            rows.n = n;
            return Ok(Self { rows, col_scale });
        }
        for r0 in (0..n).step_by(BLOCK) {
            column_max_abs(&block(r0)?, &mut col_scale);
        }
        for m in &mut col_scale {
            if !(*m > 0.0 && m.is_finite()) {
                *m = 1.0;
            }
        }
        rows.n = n;
        rows.q = vec![0i8; n * k];
        rows.scale = vec![0f32; n];
        for r0 in (0..n).step_by(BLOCK) {
            let mut values = block(r0)?;
            let len = values.len() / k;
            values
                .par_chunks_mut(k)
                .zip(rows.q[r0 * k..][..len * k].par_chunks_mut(k))
                .zip(rows.scale[r0..][..len].par_iter_mut())
                .for_each(|((row, q), s)| {
                    for (v, &m) in row.iter_mut().zip(&col_scale) {
                        *v /= m;
                    }
                    *s = quantize_row(q, row);
                });
        }
        Ok(Self { rows, col_scale })
    }

    /// Appends row `i`, dequantized, to `out`; an error past the last row.
    pub(crate) fn push_row(&self, i: usize, out: &mut Vec<f32>) -> Result<()> {
        let rows = &self.rows;
        if i >= rows.n {
            return Err(crate::ModelError::Input(format!(
                "row {i} of a table of {}",
                rows.n
            )));
        }
        let s = rows.scale[i];
        out.extend(
            rows.row(i)
                .iter()
                .zip(&self.col_scale)
                .map(|(&q, &c)| f32::from(q) * s * c),
        );
        Ok(())
    }
}

/// `dst` = `src` quantized by the rule (zeros for an all-zero row); returns the scale.
#[inline(always)]
fn quantize_row_impl(dst: &mut [i8], src: &[f32]) -> f32 {
    quantize_with_max(dst, src, max_abs(src))
}

/// The largest |value| of `src` (0 for an empty row).
#[inline(always)]
fn max_abs(src: &[f32]) -> f32 {
    // Sixteen independent maxima, so that the reduction vectorises.
    let mut lanes = [0f32; 16];
    let chunks = src.chunks_exact(16);
    let max = chunks.remainder().iter().fold(0f32, |m, &v| m.max(v.abs()));
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    lanes.iter().fold(max, |m, &l| m.max(l))
}

/// `dst` = `src` quantized by the rule, `max` being `src`'s largest |value|; returns
/// the scale.
#[inline(always)]
fn quantize_with_max(dst: &mut [i8], src: &[f32], max: f32) -> f32 {
    let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
    for (d, &v) in dst.iter_mut().zip(src) {
        let r = (v * inv).round_ties_even();
        // NaN to 0 and the rest clamped, so that the conversion needs none of `as`'s
        // saturating checks (which LLVM does lane by lane) and the one to i8 only drops
        // zero bits: the whole loop vectorises.
        let r = if r.is_nan() {
            0.0
        } else {
            r.clamp(-127.0, 127.0)
        };
        // SAFETY: `r` is an integer in -127..=127, not NaN: exactly representable in i32.
        *d = unsafe { r.to_int_unchecked::<i32>() } as i8;
    }
    max / 127.0
}

multiversion!(pub(super) fn quantize_row(dst: &mut [i8], src: &[f32]) -> f32 => quantize_row_impl);

/// `v *= s`, element by element.
#[inline(always)]
fn scale_row_impl(v: &mut [f32], s: &[f32]) {
    for (v, &s) in v.iter_mut().zip(s) {
        *v *= s;
    }
}

multiversion!(fn scale_row(v: &mut [f32], s: &[f32]) => scale_row_impl);

/// Row `r` of a layer's input `x`, the prologue applied in f32 (into `tmp`, `k` long)
/// and the weight's smoothing (`input_scale`, `k` long) after it, quantized by the rule
/// into `dst` (`k` long); returns its scale. The caller has checked the shapes
/// ([`Prologue::check`]).
pub(super) fn quantize_input_row(
    dst: &mut [i8],
    tmp: &mut [f32],
    (x, r, k): (&[f32], usize, usize),
    prologue: Prologue,
    input_scale: Option<&[f32]>,
) -> f32 {
    match (prologue, input_scale) {
        // Nothing to apply: quantized straight from the input.
        (Prologue::None, None) => quantize_row(dst, &x[r * k..][..k]),
        // Smoothed, after a norm or nothing (every smoothed layer but a SwiGLU
        // prologue's): one pass makes the values and their maximum, a second quantizes
        // them, where a copy or norm, the scaling, the maximum and the quantizing took
        // one each. The same bits: the same products in the same order.
        (Prologue::None, Some(s)) => quantize_smoothed_row(dst, tmp, &x[r * k..][..k], None, s),
        (Prologue::RmsNorm(w, eps), Some(s)) => {
            quantize_smoothed_row(dst, tmp, &x[r * k..][..k], Some((w, eps)), s)
        }
        _ => {
            prologue.row_f32(tmp, x, r, k);
            if let Some(s) = input_scale {
                scale_row(tmp, s);
            }
            quantize_row(dst, tmp)
        }
    }
}

/// `tmp = x * inv_rms(x) * w * s` (with `norm = Some((w, eps))`, as
/// [`Prologue::row_f32`] then [`scale_row`] compute it) or `tmp = x * s`, quantized by
/// the rule into `dst`; returns the scale. All of `dst`, `tmp`, `x`, `s` (and `w`) are
/// one row long.
#[inline(always)]
fn quantize_smoothed_row_impl(
    dst: &mut [i8],
    tmp: &mut [f32],
    x: &[f32],
    norm: Option<(&[f32], f32)>,
    s: &[f32],
) -> f32 {
    let tmp = &mut tmp[..x.len()];
    // Sixteen independent maxima, as in `max_abs`, kept while the values are made.
    let mut lanes = [0f32; 16];
    let mut max = 0f32;
    let mut out = tmp.chunks_exact_mut(16);
    let mut xs = x.chunks_exact(16);
    let mut ss = s.chunks_exact(16);
    match norm {
        Some((w, eps)) => {
            let inv = inv_rms(x, eps);
            let mut ws = w.chunks_exact(16);
            for (((d, x), w), s) in (&mut out).zip(&mut xs).zip(&mut ws).zip(&mut ss) {
                for i in 0..16 {
                    d[i] = x[i] * inv * w[i] * s[i];
                    lanes[i] = lanes[i].max(d[i].abs());
                }
            }
            let rest = xs
                .remainder()
                .iter()
                .zip(ws.remainder())
                .zip(ss.remainder());
            for (d, ((&x, &w), &s)) in out.into_remainder().iter_mut().zip(rest) {
                *d = x * inv * w * s;
                max = max.max(d.abs());
            }
        }
        None => {
            for ((d, x), s) in (&mut out).zip(&mut xs).zip(&mut ss) {
                for i in 0..16 {
                    d[i] = x[i] * s[i];
                    lanes[i] = lanes[i].max(d[i].abs());
                }
            }
            let rest = xs.remainder().iter().zip(ss.remainder());
            for (d, (&x, &s)) in out.into_remainder().iter_mut().zip(rest) {
                *d = x * s;
                max = max.max(d.abs());
            }
        }
    }
    let max = lanes.iter().fold(max, |m, &l| m.max(l));
    quantize_with_max(dst, tmp, max)
}

multiversion!(fn quantize_smoothed_row(dst: &mut [i8], tmp: &mut [f32], x: &[f32], norm: Option<(&[f32], f32)>, s: &[f32]) -> f32 => quantize_smoothed_row_impl);

/// One output value from its exact integer sum and the two scales.
#[inline(always)]
pub(super) fn rescale(sum: i32, row_scale: f32, col_scale: f32) -> f32 {
    sum as f32 * (row_scale * col_scale)
}

/// One output block of an int8 kernel in one call: `out[r * ldo + c] = rescale(sums[r][c],
/// row_scale[r], col_scale[c])` for `r < sums.len()`, `c < cols` (the same bits as
/// [`rescale`]). A call per block rather than per row: with 32-column rows the per-call
/// work (feature dispatch, slice set-up, the loop's tails) cost as much as the
/// conversion itself (9.5 % of an int8 forward pass on AMX in a per-row version).
///
/// # Safety
/// For every `r < sums.len()` and `c < cols`, `out.add(r * ldo + c)` must be valid for
/// writes, and nobody else may access those elements meanwhile.
pub(super) unsafe fn rescale_block<const W: usize>(
    out: *mut f32,
    ldo: usize,
    sums: &[[i32; W]],
    row_scale: &[f32],
    col_scale: &[f32],
    cols: usize,
) {
    #[inline(always)]
    unsafe fn body<const W: usize>(
        out: *mut f32,
        ldo: usize,
        sums: &[[i32; W]],
        row_scale: &[f32],
        col_scale: &[f32],
        cols: usize,
    ) {
        let cols = cols.min(W).min(col_scale.len());
        let col_scale = &col_scale[..cols];
        for (r, (row, &rs)) in sums.iter().zip(row_scale).enumerate() {
            // SAFETY: row r < sums.len(), columns below cols: the caller's contract.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.add(r * ldo), cols) };
            for ((d, &s), &c) in dst.iter_mut().zip(&row[..cols]).zip(col_scale) {
                *d = rescale(s, rs, c);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn avx512<const W: usize>(
            out: *mut f32,
            ldo: usize,
            sums: &[[i32; W]],
            row_scale: &[f32],
            col_scale: &[f32],
            cols: usize,
        ) {
            // SAFETY: the caller's contract, passed on.
            unsafe { body(out, ldo, sums, row_scale, col_scale, cols) }
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has the features `avx512` was compiled for; the pointer
            // contract is the caller's.
            return unsafe { avx512(out, ldo, sums, row_scale, col_scale, cols) };
        }
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { body(out, ldo, sums, row_scale, col_scale, cols) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table with a column 30x the rest keeps its other columns' precision: each
    /// value within half a step of its own column's range, not of the outlier's.
    #[test]
    fn a_lookup_table_scales_columns_before_rows() {
        // More rows than one block of the two-pass quantization.
        let (n, k) = (5000, 8);
        let values: Vec<f32> = crate::cpu::gemm::test_values(n * k, 3)
            .iter()
            .enumerate()
            .map(|(i, v)| if i % k == 2 { 30.0 * v } else { *v })
            .collect();
        let t = Tensor::from_slice(&values, (n, k), &candle_core::Device::Cpu).unwrap();
        let table = QuantizedRows::new(&t).unwrap();
        let mut worst = 0f32;
        for i in 0..n {
            let mut row = Vec::new();
            table.push_row(i, &mut row).unwrap();
            for (c, (&got, &want)) in row.iter().zip(&values[i * k..][..k]).enumerate() {
                if c != 2 {
                    worst = worst.max((got - want).abs());
                }
            }
        }
        // The non-outlier columns span ±0.5: a step of 1/127 of that at most.
        assert!(worst <= 0.5 / 127.0 * 1.01, "{worst}");
        assert!(table.push_row(n, &mut Vec::new()).is_err());
    }

    #[test]
    fn the_rule_is_symmetric_per_row_and_round_half_even() {
        // max 2.54: scale 0.02, so 1.27 -> 63.5 -> 64 (even), -0.01 -> -0.5 -> -0 -> 0.
        let src = [2.54, -2.54, 1.27, -0.01, 0.0, 0.03];
        let mut q = [0i8; 6];
        let s = quantize_row(&mut q, &src);
        assert!((s - 0.02).abs() < 1e-7, "{s}");
        assert_eq!(q, [127, -127, 64, 0, 0, 2]);
        // An all-zero row: scale 0, zeros, no NaN.
        let mut q = [1i8; 3];
        assert_eq!(quantize_row(&mut q, &[0.0; 3]), 0.0);
        assert_eq!(q, [0; 3]);
        // Long rows take the vector path: every value within half a step of its own.
        let src: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut q = vec![0i8; 1000];
        let s = quantize_row(&mut q, &src);
        let max = src.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(s, max / 127.0);
        for (&q, &v) in q.iter().zip(&src) {
            assert!((f32::from(q) * s - v).abs() <= 0.5 * s * 1.0001, "{q} {v}");
        }
        assert_eq!(q.iter().map(|q| q.unsigned_abs()).max(), Some(127));
    }

    /// The one-pass smoothed rows (after a norm, or after nothing) are the bits of the
    /// steps they replace: the prologue, then the smoothing, then the rule; at lengths
    /// with and without a tail past the sixteen lanes.
    #[test]
    fn smoothed_rows_in_one_pass_equal_the_steps() {
        for k in [1, 15, 16, 17, 37, 1024] {
            let m = 3;
            let x: Vec<f32> = crate::cpu::gemm::test_values(m * k, 11)
                .iter()
                .enumerate()
                .map(|(i, v)| if i % k == k / 2 { 40.0 * v } else { *v })
                .collect();
            let w = crate::cpu::gemm::test_values(k, 12);
            let smooth: Vec<f32> = crate::cpu::gemm::test_values(k, 13)
                .iter()
                .map(|v| 0.25 + v.abs())
                .collect();
            for prologue in [Prologue::None, Prologue::RmsNorm(&w, 1e-6)] {
                for r in 0..m {
                    let (mut got, mut want) = (vec![0i8; k], vec![0i8; k]);
                    let (mut tmp, mut steps) = (vec![0f32; k], vec![0f32; k]);
                    let s =
                        quantize_input_row(&mut got, &mut tmp, (&x, r, k), prologue, Some(&smooth));
                    prologue.row_f32(&mut steps, &x, r, k);
                    scale_row(&mut steps, &smooth);
                    let want_s = quantize_row(&mut want, &steps);
                    assert_eq!(s.to_bits(), want_s.to_bits(), "k {k} row {r}");
                    assert_eq!(got, want, "k {k} row {r}");
                    assert!(got.iter().any(|&q| q != 0), "k {k} row {r}: all zero");
                }
            }
        }
    }
}
