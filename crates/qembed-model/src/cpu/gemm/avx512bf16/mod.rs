//! bf16 linear layers on AVX512_BF16 (`VDPBF16PS`: AMD Zen 4 and later, Intel Cooper
//! Lake and later), with the weights packed once at load, and attention's two
//! products on the same tile ([`attention`]).
//!
//! One `VDPBF16PS` multiplies 16 pairs of bf16 values by 16 pairs and adds each lane's
//! two products to an f32 accumulator: 32 multiply-adds, twice what an f32 FMA of the
//! same width does, from half the bytes. So the weights stay bf16, packed at load in
//! the order the micro-kernel reads them (the packed copy is the only one kept), and
//! the activations are rounded to bf16 as they are packed, with the layer's prologue
//! (RMSNorm, SwiGLU) applied in f32 first, as the AMX kernel does; sums are f32.
//!
//! The micro-kernel keeps a 12x32 f32 output tile in 24 zmm accumulators: per pair of K
//! it loads one line of the weight panel (two vectors: 16 columns of pairs each) and
//! broadcasts 12 activation pairs, 24 dot products. Weights are panels of 32 output
//! columns, `[k/2][32][2]` each, in 64-byte aligned lines; activations are packed per
//! call into panels of 12 rows, `[k/2][12]` pairs. The tasks and the order of tiles are
//! the AVX2 kernel's ([`Blocking`]).
//!
//! The instructions sit behind a trait (`isa`) with a software model in tests
//! (`model`), so the packing, tile loop and tails are tested on CPUs without them;
//! where the CPU has them the tests run both and compare.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

use super::bf16::round_input_row;
use super::blocking::{self, tile_rows, Blocking, Output, TileHeights};
use super::{Gemm, PreparedWeight, Prologue};
use crate::cpu::attention::AttentionProducts;
use crate::cpu::par::SyncPtr;

mod attention;
mod isa;
#[cfg(any(test, feature = "software-models"))]
mod model;

use isa::{DotIsa, Hw};

/// Rows of the output tile: 24 of the 32 zmm registers hold its accumulators.
const MR: usize = 12;
/// Columns of the output tile and of a weight panel (two 16-lane vectors).
const NR: usize = 32;
/// K pairs per pass over a tile: 128 pairs keep the tile's weight slice (16 KiB) and
/// activation slice (6 KiB) in L1 together.
const KC: usize = 128;

/// 64 bytes, 64-byte aligned: 16 bf16 pairs, one vector load of a weight panel.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u16; 32]);

/// The AVX512_BF16 kernel of the CPU family, on the instructions `I` under the name
/// `name`: bf16 weights only.
pub(super) struct Avx512Bf16<I> {
    name: &'static str,
    isa: PhantomData<fn() -> I>,
}

pub(super) static AVX512BF16: &dyn Gemm = &Avx512Bf16::<Hw> {
    name: NAME,
    isa: PhantomData,
};

/// The kernel on the software model of its instructions, a kernel of its own for the
/// model-level tests on CPUs without them (`--features software-models`).
#[cfg(feature = "software-models")]
pub(super) static AVX512BF16_MODEL: &dyn Gemm = &Avx512Bf16::<model::Model> {
    name: "avx512bf16-model",
    isa: PhantomData,
};

const NAME: &str = "avx512bf16";

/// This kernel's attention where the CPU has its instructions, else `fallback`: for
/// kernels of other dtypes (int8) whose attention may as well run in bf16.
pub(super) fn attention_or(fallback: AttentionProducts) -> AttentionProducts {
    match Hw::unavailable() {
        None => Hw::ATTENTION,
        Some(_) => fallback,
    }
}

impl<I: DotIsa + 'static> Gemm for Avx512Bf16<I> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn unavailable(&self) -> Option<String> {
        I::unavailable()
    }

    fn preferred_here(&self) -> bool {
        isa::dot_is_fast()
    }

    fn supports(&self, dtype: DType) -> bool {
        dtype == DType::BF16
    }

    fn prepare(&self, weight: Tensor) -> crate::Result<PreparedWeight> {
        let (n, k) = weight.dims2()?;
        // Packed straight from the tensor's storage where it is contiguous (a copy of a
        // layer's weights fewer at the load's peak); a view (a tensor-parallel slice)
        // is copied out first.
        let (storage, layout) = weight.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::BF16(values)), Some((from, to))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(PreparedWeight::new(
                self.name,
                Packed::pack(&values[from..to], n, k)?,
            ));
        }
        drop(storage);
        let values = weight.flatten_all()?.to_vec1::<half::bf16>()?;
        Ok(PreparedWeight::new(self.name, Packed::pack(&values, n, k)?))
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> crate::Result<Tensor> {
        let w = weight.form::<Packed>(self.name)?;
        crate::cpu::gemm::op::linear(("avx512bf16-linear", linear::<I>), x, (w, w.n), prologue)
    }

    fn linear_swiglu(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<crate::Result<Tensor>> {
        let product: crate::cpu::gemm::op::Product<Packed> = linear_swiglu::<I>;
        let op = (self.name, "avx512bf16-linear-swiglu", product);
        crate::cpu::gemm::op::swiglu(op, x, weight, prologue, |w| {
            super::swiglu_halves(w.n, NR).then_some(w.n / 2)
        })
    }

    fn linear_add(
        &self,
        out: &Tensor,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<crate::Result<()>> {
        let product: crate::cpu::gemm::op::ProductAdd<Packed> = linear_add::<I>;
        crate::cpu::gemm::op::add(
            (self.name, "avx512bf16-linear-add", product),
            out,
            x,
            weight,
            prologue,
        )
    }

    fn attention(&self) -> AttentionProducts {
        I::ATTENTION
    }
}

/// A `[n, k]` bf16 weight in panels of 32 output columns: panel `p`'s pair `t` is lines
/// `2 (p kp + t)` (columns 0-15) and `+ 1` (16-31), column `j`'s pair at `2 (j % 16)`.
/// Columns past `n` and the odd K past `k` are zero.
struct Packed {
    n: usize,
    k: usize,
    /// Pairs of K: `k` rounded up to even, halved.
    kp: usize,
    data: Vec<Line>,
}

impl Packed {
    /// Packs row-major `[n, k]` values (in parallel: called at load).
    fn pack(w: &[half::bf16], n: usize, k: usize) -> candle_core::Result<Self> {
        if w.len() != n * k {
            candle_core::bail!("avx512bf16: {} weights for a {n}x{k} layer", w.len());
        }
        let mut packed = Self::zeros(n, k);
        let kp = packed.kp;
        if kp > 0 {
            packed
                .data
                .par_chunks_mut(kp * 2)
                .enumerate()
                .for_each(|(p, panel)| {
                    for j in 0..NR.min(n - p * NR) {
                        let row = &w[(p * NR + j) * k..][..k];
                        let (half, slot) = (j / 16, 2 * (j % 16));
                        for (kk, v) in row.iter().enumerate() {
                            panel[2 * (kk / 2) + half].0[slot + kk % 2] = v.to_bits();
                        }
                    }
                });
        }
        Ok(packed)
    }

    /// An `[n, k]` layer of zeros.
    fn zeros(n: usize, k: usize) -> Self {
        let kp = k.div_ceil(2);
        Self {
            n,
            k,
            kp,
            data: vec![Line([0; 32]); n.div_ceil(NR) * kp * 2],
        }
    }

    /// Panel `p`'s lines from pair `t0` on, `kc` pairs of them.
    fn lines(&self, p: usize, t0: usize, kc: usize) -> &[Line] {
        &self.data[2 * (p * self.kp + t0)..][..2 * kc]
    }
}

/// `prologue(x) @ w.T` for `m` rows of `width` values: f32 `m x n`, on the
/// instructions `I` ([`Hw`] but in tests).
fn linear<I: DotIsa>(
    x: &[f32],
    mw: (usize, usize),
    w: &Packed,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    blocking::plain(product::<I>, w.n, x, mw, w, prologue)
}

/// `swiglu(prologue(x) @ w.T)` for a gate_up weight whose halves are whole panels: f32
/// `m x n / 2` (`Blocking::for_each_tile_swiglu`).
fn linear_swiglu<I: DotIsa>(
    x: &[f32],
    mw: (usize, usize),
    w: &Packed,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    blocking::swiglu(product::<I>, (w.n, NR), x, mw, w, prologue)
}

/// `out += prologue(x) @ w.T` in place, `out` `m x n` (`Blocking::for_each_tile_add`).
fn linear_add<I: DotIsa>(
    x: &[f32],
    mw: (usize, usize),
    w: &Packed,
    prologue: Prologue,
    out: &mut [f32],
) -> candle_core::Result<()> {
    blocking::add(product::<I>, w.n, x, mw, w, prologue, out)
}

/// The product to `dst` as `output` says (`Blocking::for_each_tile_to`).
///
/// # Safety
/// As [`blocking::Driver`].
unsafe fn product<I: DotIsa>(
    x: &[f32],
    (m, width): (usize, usize),
    w: &Packed,
    prologue: Prologue,
    (output, dst): (Output, SyncPtr),
) -> candle_core::Result<()> {
    if let Some(why) = I::unavailable() {
        candle_core::bail!("avx512bf16: {why}");
    }
    prologue.check(NAME, x, (m, width), w.k)?;
    let a = pack_rows(x, m, w, prologue);
    let n = w.n;
    if w.kp == 0 {
        // SAFETY: `dst` is this product's output (the contract).
        unsafe { blocking::zero_output((output, dst), (m, n)) };
        return Ok(());
    }
    let blocking = Blocking {
        mr: MR,
        nr: NR,
        kc: KC,
        weight_step_bytes: 2 * size_of::<Line>(),
        row_step_bytes: MR * size_of::<u32>(),
    };
    // Tile (p, r)'s pass from pair t0, written at `at` (row stride `ld`).
    let tile = |p: usize, r: usize, t0: usize, at: (*mut f32, usize)| {
        let kc = KC.min(w.kp - t0);
        let args = TileArgs {
            a: &a[(r * w.kp + t0) * MR..][..kc * MR],
            b: w.lines(p, t0, kc),
            out: at,
            cols: NR.min(n - p * NR),
            accumulate: t0 > 0,
        };
        // SAFETY: `at` is where the blocking puts tile (p, r), valid for its rows and
        // columns and written by this call alone (each (p, r) is one task's, its passes
        // in order); `I` is available (checked above).
        unsafe { tile_rows::<_, I>(args, MR.min(m - r * MR)) };
    };
    // SAFETY: `dst` is the output `output` needs (the contract); `tile` writes tile
    // (p, r) at the place it is given.
    unsafe { blocking.for_each_tile_to(output, (m, n, w.kp), dst, tile) };
    Ok(())
}

/// The `m` input rows with the prologue applied, in bf16 pairs, in panels of 12 rows,
/// `[kp][12]` each, the rows past `m` zero. In parallel, one panel a task.
fn pack_rows(x: &[f32], m: usize, w: &Packed, prologue: Prologue) -> Vec<u32> {
    let (k, kp) = (w.k, w.kp);
    let mut a = vec![0u32; m.div_ceil(MR) * kp * MR];
    if kp == 0 {
        return a;
    }
    a.par_chunks_mut(kp * MR)
        .enumerate()
        .for_each(|(panel, dst)| {
            let mut row = vec![MaybeUninit::<u16>::uninit(); 2 * kp];
            for i in 0..MR.min(m - panel * MR) {
                round_input_row(&mut row, x, panel * MR + i, k, prologue);
                // SAFETY: round_input_row wrote all of `row` (values, then zeros), and
                // MaybeUninit<u16> has u16's layout.
                let row: &[u16] =
                    unsafe { std::slice::from_raw_parts(row.as_ptr().cast(), 2 * kp) };
                for (t, pair) in row.chunks_exact(2).enumerate() {
                    dst[t * MR + i] = u32::from(pair[0]) | u32::from(pair[1]) << 16;
                }
            }
        });
    a
}

/// One tile's operands: `kc` pairs of its row panel and of its weight panel, and where
/// its output goes.
struct TileArgs<'a> {
    /// `[kc][12]` activation pairs.
    a: &'a [u32],
    /// `2 kc` weight lines.
    b: &'a [Line],
    /// The tile's first output element and the output's row stride.
    out: (*mut f32, usize),
    /// Output columns of the tile to write (1..=32).
    cols: usize,
    /// Add to the output (a later K pass) instead of writing it.
    accumulate: bool,
}

// Each tile height its own monomorphised tile (`blocking::tile_rows`).
impl<'a, I: DotIsa> TileHeights<TileArgs<'a>> for I {
    unsafe fn tile<const R: usize>(args: TileArgs<'a>) {
        // SAFETY: the caller's contract ([`tile_body`]'s), passed on.
        unsafe { <I as DotIsa>::tile::<R>(args) }
    }
}

/// `out (+)= a @ b` for the first `R` rows and `cols` columns of one tile.
///
/// # Safety
/// `out` must be valid for reads and writes of those `R` rows (at its row stride) and
/// `cols` columns, and nobody else may access them meanwhile; `I` must be available.
#[inline(always)]
unsafe fn tile_body<I: DotIsa, const R: usize>(t: TileArgs) {
    let mut acc = [[I::zero(); 2]; R];
    // Cut to whole steps, so that the indexing below needs no bounds checks.
    for (a, b) in t.a.chunks_exact(MR).zip(t.b.chunks_exact(2)) {
        let (b0, b1) = (I::load(&b[0]), I::load(&b[1]));
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = I::splat(a[r]);
            acc[0] = I::dot(acc[0], x, b0);
            acc[1] = I::dot(acc[1], x, b1);
        }
    }
    let (c, ldc) = t.out;
    let mut buf = [[0f32; 16]; 2];
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row r < R of the tile, its first `cols` values, are ours (the
        // contract).
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), t.cols) };
        // A whole tile row straight from the registers; a partial one through `buf`.
        if let ([lo, hi], []) = row.as_chunks_mut::<16>() {
            let (a0, a1) = if t.accumulate {
                (I::add(acc[0], lo), I::add(acc[1], hi))
            } else {
                (acc[0], acc[1])
            };
            I::store(a0, lo);
            I::store(a1, hi);
            continue;
        }
        I::store(acc[0], &mut buf[0]);
        I::store(acc[1], &mut buf[1]);
        let sums = buf.as_flattened();
        if t.accumulate {
            for (o, &s) in row.iter_mut().zip(sums) {
                *o += s;
            }
        } else {
            row.copy_from_slice(&sums[..t.cols]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::model::Model;
    use super::*;
    use crate::cpu::gemm::kernel_or_model;
    use crate::cpu::gemm::test_values as values;
    use crate::cpu::ops;

    fn bf16(v: &[f32]) -> Vec<half::bf16> {
        v.iter().map(|&v| half::bf16::from_f32(v)).collect()
    }

    fn round(v: f32) -> f64 {
        half::bf16::from_f32(v).to_f64()
    }

    /// Whether the real instructions run here (else: says so, or fails where
    /// `QEMBED_REQUIRE_AVX512BF16` asks for them).
    fn hardware_too() -> bool {
        kernel_or_model(NAME)
    }

    /// Against an f64 product of the same bf16 values over shapes with every kind of
    /// tail: no rows, one row, rows not a multiple of 12, columns not a multiple of 32
    /// (and fewer than 16), odd K, K over several passes of [`KC`] pairs (accumulation
    /// into the output). Through the model always, and where the CPU has AVX512_BF16
    /// through the instructions too, which must agree with the model to within what
    /// the order of f32 sums can change.
    #[test]
    fn matches_an_f64_reference_on_ragged_shapes() {
        let hardware = hardware_too();
        let shapes = [
            (0, 32, 16),
            (1, 7, 3),
            (1, 32, 1),
            (12, 32, 256),
            (13, 33, 777),
            (17, 40, 50),
            (25, 100, 300),
            (64, 129, 257),
        ];
        for &(m, n, k) in &shapes {
            let x: Vec<f32> = values(m * k, 1 + m as u64)
                .iter()
                .map(|v| 4.0 * v)
                .collect();
            let w = values(n * k, 2 + n as u64);
            let packed = Packed::pack(&bf16(&w), n, k).unwrap();
            let model = linear::<Model>(&x, (m, k), &packed, Prologue::None).unwrap();
            let real = hardware.then(|| linear::<Hw>(&x, (m, k), &packed, Prologue::None).unwrap());
            assert_eq!(model.len(), m * n, "{m}x{n}x{k}");
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|t| round(x[i * k + t]) * round(w[j * k + t]));
                    let want: f64 = terms.clone().sum();
                    let magnitude: f64 = terms.map(f64::abs).sum::<f64>() + 1e-30;
                    let at = i * n + j;
                    let err = (model[at] as f64 - want).abs() / magnitude;
                    assert!(
                        err < 1e-5,
                        "model {m}x{n}x{k} at ({i},{j}): {} vs {want}",
                        model[at]
                    );
                    if let Some(real) = &real {
                        // Any two orders of summing k exact products in f32 differ by at
                        // most 2 (k - 1) eps of their magnitude.
                        let bound = 2.0 * k as f64 * f32::EPSILON as f64 * magnitude;
                        let diff = (real[at] as f64 - model[at] as f64).abs();
                        assert!(
                            diff <= bound,
                            "instructions vs model {m}x{n}x{k} at ({i},{j}): {} vs {}",
                            real[at],
                            model[at]
                        );
                    }
                }
            }
        }
    }

    /// The prologue applied on the way in gives what the unfused f32 op followed by a
    /// plain product gives.
    #[test]
    fn fused_norm_and_swiglu_inputs_match_the_unfused_ones() {
        let hardware = hardware_too();
        fused_case::<Model>();
        if hardware {
            fused_case::<Hw>();
        }
    }

    fn fused_case<I: DotIsa>() {
        let (m, n, k) = (19, 45, 130);
        let packed = Packed::pack(&bf16(&values(n * k, 5)), n, k).unwrap();
        let dev = candle_core::Device::Cpu;
        let x = values(m * k, 6);
        let norm: Vec<f32> = values(k, 9).iter().map(|v| 1.0 + v).collect();
        let normed = ops::rms_norm(&Tensor::from_slice(&x, (m, k), &dev).unwrap(), &norm, 1e-6)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let gate_up = values(m * 2 * k, 7);
        let act = ops::swiglu(&Tensor::from_slice(&gate_up, (m, 2 * k), &dev).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let run =
            |x: &[f32], width: usize, p: Prologue| linear::<I>(x, (m, width), &packed, p).unwrap();
        assert_eq!(
            run(&x, k, Prologue::RmsNorm(&norm, 1e-6)),
            run(&normed, k, Prologue::None)
        );
        assert_eq!(
            run(&gate_up, 2 * k, Prologue::SwiGlu),
            run(&act, k, Prologue::None)
        );
    }

    /// A row's result does not depend on the rows packed beside it: the same row alone
    /// and inside a batch gives the same bits (batch invariance of the model).
    #[test]
    fn a_row_alone_equals_the_row_in_a_batch() {
        let hardware = hardware_too();
        let (m, n, k) = (23, 50, 600);
        let x = values(m * k, 3);
        let packed = Packed::pack(&bf16(&values(n * k, 4)), n, k).unwrap();
        let check = |all: Vec<f32>, one: &dyn Fn(usize) -> Vec<f32>| {
            for r in [0, 5, 12, 22] {
                assert_eq!(one(r), all[r * n..][..n], "row {r}");
            }
        };
        check(
            linear::<Model>(&x, (m, k), &packed, Prologue::None).unwrap(),
            &|r| linear::<Model>(&x[r * k..][..k], (1, k), &packed, Prologue::None).unwrap(),
        );
        if hardware {
            check(
                linear::<Hw>(&x, (m, k), &packed, Prologue::None).unwrap(),
                &|r| linear::<Hw>(&x[r * k..][..k], (1, k), &packed, Prologue::None).unwrap(),
            );
        }
    }

    /// The SwiGLU fused into the gate_up product gives the plain product's SwiGLU, bit
    /// for bit: one and three gate panels, K of one and of several passes, rows in
    /// part-panels and over several tasks; through the model, and the instructions
    /// where the CPU has them.
    #[test]
    fn fused_swiglu_equals_the_plain_product() {
        fused_swiglu_case::<Model>("model");
        if hardware_too() {
            fused_swiglu_case::<Hw>("avx512bf16");
        }
    }

    /// The product added in place to a residual gives the plain product added after
    /// it, bit for bit: a partial last panel, K of one and of several passes, rows in
    /// part-panels and over several tasks.
    #[test]
    fn fused_add_equals_the_plain_product() {
        fused_add_case::<Model>("model");
        if hardware_too() {
            fused_add_case::<Hw>("avx512bf16");
        }
    }

    fn fused_add_case<I: DotIsa>(named: &str) {
        for (n, k) in [(45, 50), (64, 600)] {
            let w: Vec<half::bf16> = values(n * k, 9)
                .iter()
                .map(|&v| half::bf16::from_f32(v))
                .collect();
            let packed = Packed::pack(&w, n, k).unwrap();
            crate::cpu::gemm::check_fused_add(
                named,
                (n, k),
                &[1, 13, 300],
                &|x, mk, p, out| linear_add::<I>(x, mk, &packed, p, out).unwrap(),
                &|x, mk, p| linear::<I>(x, mk, &packed, p).unwrap(),
            );
        }
    }

    fn fused_swiglu_case<I: DotIsa>(named: &str) {
        for (k, hidden) in [(32, 50), (96, 130), (32, 600)] {
            let w: Vec<half::bf16> = values(2 * k * hidden, 7)
                .iter()
                .map(|&v| half::bf16::from_f32(v))
                .collect();
            let packed = Packed::pack(&w, 2 * k, hidden).unwrap();
            crate::cpu::gemm::check_fused_swiglu(
                named,
                (k, hidden),
                &[1, 13, 300],
                &|x, mw, p| linear_swiglu::<I>(x, mw, &packed, p).unwrap(),
                &|x, mw, p| linear::<I>(x, mw, &packed, p).unwrap(),
            );
        }
    }

    /// Causal GQA attention with both products on the tile against an f64 reference
    /// that rounds where the kernel does
    /// (`crate::cpu::attention::tests::check_group_attention`): through the model, and
    /// the instructions where the CPU has them.
    #[test]
    fn group_attention_matches_a_reference() {
        use crate::cpu::attention::tests::check_group_attention;
        check_group_attention("model", attention::group_attention::<Model>);
        if hardware_too() {
            check_group_attention("avx512bf16", attention::group_attention::<Hw>);
        }
    }

    /// Queries and keys normed and rotated as the kernel takes them give the bits of a
    /// copy normed and rotated first
    /// (`crate::cpu::attention::tests::check_fused_norm`).
    #[test]
    fn group_attention_norms_as_the_copy_did() {
        use crate::cpu::attention::tests::check_fused_norm;
        check_fused_norm("model", attention::group_attention::<Model>);
        if hardware_too() {
            check_fused_norm("avx512bf16", attention::group_attention::<Hw>);
        }
    }

    /// The model's dot is the SDM's: the odd product first, no denormal in or out.
    #[test]
    fn the_model_follows_the_instruction_definition() {
        let one = half::bf16::ONE.to_bits();
        let big = half::bf16::from_f32(1.0e8).to_bits();
        let tiny = 0x0001u16; // a bf16 denormal
        let pair = |even: u16, odd: u16| u32::from(even) | u32::from(odd) << 16;
        // acc = 0: + big * 1 (odd) then + 1 * 1 (even): 1e8 + 1 rounds back to 1e8
        // (f32 spacing at 1e8 is 8), the same either order here; starting from -1e8
        // the odd product cancels first, so the even one survives: exactly 1.
        let acc = Model::dot(
            [-1.0e8; 16],
            Model::splat(pair(one, big)),
            Model::splat(pair(one, one)),
        );
        assert_eq!(acc[0], half::bf16::from_bits(big).to_f32() - 1.0e8 + 1.0);
        let acc = Model::dot(
            [0.0; 16],
            Model::splat(pair(tiny, one)),
            Model::splat(pair(one, tiny)),
        );
        assert_eq!(acc, [0.0; 16]);
        if hardware_too() {
            // The instructions agree on both (DAZ is architectural).
            // SAFETY: AVX512F/BF16 present (checked).
            let got = unsafe { hw_dot(pair(tiny, one), pair(one, tiny)) };
            assert_eq!(got, 0.0);
        }
    }

    /// One VDPBF16PS on splatted pairs, lane 0.
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn hw_dot(a: u32, b: u32) -> f32 {
        let mut out = [0f32; 16];
        Hw::store(Hw::dot(Hw::zero(), Hw::splat(a), Hw::splat(b)), &mut out);
        out[0]
    }

    #[test]
    fn rejects_inputs_that_do_not_fit_the_layer() {
        let packed = Packed::pack(&bf16(&values(12, 5)), 4, 3).unwrap();
        assert!(Packed::pack(&bf16(&values(12, 5)), 4, 4).is_err());
        assert!(linear::<Model>(&[0.0; 5], (1, 5), &packed, Prologue::None).is_err());
        assert!(linear::<Model>(&[0.0; 3], (1, 3), &packed, Prologue::SwiGlu).is_err());
        assert!(linear::<Model>(
            &[0.0; 3],
            (1, 3),
            &packed,
            Prologue::RmsNorm(&[1.0; 2], 1e-6)
        )
        .is_err());
    }
}
