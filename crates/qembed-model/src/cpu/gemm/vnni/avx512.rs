//! The AVX-512 form of the VNNI kernel's instructions: `VPDPBUSD` on zmm registers
//! (AVX512_VNNI), 16 int32 lanes, a 12x32 tile.

use std::arch::x86_64::*;

use super::{tile_body, DotIsa, TileArgs};

/// The zmm instructions (AVX512F for the loads and stores, AVX512_VNNI for the dot).
pub(super) struct Zmm;

impl DotIsa<16> for Zmm {
    const NAME: &'static str = "avx512vnni";
    const OP: &'static str = "avx512vnni-linear";
    const OP_SWIGLU: &'static str = "avx512vnni-linear-swiglu";
    const OP_ADD: &'static str = "avx512vnni-linear-add";
    const MR: usize = 12;

    type Acc = __m512i;
    type Quads = __m512i;

    fn unavailable() -> Option<String> {
        super::super::lacking(&[
            (is_x86_feature_detected!("avx512f"), "AVX512F"),
            (is_x86_feature_detected!("avx512vnni"), "AVX512_VNNI"),
        ])
    }

    /// bf16 products on the `avx512bf16` tile where the CPU has AVX512_BF16 (every
    /// AMD CPU with AVX512_VNNI, Intel from Cooper Lake and Sapphire Rapids on): twice
    /// the multiply-adds per instruction of the f32 ones on the `avx512` tile, which the
    /// others (Ice Lake, Cascade Lake) run.
    fn attention() -> crate::cpu::attention::AttentionProducts {
        super::super::avx512bf16::attention_or(super::super::avx512::ATTENTION)
    }

    #[inline(always)]
    fn zero() -> __m512i {
        // SAFETY: only reached from `Zmm::tile`, compiled for (and run on) AVX512F.
        unsafe { _mm512_setzero_si512() }
    }

    #[inline(always)]
    fn load(quads: &[u32; 16]) -> __m512i {
        // SAFETY: `quads` is 64 readable bytes; AVX512F is present (reached from
        // `Zmm::tile` only).
        unsafe { _mm512_loadu_si512(quads.as_ptr().cast()) }
    }

    #[inline(always)]
    fn splat(quad: u32) -> __m512i {
        // SAFETY: AVX512F is present (reached from `Zmm::tile` only).
        unsafe { _mm512_set1_epi32(quad as i32) }
    }

    #[inline(always)]
    fn dot(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: AVX512_VNNI is present (reached from `Zmm::tile` only).
        unsafe { _mm512_dpbusd_epi32(acc, a, b) }
    }

    #[inline(always)]
    fn store(acc: __m512i, dst: &mut [i32; 16]) {
        // SAFETY: `dst` is 64 writable bytes; AVX512F is present (reached from
        // `Zmm::tile` only).
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), acc) }
    }

    #[inline(always)]
    unsafe fn add_from(acc: __m512i, src: *const i32) -> __m512i {
        // SAFETY: `src` is 16 readable i32 (the caller's contract); AVX512F is present
        // (reached from `Zmm::tile` only).
        unsafe { _mm512_add_epi32(acc, _mm512_loadu_si512(src.cast())) }
    }

    #[inline(always)]
    unsafe fn store_to(acc: __m512i, dst: *mut i32) {
        // SAFETY: `dst` is 16 writable i32 (the caller's contract); AVX512F is present
        // (reached from `Zmm::tile` only).
        unsafe { _mm512_storeu_si512(dst.cast(), acc) }
    }

    #[inline(always)]
    unsafe fn store_rescaled(
        acc: __m512i,
        bias: &[i32; 16],
        col_scale: &[f32; 16],
        row_scale: f32,
        dst: *mut f32,
    ) {
        // SAFETY: `bias` and `col_scale` are 16 readable values and `dst` 16 writable
        // f32 (the caller's contract); AVX512F is present (reached from `Zmm::tile`
        // only). cvtepi32_ps rounds to nearest even under the default MXCSR, as `as
        // f32` does.
        unsafe {
            let sum = _mm512_sub_epi32(acc, _mm512_loadu_si512(bias.as_ptr().cast()));
            let scale = _mm512_mul_ps(
                _mm512_loadu_ps(col_scale.as_ptr()),
                _mm512_set1_ps(row_scale),
            );
            _mm512_storeu_ps(dst, _mm512_mul_ps(_mm512_cvtepi32_ps(sum), scale));
        }
    }

    unsafe fn tile<const R: usize>(args: TileArgs<'_>) {
        // SAFETY: the caller's contract: the tile's memory is covered and the CPU has
        // the instructions `hw_tile` is compiled for.
        unsafe { hw_tile::<R>(args) }
    }
}

/// [`tile_body`] compiled for AVX512F + AVX512_VNNI.
///
/// # Safety
/// As [`tile_body`]; the CPU must have those instructions.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn hw_tile<const R: usize>(args: TileArgs<'_>) {
    // SAFETY: the caller's contract, passed on.
    unsafe { tile_body::<Zmm, 16, R>(args) }
}

#[cfg(test)]
pub(super) mod tests {
    use super::Zmm;

    /// One `VPDPBUSD` on splatted quads, lane 0 ([`super::super::tests::dot_lane0`]).
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512_VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(in super::super) unsafe fn dot_lane0(acc: i32, a: u32, b: u32) -> i32 {
        super::super::tests::dot_lane0::<Zmm, 16>(acc, a, b)
    }
}
