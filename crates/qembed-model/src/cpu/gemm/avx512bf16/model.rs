//! A scalar software model of the AVX-512 instructions the kernel uses, so the kernel's
//! packing, tile loop and tails run on any CPU: in the kernel's tests, and as a kernel
//! of its own for the model-level tests (`--features software-models`; never in a
//! serving build).
//!
//! `VDPBF16PS`, as Intel's SDM gives it: for each lane `j`, `acc[j] += odd(a[j]) *
//! odd(b[j])`, then `acc[j] += even(a[j]) * even(b[j])`, each a fused multiply-add in f32
//! rounded to nearest even, denormal inputs read as zero and denormal results flushed
//! to zero; MXCSR is not consulted. A product of two bf16 values has at most 16
//! significant bits, so it is exact in f32 and only the additions round. Hardware that
//! sums the pair before rounding (or rounds differently) differs from this by at most
//! one rounding per step; the tests compare the two within `2 K eps sum |products|`.
//!
//! The tile loop reads its operands through slices cut to the tile, so a packing or
//! tiling bug panics (in the model and in the instructions alike) instead of reading
//! another buffer.

use super::attention::group_attention;
use super::isa::DotIsa;
use super::{tile_body, Line, TileArgs};
use crate::cpu::attention::AttentionProducts;

/// The instructions in plain arithmetic.
pub(super) struct Model;

/// A bf16 value widened to f32, a denormal read as zero.
fn widen(bits: u16) -> f32 {
    let v = f32::from_bits(u32::from(bits) << 16);
    if v.is_subnormal() {
        0.0
    } else {
        v
    }
}

/// `acc + a * b` in f32 (exact product, one rounding), inputs and result without
/// denormals.
fn fma_daz_ftz(acc: f32, a: u16, b: u16) -> f32 {
    let acc = if acc.is_subnormal() { 0.0 } else { acc };
    let r = widen(a).mul_add(widen(b), acc);
    if r.is_subnormal() {
        0.0f32.copysign(r)
    } else {
        r
    }
}

impl DotIsa for Model {
    type Acc = [f32; 16];
    type Pairs = [u32; 16];

    fn unavailable() -> Option<String> {
        None
    }

    const ATTENTION: AttentionProducts =
        AttentionProducts::PerGroup("bf16-avx512bf16-model", group_attention::<Self>);

    fn zero() -> [f32; 16] {
        [0.0; 16]
    }

    fn load(line: &Line) -> [u32; 16] {
        let line = &line.0;
        std::array::from_fn(|j| u32::from(line[2 * j]) | u32::from(line[2 * j + 1]) << 16)
    }

    fn splat(pair: u32) -> [u32; 16] {
        [pair; 16]
    }

    fn dot(acc: [f32; 16], a: [u32; 16], b: [u32; 16]) -> [f32; 16] {
        std::array::from_fn(|j| {
            let (odd_a, odd_b) = ((a[j] >> 16) as u16, (b[j] >> 16) as u16);
            let (even_a, even_b) = (a[j] as u16, b[j] as u16);
            fma_daz_ftz(fma_daz_ftz(acc[j], odd_a, odd_b), even_a, even_b)
        })
    }

    fn add(acc: [f32; 16], src: &[f32; 16]) -> [f32; 16] {
        std::array::from_fn(|j| acc[j] + src[j])
    }

    fn store(acc: [f32; 16], dst: &mut [f32; 16]) {
        *dst = acc;
    }

    unsafe fn tile<const R: usize>(args: TileArgs<'_>) {
        // SAFETY: the caller's contract, passed on; the model's own accesses are
        // bounds-checked.
        unsafe { tile_body::<Model, R>(args) }
    }
}
