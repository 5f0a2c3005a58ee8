//! Activations rounded to bf16 on their way into a bf16 kernel (AMX, AVX512_BF16),
//! with the linear layer's prologue applied in f32 first: the same values as the f32
//! op rounded afterwards, in one pass over the row.

use std::mem::MaybeUninit;

use super::Prologue;
use crate::cpu::simd::{inv_rms, multiversion, silu_mul};

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

/// RMSNorm of `x` by `w` then bf16, zeros to the end of `dst`.
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

multiversion!(fn round_norm_row(dst: &mut [MaybeUninit<u16>], x: &[f32], w: &[f32], eps: f32) => round_norm_row_impl);

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

multiversion!(fn round_swiglu_row(dst: &mut [MaybeUninit<u16>], gate: &[f32], up: &[f32]) => round_swiglu_row_impl);

/// Row `r` of a layer's input `x` (rows of `prologue.input_width(k)`), the prologue
/// applied, in bf16, into all of `dst` (at least `k` long; zeros past `k`). The caller
/// has checked the shapes ([`Prologue::check`]).
pub(super) fn round_input_row(
    dst: &mut [MaybeUninit<u16>],
    x: &[f32],
    r: usize,
    k: usize,
    prologue: Prologue,
) {
    match prologue {
        Prologue::None => round_row(dst, &x[r * k..][..k], 1.0),
        Prologue::RmsNorm(w, eps) => round_norm_row(dst, &x[r * k..][..k], w, eps),
        Prologue::SwiGlu => {
            let (gate, up) = x[r * 2 * k..][..2 * k].split_at(k);
            round_swiglu_row(dst, gate, up)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_half() {
        let mut s = 7u64;
        for _ in 0..10_000 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            let v = f32::from_bits((s >> 32) as u32);
            if v.is_nan() {
                continue;
            }
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
        for v in [0.0, -0.0, 1e-40, f32::MAX, f32::INFINITY, -f32::INFINITY] {
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
        assert!(half::bf16::from_bits(bf16_bits(f32::NAN)).is_nan());
    }
}
