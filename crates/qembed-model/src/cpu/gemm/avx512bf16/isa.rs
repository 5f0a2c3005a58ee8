//! The AVX-512 instructions the kernel uses, behind one trait: the real ones ([`Hw`])
//! and, in tests, a scalar model of them (`super::model::Model`), so that the same
//! tile loop, tails and packing run, and are tested, on CPUs without AVX512_BF16.
//!
//! The micro-kernel is generic over the trait and monomorphised: on [`Hw`] every method
//! is one intrinsic, inlined into the one `#[target_feature]` function per tile height
//! ([`Hw::tile`]), so the loop compiles to the instructions a hand-written kernel
//! would have. The loads and stores take references, so neither needs a contract.

use std::arch::x86_64::*;

use super::attention::group_attention;
use super::{tile_body, Line, TileArgs};
use crate::cpu::attention::AttentionProducts;

/// One vector of 16 f32 accumulators and one of 16 bf16 pairs, and the operations on
/// them the micro-kernel needs.
pub(super) trait DotIsa: Sized {
    /// 16 f32 lanes.
    type Acc: Copy;
    /// 16 lanes of two bf16 values each (the low half the even K index).
    type Pairs: Copy;

    /// Why this implementation cannot run here; `None` when it can.
    fn unavailable() -> Option<String>;

    /// Attention for a model on these instructions: both products on this kernel's
    /// tile ([`super::attention`]), under a name of its own per implementation (the
    /// model and the instructions may sum in different orders).
    const ATTENTION: AttentionProducts;

    /// All lanes zero.
    fn zero() -> Self::Acc;

    /// The 16 pairs of one line of a weight panel.
    fn load(line: &Line) -> Self::Pairs;

    /// `pair` (even | odd << 16) in every lane: `vpbroadcastd`.
    fn splat(pair: u32) -> Self::Pairs;

    /// `VDPBF16PS acc, a, b`: `acc[j] += a[j].odd * b[j].odd + a[j].even * b[j].even`.
    fn dot(acc: Self::Acc, a: Self::Pairs, b: Self::Pairs) -> Self::Acc;

    /// `acc + src`, lane by lane.
    fn add(acc: Self::Acc, src: &[f32; 16]) -> Self::Acc;

    /// The 16 lanes into `dst`.
    fn store(acc: Self::Acc, dst: &mut [f32; 16]);

    /// One `R`-row tile ([`tile_body`]) on these instructions.
    ///
    /// # Safety
    /// As [`tile_body`]; [`unavailable`](Self::unavailable) is `None`.
    unsafe fn tile<const R: usize>(args: TileArgs<'_>);
}

/// The real instructions (AVX512F for the loads and stores, AVX512_BF16 for the dot).
pub(super) struct Hw;

/// Whether `VDPBF16PS` is worth choosing over f32 FMAs on this CPU. It is on AMD (Zen 4
/// and Zen 5 run it at twice the multiply-adds of an f32 FMA per cycle, measured by
/// `qembed-bench-peak`), not on Intel: an Intel Xeon with AMX measured 123 GFLOP/s per
/// thread on it against 248 for the zmm FMA, and the whole forward pass ran 1.25-1.31x
/// faster on the `avx512` kernel's f32 FMAs over the same bf16 weights (benches/RESULTS.md).
/// Decided by the vendor, as no cheaper probe tells the two apart.
pub(super) fn dot_is_fast() -> bool {
    !is_intel()
}

/// Whether the CPU says it is Intel's (CPUID leaf 0: "GenuineIntel").
fn is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `__cpuid` is safe from Rust 1.94 on and unsafe before (MSRV 1.89).
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 0 only reads the vendor string.
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        // The vendor string is EBX, EDX, ECX: "Genu" "ineI" "ntel".
        let vendor = [r.ebx, r.edx, r.ecx];
        vendor == [0x756e_6547, 0x4965_6e69, 0x6c65_746e]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl DotIsa for Hw {
    type Acc = __m512;
    type Pairs = __m512bh;

    fn unavailable() -> Option<String> {
        super::super::lacking(&[
            (is_x86_feature_detected!("avx512f"), "AVX512F"),
            (is_x86_feature_detected!("avx512bf16"), "AVX512_BF16"),
        ])
    }

    const ATTENTION: AttentionProducts =
        AttentionProducts::PerGroup("bf16-avx512bf16", group_attention::<Self>);

    #[inline(always)]
    fn zero() -> __m512 {
        // SAFETY: only reached from `Hw::tile`, compiled for (and run on) AVX512F.
        unsafe { _mm512_setzero_ps() }
    }

    #[inline(always)]
    fn load(line: &Line) -> __m512bh {
        // SAFETY: a Line is 64 readable bytes, 64-byte aligned; AVX512F is present
        // (reached from `Hw::tile` only); any bits are valid bf16 pairs.
        unsafe { std::mem::transmute(_mm512_load_si512((line as *const Line).cast())) }
    }

    #[inline(always)]
    fn splat(pair: u32) -> __m512bh {
        // SAFETY: AVX512F is present (reached from `Hw::tile` only); any 32 bits are a
        // valid pair of bf16 bit patterns.
        unsafe { std::mem::transmute(_mm512_set1_epi32(pair as i32)) }
    }

    #[inline(always)]
    fn dot(acc: __m512, a: __m512bh, b: __m512bh) -> __m512 {
        // SAFETY: AVX512_BF16 is present (reached from `Hw::tile` only).
        unsafe { _mm512_dpbf16_ps(acc, a, b) }
    }

    #[inline(always)]
    fn add(acc: __m512, src: &[f32; 16]) -> __m512 {
        // SAFETY: `src` is 16 readable f32; AVX512F is present (reached from `Hw::tile`
        // only).
        unsafe { _mm512_add_ps(acc, _mm512_loadu_ps(src.as_ptr())) }
    }

    #[inline(always)]
    fn store(acc: __m512, dst: &mut [f32; 16]) {
        // SAFETY: `dst` is 16 writable f32; AVX512F is present (reached from `Hw::tile`
        // only).
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), acc) }
    }

    unsafe fn tile<const R: usize>(args: TileArgs<'_>) {
        // SAFETY: the caller's contract: the tile's memory is covered and the CPU has
        // the instructions `hw_tile` is compiled for.
        unsafe { hw_tile::<R>(args) }
    }
}

/// [`tile_body`] compiled for AVX512F + AVX512_BF16.
///
/// # Safety
/// As [`tile_body`]; the CPU must have those instructions.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn hw_tile<const R: usize>(args: TileArgs<'_>) {
    // SAFETY: the caller's contract, passed on.
    unsafe { tile_body::<Hw, R>(args) }
}
