//! Activations rounded to bf16 into whole, zero-padded tile strips.

use super::*;

/// `f32` to bf16 bits, rounding to nearest even (as `half::bf16::from_f32` and
/// PyTorch do); NaN stays NaN.
#[inline(always)]
pub(super) fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// `dst` = `src * scale` in bf16, then zeros to the end of `dst` (the K padding).
#[inline(always)]
fn round_row_impl(dst: &mut [MaybeUninit<u16>], src: &[f32], scale: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(bf16_bits(s * scale));
    }
    for d in &mut dst[src.len()..] {
        d.write(0);
    }
}

multiversion!(pub(super) fn round_row(dst: &mut [MaybeUninit<u16>], src: &[f32], scale: f32) => round_row_impl);

/// `m` rows of bf16 activations, `kp` values each (zero-padded from `k`), in whole
/// 32-row strips (the rows past `m` are zero): `row(r, dst)` writes row `r < m`, all of
/// `dst` (`kp` values). In parallel.
///
/// # Safety
/// `row` must write every element of the `dst` it is given.
pub(super) unsafe fn round_rows(
    m: usize,
    kp: usize,
    row: impl Fn(usize, &mut [MaybeUninit<u16>]) + Sync,
) -> Vec<Line> {
    let rows = m.next_multiple_of(BLOCK_ROWS);
    let lines_per_row = kp / 32;
    let mut a: Vec<Line> = Vec::with_capacity(rows * lines_per_row);
    let spare = &mut a.spare_capacity_mut()[..rows * lines_per_row];
    spare
        .par_chunks_mut(lines_per_row * 16)
        .enumerate()
        .for_each(|(chunk, dst)| {
            // SAFETY: an uninitialised Line is 32 uninitialised u16s (repr(C), no padding).
            let dst: &mut [MaybeUninit<u16>] =
                unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), dst.len() * 32) };
            for (i, dst) in dst.chunks_exact_mut(kp).enumerate() {
                let r = chunk * 16 + i;
                if r < m {
                    row(r, dst);
                } else {
                    round_row(dst, &[], 1.0);
                }
            }
        });
    // SAFETY: every line of the first rows * lines_per_row was written above (`row`
    // writes all of its row, the caller's contract; round_row pads).
    unsafe { a.set_len(rows * lines_per_row) };
    a
}

/// RMSNorm of `x` by `w` then bf16, zeros to the end of `dst`: the same values as the
/// f32 RMSNorm rounded afterwards, in one pass.
#[inline(always)]
fn round_norm_row_impl(dst: &mut [MaybeUninit<u16>], x: &[f32], w: &[f32], eps: f32) {
    let inv = inv_rms(x, eps);
    for ((d, &v), &w) in dst.iter_mut().zip(x).zip(w) {
        d.write(bf16_bits(v * inv * w));
    }
    for d in &mut dst[x.len()..] {
        d.write(0);
    }
}

multiversion!(pub(super) fn round_norm_row(dst: &mut [MaybeUninit<u16>], x: &[f32], w: &[f32], eps: f32) => round_norm_row_impl);

/// `silu(gate) * up` then bf16, zeros to the end of `dst`.
#[inline(always)]
fn round_swiglu_row_impl(dst: &mut [MaybeUninit<u16>], gate: &[f32], up: &[f32]) {
    for ((d, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
        d.write(bf16_bits(silu_mul(g, u)));
    }
    for d in &mut dst[gate.len()..] {
        d.write(0);
    }
}

multiversion!(pub(super) fn round_swiglu_row(dst: &mut [MaybeUninit<u16>], gate: &[f32], up: &[f32]) => round_swiglu_row_impl);
