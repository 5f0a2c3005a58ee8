//! f32 GEMM on AVX2+FMA, with f32, bf16 or f16 weights packed once at load.
//!
//! candle's matmul (the `gemm` crate) packs both operands on every call, and with bf16
//! or f16 weights it converts the whole weight matrix to f32 per call as well: a
//! linear layer then reads its weights three times. Here the weights are packed at
//! load, in the order the micro-kernel reads them, and stay in their dtype (the packed
//! copy is the only one kept): bf16 and f16 halve the weight memory and the bytes a
//! small batch streams, and widen to f32 in registers (a shift for bf16, `vcvtph2ps`
//! for f16), so the arithmetic is f32 in every case.
//!
//! The micro-kernel keeps a 6x16 f32 output tile in 12 ymm accumulators: per k it
//! loads 16 weights (two vectors) and broadcasts 6 activations, 12 FMAs. Weights are
//! panels of 16 output columns, `[k][16]` each; activations are packed per call into
//! panels of 6 rows, `[k][6]`, with the prologue (RMSNorm, SwiGLU) applied as they are
//! packed. K is taken [`KC`] at a time, so a tile's slice of both panels stays in L1; a
//! task owns a block of columns (its weights stay in L2 across its row panels) and a
//! block of rows. Small batches (a few row panels) read each weight from memory once.

use std::arch::x86_64::*;

use candle_core::{DType, Tensor};

use super::blocking::{self, Blocking, Output};
use super::panels::{self, in_order, Bf16, Panels, SlotOrder, F16};
use super::{Gemm, PreparedWeight, Prologue};
use crate::cpu::par::SyncPtr;

/// Rows of the output tile (activations broadcast per k).
const MR: usize = 6;
/// Columns of the output tile (two 8-lane vectors) and of a weight panel.
const NR: usize = 16;
/// K per pass over a tile: 256 keeps the tile's A slice (6 KiB) and B slice (16 KiB in
/// f32) in L1 together.
const KC: usize = 256;

pub(super) struct Avx2;

pub(super) static AVX2: Avx2 = Avx2;

const NAME: &str = "avx2";

impl Gemm for Avx2 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn unavailable(&self) -> Option<String> {
        super::lacking(&[
            (is_x86_feature_detected!("avx2"), "AVX2"),
            (is_x86_feature_detected!("fma"), "FMA"),
            (is_x86_feature_detected!("f16c"), "F16C"),
        ])
    }

    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    fn prepare(&self, weight: Tensor) -> crate::Result<PreparedWeight> {
        Ok(PreparedWeight::new(
            NAME,
            Packed::from_tensor(&weight, NAME, &ORDER)?,
        ))
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> crate::Result<Tensor> {
        let w = weight.form::<Packed>(NAME)?;
        crate::cpu::gemm::op::linear(("avx2-linear", linear), x, (w, w.shape().0), prologue)
    }

    fn linear_swiglu(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<crate::Result<Tensor>> {
        let op = (
            NAME,
            "avx2-linear-swiglu",
            linear_swiglu as super::op::Product<Packed>,
        );
        let half = |w: &Packed| super::swiglu_halves(w.shape().0, NR).then_some(w.shape().0 / 2);
        super::op::swiglu(op, x, weight, prologue, half)
    }

    fn linear_add(
        &self,
        out: &Tensor,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<crate::Result<()>> {
        let op = (
            NAME,
            "avx2-linear-add",
            linear_add as super::op::ProductAdd<Packed>,
        );
        super::op::add(op, out, x, weight, prologue)
    }
}

/// The weight's panels: 16 columns each, bf16 in the order its widening reads them.
type Packed = panels::Packed<NR>;

/// Where a panel puts each column, per stored dtype. A bf16 value is the top half of
/// its f32, so widening is a 16-bit shift; `unpacklo/hi` with zero do it for 16 values
/// at once but interleave per 128-bit lane (values 0-3 and 8-11, then 4-7 and 12-15),
/// so the panel stores bf16 columns in that order.
const ORDER: SlotOrder = SlotOrder {
    f32: in_order,
    bf16: |j| {
        // Columns 0-3, 8-11, 4-7, 12-15 in the slots 0-3, 4-7, 8-11, 12-15.
        const SLOT: [usize; NR] = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15];
        SLOT[j]
    },
    f16: in_order,
};

/// One weight element as the micro-kernel reads it: 16 consecutive panel slots widen
/// to two f32 vectors (columns 0-7 and 8-15 of the panel, in [`ORDER`]).
trait Elem: Copy + Send + Sync + 'static {
    /// # Safety
    /// `p` must point at 16 readable elements; AVX2 and F16C must be available.
    unsafe fn load16(p: *const Self) -> (__m256, __m256);
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> (__m256, __m256) {
        // SAFETY: the caller's contract: 16 f32 at p.
        unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
    }
}

impl Elem for Bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const Bf16) -> (__m256, __m256) {
        // SAFETY: the caller's contract: 16 bf16 (32 bytes) at p, AVX2 present.
        unsafe {
            let v = _mm256_loadu_si256(p.cast());
            let zero = _mm256_setzero_si256();
            (
                _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v)),
                _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v)),
            )
        }
    }
}

/// f16 is widened by F16C's `vcvtph2ps`.
impl Elem for F16 {
    #[inline(always)]
    unsafe fn load16(p: *const F16) -> (__m256, __m256) {
        // SAFETY: the caller's contract: 16 f16 (32 bytes) at p, F16C present.
        unsafe {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<u16>().add(8).cast())),
            )
        }
    }
}

/// `prologue(x) @ w.T` for `m` rows of `width` values: f32 `m x n`.
fn linear(
    x: &[f32],
    mw: (usize, usize),
    w: &Packed,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    blocking::plain(product, w.shape().0, x, mw, w, prologue)
}

/// `swiglu(prologue(x) @ w.T)` for a gate_up weight whose halves are whole panels: f32
/// `m x n / 2` (`Blocking::for_each_tile_swiglu`).
fn linear_swiglu(
    x: &[f32],
    mw: (usize, usize),
    w: &Packed,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    blocking::swiglu(product, (w.shape().0, NR), x, mw, w, prologue)
}

/// `out += prologue(x) @ w.T` in place, `out` `m x n` (`Blocking::for_each_tile_add`).
fn linear_add(
    x: &[f32],
    mw: (usize, usize),
    w: &Packed,
    prologue: Prologue,
    out: &mut [f32],
) -> candle_core::Result<()> {
    blocking::add(product, w.shape().0, x, mw, w, prologue, out)
}

/// The product to `to` as its [`Output`] says.
///
/// # Safety
/// As [`blocking::Driver`].
unsafe fn product(
    x: &[f32],
    (m, width): (usize, usize),
    w: &Packed,
    prologue: Prologue,
    to: (Output, SyncPtr),
) -> candle_core::Result<()> {
    if AVX2.unavailable().is_some() {
        candle_core::bail!("avx2: not available on this CPU");
    }
    let k = w.shape().1;
    prologue.check(NAME, x, (m, width), k)?;
    let a = prologue.row_panels(x, m, k, MR);
    // SAFETY: the caller's contract, passed on; AVX2 and FMA were checked above.
    unsafe {
        match w {
            Packed::F32(p) => tiles(&a, m, p, to),
            Packed::Bf16(p) => tiles(&a, m, p, to),
            Packed::F16(p) => tiles(&a, m, p, to),
        }
    };
    Ok(())
}

/// `a @ w.T` for the packed rows `a` (`m` of them) to `dst` as `output` says.
///
/// # Safety
/// As [`blocking::Driver`]'s `dst`; AVX2 and FMA must be available.
unsafe fn tiles<E: Elem>(a: &[f32], m: usize, w: &Panels<E, NR>, (output, dst): (Output, SyncPtr)) {
    let (n, k) = (w.n, w.k);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // SAFETY: `dst` is this product's output (the contract).
        unsafe { blocking::zero_output((output, dst), (m, n)) };
        return;
    }
    let blocking = Blocking {
        mr: MR,
        nr: NR,
        kc: KC,
        weight_step_bytes: NR * size_of::<E>(),
        row_step_bytes: MR * size_of::<f32>(),
    };
    let one = |p: usize, r: usize, k0: usize, at: (*mut f32, usize)| {
        let kc = KC.min(k - k0);
        let ap = a[r * k * MR + k0 * MR..].as_ptr();
        // SAFETY: `ap` has kc * 6 values of row panel r, `w.at` kc * 16 of panel p; `at`
        // is where the blocking puts tile (p, r), written by this call alone (each
        // (p, r) is one task's, its passes in order). AVX2 is available (the contract).
        unsafe {
            tile(
                ap,
                w.at(p, k0),
                kc,
                at,
                (MR.min(m - r * MR), NR.min(n - p * NR)),
                k0 > 0,
            )
        };
    };
    // SAFETY: `dst` is the output `output` needs (the contract); `one` writes tile
    // (p, r) at the place it is given.
    unsafe { blocking.for_each_tile_to(output, (m, n, k), dst, one) };
}

/// `c (+)= a @ b` for one tile: `a` is `kc` rows of 6 values, `b` `kc` rows of 16 panel
/// slots; the first `rows x cols` of the 6x16 result are written to `c` (row stride
/// `ldc`), added to what is there when `accumulate`. Only the `rows` rows are computed:
/// a batch of one or two tokens does not pay for six.
///
/// # Safety
/// The pointers must cover those values and that part of `c`; `rows` is 1..=6; the
/// CPU must have AVX2, FMA and F16C.
unsafe fn tile<E: Elem>(
    a: *const f32,
    b: *const E,
    kc: usize,
    c: (*mut f32, usize),
    (rows, cols): (usize, usize),
    accumulate: bool,
) {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match rows {
            1 => tile_of::<E, 1>(a, b, kc, c, cols, accumulate),
            2 => tile_of::<E, 2>(a, b, kc, c, cols, accumulate),
            3 => tile_of::<E, 3>(a, b, kc, c, cols, accumulate),
            4 => tile_of::<E, 4>(a, b, kc, c, cols, accumulate),
            5 => tile_of::<E, 5>(a, b, kc, c, cols, accumulate),
            _ => tile_of::<E, MR>(a, b, kc, c, cols, accumulate),
        }
    }
}

/// [`tile`] for `R` rows.
///
/// # Safety
/// As [`tile`], with `rows` = `R`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_of<E: Elem, const R: usize>(
    a: *const f32,
    b: *const E,
    kc: usize,
    (c, ldc): (*mut f32, usize),
    cols: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for kk in 0..kc {
        // SAFETY: kk < kc, inside both panels (the caller's contract).
        let (b0, b1) = unsafe { E::load16(b.add(kk * NR)) };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let x = _mm256_set1_ps(unsafe { *a.add(kk * MR + r) });
            acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
        }
    }
    let full = cols == NR;
    let mut buf = [[0f32; NR]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        let out: *mut f32 = if full {
            // SAFETY: row r of the tile is inside `c` (the caller's contract).
            unsafe { c.add(r * ldc) }
        } else {
            buf[r].as_mut_ptr()
        };
        if accumulate {
            if !full {
                // SAFETY: the first `cols` values of row r are ours (the contract).
                unsafe { std::ptr::copy_nonoverlapping(c.add(r * ldc), out, cols) };
            }
            // SAFETY: `out` has 16 values (a full tile row of `c`, or `buf`).
            unsafe {
                acc[0] = _mm256_add_ps(_mm256_loadu_ps(out), acc[0]);
                acc[1] = _mm256_add_ps(_mm256_loadu_ps(out.add(8)), acc[1]);
            }
        }
        // SAFETY: as above.
        unsafe {
            _mm256_storeu_ps(out, acc[0]);
            _mm256_storeu_ps(out.add(8), acc[1]);
        }
        if !full {
            // SAFETY: the first `cols` values of row r are ours (the contract).
            unsafe { std::ptr::copy_nonoverlapping(out, c.add(r * ldc), cols) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gemm::kernel_or_skip;
    use crate::cpu::gemm::panels::tests as shared;

    /// Against an f64 product for every weight dtype and prologue, over shapes with
    /// every kind of tail: no rows, one row, rows not a multiple of 6, columns not a
    /// multiple of 16, K not a multiple of anything and K over several passes of KC.
    #[test]
    fn matches_an_f64_reference_on_ragged_shapes() {
        if !kernel_or_skip(NAME) {
            return;
        }
        let shapes = [
            (0, 16, 16),
            (1, 7, 3),
            (1, 16, 1),
            (6, 16, 256),
            (17, 40, 50),
            (33, 100, 300),
            (13, 33, 777),
            (64, 129, 257),
        ];
        shared::matches_an_f64_reference(linear, &ORDER, &shapes);
    }

    #[test]
    fn a_row_alone_equals_the_row_in_a_batch() {
        if kernel_or_skip(NAME) {
            shared::a_row_alone_equals_the_row_in_a_batch(linear, &ORDER, &[0, 5, 6, 22]);
        }
    }

    #[test]
    fn fused_swiglu_and_add_equal_the_plain_product() {
        if kernel_or_skip(NAME) {
            let products = (
                linear as shared::Linear<NR>,
                linear_swiglu as shared::Linear<NR>,
                linear_add as _,
            );
            shared::fused_outputs_equal_the_plain_product(products, &ORDER, NAME);
        }
    }

    #[test]
    fn rejects_inputs_that_do_not_fit_the_layer() {
        if kernel_or_skip(NAME) {
            shared::rejects_inputs_that_do_not_fit(linear, &ORDER);
        }
    }
}
