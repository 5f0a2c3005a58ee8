//! The AVX-512 instructions the int8 kernel uses, behind one trait: the real ones
//! ([`Hw`]) and, in tests, a scalar model of them (`super::model::Model`), so that the
//! same tile loop, tails and packing run, and are tested, on CPUs without AVX512_VNNI.
//!
//! As in the bf16 kernel, the micro-kernel is generic over the trait and monomorphised:
//! on [`Hw`] every method is one intrinsic inlined into the one `#[target_feature]`
//! function per tile height ([`Hw::tile`]).

use std::arch::x86_64::*;

use super::{tile_body, Line, TileArgs};

/// One vector of 16 int32 accumulators and one of 16 groups of four bytes, and the
/// operations on them the micro-kernel needs.
pub(super) trait DotIsa: Sized {
    /// 16 int32 lanes.
    type Acc: Copy;
    /// 16 lanes of four bytes each (the lowest byte the first K index).
    type Quads: Copy;

    /// Why this implementation cannot run here; `None` when it can.
    fn unavailable() -> Option<String>;

    /// All lanes zero.
    fn zero() -> Self::Acc;

    /// The 16 quads of one line of a weight panel.
    fn load(line: &Line) -> Self::Quads;

    /// `quad` in every lane: `vpbroadcastd`.
    fn splat(quad: u32) -> Self::Quads;

    /// `VPDPBUSD acc, a, b`: `acc[j] += sum over t < 4 of u8(a[j][t]) * i8(b[j][t])`,
    /// wrapping (no saturation).
    fn dot(acc: Self::Acc, a: Self::Quads, b: Self::Quads) -> Self::Acc;

    /// The 16 lanes into `dst`.
    fn store(acc: Self::Acc, dst: &mut [i32; 16]);

    /// `acc + src`, lane by lane (wrapping).
    ///
    /// # Safety
    /// `src` must be valid for reads of 16 `i32`.
    unsafe fn add_from(acc: Self::Acc, src: *const i32) -> Self::Acc;

    /// The 16 lanes into `dst`, as int32 partial sums.
    ///
    /// # Safety
    /// `dst` must be valid for writes of 16 `i32`.
    unsafe fn store_to(acc: Self::Acc, dst: *mut i32);

    /// The 16 lanes finished by the int8 rule into `dst`: `f32(acc - bias) * (row_scale
    /// * col_scale)`, lane by lane (the same roundings as `int8::rescale`).
    ///
    /// # Safety
    /// `dst` must be valid for writes of 16 `f32`.
    unsafe fn store_rescaled(
        acc: Self::Acc,
        bias: &[i32; 16],
        col_scale: &[f32; 16],
        row_scale: f32,
        dst: *mut f32,
    );

    /// One `R`-row tile ([`tile_body`]) on these instructions.
    ///
    /// # Safety
    /// As [`tile_body`]; [`unavailable`](Self::unavailable) is `None`.
    unsafe fn tile<const R: usize>(args: TileArgs<'_>);
}

/// The real instructions (AVX512F for the loads and stores, AVX512_VNNI for the dot).
pub(super) struct Hw;

impl DotIsa for Hw {
    type Acc = __m512i;
    type Quads = __m512i;

    fn unavailable() -> Option<String> {
        super::super::lacking(&[
            (is_x86_feature_detected!("avx512f"), "AVX512F"),
            (is_x86_feature_detected!("avx512vnni"), "AVX512_VNNI"),
        ])
    }

    #[inline(always)]
    fn zero() -> __m512i {
        // SAFETY: only reached from `Hw::tile`, compiled for (and run on) AVX512F.
        unsafe { _mm512_setzero_si512() }
    }

    #[inline(always)]
    fn load(line: &Line) -> __m512i {
        // SAFETY: a Line is 64 readable bytes, 64-byte aligned; AVX512F is present
        // (reached from `Hw::tile` only).
        unsafe { _mm512_load_si512((line as *const Line).cast()) }
    }

    #[inline(always)]
    fn splat(quad: u32) -> __m512i {
        // SAFETY: AVX512F is present (reached from `Hw::tile` only).
        unsafe { _mm512_set1_epi32(quad as i32) }
    }

    #[inline(always)]
    fn dot(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: AVX512_VNNI is present (reached from `Hw::tile` only).
        unsafe { _mm512_dpbusd_epi32(acc, a, b) }
    }

    #[inline(always)]
    fn store(acc: __m512i, dst: &mut [i32; 16]) {
        // SAFETY: `dst` is 64 writable bytes; AVX512F is present (reached from
        // `Hw::tile` only).
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), acc) }
    }

    #[inline(always)]
    unsafe fn add_from(acc: __m512i, src: *const i32) -> __m512i {
        // SAFETY: `src` is 16 readable i32 (the caller's contract); AVX512F is present
        // (reached from `Hw::tile` only).
        unsafe { _mm512_add_epi32(acc, _mm512_loadu_si512(src.cast())) }
    }

    #[inline(always)]
    unsafe fn store_to(acc: __m512i, dst: *mut i32) {
        // SAFETY: `dst` is 16 writable i32 (the caller's contract); AVX512F is present
        // (reached from `Hw::tile` only).
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
        // f32 (the caller's contract); AVX512F is present (reached from `Hw::tile`
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
    unsafe { tile_body::<Hw, R>(args) }
}
