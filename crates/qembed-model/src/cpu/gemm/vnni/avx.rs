//! The AVX-VNNI form of the VNNI kernel's instructions: the VEX-encoded `VPDPBUSD` on
//! ymm registers (AVX-VNNI, with AVX2 for the rest), 8 int32 lanes, a 6x16 tile: 12
//! accumulators, two weight vectors and one broadcast in the 16 ymm registers. For CPUs
//! with VNNI but no AVX-512 (Intel Alder Lake, Sierra Forest, Arrow Lake); those with
//! AVX512_VNNI take the zmm form.

use std::arch::x86_64::*;

use super::{tile_body, DotIsa, TileArgs};

/// The ymm instructions (AVX2 for the loads and stores, AVX-VNNI for the dot).
pub(super) struct Ymm;

impl DotIsa<8> for Ymm {
    const NAME: &'static str = "avxvnni";
    const OP: &'static str = "avxvnni-linear";
    const OP_SWIGLU: &'static str = "avxvnni-linear-swiglu";
    const OP_ADD: &'static str = "avxvnni-linear-add";
    const MR: usize = 6;

    type Acc = __m256i;
    type Quads = __m256i;

    fn unavailable() -> Option<String> {
        super::super::lacking(&[
            (is_x86_feature_detected!("avx2"), "AVX2"),
            (is_x86_feature_detected!("avxvnni"), "AVX-VNNI"),
        ])
    }

    #[inline(always)]
    fn zero() -> __m256i {
        // SAFETY: only reached from `Ymm::tile`, compiled for (and run on) AVX2.
        unsafe { _mm256_setzero_si256() }
    }

    #[inline(always)]
    fn load(quads: &[u32; 8]) -> __m256i {
        // SAFETY: `quads` is 32 readable bytes; AVX2 is present (reached from
        // `Ymm::tile` only).
        unsafe { _mm256_loadu_si256(quads.as_ptr().cast()) }
    }

    #[inline(always)]
    fn splat(quad: u32) -> __m256i {
        // SAFETY: AVX2 is present (reached from `Ymm::tile` only).
        unsafe { _mm256_set1_epi32(quad as i32) }
    }

    #[inline(always)]
    fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: AVX-VNNI is present (reached from `Ymm::tile` only).
        unsafe { _mm256_dpbusd_avx_epi32(acc, a, b) }
    }

    #[inline(always)]
    fn store(acc: __m256i, dst: &mut [i32; 8]) {
        // SAFETY: `dst` is 32 writable bytes; AVX2 is present (reached from
        // `Ymm::tile` only).
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), acc) }
    }

    #[inline(always)]
    unsafe fn add_from(acc: __m256i, src: *const i32) -> __m256i {
        // SAFETY: `src` is 8 readable i32 (the caller's contract); AVX2 is present
        // (reached from `Ymm::tile` only).
        unsafe { _mm256_add_epi32(acc, _mm256_loadu_si256(src.cast())) }
    }

    #[inline(always)]
    unsafe fn store_to(acc: __m256i, dst: *mut i32) {
        // SAFETY: `dst` is 8 writable i32 (the caller's contract); AVX2 is present
        // (reached from `Ymm::tile` only).
        unsafe { _mm256_storeu_si256(dst.cast(), acc) }
    }

    #[inline(always)]
    unsafe fn store_rescaled(
        acc: __m256i,
        bias: &[i32; 8],
        col_scale: &[f32; 8],
        row_scale: f32,
        dst: *mut f32,
    ) {
        // SAFETY: `bias` and `col_scale` are 8 readable values and `dst` 8 writable
        // f32 (the caller's contract); AVX2 is present (reached from `Ymm::tile`
        // only). cvtepi32_ps rounds to nearest even under the default MXCSR, as `as
        // f32` does.
        unsafe {
            let sum = _mm256_sub_epi32(acc, _mm256_loadu_si256(bias.as_ptr().cast()));
            let scale = _mm256_mul_ps(
                _mm256_loadu_ps(col_scale.as_ptr()),
                _mm256_set1_ps(row_scale),
            );
            _mm256_storeu_ps(dst, _mm256_mul_ps(_mm256_cvtepi32_ps(sum), scale));
        }
    }

    unsafe fn tile<const R: usize>(args: TileArgs<'_>) {
        // SAFETY: the caller's contract: the tile's memory is covered and the CPU has
        // the instructions `hw_tile` is compiled for.
        unsafe { hw_tile::<R>(args) }
    }
}

/// [`tile_body`] compiled for AVX2 + AVX-VNNI.
///
/// # Safety
/// As [`tile_body`]; the CPU must have those instructions.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn hw_tile<const R: usize>(args: TileArgs<'_>) {
    // SAFETY: the caller's contract, passed on.
    unsafe { tile_body::<Ymm, 8, R>(args) }
}

#[cfg(test)]
pub(super) mod tests {
    use super::Ymm;

    /// One `VPDPBUSD` on splatted quads, lane 0 ([`super::super::tests::dot_lane0`]).
    ///
    /// # Safety
    /// The CPU must have AVX2 and AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    pub(in super::super) unsafe fn dot_lane0(acc: i32, a: u32, b: u32) -> i32 {
        super::super::tests::dot_lane0::<Ymm, 8>(acc, a, b)
    }
}
