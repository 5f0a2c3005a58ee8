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

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::blocking::Blocking;
use super::{Gemm, PreparedWeight, Prologue};
use crate::cpu::f32_slice;
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
        Ok(x.apply_op1_no_bwd(&Avx2Linear { weight, prologue })?)
    }
}

/// One weight element as the micro-kernel reads it: 16 consecutive panel slots widen
/// to two f32 vectors (columns 0-7 and 8-15 of the panel).
trait Elem: Copy + Send + Sync + 'static {
    /// The panel slot of column `j` (0..16): the order [`load16`](Elem::load16) undoes.
    fn slot(j: usize) -> usize;

    /// # Safety
    /// `p` must point at 16 readable elements; AVX2 and F16C must be available.
    unsafe fn load16(p: *const Self) -> (__m256, __m256);
}

impl Elem for f32 {
    fn slot(j: usize) -> usize {
        j
    }

    #[inline(always)]
    unsafe fn load16(p: *const f32) -> (__m256, __m256) {
        // SAFETY: the caller's contract: 16 f32 at p.
        unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
    }
}

/// bf16 bits. A bf16 value is the top half of its f32, so widening is a 16-bit shift;
/// `unpacklo/hi` with zero do it for 16 values at once but interleave per 128-bit lane
/// (values 0-3 and 8-11, then 4-7 and 12-15), so the panel stores columns in that order.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Bf16(u16);

impl Elem for Bf16 {
    fn slot(j: usize) -> usize {
        // Columns 0-3, 8-11, 4-7, 12-15 in the slots 0-3, 4-7, 8-11, 12-15.
        const SLOT: [usize; NR] = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15];
        SLOT[j]
    }

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

/// f16 bits, widened by F16C's `vcvtph2ps`.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct F16(u16);

impl Elem for F16 {
    fn slot(j: usize) -> usize {
        j
    }

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

/// A `[n, k]` weight in panels of 16 output columns, `[k][16]` each in the element's
/// slot order, the columns past `n` zero.
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
                        let slot = E::slot(j);
                        for (kk, &v) in row.iter().enumerate() {
                            panel[kk * NR + slot] = conv(v);
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
            d => candle_core::bail!("avx2: {d:?} weights are not supported"),
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
struct Avx2Linear<'a> {
    weight: &'a Packed,
    prologue: Prologue<'a>,
}

impl CustomOp1 for Avx2Linear<'_> {
    fn name(&self) -> &'static str {
        "avx2-linear"
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
    if AVX2.unavailable().is_some() {
        candle_core::bail!("avx2: not available on this CPU");
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
        let ap = a[r * k * MR + k0 * MR..].as_ptr();
        // SAFETY: `ap` has kc * 6 values of row panel r, `w.at` kc * 16 of panel p; the
        // tile (rows r*6.., columns p*16.., row stride n) lies inside the m x n output
        // and is written by this call alone (for_each_tile gives each (p, r) to one
        // task, its passes in order). AVX2 was checked in `linear`.
        unsafe {
            tile(
                ap,
                w.at(p, k0),
                kc,
                (dst.at(r * MR * n + p * NR), n),
                (MR.min(m - r * MR), NR.min(n - p * NR)),
                k0 > 0,
            )
        };
    });
    // SAFETY: the tasks cover every (row panel, column panel), each tile written (k > 0).
    unsafe { out.set_len(m * n) };
    out
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
    /// multiple of 6, columns not a multiple of 16, K not a multiple of anything and K
    /// over several passes of KC (accumulation into the output).
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
        for &(m, n, k) in &shapes {
            let w = values(n * k, 2 + n as u64);
            let norm: Vec<f32> = values(k, 9).iter().map(|v| 1.0 + v).collect();
            let prologues = [
                Prologue::None,
                Prologue::RmsNorm(&norm, 1e-6),
                Prologue::SwiGlu,
            ];
            for prologue in prologues {
                let width = if matches!(prologue, Prologue::SwiGlu) {
                    2 * k
                } else {
                    k
                };
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
        for r in [0, 5, 6, 22] {
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
