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

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::blocking::{tile_rows, Blocking, TileHeights};
use super::{Gemm, PreparedWeight, Prologue};
use crate::cpu::f32_slice;
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
        Ok(PreparedWeight::new(NAME, Packed::from_tensor(&weight)?))
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> crate::Result<Tensor> {
        let weight = weight.form::<Packed>(NAME)?;
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(x.apply_op1_no_bwd(&Avx512Linear { weight, prologue })?)
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

/// bf16 bits: a bf16 value is the top half of its f32, so widening is zero-extending
/// to 32 bits and a 16-bit shift.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Bf16(u16);

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

/// f16 bits, widened by AVX512F's `vcvtph2ps`.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct F16(u16);

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

/// A `[n, k]` weight in panels of 32 output columns, `[k][32]` each, the columns past
/// `n` zero.
struct Panels<E> {
    n: usize,
    k: usize,
    data: Vec<E>,
}

impl<E: Elem> Panels<E> {
    /// Packs row-major `[n, k]` values (in parallel: called at load).
    fn pack<S: Copy + Sync>(
        w: &[S],
        n: usize,
        k: usize,
        zero: E,
        conv: impl Fn(S) -> E + Sync,
    ) -> Self {
        let mut data = vec![zero; n.div_ceil(NR) * k * NR];
        if k > 0 {
            data.par_chunks_mut(k * NR)
                .enumerate()
                .for_each(|(p, panel)| {
                    for j in 0..NR.min(n - p * NR) {
                        let row = &w[(p * NR + j) * k..][..k];
                        for (kk, &v) in row.iter().enumerate() {
                            panel[kk * NR + j] = conv(v);
                        }
                    }
                });
        }
        Self { n, k, data }
    }

    /// Panel `p` from k index `k0` on.
    fn at(&self, p: usize, k0: usize) -> *const E {
        self.data[p * self.k * NR + k0 * NR..].as_ptr()
    }
}

/// A linear layer's weight in this kernel's form, in the checkpoint's dtype.
enum Packed {
    F32(Panels<f32>),
    Bf16(Panels<Bf16>),
    F16(Panels<F16>),
}

impl Packed {
    fn from_tensor(w: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        let flat = w.flatten_all()?;
        Ok(match w.dtype() {
            DType::F32 => Self::F32(Panels::pack(&flat.to_vec1::<f32>()?, n, k, 0.0, |v| v)),
            DType::BF16 => Self::Bf16(Panels::pack(
                &flat.to_vec1::<half::bf16>()?,
                n,
                k,
                Bf16(0),
                |v| Bf16(v.to_bits()),
            )),
            DType::F16 => Self::F16(Panels::pack(
                &flat.to_vec1::<half::f16>()?,
                n,
                k,
                F16(0),
                |v| F16(v.to_bits()),
            )),
            d => candle_core::bail!("avx512: {d:?} weights are not supported"),
        })
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            Self::F32(p) => (p.n, p.k),
            Self::Bf16(p) => (p.n, p.k),
            Self::F16(p) => (p.n, p.k),
        }
    }
}

/// `prologue(x) @ w.T` as a candle op on a contiguous 2-D f32 CPU tensor.
struct Avx512Linear<'a> {
    weight: &'a Packed,
    prologue: Prologue<'a>,
}

impl CustomOp1 for Avx512Linear<'_> {
    fn name(&self) -> &'static str {
        "avx512-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, width) = l.shape().dims2()?;
        let out = linear(f32_slice(s, l)?, m, width, self.weight, self.prologue)?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((m, self.weight.shape().0)),
        ))
    }
}

/// `prologue(x) @ w.T` for `m` rows of `width` values: f32 `m x n`.
fn linear(
    x: &[f32],
    m: usize,
    width: usize,
    w: &Packed,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    if let Some(why) = AVX512.unavailable() {
        candle_core::bail!("avx512: {why}");
    }
    let k = w.shape().1;
    prologue.check(NAME, x, (m, width), k)?;
    let a = prologue.row_panels(x, m, k, MR);
    Ok(match w {
        Packed::F32(p) => product(&a, m, p),
        Packed::Bf16(p) => product(&a, m, p),
        Packed::F16(p) => product(&a, m, p),
    })
}

/// `a @ w.T` for the packed rows `a` (`m` of them): f32 `m x n`, every element written.
fn product<E: Elem>(a: &[f32], m: usize, w: &Panels<E>) -> Vec<f32> {
    let (n, k) = (w.n, w.k);
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    if m == 0 || n == 0 {
        return out;
    }
    if k == 0 {
        out.resize(m * n, 0.0);
        return out;
    }
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast());
    let blocking = Blocking {
        mr: MR,
        nr: NR,
        kc: KC,
        weight_step_bytes: NR * size_of::<E>(),
        row_step_bytes: MR * size_of::<f32>(),
    };
    blocking.for_each_tile((m, n, k), |p, r, k0| {
        let kc = KC.min(k - k0);
        let args = TileArgs {
            a: a[r * k * MR + k0 * MR..].as_ptr(),
            b: w.at(p, k0),
            kc,
            c: (dst.at(r * MR * n + p * NR), n),
            cols: NR.min(n - p * NR),
            accumulate: k0 > 0,
        };
        // SAFETY: `args.a` has kc * 12 values of row panel r, `args.b` kc * 32 of panel
        // p; the tile (rows r*12.., columns p*32.., row stride n) lies inside the m x n
        // output and is written by this call alone (for_each_tile gives each (p, r) to
        // one task, its passes in order). AVX512F was checked in `linear`.
        unsafe { tile_rows::<_, Tile>(args, MR.min(m - r * MR)) };
    });
    // SAFETY: the tasks cover every (row panel, column panel), each tile written (k > 0).
    unsafe { out.set_len(m * n) };
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gemm::test_values as values;
    use crate::cpu::gemm::{kernel_or_skip, reference_rows};

    /// The weights as each dtype stores them, and their exact values in f64.
    fn weights(w: &[f32], n: usize, k: usize, dtype: DType) -> (Packed, Vec<f64>) {
        let t = Tensor::from_slice(w, (n, k), &candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let exact: Vec<f64> = t
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (Packed::from_tensor(&t).unwrap(), exact)
    }

    /// Against an f64 product of the same weight values, for every weight dtype and
    /// prologue, over shapes with every kind of tail: no rows, one row, rows not a
    /// multiple of 12, columns not a multiple of 32 (and fewer than 16), K not a
    /// multiple of anything and K over several passes of KC (accumulation into the
    /// output).
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
        for &(m, n, k) in &shapes {
            let w = values(n * k, 2 + n as u64);
            let norm: Vec<f32> = values(k, 9).iter().map(|v| 1.0 + v).collect();
            let prologues = [
                Prologue::None,
                Prologue::RmsNorm(&norm, 1e-6),
                Prologue::SwiGlu,
            ];
            for prologue in prologues {
                let width = prologue.input_width(k);
                let x: Vec<f32> = values(m * width, 1 + m as u64)
                    .iter()
                    .map(|v| 4.0 * v)
                    .collect();
                let a = reference_rows(&x, m, k, prologue);
                for dtype in [DType::F32, DType::BF16, DType::F16] {
                    let (packed, wx) = weights(&w, n, k, dtype);
                    let got = linear(&x, m, width, &packed, prologue).unwrap();
                    assert_eq!(got.len(), m * n, "{m}x{n}x{k}");
                    for i in 0..m {
                        for j in 0..n {
                            let terms = (0..k).map(|t| a[i * k + t] * wx[j * k + t]);
                            let want: f64 = terms.clone().sum();
                            let scale: f64 = terms.map(f64::abs).sum::<f64>() + 1e-30;
                            let err = (got[i * n + j] as f64 - want).abs() / scale;
                            assert!(
                                err < 1e-5,
                                "{dtype:?} {m}x{n}x{k} at ({i},{j}): {} vs {want}",
                                got[i * n + j]
                            );
                        }
                    }
                }
            }
        }
    }

    /// A row's result does not depend on the rows packed beside it: the same row alone
    /// and inside a batch gives the same bits (batch invariance of the model).
    #[test]
    fn a_row_alone_equals_the_row_in_a_batch() {
        if !kernel_or_skip(NAME) {
            return;
        }
        let (m, n, k) = (23, 50, 600);
        let x = values(m * k, 3);
        let (packed, _) = weights(&values(n * k, 4), n, k, DType::BF16);
        let all = linear(&x, m, k, &packed, Prologue::None).unwrap();
        for r in [0, 5, 12, 22] {
            let one = linear(&x[r * k..][..k], 1, k, &packed, Prologue::None).unwrap();
            assert_eq!(one, all[r * n..][..n], "row {r}");
        }
    }

    #[test]
    fn rejects_inputs_that_do_not_fit_the_layer() {
        if !kernel_or_skip(NAME) {
            return;
        }
        let (packed, _) = weights(&values(12, 5), 4, 3, DType::F32);
        assert!(linear(&[0.0; 5], 1, 5, &packed, Prologue::None).is_err());
        assert!(linear(&[0.0; 3], 1, 3, &packed, Prologue::SwiGlu).is_err());
        assert!(linear(&[0.0; 3], 1, 3, &packed, Prologue::RmsNorm(&[1.0; 2], 1e-6)).is_err());
    }
}
