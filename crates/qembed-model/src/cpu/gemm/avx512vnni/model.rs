//! A scalar software model of the AVX-512 instructions the int8 kernel uses (tests
//! only), so the kernel's packing, tile loop and tails run on any CPU.
//!
//! `VPDPBUSD`, as Intel's SDM gives it: for each lane `j`, the four bytes of `a[j]` read
//! as unsigned and the four of `b[j]` as signed are multiplied pairwise (each product
//! fits a signed 16-bit value) and the four products added to the 32-bit `acc[j]`,
//! wrapping on overflow (the saturating form is `VPDPBUSDS`). Integer arithmetic is
//! exact, so the instructions and the model must agree bit for bit.

use super::isa::DotIsa;
use super::{tile_body, Line, TileArgs};
use crate::cpu::gemm::int8::rescale;

/// The instructions in plain arithmetic.
pub(super) struct Model;

impl DotIsa for Model {
    type Acc = [i32; 16];
    type Quads = [u32; 16];

    fn unavailable() -> Option<String> {
        None
    }

    fn zero() -> [i32; 16] {
        [0; 16]
    }

    fn load(line: &Line) -> [u32; 16] {
        let bytes = line.0.map(|b| b as u8);
        std::array::from_fn(|j| {
            u32::from_le_bytes([
                bytes[4 * j],
                bytes[4 * j + 1],
                bytes[4 * j + 2],
                bytes[4 * j + 3],
            ])
        })
    }

    fn splat(quad: u32) -> [u32; 16] {
        [quad; 16]
    }

    fn dot(acc: [i32; 16], a: [u32; 16], b: [u32; 16]) -> [i32; 16] {
        std::array::from_fn(|j| {
            let (a, b) = (a[j].to_le_bytes(), b[j].to_le_bytes());
            let products: i32 = (0..4)
                .map(|t| i32::from(i16::from(a[t]) * i16::from(b[t] as i8)))
                .sum();
            acc[j].wrapping_add(products)
        })
    }

    fn store(acc: [i32; 16], dst: &mut [i32; 16]) {
        *dst = acc;
    }

    unsafe fn add_from(acc: [i32; 16], src: *const i32) -> [i32; 16] {
        // SAFETY: `src` is 16 readable i32 (the caller's contract).
        std::array::from_fn(|j| acc[j].wrapping_add(unsafe { src.add(j).read() }))
    }

    unsafe fn store_to(acc: [i32; 16], dst: *mut i32) {
        for (j, &v) in acc.iter().enumerate() {
            // SAFETY: `dst` is 16 writable i32 (the caller's contract).
            unsafe { dst.add(j).write(v) };
        }
    }

    unsafe fn store_rescaled(
        acc: [i32; 16],
        bias: &[i32; 16],
        col_scale: &[f32; 16],
        row_scale: f32,
        dst: *mut f32,
    ) {
        for j in 0..16 {
            let v = rescale(acc[j].wrapping_sub(bias[j]), row_scale, col_scale[j]);
            // SAFETY: `dst` is 16 writable f32 (the caller's contract).
            unsafe { dst.add(j).write(v) };
        }
    }

    unsafe fn tile<const R: usize>(args: TileArgs<'_>) {
        // SAFETY: the caller's contract, passed on; the model's own accesses are
        // bounds-checked.
        unsafe { tile_body::<Model, R>(args) }
    }
}
