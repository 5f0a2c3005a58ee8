//! int8 linear layers on AVX512_VNNI (`VPDPBUSD`: AMD Zen 4 and later, Intel Ice Lake
//! and later), the weights quantized and packed once at load.
//!
//! One `VPDPBUSD` multiplies 16 groups of four unsigned bytes by four signed bytes and
//! adds each group's four products to an int32 accumulator: 64 multiply-adds, twice
//! what `VDPBF16PS` does, from half the bytes of weights. The rule (what is quantized
//! how) is [`super::int8`]'s; this module only computes its exact integer sums faster.
//!
//! The instruction wants one operand unsigned. The activations, int8 in −127..=127,
//! are biased by 128 into 1..=255 as they are packed (`q ^ 0x80`), and the bias is
//! taken back out exactly: `sum (q + 128) w = sum q w + 128 sum w`, with each output
//! column's `128 sum w` computed at load.
//!
//! The micro-kernel keeps a 12x32 int32 output tile in 24 zmm accumulators: per four K
//! it loads one line of the weight panel (two vectors: 16 columns of four bytes each)
//! and broadcasts 12 activation quads, 24 dot products. Weights are panels of 32 output
//! columns, `[k/4][32][4]` each, in 64-byte aligned lines; activations are packed per
//! call into panels of 12 rows, `[k/4][12]` quads. The tasks and the order of tiles
//! are the other register-tiled kernels' ([`Blocking`]). Between K passes a tile's
//! partial sums wait in the output buffer as int32; the last pass rescales them to f32.
//!
//! The instructions sit behind a trait (`isa`) with a software model in tests
//! (`model`); integer sums are exact, so the instructions, the model and the portable
//! int8 kernel must all give the same bits.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::blocking::{tile_rows, Blocking, TileHeights};
use super::int8::{quantize_input_row, rescale, QuantRows};
use super::{Gemm, PreparedWeight, Prologue};
use crate::cpu::par::SyncPtr;
use crate::Quantize;

mod isa;
#[cfg(test)]
mod model;

use isa::{DotIsa, Hw};

/// Rows of the output tile: 24 of the 32 zmm registers hold its accumulators.
const MR: usize = 12;
/// Columns of the output tile and of a weight panel (two 16-lane vectors).
const NR: usize = 32;
/// K quads per pass over a tile: 128 quads keep the tile's weight slice (16 KiB) and
/// activation slice (6 KiB) in L1 together.
const KC: usize = 128;

/// 64 bytes, 64-byte aligned: 16 columns of four int8 weights, one vector load.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([i8; 64]);

/// The AVX512_VNNI int8 kernel of the CPU family.
pub(super) struct Avx512Vnni;

pub(super) static AVX512VNNI: Avx512Vnni = Avx512Vnni;

const NAME: &str = "avx512vnni";

impl Gemm for Avx512Vnni {
    fn name(&self) -> &'static str {
        NAME
    }

    fn unavailable(&self) -> Option<String> {
        Hw::unavailable()
    }

    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    fn quantize(&self) -> Quantize {
        Quantize::Int8
    }

    fn prepare(&self, weight: Tensor) -> crate::Result<PreparedWeight> {
        let rows = QuantRows::from_weight(&weight, None)?;
        Ok(PreparedWeight::new(NAME, Packed::pack(&rows)))
    }

    fn prepare_smoothed(&self, weight: Tensor, act_max: &[f32]) -> crate::Result<PreparedWeight> {
        let rows = QuantRows::from_weight(&weight, Some(act_max))?;
        Ok(PreparedWeight::new(NAME, Packed::pack(&rows)))
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> crate::Result<Tensor> {
        let w = weight.form::<Packed>(NAME)?;
        crate::cpu::gemm::op::linear(("avx512vnni-linear", linear::<Hw>), x, (w, w.n), prologue)
    }
}

/// A quantized `[n, k]` weight in panels of 32 output columns: panel `p`'s quad `t` is
/// lines `2 (p kq + t)` (columns 0-15) and `+ 1` (16-31), column `j`'s four values at
/// bytes `4 (j % 16)..`. Columns past `n` and K past `k` are zero; `scale` and `bias`
/// are padded with zeros to whole panels.
struct Packed {
    n: usize,
    k: usize,
    /// Quads of K: `k` rounded up to a multiple of four, quartered.
    kq: usize,
    data: Vec<Line>,
    /// Each output column's scale.
    scale: Vec<f32>,
    /// Each output column's `128 * sum(w)`: what the activations' bias adds.
    bias: Vec<i32>,
    /// The activations' smoothing ([`QuantRows::input_scale`]).
    input_scale: Option<Vec<f32>>,
}

impl Packed {
    /// Packs weights quantized by the rule (in parallel: called at load).
    fn pack(w: &QuantRows) -> Self {
        let (n, k) = (w.n, w.k);
        let kq = k.div_ceil(4);
        let panels = n.div_ceil(NR);
        let mut data = vec![Line([0; 64]); panels * kq * 2];
        if kq > 0 {
            data.par_chunks_mut(kq * 2)
                .enumerate()
                .for_each(|(p, panel)| {
                    for j in 0..NR.min(n - p * NR) {
                        let (half, slot) = (j / 16, 4 * (j % 16));
                        for (kk, &v) in w.row(p * NR + j).iter().enumerate() {
                            panel[2 * (kk / 4) + half].0[slot + kk % 4] = v;
                        }
                    }
                });
        }
        let mut scale = w.scale.clone();
        scale.resize(panels * NR, 0.0);
        let mut bias: Vec<i32> = (0..n)
            .map(|j| 128 * w.row(j).iter().map(|&v| i32::from(v)).sum::<i32>())
            .collect();
        bias.resize(panels * NR, 0);
        Self {
            n,
            k,
            kq,
            data,
            scale,
            bias,
            input_scale: w.input_scale.clone(),
        }
    }

    /// Panel `p`'s lines from quad `t0` on, `kc` quads of them.
    fn lines(&self, p: usize, t0: usize, kc: usize) -> &[Line] {
        &self.data[2 * (p * self.kq + t0)..][..2 * kc]
    }
}

/// `prologue(x) @ w.T` for `m` rows of `width` values: f32 `m x n`, on the
/// instructions `I` ([`Hw`] but in tests).
fn linear<I: DotIsa>(
    x: &[f32],
    (m, width): (usize, usize),
    w: &Packed,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    if let Some(why) = I::unavailable() {
        candle_core::bail!("avx512vnni: {why}");
    }
    prologue.check(NAME, x, (m, width), w.k)?;
    let (a, row_scale) = pack_rows(x, m, w, prologue);
    let n = w.n;
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    if w.kq == 0 {
        out.resize(m * n, 0.0);
        return Ok(out);
    }
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast());
    let blocking = Blocking {
        mr: MR,
        nr: NR,
        kc: KC,
        weight_step_bytes: 2 * size_of::<Line>(),
        row_step_bytes: MR * size_of::<u32>(),
    };
    blocking.for_each_tile((m, n, w.kq), |p, r, t0| {
        let kc = KC.min(w.kq - t0);
        let args = TileArgs {
            a: &a[(r * w.kq + t0) * MR..][..kc * MR],
            b: w.lines(p, t0, kc),
            out: (dst.at(r * MR * n + p * NR), n),
            cols: NR.min(n - p * NR),
            first: t0 == 0,
            last: t0 + kc == w.kq,
            row_scale: &row_scale[r * MR..][..MR],
            col_scale: &w.scale[p * NR..][..NR],
            bias: &w.bias[p * NR..][..NR],
        };
        // SAFETY: the tile (rows r*12.., columns p*32.., row stride n) lies inside the
        // m x n output, and only this call writes it (for_each_tile gives each (p, r)
        // to one task, its passes in order, the first with t0 = 0); `I` is available
        // (checked above).
        unsafe { tile_rows::<_, I>(args, MR.min(m - r * MR)) };
    });
    // SAFETY: the tiles cover every (row panel, column panel), each finished (written
    // as f32) by its last pass (kq > 0, m and n as given).
    unsafe { out.set_len(m * n) };
    Ok(out)
}

/// The `m` input rows with the prologue applied, quantized by the rule and biased to
/// unsigned, in panels of 12 rows, `[kq][12]` quads each (rows past `m` zero, K past
/// `k` the bias, a zero value); and each row's scale (zero past `m`, to whole panels).
fn pack_rows(x: &[f32], m: usize, w: &Packed, prologue: Prologue) -> (Vec<u32>, Vec<f32>) {
    let (k, kq) = (w.k, w.kq);
    let panels = m.div_ceil(MR);
    let mut a = vec![0u32; panels * kq * MR];
    let mut scale = vec![0f32; panels * MR];
    if kq == 0 {
        return (a, scale);
    }
    a.par_chunks_mut(kq * MR)
        .zip(scale.par_chunks_mut(MR))
        .enumerate()
        .for_each(|(panel, (dst, scale))| {
            let mut row = vec![0i8; 4 * kq];
            let mut tmp = vec![0f32; k];
            for (i, s) in scale.iter_mut().enumerate().take(MR.min(m - panel * MR)) {
                let input = (x, panel * MR + i, k);
                let smooth = w.input_scale.as_deref();
                *s = quantize_input_row(&mut row[..k], &mut tmp, input, prologue, smooth);
                for (t, quad) in row.chunks_exact(4).enumerate() {
                    let biased = [quad[0], quad[1], quad[2], quad[3]].map(|q| (q as u8) ^ 0x80);
                    dst[t * MR + i] = u32::from_le_bytes(biased);
                }
            }
        });
    (a, scale)
}

/// One tile's operands: `kc` quads of its row panel and of its weight panel, where its
/// output goes, and what the last pass needs to finish it.
struct TileArgs<'a> {
    /// `[kc][12]` activation quads.
    a: &'a [u32],
    /// `2 kc` weight lines.
    b: &'a [Line],
    /// The tile's first output element and the output's row stride.
    out: (*mut f32, usize),
    /// Output columns of the tile to write (1..=32).
    cols: usize,
    /// The first K pass: nothing in the output yet.
    first: bool,
    /// The last K pass: write f32; before it, the int32 partial sums.
    last: bool,
    /// The tile's rows' scales (12).
    row_scale: &'a [f32],
    /// The tile's columns' scales and activation biases (32 each).
    col_scale: &'a [f32],
    bias: &'a [i32],
}

// Each tile height its own monomorphised tile (`blocking::tile_rows`).
impl<'a, I: DotIsa> TileHeights<TileArgs<'a>> for I {
    unsafe fn tile<const R: usize>(args: TileArgs<'a>) {
        // SAFETY: the caller's contract ([`tile_body`]'s), passed on.
        unsafe { <I as DotIsa>::tile::<R>(args) }
    }
}

/// The first `R` rows and `cols` columns of one tile: their int32 sums over this pass
/// added to the earlier passes' (kept in the output as int32), and on the last pass
/// rescaled to f32.
///
/// # Safety
/// `out` must be valid for reads and writes of those `R` rows (at its row stride) and
/// `cols` columns, written by the earlier passes unless this is the first, and nobody
/// else may access them meanwhile; `I` must be available.
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
    if t.cols == NR {
        // A whole tile row straight from the registers.
        let (bias, col_scale) = (t.bias.as_chunks::<16>().0, t.col_scale.as_chunks::<16>().0);
        for (r, &[lo, hi]) in acc.iter().enumerate() {
            let rs = t.row_scale[r];
            let at = c.wrapping_add(r * ldc);
            // SAFETY: row r's 32 columns are the tile's (the contract; cols is 32).
            unsafe {
                finish_half::<I>(lo, at, (&bias[0], &col_scale[0], rs), (t.first, t.last));
                finish_half::<I>(
                    hi,
                    at.add(16),
                    (&bias[1], &col_scale[1], rs),
                    (t.first, t.last),
                );
            }
        }
        return;
    }
    // A partial tile (the last column panel): through a buffer, value by value.
    let mut buf = [[0i32; 16]; 2];
    let (col_scale, bias) = (&t.col_scale[..t.cols], &t.bias[..t.cols]);
    for (r, acc) in acc.iter().enumerate() {
        I::store(acc[0], &mut buf[0]);
        I::store(acc[1], &mut buf[1]);
        let row = c.wrapping_add(r * ldc).cast::<i32>();
        let rs = t.row_scale[r];
        for (j, ((&s, &cs), &b)) in buf
            .as_flattened()
            .iter()
            .zip(col_scale)
            .zip(bias)
            .enumerate()
        {
            // SAFETY: (r, j) is one of the tile's elements (the contract); before the
            // first pass it is not read, and an f32 and an i32 are the same 4 bytes.
            unsafe {
                let at = row.add(j);
                let sum = if t.first {
                    s
                } else {
                    at.read().wrapping_add(s)
                };
                at.write(if t.last {
                    rescale(sum.wrapping_sub(b), rs, cs).to_bits() as i32
                } else {
                    sum
                });
            }
        }
    }
}

/// 16 columns of one tile row: this pass's sums added to the earlier passes' (unless
/// `first`), then stored as int32, or on the `last` pass rescaled to f32.
///
/// # Safety
/// `at` must be valid for reads and writes of 16 values, written by the earlier passes
/// unless this is the first, and accessed by nobody else meanwhile; `I` available.
#[inline(always)]
unsafe fn finish_half<I: DotIsa>(
    acc: I::Acc,
    at: *mut f32,
    (bias, col_scale, row_scale): (&[i32; 16], &[f32; 16], f32),
    (first, last): (bool, bool),
) {
    // SAFETY: the contract; an f32 and an i32 are the same 4 bytes.
    unsafe {
        let sum = if first {
            acc
        } else {
            I::add_from(acc, at.cast::<i32>())
        };
        if last {
            I::store_rescaled(sum, bias, col_scale, row_scale, at);
        } else {
            I::store_to(sum, at.cast::<i32>());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::model::Model;
    use super::*;
    use crate::cpu::gemm::kernel_or_model;
    use crate::cpu::gemm::portable_int8::reference;
    use crate::cpu::gemm::test_values as values;

    /// Whether the real instructions run here (else: says so, or fails where
    /// `QEMBED_REQUIRE_AVX512VNNI` asks for them).
    fn hardware_too() -> bool {
        kernel_or_model(NAME)
    }

    /// Bit-equal to the portable kernel over shapes with every kind of tail: no rows,
    /// one row, rows not a multiple of 12, columns not a multiple of 32 (and fewer than
    /// 16), K not a multiple of 4, K over several passes of [`KC`] quads (int32 partial
    /// sums kept between passes); and with the prologues and smoothing fused. Through
    /// the model always, and through the instructions where the CPU has them.
    #[test]
    fn equals_the_portable_kernel() {
        let shapes = [
            (0, 32, 16),
            (1, 7, 3),
            (1, 32, 1),
            (12, 32, 512),
            (13, 33, 777),
            (17, 40, 50),
            (25, 100, 1030),
            (64, 129, 257),
        ];
        let model = |x: &[f32], mw, w: &QuantRows, p: Prologue<'_>| {
            linear::<Model>(x, mw, &Packed::pack(w), p).unwrap()
        };
        reference::equals_on_shapes(&model, "model", &shapes);
        reference::fused_inputs_and_smoothing_equal(&model, "model");
        if hardware_too() {
            let hw = |x: &[f32], mw, w: &QuantRows, p: Prologue<'_>| {
                linear::<Hw>(x, mw, &Packed::pack(w), p).unwrap()
            };
            reference::equals_on_shapes(&hw, "instructions", &shapes);
            reference::fused_inputs_and_smoothing_equal(&hw, "instructions");
        }
    }

    /// The model's dot is the SDM's: `a` unsigned, `b` signed, four products a lane,
    /// wrapping.
    #[test]
    fn the_model_follows_the_instruction_definition() {
        // a = [255, 1, 2, 128], b = [-1, -128, 127, 1]:
        // -255 - 128 + 254 + 128 = -1.
        let a = u32::from_le_bytes([255, 1, 2, 128]);
        let b = u32::from_le_bytes([0xff, 0x80, 0x7f, 0x01]);
        let acc = Model::dot([10; 16], Model::splat(a), Model::splat(b));
        assert_eq!(acc, [9; 16]);
        // Wrapping at the top of int32.
        let one = u32::from_le_bytes([1, 0, 0, 0]);
        assert_eq!(
            Model::dot([i32::MAX; 16], Model::splat(one), Model::splat(one)),
            [i32::MIN; 16]
        );
        if hardware_too() {
            // SAFETY: AVX512F/VNNI present (checked).
            let got = unsafe { hw_dot(10, a, b) };
            assert_eq!(got, 9);
            // SAFETY: as above.
            assert_eq!(unsafe { hw_dot(i32::MAX, one, one) }, i32::MIN);
        }
    }

    /// One VPDPBUSD on splatted quads, lane 0.
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512_VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn hw_dot(acc: i32, a: u32, b: u32) -> i32 {
        let mut out = [0i32; 16];
        let acc = Hw::dot(Hw::splat(acc as u32), Hw::splat(a), Hw::splat(b));
        Hw::store(acc, &mut out);
        out[0]
    }

    #[test]
    fn rejects_inputs_that_do_not_fit_the_layer() {
        let packed = Packed::pack(&QuantRows::from_f32(&values(12, 5), 4, 3));
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
