//! A scalar software model of the VNNI kernel's instructions, at either width, so the
//! kernel's packing, tile loop and tails run on any CPU: in the kernel's tests, and as
//! kernels of their own for the model-level tests (`--features software-models`; never
//! in a serving build).
//!
//! `VPDPBUSD`, as Intel's SDM gives it: for each lane `j`, the four bytes of `a[j]` read
//! as unsigned and the four of `b[j]` as signed are multiplied pairwise (each product
//! fits a signed 16-bit value) and the four products added to the 32-bit `acc[j]`,
//! wrapping on overflow (the saturating form is `VPDPBUSDS`). The VEX (AVX-VNNI) and
//! EVEX (AVX512_VNNI) forms compute the same per lane. Integer arithmetic is exact, so
//! the instructions and the model must agree bit for bit.

use std::marker::PhantomData;

use super::{tile_body, DotIsa, TileArgs};
use crate::cpu::gemm::int8::rescale;

/// The instructions of `H` (its width and tile) in plain arithmetic.
pub(super) struct Model<H>(PhantomData<fn() -> H>);

impl<H: DotIsa<L>, const L: usize> DotIsa<L> for Model<H> {
    const NAME: &'static str = H::NAME;
    const OP: &'static str = H::OP;
    const OP_SWIGLU: &'static str = H::OP_SWIGLU;
    const OP_ADD: &'static str = H::OP_ADD;
    const MR: usize = H::MR;

    type Acc = [i32; L];
    type Quads = [u32; L];

    fn unavailable() -> Option<String> {
        None
    }

    fn zero() -> [i32; L] {
        [0; L]
    }

    fn load(quads: &[u32; L]) -> [u32; L] {
        *quads
    }

    fn splat(quad: u32) -> [u32; L] {
        [quad; L]
    }

    fn dot(acc: [i32; L], a: [u32; L], b: [u32; L]) -> [i32; L] {
        std::array::from_fn(|j| {
            let (a, b) = (a[j].to_le_bytes(), b[j].to_le_bytes());
            let products: i32 = (0..4)
                .map(|t| i32::from(i16::from(a[t]) * i16::from(b[t] as i8)))
                .sum();
            acc[j].wrapping_add(products)
        })
    }

    fn store(acc: [i32; L], dst: &mut [i32; L]) {
        *dst = acc;
    }

    unsafe fn add_from(acc: [i32; L], src: *const i32) -> [i32; L] {
        // SAFETY: `src` is L readable i32 (the caller's contract).
        std::array::from_fn(|j| acc[j].wrapping_add(unsafe { src.add(j).read() }))
    }

    unsafe fn store_to(acc: [i32; L], dst: *mut i32) {
        for (j, &v) in acc.iter().enumerate() {
            // SAFETY: `dst` is L writable i32 (the caller's contract).
            unsafe { dst.add(j).write(v) };
        }
    }

    unsafe fn store_rescaled(
        acc: [i32; L],
        bias: &[i32; L],
        col_scale: &[f32; L],
        row_scale: f32,
        dst: *mut f32,
    ) {
        for j in 0..L {
            let v = rescale(acc[j].wrapping_sub(bias[j]), row_scale, col_scale[j]);
            // SAFETY: `dst` is L writable f32 (the caller's contract).
            unsafe { dst.add(j).write(v) };
        }
    }

    unsafe fn tile<const R: usize>(args: TileArgs<'_>) {
        // SAFETY: the caller's contract, passed on; the model's own accesses are
        // bounds-checked.
        unsafe { tile_body::<Self, L, R>(args) }
    }
}
