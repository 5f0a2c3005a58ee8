//! f32 GEMM on AVX-512F, with f32, bf16 or f16 weights packed once at load: the `avx2`
//! kernel's design on 512-bit vectors and twice the registers.
//!
//! Intel server cores (Skylake-SP and later) have two 512-bit FMA units: an AVX2 kernel
//! uses half of their f32 arithmetic (on the AMX machine of `benches/RESULTS.md`, FMA zmm
//! 233 GFLOP/s per thread against ymm 126). AMD Zen 4 runs a 512-bit FMA as two 256-bit
//! halves, so there the gain is fewer loads and broadcasts per FMA, not more arithmetic.
//!
//! The micro-kernel keeps a 12x32 f32 output tile in 24 zmm accumulators: per k it
//! loads 32 weights (two vectors, widened from bf16 or f16 where the weights are) and
//! broadcasts 12 activations, 24 FMAs. Weights are panels of 32 output columns, `[k][32]`
//! each; activations are packed per call into panels of 12 rows, `[k][12]`, with the
//! prologue applied ([`Prologue::row_panels`]). K is taken [`KC`] at a time so that a
//! tile's slices of both panels stay in L1; tasks and tile order are [`Blocking`]'s.

use std::arch::x86_64::*;

use candle_core::{DType, Tensor};

use super::blocking::{self, tile_rows, Blocking, Output, TileHeights};
use super::panels::{self, in_order, Bf16, Panels, SlotOrder, F16};
use super::{Gemm, PreparedWeight, Prologue};
use crate::cpu::attention::AttentionProducts;
use crate::cpu::par::SyncPtr;

/// Rows of the output tile: 24 of the 32 zmm registers hold its accumulators.
const MR: usize = 12;
/// Columns of the output tile (two 16-lane vectors) and of a weight panel.
const NR: usize = 32;
/// K per pass over a tile: 128 keeps the tile's A slice (6 KiB) and B slice (16 KiB in
/// f32) in L1 together.
const KC: usize = 128;

pub(super) struct Avx512;

pub(super) static AVX512: Avx512 = Avx512;

const NAME: &str = "avx512";

impl Gemm for Avx512 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn unavailable(&self) -> Option<String> {
        super::lacking(&[(is_x86_feature_detected!("avx512f"), "AVX512F")])
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
        crate::cpu::gemm::op::linear(("avx512-linear", linear), x, (w, w.shape().0), prologue)
    }

    fn linear_swiglu(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<crate::Result<Tensor>> {
        let op = (
            NAME,
            "avx512-linear-swiglu",
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
            "avx512-linear-add",
            linear_add as super::op::ProductAdd<Packed>,
        );
        super::op::add(op, out, x, weight, prologue)
    }

    fn attention(&self) -> AttentionProducts {
        ATTENTION
    }
}

/// One weight element as the micro-kernel reads it: 32 consecutive panel slots (in
/// column order) widen to two f32 vectors.
trait Elem: Copy + Send + Sync + 'static {
    /// # Safety
    /// `p` must point at 32 readable elements; AVX512F must be available.
    unsafe fn load32(p: *const Self) -> (__m512, __m512);
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load32(p: *const f32) -> (__m512, __m512) {
        // SAFETY: the caller's contract: 32 f32 at p, AVX512F present.
        unsafe { (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))) }
    }
}

/// bf16: zero-extended to 32 bits and shifted up 16 (a bf16 value is the top half of
/// its f32).
impl Elem for Bf16 {
    #[inline(always)]
    unsafe fn load32(p: *const Bf16) -> (__m512, __m512) {
        // SAFETY: the caller's contract: 32 bf16 (64 bytes) at p, AVX512F present.
        unsafe {
            let widen = |q: *const Bf16| {
                let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(q.cast()));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v))
            };
            (widen(p), widen(p.add(16)))
        }
    }
}

/// f16: widened by AVX512F's `vcvtph2ps`.
impl Elem for F16 {
    #[inline(always)]
    unsafe fn load32(p: *const F16) -> (__m512, __m512) {
        // SAFETY: the caller's contract: 32 f16 (64 bytes) at p, AVX512F present.
        unsafe {
            (
                _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(16).cast())),
            )
        }
    }
}

/// The weight's panels: 32 columns each, every dtype in column order.
type Packed = panels::Packed<NR>;

const ORDER: SlotOrder = SlotOrder {
    f32: in_order,
    bf16: in_order,
    f16: in_order,
};

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
    if let Some(why) = AVX512.unavailable() {
        candle_core::bail!("avx512: {why}");
    }
    let k = w.shape().1;
    prologue.check(NAME, x, (m, width), k)?;
    let a = prologue.row_panels(x, m, k, MR);
    // SAFETY: the caller's contract, passed on; AVX512F was checked above.
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
/// As [`blocking::Driver`]'s `dst`; AVX512F must be available.
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
    let tile = |p: usize, r: usize, k0: usize, at: (*mut f32, usize)| {
        let kc = KC.min(k - k0);
        let args = TileArgs {
            a: a[r * k * MR + k0 * MR..].as_ptr(),
            b: w.at(p, k0),
            kc,
            c: at,
            cols: NR.min(n - p * NR),
            accumulate: k0 > 0,
        };
        // SAFETY: `args.a` has kc * 12 values of row panel r, `args.b` kc * 32 of panel
        // p; `at` is where the blocking puts tile (p, r), written by this call alone
        // (each (p, r) is one task's, its passes in order). AVX512F is available (the
        // contract).
        unsafe { tile_rows::<_, Tile>(args, MR.min(m - r * MR)) };
    };
    // SAFETY: `dst` is the output `output` needs (the contract); `tile` writes tile
    // (p, r) at the place it is given.
    unsafe { blocking.for_each_tile_to(output, (m, n, k), dst, tile) };
}

/// One tile's operands: `a` is `kc` rows of 12 values, `b` `kc` rows of 32 panel
/// slots; the first `cols` columns of the result go to `c` (row stride in `c.1`), added
/// to what is there when `accumulate`.
struct TileArgs<E> {
    a: *const f32,
    b: *const E,
    kc: usize,
    c: (*mut f32, usize),
    cols: usize,
    accumulate: bool,
}

/// The micro-kernel, one monomorphised tile per height (`blocking::tile_rows`).
struct Tile;

impl<E: Elem> TileHeights<TileArgs<E>> for Tile {
    unsafe fn tile<const R: usize>(args: TileArgs<E>) {
        // SAFETY: the caller's contract ([`tile_of`]'s), passed on.
        unsafe { tile_of::<E, R>(args) }
    }
}

/// `R` rows of one tile. Only those rows are computed: a batch of one or two tokens
/// does not pay for twelve.
///
/// # Safety
/// The pointers must cover `kc` steps of both panels and the tile's `R` rows and `cols`
/// columns of `c`, which nobody else accesses meanwhile; the CPU must have AVX512F.
#[target_feature(enable = "avx512f")]
unsafe fn tile_of<E: Elem, const R: usize>(t: TileArgs<E>) {
    let (a, b) = (t.a, t.b);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for kk in 0..t.kc {
        // SAFETY: kk < kc, inside both panels (the caller's contract).
        let (b0, b1) = unsafe { E::load32(b.add(kk * NR)) };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let x = _mm512_set1_ps(unsafe { *a.add(kk * MR + r) });
            acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
        }
    }
    let (c, ldc) = t.c;
    let full = t.cols == NR;
    let mut buf = [[0f32; NR]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        let out: *mut f32 = if full {
            // SAFETY: row r of the tile is inside `c` (the caller's contract).
            unsafe { c.add(r * ldc) }
        } else {
            buf[r].as_mut_ptr()
        };
        if t.accumulate {
            if !full {
                // SAFETY: the first `cols` values of row r are ours (the contract).
                unsafe { std::ptr::copy_nonoverlapping(c.add(r * ldc), out, t.cols) };
            }
            // SAFETY: `out` has 32 values (a full tile row of `c`, or `buf`).
            unsafe {
                acc[0] = _mm512_add_ps(_mm512_loadu_ps(out), acc[0]);
                acc[1] = _mm512_add_ps(_mm512_loadu_ps(out.add(16)), acc[1]);
            }
        }
        // SAFETY: as above.
        unsafe {
            _mm512_storeu_ps(out, acc[0]);
            _mm512_storeu_ps(out.add(16), acc[1]);
        }
        if !full {
            // SAFETY: the first `cols` values of row r are ours (the contract).
            unsafe { std::ptr::copy_nonoverlapping(out, c.add(r * ldc), t.cols) };
        }
    }
}

/// Attention's products through [`strided_gemm`], for the kernels that require AVX512F
/// and keep attention in f32.
pub(super) const ATTENTION: AttentionProducts =
    AttentionProducts::PerHead("f32-avx512", strided_gemm);

/// Attention's f32 products on this kernel's micro-kernel, for the AVX-512 kernels
/// whose attention is f32 (`avx512`, and `avx512vnni` on a CPU without AVX512_BF16):
/// `c = alpha * a @ op(b)` as [`crate::cpu::attention::StridedGemm`] defines it,
/// single-threaded (the callers are rayon tasks, one per sequence and head). Both
/// operands are packed per call into the tile's panels (A scaled by `alpha`), which
/// costs one read of each against `m n k` multiply-adds; on a CPU without AVX512F it is
/// the portable product.
///
/// Why not the `gemm` crate, which the portable product uses: without its `x86-v4`
/// feature it runs AVX2 FMAs, half of what a Zen 5 or Intel server core does per cycle,
/// and with it its packing cost more than the wider FMAs saved (benches/RESULTS.md).
///
/// # Safety
/// The pointers must cover those views.
pub(super) unsafe fn strided_gemm(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (*const f32, usize),
    (b, ldb, b_t): (*const f32, usize, bool),
    (c, ldc): (*mut f32, usize),
) {
    if !is_x86_feature_detected!("avx512f") {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            super::portable::strided_gemm((m, n, k), alpha, (a, lda), (b, ldb, b_t), (c, ldc))
        };
        return;
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: (i, j) is inside c's m x n view (the caller's contract).
                unsafe { c.add(i * ldc + j).write(0.0) };
            }
        }
        return;
    }
    let (row_panels, col_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    ATTENTION_PANELS.with_borrow_mut(|(ap, bp)| {
        // Every slot a tile reads is written below, the padding past m rows and n
        // columns with zeros: no zero-filling of the whole buffers per call.
        ap.resize(ap.len().max(row_panels * k * MR), 0.0);
        bp.resize(bp.len().max(col_panels * k * NR), 0.0);
        let (ap, bp) = (
            &mut ap[..row_panels * k * MR],
            &mut bp[..col_panels * k * NR],
        );
        for (panel, dst) in ap.chunks_exact_mut(k * MR).enumerate() {
            let rows = MR.min(m - panel * MR);
            if rows < MR {
                for step in dst.chunks_exact_mut(MR) {
                    step[rows..].fill(0.0);
                }
            }
            for i in 0..rows {
                // SAFETY: row `panel * MR + i` of a, k values, is inside its view.
                let row = unsafe { std::slice::from_raw_parts(a.add((panel * MR + i) * lda), k) };
                for (kk, &v) in row.iter().enumerate() {
                    dst[kk * MR + i] = alpha * v;
                }
            }
        }
        for (panel, dst) in bp.chunks_exact_mut(k * NR).enumerate() {
            let cols = NR.min(n - panel * NR);
            if cols < NR {
                for step in dst.chunks_exact_mut(NR) {
                    step[cols..].fill(0.0);
                }
            }
            if b_t {
                // Element (kk, col) of op(b) is b[col][kk]: each column is a row of b.
                for j in 0..cols {
                    // SAFETY: row `panel * NR + j` of b, k values, is inside its view.
                    let row =
                        unsafe { std::slice::from_raw_parts(b.add((panel * NR + j) * ldb), k) };
                    for (kk, &v) in row.iter().enumerate() {
                        dst[kk * NR + j] = v;
                    }
                }
            } else {
                // Element (kk, col) is b[kk][col]: a panel's step is part of a row of b.
                for (kk, step) in dst.chunks_exact_mut(NR).enumerate() {
                    // SAFETY: row kk of b, from column panel * NR on, `cols` values, is
                    // inside its view.
                    let row =
                        unsafe { std::slice::from_raw_parts(b.add(kk * ldb + panel * NR), cols) };
                    step[..cols].copy_from_slice(row);
                }
            }
        }
        for p in 0..col_panels {
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                for r in 0..row_panels {
                    let args = TileArgs {
                        a: ap[r * k * MR + k0 * MR..].as_ptr(),
                        b: bp[p * k * NR + k0 * NR..].as_ptr(),
                        kc,
                        c: (c.wrapping_add(r * MR * ldc + p * NR), ldc),
                        cols: NR.min(n - p * NR),
                        accumulate: k0 > 0,
                    };
                    // SAFETY: `args.a` has kc * 12 values of row panel r and `args.b` kc *
                    // 32 of column panel p (both packed above, zero past m and n); the
                    // tile's rows and columns lie inside the m x n view of `c` (the
                    // caller's contract), written by this call alone, the first pass with
                    // accumulate off; AVX512F was detected above.
                    unsafe { tile_rows::<_, Tile>(args, MR.min(m - r * MR)) };
                }
            }
        }
    });
}

thread_local! {
    /// The packed operands of [`strided_gemm`], kept per thread between calls.
    static ATTENTION_PANELS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gemm::kernel_or_skip;
    use crate::cpu::gemm::panels::tests as shared;

    /// Against an f64 product for every weight dtype and prologue, over shapes with
    /// every kind of tail: no rows, one row, rows not a multiple of 12, columns not a
    /// multiple of 32 (and fewer than 16), K not a multiple of anything and K over
    /// several passes of KC.
    #[test]
    fn matches_an_f64_reference_on_ragged_shapes() {
        if !kernel_or_skip(NAME) {
            return;
        }
        let shapes = [
            (0, 32, 16),
            (1, 7, 3),
            (1, 32, 1),
            (12, 32, 128),
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
            shared::a_row_alone_equals_the_row_in_a_batch(linear, &ORDER, &[0, 5, 12, 22]);
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

    /// Attention's products against an f64 reference: both forms of `b`, strided views
    /// wider than the operands, alpha, K over several passes, tails of rows and columns.
    #[test]
    fn strided_gemm_matches_an_f64_reference() {
        if !kernel_or_skip(NAME) {
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 7, 3),
            (12, 32, 128),
            (13, 33, 129),
            (128, 512, 128),
            (37, 128, 300),
            (3, 5, 0),
        ] {
            for b_t in [true, false] {
                let (lda, ldb, ldc) = (k + 3, if b_t { k + 5 } else { n + 5 }, n + 2);
                let a = crate::cpu::gemm::test_values(m * lda, 7 + m as u64);
                let b_rows = if b_t { n } else { k };
                let b = crate::cpu::gemm::test_values(b_rows * ldb, 11 + n as u64);
                let sentinel = 1234.5f32;
                let mut c = vec![sentinel; m * ldc];
                let alpha = 0.125;
                // SAFETY: the buffers cover the views (row strides as given).
                unsafe {
                    strided_gemm(
                        (m, n, k),
                        alpha,
                        (a.as_ptr(), lda),
                        (b.as_ptr(), ldb, b_t),
                        (c.as_mut_ptr(), ldc),
                    )
                };
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if j >= n {
                            assert_eq!(got, sentinel, "({m},{n},{k}) wrote past column {n}");
                            continue;
                        }
                        let want: f64 = (0..k)
                            .map(|kk| {
                                let bv = if b_t {
                                    b[j * ldb + kk]
                                } else {
                                    b[kk * ldb + j]
                                };
                                f64::from(a[i * lda + kk]) * f64::from(bv)
                            })
                            .sum::<f64>()
                            * f64::from(alpha);
                        let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                        assert!(
                            (f64::from(got) - want).abs() <= tol,
                            "({m},{n},{k}) b_t {b_t} at ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
