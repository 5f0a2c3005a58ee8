//! int8 linear layers in plain Rust, on every CPU: the int8 rule ([`super::int8`])
//! with no instruction set of its own (the compiler vectorises the dot products), so
//! `--quantize int8` runs everywhere and the vector kernels have a reference whose
//! results they must equal bit for bit.
//!
//! A task owns a block of output columns (their int8 rows, in L2) and walks every input
//! row past them.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::int8::{quantize_input_row, rescale, QuantRows};
use super::{Gemm, PreparedWeight, Prologue};
use crate::cpu::par::SyncPtr;
use crate::cpu::simd::multiversion;
use crate::Quantize;

/// Output columns per task: 64 rows of a 3072-wide weight are 192 KiB of int8.
const COLUMNS_PER_TASK: usize = 64;

pub(super) struct PortableInt8;

pub(super) static PORTABLE_INT8: PortableInt8 = PortableInt8;

const NAME: &str = "portable-int8";

impl Gemm for PortableInt8 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn unavailable(&self) -> Option<String> {
        None
    }

    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    fn quantize(&self) -> Quantize {
        Quantize::Int8
    }

    fn prepare(&self, weight: Tensor) -> crate::Result<PreparedWeight> {
        Ok(PreparedWeight::new(
            NAME,
            QuantRows::from_weight(&weight, None)?,
        ))
    }

    fn prepare_smoothed(&self, weight: Tensor, act_max: &[f32]) -> crate::Result<PreparedWeight> {
        let rows = QuantRows::from_weight(&weight, Some(act_max))?;
        Ok(PreparedWeight::new(NAME, rows))
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> crate::Result<Tensor> {
        let w = weight.form::<QuantRows>(NAME)?;
        crate::cpu::gemm::op::linear(("portable-int8-linear", linear), x, (w, w.n), prologue)
    }
}

/// The `m` input rows with the prologue applied, quantized by the rule: row-major int8
/// values and one scale per row.
pub(super) fn quantize_rows(
    x: &[f32],
    m: usize,
    w: &QuantRows,
    prologue: Prologue,
) -> (Vec<i8>, Vec<f32>) {
    let k = w.k;
    let mut q = vec![0i8; m * k];
    let mut scale = vec![0f32; m];
    if k > 0 {
        q.par_chunks_mut(k)
            .zip(scale.par_iter_mut())
            .enumerate()
            .for_each_init(
                || vec![0f32; k],
                |tmp, (r, (dst, s))| {
                    *s = quantize_input_row(dst, tmp, (x, r, k), prologue, w.input_scale.as_deref())
                },
            );
    }
    (q, scale)
}

/// `prologue(x) @ w.T` for `m` rows of `width` values: f32 `m x n`.
pub(super) fn linear(
    x: &[f32],
    (m, width): (usize, usize),
    w: &QuantRows,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    prologue.check(NAME, x, (m, width), w.k)?;
    let (n, k) = (w.n, w.k);
    let (a, row_scale) = quantize_rows(x, m, w, prologue);
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return Ok(out);
    }
    let dst = SyncPtr(out.as_mut_ptr());
    (0..n)
        .into_par_iter()
        .step_by(COLUMNS_PER_TASK)
        .for_each(|j0| {
            let cols = j0..(j0 + COLUMNS_PER_TASK).min(n);
            for (i, &rs) in row_scale.iter().enumerate() {
                let row = &a[i * k..][..k];
                for j in cols.clone() {
                    let v = rescale(dot(row, w.row(j)), rs, w.scale[j]);
                    // SAFETY: (i, j) is inside the m x n output, and only this task
                    // writes column block `cols`.
                    unsafe { *dst.at(i * n + j) = v };
                }
            }
        });
    Ok(out)
}

/// The exact int32 dot product of two int8 rows.
#[inline(always)]
fn dot_impl(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .fold(0i32, i32::wrapping_add)
}

multiversion!(fn dot(a: &[i8], b: &[i8]) -> i32 => dot_impl);

/// What every int8 kernel's tests check against this kernel: the same bits.
#[cfg(test)]
pub(super) mod reference {
    use super::*;
    use crate::cpu::gemm::test_values as values;

    /// A kernel under test: `prologue(x) @ w.T` for `(m, width)` rows of `x`, with the
    /// rule's weights `w` packed the kernel's way, on one of its instruction layers.
    pub(in crate::cpu::gemm) type Run<'a> =
        &'a dyn Fn(&[f32], (usize, usize), &QuantRows, Prologue<'_>) -> Vec<f32>;

    fn portable(x: &[f32], (m, width): (usize, usize), w: &QuantRows, p: Prologue) -> Vec<f32> {
        linear(x, (m, width), w, p).unwrap()
    }

    /// Bit-equal to the portable kernel over `shapes` (`m, n, k`: a kernel gives shapes
    /// with every kind of tail for its tiles), `what` naming the instruction layer.
    pub(in crate::cpu::gemm) fn equals_on_shapes(
        run: Run,
        what: &str,
        shapes: &[(usize, usize, usize)],
    ) {
        for &(m, n, k) in shapes {
            let x: Vec<f32> = values(m * k, 1 + m as u64)
                .iter()
                .map(|v| 4.0 * v)
                .collect();
            let rows = QuantRows::from_f32(&values(n * k, 2 + n as u64), n, k);
            let want = portable(&x, (m, k), &rows, Prologue::None);
            assert_eq!(
                run(&x, (m, k), &rows, Prologue::None),
                want,
                "{what} {m}x{n}x{k}"
            );
        }
    }

    /// The prologue applied on the way in (none, RMSNorm, SwiGLU), with plain and with
    /// smoothed weights: the same bits as the portable kernel, which applies both in
    /// the same f32 arithmetic.
    pub(in crate::cpu::gemm) fn fused_inputs_and_smoothing_equal(run: Run, what: &str) {
        let (m, n, k) = (19, 45, 130);
        let weight = values(n * k, 5);
        let t = Tensor::from_slice(&weight, (n, k), &candle_core::Device::Cpu).unwrap();
        let act_max: Vec<f32> = (0..k).map(|c| if c == 7 { 30.0 } else { 1.0 }).collect();
        let x = values(m * k, 6);
        let norm: Vec<f32> = values(k, 9).iter().map(|v| 1.0 + v).collect();
        let gate_up = values(m * 2 * k, 7);
        for (rows, smoothed) in [
            (QuantRows::from_f32(&weight, n, k), false),
            (QuantRows::from_weight(&t, Some(&act_max)).unwrap(), true),
        ] {
            assert_eq!(rows.input_scale.is_some(), smoothed);
            for (input, width, p) in [
                (&x, k, Prologue::None),
                (&x, k, Prologue::RmsNorm(&norm, 1e-6)),
                (&gate_up, 2 * k, Prologue::SwiGlu),
            ] {
                let want = portable(input, (m, width), &rows, p);
                let got = run(input, (m, width), &rows, p);
                assert!(got == want, "{what}, smoothed {smoothed}, width {width}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gemm::test_values as values;

    /// Against an f64 product of the dequantized values: the kernel's sums are exact,
    /// so only the final f32 rescale rounds.
    #[test]
    fn equals_the_dequantized_product() {
        for &(m, n, k) in &[(0, 5, 3), (1, 1, 1), (3, 70, 33), (17, 130, 200)] {
            let x = values(m * k, 1 + m as u64);
            let w = QuantRows::from_f32(&values(n * k, 2 + n as u64), n, k);
            let got = linear(&x, (m, k), &w, Prologue::None).unwrap();
            let (qa, sa) = quantize_rows(&x, m, &w, Prologue::None);
            for i in 0..m {
                for j in 0..n {
                    let sum: i64 = (0..k)
                        .map(|t| i64::from(qa[i * k + t]) * i64::from(w.q[j * k + t]))
                        .sum();
                    let want = sum as f64 * f64::from(sa[i]) * f64::from(w.scale[j]);
                    let g = f64::from(got[i * n + j]);
                    assert!(
                        (g - want).abs() <= 1e-6 * want.abs().max(1e-3),
                        "{m}x{n}x{k} ({i},{j}): {g} vs {want}"
                    );
                }
            }
        }
    }

    /// Close to the f32 product it approximates: per-element error within what two
    /// half-steps of quantization allow.
    #[test]
    fn approximates_the_float_product() {
        let (m, n, k) = (9, 40, 256);
        let x = values(m * k, 11);
        let wf = values(n * k, 12);
        let w = QuantRows::from_f32(&wf, n, k);
        let got = linear(&x, (m, k), &w, Prologue::None).unwrap();
        let xmax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|t| f64::from(x[i * k + t]) * f64::from(wf[j * k + t]))
                    .sum();
                // |x_err| <= xs/2, |w_err| <= ws/2 per term.
                let (xs, ws) = (f64::from(xmax) / 127.0, f64::from(w.scale[j]));
                let bound = k as f64 * (xs / 2.0 * 0.5 + ws / 2.0 * 0.5 + xs * ws / 4.0);
                let g = f64::from(got[i * n + j]);
                assert!((g - exact).abs() <= bound, "({i},{j}): {g} vs {exact}");
            }
        }
    }

    #[test]
    fn rejects_inputs_that_do_not_fit_the_layer() {
        let w = QuantRows::from_f32(&values(12, 5), 4, 3);
        assert!(linear(&[0.0; 5], (1, 5), &w, Prologue::None).is_err());
        assert!(linear(&[0.0; 3], (1, 3), &w, Prologue::SwiGlu).is_err());
    }
}
