//! The AMX instructions the kernel uses, behind one trait: the real ones ([`Hw`]) and,
//! in tests, a scalar model of them (`super::model::Model`), so that the same tile
//! loops, tails and attention products run, and are tested, on CPUs without AMX.
//!
//! The kernel is generic over the trait, so each instantiation is monomorphised: on
//! [`Hw`] every method is one `asm!` instruction, inlined, with its tile registers
//! fixed at compile time (const generics), exactly as hand-written blocks would be.
//! Buffers are passed as slices with an offset, not raw pointers, so that the model can
//! check every tile access against the buffer it belongs to; [`Hw`] uses only the
//! pointer, and the callers' contracts keep the accesses inside.

use std::arch::asm;
use std::marker::PhantomData;

use super::{available, int8_available};

/// A 64-byte `LDTILECFG` operand: byte 0 the palette, bytes 16 + 2t (u16, little-endian)
/// tile t's bytes per row, byte 48 + t its rows (Intel SDM, "Tile configuration").
#[repr(C, align(64))]
pub(super) struct TileConfig(pub(super) [u8; 64]);

impl TileConfig {
    /// Palette 1 with all eight tiles `rows` x `colsb` bytes.
    pub(super) fn uniform(rows: u8, colsb: u16) -> Self {
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for t in 0..8 {
            cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&colsb.to_le_bytes());
            cfg[48 + t] = rows;
        }
        Self(cfg)
    }
}

/// The tile instructions on one thread's configured tile state. `T`, `C`, `A`, `B` name
/// tile registers (tmm0-7).
pub(super) trait TileIsa: Sized {
    /// What attention on these tiles is called ([`AttentionProducts::name`](crate::cpu::attention::AttentionProducts::name)).
    const ATTENTION: &'static str;

    /// Why this implementation cannot run here; `None` when it can.
    fn unavailable() -> Option<&'static str>;

    /// Why [`dot_i8`](Self::dot_i8) cannot run here (no AMX-INT8); `None` when it can.
    fn unavailable_int8() -> Option<&'static str>;

    /// `LDTILECFG`: configures this thread's tiles (call only where
    /// [`unavailable`](Self::unavailable) is `None`). Dropping the value releases them.
    fn configure(cfg: &TileConfig) -> Self;

    /// `TILEZERO tmm{T}`.
    fn zero<const T: u8>(&mut self);

    /// `TILELOADD tmm{T}`: tile T's configured rows of its configured bytes each, row
    /// `r` from byte `size_of::<E>() * at + r * stride` of `src`.
    ///
    /// # Safety
    /// Every byte read must lie inside `src`.
    unsafe fn load<const T: u8, E: Plain>(&mut self, src: &[E], at: usize, stride: usize);

    /// `TILESTORED tmm{T}`: tile T's rows to byte `size_of::<E>() * at + r * stride` of
    /// `dst`.
    ///
    /// # Safety
    /// Every byte written must lie inside `dst`.
    unsafe fn store<const T: u8, E: Plain>(&mut self, dst: &mut [E], at: usize, stride: usize);

    /// `TDPBF16PS tmm{C}, tmm{A}, tmm{B}`: `C[m][n] += A[m][2k] B[k][2n] +
    /// A[m][2k+1] B[k][2n+1]` over the pairs `k`, bf16 widened to f32, f32 sums.
    fn dot<const C: u8, const A: u8, const B: u8>(&mut self);

    /// `TDPBSSD tmm{C}, tmm{A}, tmm{B}` (AMX-INT8): `C[m][n] += sum over i < 4 of
    /// A[m][4k+i] B[k][4n+i]` over the quads `k`, signed bytes, int32 sums that wrap.
    fn dot_i8<const C: u8, const A: u8, const B: u8>(&mut self);
}

/// Element types a tile moves: plain data, every bit pattern a value, no padding, so
/// that a tile's bytes may be read from and written into them.
///
/// # Safety
/// Implement only for types with those properties.
pub(super) unsafe trait Plain: Copy {}

// SAFETY: integers and floats of these widths: no padding, every bit pattern valid.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}

/// The real instructions. Holding one means this thread's tiles are configured;
/// dropping it releases them, so that context switches stop saving 8 KiB of tile
/// registers. The tile registers carry data from one `asm!` block to the next: Rust
/// cannot name them as operands or clobbers, and that is sound because the compiler
/// never allocates tile registers itself, and asm blocks with side effects (none is
/// `pure`) stay in program order. Neither `Send` nor `Sync`: tile registers belong to
/// the thread that configured them.
pub(super) struct Hw(PhantomData<*const ()>);

impl TileIsa for Hw {
    const ATTENTION: &'static str = "bf16-amx";

    fn unavailable() -> Option<&'static str> {
        (!available()).then_some("amx: not available on this CPU")
    }

    fn unavailable_int8() -> Option<&'static str> {
        (!int8_available()).then_some("amx: AMX-INT8 not available on this CPU")
    }

    fn configure(cfg: &TileConfig) -> Self {
        assert!(available(), "AMX tiles used without AMX");
        // SAFETY: `available()` confirmed AMX and the OS grant; `cfg` is a 64-byte
        // config that LDTILECFG reads (an invalid one faults, it is not UB).
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg, options(nostack, readonly)) };
        Hw(PhantomData)
    }

    #[inline(always)]
    fn zero<const T: u8>(&mut self) {
        // SAFETY: the tiles are configured on this thread (`self` exists); TILEZERO
        // touches no memory.
        unsafe { asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) };
    }

    #[inline(always)]
    unsafe fn load<const T: u8, E: Plain>(&mut self, src: &[E], at: usize, stride: usize) {
        // SAFETY: the caller keeps every row read inside `src` (so `at` is inside it
        // too); the tiles are configured on this thread.
        unsafe {
            asm!(
                "tileloadd tmm{t}, [{p} + {s}*1]",
                t = const T,
                p = in(reg) src.as_ptr().add(at),
                s = in(reg) stride,
                options(nostack, readonly),
            )
        };
    }

    #[inline(always)]
    unsafe fn store<const T: u8, E: Plain>(&mut self, dst: &mut [E], at: usize, stride: usize) {
        // SAFETY: the caller keeps every row written inside `dst`, which `&mut` makes
        // ours; the tiles are configured on this thread.
        unsafe {
            asm!(
                "tilestored [{p} + {s}*1], tmm{t}",
                t = const T,
                p = in(reg) dst.as_mut_ptr().add(at),
                s = in(reg) stride,
                options(nostack),
            )
        };
    }

    #[inline(always)]
    fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        // SAFETY: the tiles are configured on this thread; TDPBF16PS touches no memory
        // (mismatched tile shapes fault, they are not UB).
        unsafe {
            asm!(
                "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
                c = const C,
                a = const A,
                b = const B,
                options(nostack, nomem),
            )
        };
    }

    #[inline(always)]
    fn dot_i8<const C: u8, const A: u8, const B: u8>(&mut self) {
        // SAFETY: the tiles are configured on this thread; TDPBSSD touches no memory.
        // The int8 kernel runs it only where `unavailable_int8` is `None` (without
        // AMX-INT8, or with mismatched tile shapes, the CPU faults: not UB).
        unsafe {
            asm!(
                "tdpbssd tmm{c}, tmm{a}, tmm{b}",
                c = const C,
                a = const A,
                b = const B,
                options(nostack, nomem),
            )
        };
    }
}

impl Drop for Hw {
    fn drop(&mut self) {
        // SAFETY: releases the tile state this value configured.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
