//! int8 linear layers on AMX-INT8 tiles (`TDPBSSD`: Sapphire Rapids and later), the
//! weights quantized by the int8 rule ([`crate::cpu::gemm::int8`]) and packed once at
//! load.
//!
//! One `TDPBSSD` multiplies a 16x64 int8 tile by a 64x16 one into 16x16 int32
//! accumulators: 16,384 multiply-adds, twice what `TDPBF16PS` does on the same tiles,
//! from half the bytes of weights. Both operands are signed, so unlike `VPDPBUSD` no
//! bias is added to the activations and taken back out. The sums are exact in int32, so
//! this kernel gives the same bits as the portable int8 kernel and AVX512_VNNI's.
//!
//! The tiling is the bf16 kernel's: a 32x32 output block in four accumulator tiles
//! over the whole K, a task a strip of weight panels that stays in L2, walking down the
//! rows. Weights are panels of 32 output columns, `[k/4][32][4]` bytes each (a B tile is
//! 16 quad rows, the left or right 64 bytes of each 128-byte row); activations are
//! quantized per call into row-major rows of whole 64-byte lines, in 32-row strips.
//! Attention stays on the bf16 tiles (AMX-INT8 comes with AMX-BF16).

use std::marker::PhantomData;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::attention::group_attention;
use super::isa::{Hw, TileIsa};
use super::tiles::{swiglu_block, Block as F32Block, Tiles};
use super::{for_each_task, BLOCK_COLS, BLOCK_ROWS};
use crate::cpu::attention::AttentionProducts;
use crate::cpu::gemm::int8::{quantize_input_row, rescale_block, QuantRows};
use crate::cpu::gemm::{swiglu_halves, Gemm, PreparedWeight, Prologue};
use crate::cpu::par::SyncPtr;
use crate::Quantize;

/// K bytes one `TDPBSSD` consumes: a 64-byte A row, 16 quads.
const K_STEP: usize = 64;

/// 64 bytes, 64-byte aligned: a tile row of int8 values (misaligned tile loads split
/// rows across cache lines).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Bytes([i8; 64]);

fn as_bytes(lines: &[Bytes]) -> &[i8] {
    // SAFETY: Bytes is repr(C) [i8; 64] with no padding.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast(), lines.len() * 64) }
}

/// The AMX-INT8 kernel of the CPU family, on the tile instructions `U` under the name
/// `name`.
pub(in crate::cpu::gemm) struct AmxInt8<U> {
    name: &'static str,
    isa: PhantomData<fn() -> U>,
}

pub(in crate::cpu::gemm) static AMX_INT8: &dyn Gemm = &AmxInt8::<Hw> {
    name: NAME,
    isa: PhantomData,
};

/// The kernel on the software model of the tiles, a kernel of its own for the
/// model-level tests on CPUs without AMX-INT8 (`--features software-models`).
#[cfg(feature = "software-models")]
pub(in crate::cpu::gemm) static AMX_INT8_MODEL: &dyn Gemm = &AmxInt8::<super::model::Model> {
    name: "amx-int8-model",
    isa: PhantomData,
};

const NAME: &str = "amx-int8";

impl<U: TileIsa + 'static> Gemm for AmxInt8<U> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn unavailable(&self) -> Option<String> {
        U::unavailable_int8().map(|_| {
            "needs AMX-INT8 and the tile state from Linux (5.16+), and QEMBED_AMX not off".into()
        })
    }

    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    fn quantize(&self) -> Quantize {
        Quantize::Int8
    }

    fn prepare(&self, weight: Tensor) -> crate::Result<PreparedWeight> {
        let rows = QuantRows::from_weight(&weight, None)?;
        Ok(PreparedWeight::new(self.name, Packed::pack(&rows)))
    }

    fn prepare_smoothed(&self, weight: Tensor, act_max: &[f32]) -> crate::Result<PreparedWeight> {
        let rows = QuantRows::from_weight(&weight, Some(act_max))?;
        Ok(PreparedWeight::new(self.name, Packed::pack(&rows)))
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> crate::Result<Tensor> {
        let w = weight.form::<Packed>(self.name)?;
        crate::cpu::gemm::op::linear(("amx-int8-linear", linear::<U>), x, (w, w.n), prologue)
    }

    fn linear_swiglu(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<crate::Result<Tensor>> {
        let product: crate::cpu::gemm::op::Product<Packed> = linear_swiglu::<U>;
        let op = (self.name, "amx-int8-linear-swiglu", product);
        crate::cpu::gemm::op::swiglu(op, x, weight, prologue, |w| {
            swiglu_halves(w.n, BLOCK_COLS).then_some(w.n / 2)
        })
    }

    fn linear_add(
        &self,
        out: &Tensor,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<crate::Result<()>> {
        let product: crate::cpu::gemm::op::ProductAdd<Packed> = linear_add::<U>;
        crate::cpu::gemm::op::add(
            (self.name, "amx-int8-linear-add", product),
            out,
            x,
            weight,
            prologue,
        )
    }

    /// Scores and weighted values as bf16 products on tiles, as the bf16 AMX kernel
    /// runs them: attention is not quantized.
    fn attention(&self) -> AttentionProducts {
        AttentionProducts::PerGroup(U::ATTENTION, group_attention::<U>)
    }
}

/// A quantized `[n, k]` weight in tile order: panel `p` (columns `32 p..`) is `kp / 4`
/// rows of 128 bytes, column `j`'s quad `q` (k = 4q..4q+4) at bytes `4 j..` of row `q`.
/// K is padded with zeros to a multiple of 64, the columns to a multiple of 32; `scale`
/// with zeros to whole panels.
struct Packed {
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of [`K_STEP`].
    kp: usize,
    /// `ceil(n / 32)` panels of `kp / 2` lines (`kp / 4` rows of two lines).
    lines: Vec<Bytes>,
    /// Each output column's scale.
    scale: Vec<f32>,
    /// The activations' smoothing ([`QuantRows::input_scale`]).
    input_scale: Option<Vec<f32>>,
}

impl Packed {
    /// Packs weights quantized by the rule (in parallel: called at load).
    fn pack(w: &QuantRows) -> Self {
        let (n, k) = (w.n, w.k);
        let kp = k.next_multiple_of(K_STEP);
        let panels = n.div_ceil(BLOCK_COLS);
        let mut lines = vec![Bytes([0; 64]); panels * kp / 2];
        if kp > 0 {
            lines
                .par_chunks_mut(kp / 2)
                .enumerate()
                .for_each(|(p, panel)| {
                    for j in 0..BLOCK_COLS.min(n - p * BLOCK_COLS) {
                        let (half, slot) = (j / 16, 4 * (j % 16));
                        for (kk, &v) in w.row(p * BLOCK_COLS + j).iter().enumerate() {
                            panel[2 * (kk / 4) + half].0[slot + kk % 4] = v;
                        }
                    }
                });
        }
        let mut scale = w.scale.clone();
        scale.resize(panels * BLOCK_COLS, 0.0);
        Self {
            n,
            k,
            kp,
            lines,
            scale,
            input_scale: w.input_scale.clone(),
        }
    }

    /// Panel `p`'s bytes, as B tile loads read them.
    fn panel(&self, p: usize) -> &[i8] {
        as_bytes(&self.lines[p * self.kp / 2..][..self.kp / 2])
    }
}

/// `prologue(x) @ w.T` for `m` rows of `width` values: f32 `m x n`, on the tile
/// instructions `U` ([`Hw`] but in tests).
fn linear<U: TileIsa>(
    x: &[f32],
    (m, width): (usize, usize),
    w: &Packed,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    let mut out: Vec<f32> = Vec::with_capacity(m * w.n);
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast());
    // SAFETY: `out` has room for the m x n output, ours alone.
    unsafe { linear_to::<U>(x, (m, width), w, prologue, (dst, false))? };
    // SAFETY: on Ok all m x n values were written.
    unsafe { out.set_len(m * w.n) };
    Ok(out)
}

/// `out += prologue(x) @ w.T` in place, `out` `m x n`.
fn linear_add<U: TileIsa>(
    x: &[f32],
    (m, width): (usize, usize),
    w: &Packed,
    prologue: Prologue,
    out: &mut [f32],
) -> candle_core::Result<()> {
    if out.len() != m * w.n {
        candle_core::bail!(
            "{NAME}: an output of {} values for {m} x {}",
            out.len(),
            w.n
        );
    }
    // SAFETY: `out` is the m x n output, initialised and borrowed mutably.
    unsafe {
        linear_to::<U>(
            x,
            (m, width),
            w,
            prologue,
            (SyncPtr(out.as_mut_ptr()), true),
        )
    }
}

/// [`linear`] into `dst` (`m x n`), or with `add` added to what it holds.
///
/// # Safety
/// `dst` must be valid for writes of `m x n` f32 (reads too, initialised, with `add`)
/// that nobody else accesses meanwhile. On `Ok` all of them were written.
unsafe fn linear_to<U: TileIsa>(
    x: &[f32],
    (m, width): (usize, usize),
    w: &Packed,
    prologue: Prologue,
    (dst, add): (SyncPtr, bool),
) -> candle_core::Result<()> {
    if let Some(why) = U::unavailable_int8() {
        candle_core::bail!("{why}");
    }
    prologue.check(NAME, x, (m, width), w.k)?;
    let (n, kp) = (w.n, w.kp);
    if m == 0 || n == 0 || kp == 0 {
        if !add {
            // SAFETY: `dst` is valid for m x n writes (the contract).
            unsafe { std::ptr::write_bytes(dst.0, 0, m * n) };
        }
        return Ok(());
    }
    let (a, row_scale) = quantize_rows(x, m, w, prologue);
    let a = as_bytes(&a);
    // A panel is kp / 4 rows of 128 bytes.
    for_each_task((m, n), kp * BLOCK_COLS, |rows, panels| {
        let mut tiles = Tiles::<U>::configure();
        let (r0, rows) = (rows.start, rows.len());
        let scales = (&row_scale[r0..], &w.scale[..]);
        // SAFETY: `a` has whole 32-row strips of kp bytes from row r0 on; the task's
        // rows r0..r0 + rows and its panels' columns are its own part of the m x n
        // output (row stride n).
        unsafe {
            product(
                &mut tiles,
                &a[r0 * kp..],
                rows,
                (w, panels),
                scales,
                (dst.at(r0 * n), n, add),
            )
        };
    });
    Ok(())
}

/// `swiglu(prologue(x) @ w.T)` for a gate_up weight whose halves are whole panels:
/// f32 `m x n / 2`, each gate block meeting its up block in L1 ([`product_swiglu`]).
fn linear_swiglu<U: TileIsa>(
    x: &[f32],
    (m, width): (usize, usize),
    w: &Packed,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    if let Some(why) = U::unavailable_int8() {
        candle_core::bail!("{why}");
    }
    if !swiglu_halves(w.n, BLOCK_COLS) {
        candle_core::bail!(
            "{NAME}: {} rows do not split into two halves of whole panels",
            w.n
        );
    }
    prologue.check(NAME, x, (m, width), w.k)?;
    let (k, kp) = (w.n / 2, w.kp);
    if m == 0 || kp == 0 {
        return Ok(vec![0.0; m * k]);
    }
    let (a, row_scale) = quantize_rows(x, m, w, prologue);
    let a = as_bytes(&a);
    let mut out: Vec<f32> = Vec::with_capacity(m * k);
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast());
    // A task's panels are gate panels, each read with its up twin.
    for_each_task((m, k), 2 * kp * BLOCK_COLS, |rows, panels| {
        let mut tiles = Tiles::<U>::configure();
        let (r0, rows) = (rows.start, rows.len());
        // SAFETY: `a` has whole 32-row strips of kp bytes from row r0 on; the task's
        // rows and its gate panels' columns are its own part of the m x k output.
        unsafe {
            product_swiglu(
                &mut tiles,
                &a[r0 * kp..],
                rows,
                (w, panels),
                &row_scale[r0..],
                (dst.at(r0 * k), k),
            )
        };
    });
    // SAFETY: the tasks cover every (strip, gate panel), so all m x k values were
    // written.
    unsafe { out.set_len(m * k) };
    Ok(out)
}

/// `swiglu` of the gate and up products for rows `r < rows` and the gate panels
/// `panels` of `w` (each with its up twin `n / 64` panels on): both blocks rescaled in
/// L1, their SwiGLU written to `out`.
///
/// # Safety
/// As [`product`], for the gate panels' columns of an output `n / 2` wide.
unsafe fn product_swiglu<U: TileIsa>(
    tiles: &mut Tiles<U>,
    a: &[i8],
    rows: usize,
    (w, panels): (&Packed, std::ops::Range<usize>),
    row_scale: &[f32],
    (out, ldo): (*mut f32, usize),
) {
    let lda = w.kp;
    let twin = w.n / 2 / BLOCK_COLS;
    let mut sums = Block([[0; BLOCK_COLS]; BLOCK_ROWS]);
    let [mut gate, mut up, mut h] = [(); 3].map(|_| F32Block([[0.0; BLOCK_COLS]; BLOCK_ROWS]));
    for r0 in (0..rows).step_by(BLOCK_ROWS) {
        let strip_rows = BLOCK_ROWS.min(rows - r0);
        let strip = &a[r0 * lda..][..BLOCK_ROWS * lda];
        for p in panels.clone() {
            for (panel, f) in [(p, &mut gate), (p + twin, &mut up)] {
                let c0 = panel * BLOCK_COLS;
                // SAFETY: as in `product`; `f` is a 32x32 block of our own (row stride
                // 32), every row and column of which is written.
                unsafe {
                    block_i8(tiles, strip, lda, w.panel(panel), &mut sums);
                    rescale_block(
                        f.0.as_mut_ptr().cast(),
                        BLOCK_COLS,
                        &sums.0,
                        &row_scale[r0..],
                        &w.scale[c0..],
                        BLOCK_COLS,
                    )
                };
            }
            swiglu_block(&mut h, &gate, &up);
            // SAFETY: rows r0..r0 + strip_rows < rows and the gate panel's 32 columns of
            // `out` are ours to write (the caller's contract).
            unsafe {
                h.write_to(
                    strip_rows,
                    BLOCK_COLS,
                    out.wrapping_add(r0 * ldo + p * BLOCK_COLS),
                    ldo,
                )
            };
        }
    }
}

/// The `m` input rows with the prologue applied, quantized by the rule, each `kp`
/// bytes (zeros past `k`), in whole 32-row strips (zero rows past `m`); and each row's
/// scale (zero past `m`).
fn quantize_rows(x: &[f32], m: usize, w: &Packed, prologue: Prologue) -> (Vec<Bytes>, Vec<f32>) {
    let (k, kp) = (w.k, w.kp);
    let rows = m.next_multiple_of(BLOCK_ROWS);
    let mut a = vec![Bytes([0; 64]); rows * kp / 64];
    let mut scale = vec![0f32; rows];
    a.par_chunks_mut(kp / 64)
        .zip(scale.par_iter_mut())
        .enumerate()
        .take(m)
        .for_each_init(
            || vec![0f32; k],
            |tmp, (r, (row, s))| {
                // SAFETY: Bytes is repr(C) [i8; 64] with no padding.
                let row: &mut [i8] = unsafe {
                    std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), row.len() * 64)
                };
                let smooth = w.input_scale.as_deref();
                *s = quantize_input_row(&mut row[..k], tmp, (x, r, k), prologue, smooth);
            },
        );
    (a, scale)
}

/// `out[r][c]` for rows `r < rows` and the columns of `panels` of `w`: the int8 rows of
/// `a` (row stride `w.kp`) times the panels, rescaled by `row_scale[r]` and
/// `col_scale[c]`; with `add`, added to what `out` holds (the residual) instead.
/// Strip by strip, panel by panel, through a 32x32 int32 block.
///
/// # Safety
/// `a` must hold whole 32-row strips covering `rows`, `row_scale` at least `rows`
/// scales; `out` must be valid for writes at `r * ldo + c` for those rows and the
/// panels' columns below `w.n` (reads too, initialised, with `add`), and no one else
/// may access them.
unsafe fn product<U: TileIsa>(
    tiles: &mut Tiles<U>,
    a: &[i8],
    rows: usize,
    (w, panels): (&Packed, std::ops::Range<usize>),
    (row_scale, col_scale): (&[f32], &[f32]),
    (out, ldo, add): (*mut f32, usize, bool),
) {
    let lda = w.kp;
    let mut block = Block([[0; BLOCK_COLS]; BLOCK_ROWS]);
    let mut rescaled = F32Block([[0.0; BLOCK_COLS]; BLOCK_ROWS]);
    for r0 in (0..rows).step_by(BLOCK_ROWS) {
        let strip_rows = BLOCK_ROWS.min(rows - r0);
        // The strip's 32 rows alone (a bounds check a block, not a tile load): a tile
        // load past them reads another strip, which the model catches.
        let strip = &a[r0 * lda..][..BLOCK_ROWS * lda];
        for p in panels.clone() {
            let c0 = p * BLOCK_COLS;
            let cols = BLOCK_COLS.min(w.n - c0);
            // SAFETY: `strip` is 32 whole rows of kp bytes, the panel kp / 4 rows of 128
            // bytes; both 64-byte aligned (Bytes) for full-speed loads.
            unsafe { block_i8(tiles, strip, lda, w.panel(p), &mut block) };
            let dst = out.wrapping_add(r0 * ldo + c0);
            let sums = &block.0[..strip_rows];
            let scales = (&row_scale[r0..], &col_scale[c0..]);
            if add {
                // SAFETY: `rescaled` is a 32x32 block of our own (row stride 32); rows
                // r0..r0 + strip_rows < rows and columns c0..c0 + cols < n of `out` are
                // ours to read and write (the caller's contract).
                unsafe {
                    let at = rescaled.0.as_mut_ptr().cast();
                    rescale_block(at, BLOCK_COLS, sums, scales.0, scales.1, cols);
                    rescaled.add_to(strip_rows, cols, dst, ldo);
                }
            } else {
                // SAFETY: rows r0..r0 + strip_rows < rows and columns c0..c0 + cols < n
                // of `out` are ours to write (the caller's contract), and nobody else's
                // meanwhile.
                unsafe { rescale_block(dst, ldo, sums, scales.0, scales.1, cols) };
            }
        }
    }
}

/// `out` (32x32 int32) = the 32 rows of `a` (row stride `lda` bytes, `lda` a multiple of
/// 64) times the weight panel `b` (`lda / 4` rows of 128 bytes), over all of K.
///
/// # Safety
/// `a` must cover 32 rows of `lda` bytes, `b` `lda / 4` rows of 128 bytes.
#[inline(always)]
unsafe fn block_i8<U: TileIsa>(
    tiles: &mut Tiles<U>,
    a: &[i8],
    lda: usize,
    b: &[i8],
    out: &mut Block,
) {
    let t = &mut tiles.0;
    t.zero::<0>();
    t.zero::<1>();
    t.zero::<2>();
    t.zero::<3>();
    // A rows at stride lda, the second A tile 16 rows down; a B tile is 16 128-byte
    // panel rows, the left (columns 0-15) or right (16-31) half of each.
    let a1 = 16 * lda;
    for s in 0..lda / K_STEP {
        let (ka, kb) = (s * K_STEP, s * 16 * 128);
        // SAFETY: step `s` reads bytes ka..ka + 64 of 32 rows of `a` and rows 16 s..16 s
        // + 16 of `b`, inside both (the caller's contract).
        unsafe {
            t.load::<4, i8>(a, ka, lda);
            t.load::<6, i8>(b, kb, 128);
            t.load::<7, i8>(b, kb + 64, 128);
            t.dot_i8::<0, 4, 6>();
            t.load::<5, i8>(a, a1 + ka, lda);
            t.dot_i8::<1, 4, 7>();
            t.dot_i8::<2, 5, 6>();
            t.dot_i8::<3, 5, 7>();
        }
    }
    let c = out.0.as_flattened_mut();
    // SAFETY: four 16x16 int32 tiles at row stride 128 bytes fill the 32x32 block `c`.
    unsafe {
        t.store::<0, i32>(c, 0, BLOCK_COLS * 4);
        t.store::<1, i32>(c, 16, BLOCK_COLS * 4);
        t.store::<2, i32>(c, 16 * BLOCK_COLS, BLOCK_COLS * 4);
        t.store::<3, i32>(c, 16 * BLOCK_COLS + 16, BLOCK_COLS * 4);
    }
}

/// A 32x32 int32 output block, 64-byte aligned for the tile stores.
#[repr(C, align(64))]
struct Block([[i32; BLOCK_COLS]; BLOCK_ROWS]);

#[cfg(test)]
mod tests {
    use super::super::isa::TileConfig;
    use super::super::model::Model;
    use super::*;
    use crate::cpu::gemm::kernel_or_model;
    use crate::cpu::gemm::portable_int8::reference;
    use crate::cpu::gemm::test_values as values;

    /// Whether the real instructions run here (else: says so, or fails where
    /// `QEMBED_REQUIRE_AMX_INT8` asks for them).
    fn hardware_too() -> bool {
        kernel_or_model(NAME)
    }

    /// Bit-equal to the portable kernel over shapes with every kind of tail: no rows,
    /// one row, rows not a multiple of 32 (or 16), more rows than one task's strips,
    /// columns not a multiple of 32 (and fewer than 16), K not a multiple of 64 (or 4),
    /// K of many steps; and with the prologues and smoothing fused. Through the model
    /// always, the instructions where the CPU has them.
    #[test]
    fn equals_the_portable_kernel() {
        let shapes = [
            (0, 32, 16),
            (1, 7, 3),
            (1, 32, 64),
            (17, 40, 50),
            (33, 33, 777),
            (45, 100, 1030),
            (300, 70, 130),
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

    /// The model's TDPBSSD is the SDM's: signed bytes both sides, four products a
    /// quad, added to C, wrapping; and the real instruction agrees where it runs.
    #[test]
    fn the_model_follows_the_instruction_definition() {
        definition_case::<Model>();
        if hardware_too() {
            definition_case::<Hw>();
        }
    }

    fn definition_case<U: TileIsa>() {
        // A row [-128, 127, -1, 2], B column [-128, -1, 127, 3]:
        // 16384 - 127 - 127 + 6 = 16136, on top of C = -36.
        assert_eq!(
            one_dot::<U>(&[-128, 127, -1, 2], &[-128, -1, 127, 3], -36),
            16100
        );
        // Wrapping at the top of int32.
        assert_eq!(
            one_dot::<U>(&[1, 0, 0, 0], &[1, 0, 0, 0], i32::MAX),
            i32::MIN
        );
    }

    /// One TDPBSSD of a 1x4 A by a 4x1 B (one quad) onto C = `c`, on `U`.
    fn one_dot<U: TileIsa>(a: &[i8], b: &[i8], c: i32) -> i32 {
        let mut cfg = TileConfig::uniform(0, 0);
        for (t, (rows, colsb)) in [(1u8, 4u16), (1, 4), (1, 4)].into_iter().enumerate() {
            cfg.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&colsb.to_le_bytes());
            cfg.0[48 + t] = rows;
        }
        let mut t = U::configure(&cfg);
        let mut out = [c];
        // SAFETY: each access is 4 bytes inside its 4-byte buffer.
        unsafe {
            t.load::<0, i32>(&out, 0, 4);
            t.load::<1, i8>(a, 0, 4);
            t.load::<2, i8>(b, 0, 4);
        }
        t.dot_i8::<0, 1, 2>();
        // SAFETY: as above.
        unsafe { t.store::<0, i32>(&mut out, 0, 4) };
        out[0]
    }

    /// The SwiGLU fused into the gate_up product gives the plain product's SwiGLU, bit
    /// for bit, with and without smoothing: one and three gate panels, K with a tail,
    /// rows in part-strips and over several tasks.
    #[test]
    fn fused_swiglu_equals_the_plain_product() {
        fused_swiglu_case::<Model>("model");
        if hardware_too() {
            fused_swiglu_case::<Hw>("instructions");
        }
    }

    /// The product added in place to a residual gives the plain product added after
    /// it, bit for bit, with and without smoothing: a partial last panel, K with a
    /// tail, rows over several tasks.
    #[test]
    fn fused_add_equals_the_plain_product() {
        fused_add_case::<Model>("model");
        if hardware_too() {
            fused_add_case::<Hw>("instructions");
        }
    }

    fn fused_add_case<U: TileIsa>(named: &str) {
        for (n, k) in [(45, 50), (64, 130)] {
            let weight = values(n * k, 9);
            let t = Tensor::from_slice(&weight, (n, k), &candle_core::Device::Cpu).unwrap();
            let act_max: Vec<f32> = (0..k).map(|c| if c == 5 { 30.0 } else { 1.0 }).collect();
            for rows in [
                QuantRows::from_f32(&weight, n, k),
                QuantRows::from_weight(&t, Some(&act_max)).unwrap(),
            ] {
                let packed = Packed::pack(&rows);
                crate::cpu::gemm::check_fused_add(
                    named,
                    (n, k),
                    &[1, 33, 300],
                    &|x, mk, p, out| linear_add::<U>(x, mk, &packed, p, out).unwrap(),
                    &|x, mk, p| linear::<U>(x, mk, &packed, p).unwrap(),
                );
            }
        }
    }

    fn fused_swiglu_case<U: TileIsa>(named: &str) {
        for (k, hidden) in [(32, 50), (96, 130)] {
            let weight = values(2 * k * hidden, 8);
            let t =
                Tensor::from_slice(&weight, (2 * k, hidden), &candle_core::Device::Cpu).unwrap();
            let act_max: Vec<f32> = (0..hidden)
                .map(|c| if c == 3 { 30.0 } else { 1.0 })
                .collect();
            for rows in [
                QuantRows::from_f32(&weight, 2 * k, hidden),
                QuantRows::from_weight(&t, Some(&act_max)).unwrap(),
            ] {
                let packed = Packed::pack(&rows);
                crate::cpu::gemm::check_fused_swiglu(
                    named,
                    (k, hidden),
                    &[1, 33, 300],
                    &|x, mw, p| linear_swiglu::<U>(x, mw, &packed, p).unwrap(),
                    &|x, mw, p| linear::<U>(x, mw, &packed, p).unwrap(),
                );
            }
        }
    }

    #[test]
    fn rejects_inputs_that_do_not_fit_the_layer() {
        let packed = Packed::pack(&QuantRows::from_f32(&values(12, 5), 4, 3));
        assert!(linear::<Model>(&[0.0; 5], (1, 5), &packed, Prologue::None).is_err());
        assert!(linear::<Model>(&[0.0; 3], (1, 3), &packed, Prologue::SwiGlu).is_err());
    }
}
