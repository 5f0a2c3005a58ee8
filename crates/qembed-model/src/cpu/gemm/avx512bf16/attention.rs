//! Attention's two products (scores, then probabilities times values) on the kernel's
//! tiles: both operands rounded to bf16 and packed per call, on the calling thread
//! (attention runs one task per sequence and head), f32 sums; the scores and the
//! softmax between the products stay f32. The AMX kernel rounds the same operands.

use super::isa::{DotIsa, Hw};
use super::{fill_row_panel, run_tile, Packed, KC, MR, NR};
use crate::cpu::gemm::bf16::{bf16_bits, round_row};
use crate::cpu::gemm::portable;

/// `c = alpha * a @ op(b)` as [`StridedGemm`](crate::cpu::attention::StridedGemm)
/// describes it, in bf16 products with f32 sums (`alpha` applied to `a` before it is
/// rounded). On a CPU without the instructions, candle's f32 product instead.
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
    if Hw::unavailable().is_some() {
        // SAFETY: the caller's contract, passed on.
        return unsafe {
            portable::strided_gemm((m, n, k), alpha, (a, lda), (b, ldb, b_t), (c, ldc))
        };
    }
    // SAFETY: the caller's contract; the instructions are present (checked above).
    unsafe { products::<Hw>((m, n, k), alpha, (a, lda), (b, ldb, b_t), (c, ldc)) }
}

/// [`strided_gemm`] on the instructions `I`.
///
/// # Safety
/// As [`strided_gemm`]; `I` must be available.
unsafe fn products<I: DotIsa>(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (*const f32, usize),
    (b, ldb, b_t): (*const f32, usize, bool),
    (c, ldc): (*mut f32, usize),
) {
    // Element (j, kk) of op(b)'s transpose, i.e. column j of op(b) at K index kk.
    let w = Packed::gather(n, k, |j, kk| {
        let at = if b_t { j * ldb + kk } else { kk * ldb + j };
        // SAFETY: j < n and kk < k lie inside the view of b (the caller's contract).
        bf16_bits(unsafe { *b.add(at) })
    });
    if w.kp == 0 {
        for i in 0..m {
            // SAFETY: row i of c, n values, is inside the view (the caller's contract).
            unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
        }
        return;
    }
    let mut rows = vec![0u32; m.div_ceil(MR) * w.kp * MR];
    for (panel, dst) in rows.chunks_mut(w.kp * MR).enumerate() {
        fill_row_panel(dst, panel, (m, w.kp), |r, row| {
            // SAFETY: row r < m of a, k values, is inside the view (the contract).
            let src = unsafe { std::slice::from_raw_parts(a.add(r * lda), k) };
            round_row(row, src, alpha);
        });
    }
    for p in 0..n.div_ceil(NR) {
        for r in 0..m.div_ceil(MR) {
            for t0 in (0..w.kp).step_by(KC) {
                // SAFETY: c covers the m x n output at row stride ldc (the caller's
                // contract) and this thread alone writes it; the passes of each tile run
                // in order; `I` is available (the contract).
                unsafe { run_tile::<I>(&rows, m, &w, (p, r, t0), (c, ldc)) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Model;
    use super::*;
    use crate::cpu::gemm::kernel_or_model;

    fn values(len: usize, seed: u64) -> Vec<f32> {
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

    fn round(v: f32) -> f64 {
        half::bf16::from_f32(v).to_f64()
    }

    /// Both attention products (op(b) transposed for the scores, not for the values),
    /// on strided views inside larger buffers, against an f64 product of the same bf16
    /// values; the output's columns past `n` are left alone. Through the model always,
    /// and through the instructions where the CPU has them.
    #[test]
    fn strided_products_match_an_f64_reference() {
        strided_case::<Model>();
        if kernel_or_model("avx512bf16") {
            strided_case::<Hw>();
        }
    }

    fn strided_case<I: DotIsa>() {
        for &(m, n, k, b_t) in &[
            (1, 1, 1, true),
            (13, 40, 128, true),
            (128, 200, 128, true),
            (100, 128, 333, false),
            (7, 64, 5, false),
        ] {
            let (lda, ldb, ldc) = (k + 3, if b_t { k + 5 } else { n + 5 }, n + 2);
            let a = values(m * lda, 1 + m as u64);
            let b = values(if b_t { n * ldb } else { k * ldb }, 2 + n as u64);
            let mut c = vec![7.0f32; m * ldc];
            let alpha = 0.125;
            // SAFETY: the views fit the buffers (strides and sizes above); `I` runs here.
            unsafe {
                products::<I>(
                    (m, n, k),
                    alpha,
                    (a.as_ptr(), lda),
                    (b.as_ptr(), ldb, b_t),
                    (c.as_mut_ptr(), ldc),
                )
            };
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|t| {
                        let bv = if b_t { b[j * ldb + t] } else { b[t * ldb + j] };
                        round(alpha * a[i * lda + t]) * round(bv)
                    });
                    let want: f64 = terms.clone().sum();
                    let magnitude: f64 = terms.map(f64::abs).sum::<f64>() + 1e-30;
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() / magnitude < 1e-5,
                        "{m}x{n}x{k} b_t={b_t} at ({i},{j}): {got} vs {want}"
                    );
                }
                assert_eq!(c[i * ldc + n..(i + 1) * ldc], [7.0, 7.0], "row {i} past n");
            }
        }
    }
}
