//! int8 linear layers on the VNNI dot-product instruction `VPDPBUSD`, the weights
//! quantized and packed once at load; one kernel, compiled for two register widths:
//! - `avx512vnni`: zmm registers, AVX512_VNNI (AMD Zen 4 and later, Intel Ice Lake and
//!   later), in [`avx512`];
//! - `avxvnni`: ymm registers, AVX-VNNI, the VEX form of the same instruction (Intel
//!   Alder Lake and Sierra Forest and later, which may have no AVX-512 at all), in
//!   [`avx`].
//!
//! One `VPDPBUSD` multiplies `L` groups of four unsigned bytes by four signed bytes (16
//! lanes in a zmm, 8 in a ymm) and adds each group's four products to an int32
//! accumulator: `4 L` multiply-adds, twice what `VDPBF16PS` does, from half the bytes of
//! weights. The rule (what is quantized how) is [`super::int8`]'s; this module only
//! computes its exact integer sums faster.
//!
//! The instruction wants one operand unsigned. The activations, int8 in −127..=127,
//! are biased by 128 into 1..=255 as they are packed (`q ^ 0x80`), and the bias is
//! taken back out exactly: `sum (q + 128) w = sum q w + 128 sum w`, with each output
//! column's `128 sum w` computed at load.
//!
//! The micro-kernel keeps an `MR x 2L` int32 output tile in `2 MR` accumulators (12x32
//! in 24 of the 32 zmm registers, 6x16 in 12 of the 16 ymm ones): per four K it loads
//! one quad of the weight panel (two vectors of `L` columns of four bytes each) and
//! broadcasts `MR` activation quads, `2 MR` dot products. Weights are panels of `2 L`
//! output columns, `[k/4][2L]` quads each, in 64-byte aligned lines; activations are
//! packed per call into panels of `MR` rows, `[k/4][MR]` quads. The tasks and the order
//! of tiles are the other register-tiled kernels' ([`Blocking`]). Between K passes a
//! tile's partial sums wait in the output buffer as int32; the last pass rescales them
//! to f32.
//!
//! The instructions sit behind a trait ([`DotIsa`]) with a software model in tests
//! (`model`); integer sums are exact, so the instructions, the model and the portable
//! int8 kernel must all give the same bits.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::blocking::{self, tile_rows, Blocking, Output, TileHeights};
use super::int8::{quantize_input_row, rescale, QuantRows};
use super::{Gemm, PreparedWeight, Prologue};
use crate::cpu::par::SyncPtr;
use crate::Quantize;

mod avx;
mod avx512;
#[cfg(any(test, feature = "software-models"))]
mod model;

/// Weight bytes of one tile's K pass: the tile's weight slice (16 KiB) and activation
/// slice (6 KiB at 12 rows of zmm, 6 at 6 rows of ymm) stay in L1 together.
const PASS_WEIGHT_BYTES: usize = 16 << 10;

/// The instructions the micro-kernel needs, `L` int32 lanes to a vector (16 in a zmm,
/// 8 in a ymm): the real ones of each width, and in tests a scalar model of them, so
/// that the same tile loop, tails and packing run, and are tested, on CPUs without the
/// instructions. On real instructions every method is one intrinsic inlined into the
/// one `#[target_feature]` function per tile height ([`tile`](Self::tile)).
pub(super) trait DotIsa<const L: usize>: Sized + 'static {
    /// The kernel's name (`QEMBED_CPU_KERNEL`, `/info`).
    const NAME: &'static str;
    /// The candle op its linear layers run as.
    const OP: &'static str;
    /// The candle op its gate_up layers with the SwiGLU fused run as.
    const OP_SWIGLU: &'static str;
    /// The candle op its layers with the residual add fused run as.
    const OP_ADD: &'static str;
    /// Rows of the output tile (its accumulators are `2 MR` vectors).
    const MR: usize;

    /// `L` int32 lanes.
    type Acc: Copy;
    /// `L` lanes of four bytes each (the lowest byte the first K index).
    type Quads: Copy;

    /// Why this implementation cannot run here; `None` when it can.
    fn unavailable() -> Option<String>;

    /// How attention's products run for a model on these instructions: f32 through the
    /// portable product, unless the instructions come with better ones.
    fn attention() -> crate::cpu::attention::AttentionProducts {
        super::portable::ATTENTION
    }

    /// All lanes zero.
    fn zero() -> Self::Acc;

    /// `L` quads of a weight panel.
    fn load(quads: &[u32; L]) -> Self::Quads;

    /// `quad` in every lane: `vpbroadcastd`.
    fn splat(quad: u32) -> Self::Quads;

    /// `VPDPBUSD acc, a, b`: `acc[j] += sum over t < 4 of u8(a[j][t]) * i8(b[j][t])`,
    /// wrapping (no saturation).
    fn dot(acc: Self::Acc, a: Self::Quads, b: Self::Quads) -> Self::Acc;

    /// The `L` lanes into `dst`.
    fn store(acc: Self::Acc, dst: &mut [i32; L]);

    /// `acc + src`, lane by lane (wrapping).
    ///
    /// # Safety
    /// `src` must be valid for reads of `L` `i32`.
    unsafe fn add_from(acc: Self::Acc, src: *const i32) -> Self::Acc;

    /// The `L` lanes into `dst`, as int32 partial sums.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `L` `i32`.
    unsafe fn store_to(acc: Self::Acc, dst: *mut i32);

    /// The `L` lanes finished by the int8 rule into `dst`: `f32(acc - bias) * (row_scale
    /// * col_scale)`, lane by lane (the same roundings as `int8::rescale`).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `L` `f32`.
    unsafe fn store_rescaled(
        acc: Self::Acc,
        bias: &[i32; L],
        col_scale: &[f32; L],
        row_scale: f32,
        dst: *mut f32,
    );

    /// One `R`-row tile ([`tile_body`]) on these instructions.
    ///
    /// # Safety
    /// As [`tile_body`]; [`unavailable`](Self::unavailable) is `None`.
    unsafe fn tile<const R: usize>(args: TileArgs<'_>);
}

/// 64 bytes, 64-byte aligned: 16 quads of a weight panel, one zmm load or two ymm ones.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u32; 16]);

/// The VNNI int8 kernel on the instructions `I`, `L` lanes wide, under the name `name`.
pub(super) struct Vnni<I, const L: usize> {
    name: &'static str,
    isa: PhantomData<fn() -> I>,
}

impl<I: DotIsa<L>, const L: usize> Vnni<I, L> {
    const fn named(name: &'static str) -> Self {
        Self {
            name,
            isa: PhantomData,
        }
    }
}

/// The zmm kernel.
pub(super) static AVX512VNNI: &dyn Gemm = &Vnni::<avx512::Zmm, 16>::named("avx512vnni");
/// The ymm kernel.
pub(super) static AVXVNNI: &dyn Gemm = &Vnni::<avx::Ymm, 8>::named("avxvnni");
/// The zmm kernel on the software model of its instructions, a kernel of its own for
/// the model-level tests on CPUs without them (`--features software-models`).
#[cfg(feature = "software-models")]
pub(super) static AVX512VNNI_MODEL: &dyn Gemm =
    &Vnni::<model::Model<avx512::Zmm>, 16>::named("avx512vnni-model");
/// The ymm kernel on the software model of its instructions (as above).
#[cfg(feature = "software-models")]
pub(super) static AVXVNNI_MODEL: &dyn Gemm =
    &Vnni::<model::Model<avx::Ymm>, 8>::named("avxvnni-model");

impl<I: DotIsa<L>, const L: usize> Gemm for Vnni<I, L> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn unavailable(&self) -> Option<String> {
        I::unavailable()
    }

    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    fn quantize(&self) -> Quantize {
        Quantize::Int8
    }

    fn prepare(&self, weight: Tensor) -> crate::Result<PreparedWeight> {
        let rows = QuantRows::from_weight(&weight, None)?;
        Ok(PreparedWeight::new(self.name, Packed::pack(&rows, 2 * L)))
    }

    fn prepare_smoothed(&self, weight: Tensor, act_max: &[f32]) -> crate::Result<PreparedWeight> {
        let rows = QuantRows::from_weight(&weight, Some(act_max))?;
        Ok(PreparedWeight::new(self.name, Packed::pack(&rows, 2 * L)))
    }

    fn linear(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> crate::Result<Tensor> {
        let w = weight.form::<Packed>(self.name)?;
        crate::cpu::gemm::op::linear((I::OP, linear::<I, L>), x, (w, w.n), prologue)
    }

    fn linear_swiglu(
        &self,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<crate::Result<Tensor>> {
        let product: crate::cpu::gemm::op::Product<Packed> = linear_swiglu::<I, L>;
        let op = (self.name, I::OP_SWIGLU, product);
        crate::cpu::gemm::op::swiglu(op, x, weight, prologue, |w| {
            super::swiglu_halves(w.n, w.nr).then_some(w.n / 2)
        })
    }

    fn linear_add(
        &self,
        out: &Tensor,
        x: &Tensor,
        weight: &PreparedWeight,
        prologue: Prologue,
    ) -> Option<crate::Result<()>> {
        let product: crate::cpu::gemm::op::ProductAdd<Packed> = linear_add::<I, L>;
        crate::cpu::gemm::op::add((self.name, I::OP_ADD, product), out, x, weight, prologue)
    }

    fn attention(&self) -> crate::cpu::attention::AttentionProducts {
        I::attention()
    }
}

/// A quantized `[n, k]` weight in panels of `nr` output columns: panel `p`'s quad `t`
/// is quads `(p kq + t) nr ..` of the lines, one per column, column `j`'s four values
/// in quad `j` (lowest byte first). Columns past `n` and K past `k` are zero; `scale`
/// and `bias` are padded with zeros to whole panels.
struct Packed {
    n: usize,
    k: usize,
    /// Quads of K: `k` rounded up to a multiple of four, quartered.
    kq: usize,
    /// Columns of a panel (twice the lanes of the kernel that packed it).
    nr: usize,
    data: Vec<Line>,
    /// Each output column's scale.
    scale: Vec<f32>,
    /// Each output column's `128 * sum(w)`: what the activations' bias adds.
    bias: Vec<i32>,
    /// The activations' smoothing ([`QuantRows::input_scale`]).
    input_scale: Option<Vec<f32>>,
}

impl Packed {
    /// Packs weights quantized by the rule in panels of `nr` columns (a multiple of 8
    /// that divides or is a multiple of 16; in parallel: called at load).
    fn pack(w: &QuantRows, nr: usize) -> Self {
        let (n, k) = (w.n, w.k);
        let kq = k.div_ceil(4);
        let panels = n.div_ceil(nr);
        let panel_lines = Self::panel_lines(kq, nr);
        let mut data = vec![Line([0; 16]); panels * panel_lines];
        if kq > 0 {
            data.par_chunks_mut(panel_lines)
                .enumerate()
                .for_each(|(p, panel)| {
                    for j in 0..nr.min(n - p * nr) {
                        for (t, quad) in w.row(p * nr + j).chunks(4).enumerate() {
                            let mut bytes = [0u8; 4];
                            for (b, &v) in bytes.iter_mut().zip(quad) {
                                *b = v as u8;
                            }
                            let at = t * nr + j;
                            panel[at / 16].0[at % 16] = u32::from_le_bytes(bytes);
                        }
                    }
                });
        }
        let mut scale = w.scale.clone();
        scale.resize(panels * nr, 0.0);
        let mut bias: Vec<i32> = (0..n)
            .map(|j| 128 * w.row(j).iter().map(|&v| i32::from(v)).sum::<i32>())
            .collect();
        bias.resize(panels * nr, 0);
        Self {
            n,
            k,
            kq,
            nr,
            data,
            scale,
            bias,
            input_scale: w.input_scale.clone(),
        }
    }

    /// Lines of one panel of `kq` quads of `nr` columns.
    fn panel_lines(kq: usize, nr: usize) -> usize {
        (kq * nr).div_ceil(16)
    }

    /// Panel `p`'s quads from quad `t0` on, `kc` quads of them (`kc nr` values).
    fn quads(&self, p: usize, t0: usize, kc: usize) -> &[u32] {
        let panel_lines = Self::panel_lines(self.kq, self.nr);
        let panel = &self.data[p * panel_lines..][..panel_lines];
        // SAFETY: a Line is 16 u32 and nothing else (repr(C), size 64, no padding), so
        // the panel's lines are 16 * panel_lines readable, aligned u32 for as long as
        // `self` is borrowed.
        let flat =
            unsafe { std::slice::from_raw_parts(panel.as_ptr().cast::<u32>(), 16 * panel.len()) };
        &flat[t0 * self.nr..][..kc * self.nr]
    }
}

/// `prologue(x) @ w.T` for `m` rows of `width` values: f32 `m x n`, on the
/// instructions `I` (a real width, or in tests the model of one).
fn linear<I: DotIsa<L>, const L: usize>(
    x: &[f32],
    mw: (usize, usize),
    w: &Packed,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    blocking::plain(product::<I, L>, w.n, x, mw, w, prologue)
}

/// `swiglu(prologue(x) @ w.T)` for a gate_up weight whose halves are whole panels: f32
/// `m x n / 2` (`Blocking::for_each_tile_swiglu`).
fn linear_swiglu<I: DotIsa<L>, const L: usize>(
    x: &[f32],
    mw: (usize, usize),
    w: &Packed,
    prologue: Prologue,
) -> candle_core::Result<Vec<f32>> {
    blocking::swiglu(product::<I, L>, (w.n, w.nr), x, mw, w, prologue)
}

/// `out += prologue(x) @ w.T` in place, `out` `m x n` (`Blocking::for_each_tile_add`).
fn linear_add<I: DotIsa<L>, const L: usize>(
    x: &[f32],
    mw: (usize, usize),
    w: &Packed,
    prologue: Prologue,
    out: &mut [f32],
) -> candle_core::Result<()> {
    blocking::add(product::<I, L>, w.n, x, mw, w, prologue, out)
}

/// The product to `dst` as `output` says (`Blocking::for_each_tile_to`).
///
/// # Safety
/// As [`blocking::Driver`].
unsafe fn product<I: DotIsa<L>, const L: usize>(
    x: &[f32],
    (m, width): (usize, usize),
    w: &Packed,
    prologue: Prologue,
    (output, dst): (Output, SyncPtr),
) -> candle_core::Result<()> {
    if let Some(why) = I::unavailable() {
        candle_core::bail!("{}: {why}", I::NAME);
    }
    if w.nr != 2 * L {
        candle_core::bail!(
            "{}: a weight packed in panels of {} columns, not {}",
            I::NAME,
            w.nr,
            2 * L
        );
    }
    prologue.check(I::NAME, x, (m, width), w.k)?;
    let mr = I::MR;
    let (a, row_scale) = pack_rows(x, (m, mr), w, prologue);
    let (n, nr) = (w.n, w.nr);
    if w.kq == 0 {
        // SAFETY: `dst` is this product's output (the contract).
        unsafe { blocking::zero_output((output, dst), (m, n)) };
        return Ok(());
    }
    let kc_max = PASS_WEIGHT_BYTES / (nr * size_of::<u32>());
    let blocking = Blocking {
        mr,
        nr,
        kc: kc_max,
        weight_step_bytes: nr * size_of::<u32>(),
        row_step_bytes: mr * size_of::<u32>(),
    };
    // Tile (p, r)'s pass from quad t0, written at `at` (row stride `ld`).
    let tile = |p: usize, r: usize, t0: usize, at: (*mut f32, usize)| {
        let kc = kc_max.min(w.kq - t0);
        let args = TileArgs {
            a: &a[(r * w.kq + t0) * mr..][..kc * mr],
            b: w.quads(p, t0, kc),
            out: at,
            cols: nr.min(n - p * nr),
            first: t0 == 0,
            last: t0 + kc == w.kq,
            row_scale: &row_scale[r * mr..][..mr],
            col_scale: &w.scale[p * nr..][..nr],
            bias: &w.bias[p * nr..][..nr],
        };
        // SAFETY: `at` is where the blocking puts tile (p, r), valid for its rows and
        // columns and written by this call alone (each (p, r) is one task's, its passes
        // in order, the first with t0 = 0); its height is at most MR; `I` is
        // available (checked above).
        unsafe { tile_rows::<_, Tiles<I, L>>(args, mr.min(m - r * mr)) };
    };
    // SAFETY: `dst` is the output `output` needs (the contract); `tile` writes tile
    // (p, r) at the place it is given.
    unsafe { blocking.for_each_tile_to(output, (m, n, w.kq), dst, tile) };
    Ok(())
}

/// The `m` input rows with the prologue applied, quantized by the rule and biased to
/// unsigned, in panels of `mr` rows, `[kq][mr]` quads each (rows past `m` zero, K past
/// `k` the bias, a zero value); and each row's scale (zero past `m`, to whole panels).
fn pack_rows(
    x: &[f32],
    (m, mr): (usize, usize),
    w: &Packed,
    prologue: Prologue,
) -> (Vec<u32>, Vec<f32>) {
    let (k, kq) = (w.k, w.kq);
    let panels = m.div_ceil(mr);
    let mut scale = vec![0f32; panels * mr];
    if kq == 0 {
        return (Vec::new(), scale);
    }
    // Not zeroed first: every quad is written below (a memset of the whole buffer
    // was 0.8 % of an int8 pass).
    let len = panels * kq * mr;
    let mut a: Vec<u32> = Vec::with_capacity(len);
    let smooth = w.input_scale.as_deref();
    a.spare_capacity_mut()[..len]
        .par_chunks_mut(kq * mr)
        .zip(scale.par_chunks_mut(mr))
        .enumerate()
        .for_each_init(
            // A row's values (zeros past `k`: the bias once flipped) and the prologue's
            // scratch, once per rayon job rather than per panel.
            || (vec![0i8; 4 * kq], vec![0f32; k]),
            |(row, tmp), (panel, (dst, scale))| {
                let rows = mr.min(m - panel * mr);
                for (i, s) in scale.iter_mut().enumerate().take(rows) {
                    let input = (x, panel * mr + i, k);
                    *s = quantize_input_row(&mut row[..k], tmp, input, prologue, smooth);
                    for (t, quad) in row.chunks_exact(4).enumerate() {
                        let quad = u32::from_le_bytes(
                            [quad[0], quad[1], quad[2], quad[3]].map(|q| q as u8),
                        );
                        dst[t * mr + i] = MaybeUninit::new(quad ^ 0x8080_8080);
                    }
                }
                for i in rows..mr {
                    for t in 0..kq {
                        dst[t * mr + i] = MaybeUninit::new(0);
                    }
                }
            },
        );
    // SAFETY: the chunks cover the first `len` elements, and each panel's task wrote
    // all `kq * mr` of its own: rows below `m` their `kq` quads, the rest zeros.
    unsafe { a.set_len(len) };
    (a, scale)
}

/// One tile's operands: `kc` quads of its row panel and of its weight panel, where its
/// output goes, and what the last pass needs to finish it.
pub(super) struct TileArgs<'a> {
    /// `[kc][MR]` activation quads.
    a: &'a [u32],
    /// `[kc][2L]` weight quads.
    b: &'a [u32],
    /// The tile's first output element and the output's row stride.
    out: (*mut f32, usize),
    /// Output columns of the tile to write (1..=2L).
    cols: usize,
    /// The first K pass: nothing in the output yet.
    first: bool,
    /// The last K pass: write f32; before it, the int32 partial sums.
    last: bool,
    /// The tile's rows' scales (MR).
    row_scale: &'a [f32],
    /// The tile's columns' scales and activation biases (2L each).
    col_scale: &'a [f32],
    bias: &'a [i32],
}

/// The tiles of the instructions `I`, each height its own monomorphised tile
/// (`blocking::tile_rows`).
struct Tiles<I, const L: usize>(PhantomData<I>);

impl<'a, I: DotIsa<L>, const L: usize> TileHeights<TileArgs<'a>> for Tiles<I, L> {
    unsafe fn tile<const R: usize>(args: TileArgs<'a>) {
        // SAFETY: the caller's contract ([`tile_body`]'s), passed on.
        unsafe { <I as DotIsa<L>>::tile::<R>(args) }
    }
}

/// The first `R` rows and `cols` columns of one tile: their int32 sums over this pass
/// added to the earlier passes' (kept in the output as int32), and on the last pass
/// rescaled to f32.
///
/// # Safety
/// `R` must be at most `I::MR`; `out` must be valid for reads and writes of those `R`
/// rows (at its row stride) and `cols` columns, written by the earlier passes unless
/// this is the first, and nobody else may access them meanwhile; `I` must be
/// available.
#[inline(always)]
unsafe fn tile_body<I: DotIsa<L>, const L: usize, const R: usize>(t: TileArgs) {
    let mut acc = [[I::zero(); 2]; R];
    // Cut to whole steps, so that the indexing below needs no bounds checks.
    let b = t.b.as_chunks::<L>().0;
    for (a, b) in t.a.chunks_exact(I::MR).zip(b.chunks_exact(2)) {
        let (b0, b1) = (I::load(&b[0]), I::load(&b[1]));
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = I::splat(a[r]);
            acc[0] = I::dot(acc[0], x, b0);
            acc[1] = I::dot(acc[1], x, b1);
        }
    }
    let (c, ldc) = t.out;
    if t.cols == 2 * L {
        // A whole tile row straight from the registers.
        let (bias, col_scale) = (t.bias.as_chunks::<L>().0, t.col_scale.as_chunks::<L>().0);
        for (r, &[lo, hi]) in acc.iter().enumerate() {
            let rs = t.row_scale[r];
            let at = c.wrapping_add(r * ldc);
            // SAFETY: row r's 2L columns are the tile's (the contract; cols is 2L).
            unsafe {
                finish_half::<I, L>(lo, at, (&bias[0], &col_scale[0], rs), (t.first, t.last));
                finish_half::<I, L>(
                    hi,
                    at.add(L),
                    (&bias[1], &col_scale[1], rs),
                    (t.first, t.last),
                );
            }
        }
        return;
    }
    // A partial tile (the last column panel): through a buffer, value by value.
    let mut buf = [[0i32; L]; 2];
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

/// `L` columns of one tile row: this pass's sums added to the earlier passes' (unless
/// `first`), then stored as int32, or on the `last` pass rescaled to f32.
///
/// # Safety
/// `at` must be valid for reads and writes of `L` values, written by the earlier passes
/// unless this is the first, and accessed by nobody else meanwhile; `I` available.
#[inline(always)]
unsafe fn finish_half<I: DotIsa<L>, const L: usize>(
    acc: I::Acc,
    at: *mut f32,
    (bias, col_scale, row_scale): (&[i32; L], &[f32; L], f32),
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
    use super::avx::Ymm;
    use super::avx512::Zmm;
    use super::model::Model;
    use super::*;
    use crate::cpu::gemm::kernel_or_model;
    use crate::cpu::gemm::portable_int8::reference;
    use crate::cpu::gemm::test_values as values;

    /// Shapes with every kind of tail: no rows, one row, rows not a multiple of the tile
    /// height, columns not a multiple of the panel (and fewer than one vector), K not a
    /// multiple of 4, K over several passes (int32 partial sums kept between passes).
    const SHAPES: [(usize, usize, usize); 9] = [
        (0, 32, 16),
        (1, 7, 3),
        (1, 32, 1),
        (6, 16, 1030),
        (12, 32, 512),
        (13, 33, 777),
        (17, 40, 50),
        (25, 100, 1030),
        (64, 129, 257),
    ];

    /// Bit-equal to the portable kernel on [`SHAPES`], and with the prologues and
    /// smoothing fused: through the model always, and through the instructions where
    /// the CPU has them.
    fn equals_the_portable_kernel<I: DotIsa<L>, const L: usize>() {
        let model = |x: &[f32], mw, w: &QuantRows, p: Prologue<'_>| {
            linear::<Model<I>, L>(x, mw, &Packed::pack(w, 2 * L), p).unwrap()
        };
        let name = format!("{} model", I::NAME);
        reference::equals_on_shapes(&model, &name, &SHAPES);
        reference::fused_inputs_and_smoothing_equal(&model, &name);
        if kernel_or_model(I::NAME) {
            let hw = |x: &[f32], mw, w: &QuantRows, p: Prologue<'_>| {
                linear::<I, L>(x, mw, &Packed::pack(w, 2 * L), p).unwrap()
            };
            reference::equals_on_shapes(&hw, I::NAME, &SHAPES);
            reference::fused_inputs_and_smoothing_equal(&hw, I::NAME);
        }
    }

    /// The SwiGLU fused into the gate_up product gives the plain product's SwiGLU, bit
    /// for bit, with and without smoothing: one and three gate panels, K of one and of
    /// three passes (partial sums kept in the task's scratch), rows in part-panels and
    /// over several tasks; through the model always, the instructions where they run.
    fn fused_swiglu_equals_the_plain_product<I: DotIsa<L>, const L: usize>() {
        let case = |named: &str, fused: Product, plain: Product| {
            for (k, hidden) in [(32, 50), (96, 130), (32, 1030)] {
                let weight = values(2 * k * hidden, 8);
                let t = Tensor::from_slice(&weight, (2 * k, hidden), &candle_core::Device::Cpu)
                    .unwrap();
                let act_max: Vec<f32> = (0..hidden)
                    .map(|c| if c == 3 { 30.0 } else { 1.0 })
                    .collect();
                for rows in [
                    QuantRows::from_f32(&weight, 2 * k, hidden),
                    QuantRows::from_weight(&t, Some(&act_max)).unwrap(),
                ] {
                    let packed = Packed::pack(&rows, 2 * L);
                    crate::cpu::gemm::check_fused_swiglu(
                        named,
                        (k, hidden),
                        &[1, 13, 300],
                        &|x, mw, p| fused(x, mw, &packed, p).unwrap(),
                        &|x, mw, p| plain(x, mw, &packed, p).unwrap(),
                    );
                }
            }
        };
        let name = format!("{} model", I::NAME);
        case(&name, linear_swiglu::<Model<I>, L>, linear::<Model<I>, L>);
        if kernel_or_model(I::NAME) {
            case(I::NAME, linear_swiglu::<I, L>, linear::<I, L>);
        }
    }

    type Product = crate::cpu::gemm::op::Product<Packed>;

    /// The product added in place to a residual gives the plain product added after
    /// it, bit for bit: a partial last panel, K of one and of three passes, rows in
    /// part-panels and over several tasks, with and without smoothing.
    fn fused_add_equals_the_plain_product<I: DotIsa<L>, const L: usize>() {
        type Add = crate::cpu::gemm::op::ProductAdd<Packed>;
        let case = |named: &str, fused: Add, plain: Product| {
            for (n, k) in [(45, 50), (64, 1030)] {
                let weight = values(n * k, 9);
                let t = Tensor::from_slice(&weight, (n, k), &candle_core::Device::Cpu).unwrap();
                let act_max: Vec<f32> = (0..k).map(|c| if c == 5 { 30.0 } else { 1.0 }).collect();
                for rows in [
                    QuantRows::from_f32(&weight, n, k),
                    QuantRows::from_weight(&t, Some(&act_max)).unwrap(),
                ] {
                    let packed = Packed::pack(&rows, 2 * L);
                    crate::cpu::gemm::check_fused_add(
                        named,
                        (n, k),
                        &[1, 13, 300],
                        &|x, mk, p, out| fused(x, mk, &packed, p, out).unwrap(),
                        &|x, mk, p| plain(x, mk, &packed, p).unwrap(),
                    );
                }
            }
        };
        let name = format!("{} model", I::NAME);
        case(&name, linear_add::<Model<I>, L>, linear::<Model<I>, L>);
        if kernel_or_model(I::NAME) {
            case(I::NAME, linear_add::<I, L>, linear::<I, L>);
        }
    }

    #[test]
    fn avx512vnni_fuses_the_residual_add() {
        fused_add_equals_the_plain_product::<Zmm, 16>();
    }

    #[test]
    fn avxvnni_fuses_the_residual_add() {
        fused_add_equals_the_plain_product::<Ymm, 8>();
    }

    #[test]
    fn avx512vnni_fuses_swiglu() {
        fused_swiglu_equals_the_plain_product::<Zmm, 16>();
    }

    #[test]
    fn avxvnni_fuses_swiglu() {
        fused_swiglu_equals_the_plain_product::<Ymm, 8>();
    }

    #[test]
    fn avx512vnni_equals_the_portable_kernel() {
        equals_the_portable_kernel::<Zmm, 16>();
    }

    #[test]
    fn avxvnni_equals_the_portable_kernel() {
        equals_the_portable_kernel::<Ymm, 8>();
    }

    /// One `VPDPBUSD` on splatted quads, lane 0, through `I`.
    #[inline(always)]
    pub(super) fn dot_lane0<I: DotIsa<L>, const L: usize>(acc: i32, a: u32, b: u32) -> i32 {
        let mut out = [0i32; L];
        // The accumulator's lanes set through a dot of zeros: acc + 0.
        let start = {
            let mut v = [0i32; L];
            v[0] = acc;
            // SAFETY: `v` is L readable i32.
            unsafe { I::add_from(I::zero(), v.as_ptr()) }
        };
        I::store(I::dot(start, I::splat(a), I::splat(b)), &mut out);
        out[0]
    }

    /// The dot follows the SDM: `a` unsigned, `b` signed, four products a lane,
    /// wrapping; in the model, and in the instructions where the CPU has them.
    fn follows_the_instruction_definition<I: DotIsa<L>, const L: usize>(
        dot: impl Fn(i32, u32, u32) -> i32,
    ) {
        // a = [255, 1, 2, 128], b = [-1, -128, 127, 1]:
        // -255 - 128 + 254 + 128 = -1.
        let a = u32::from_le_bytes([255, 1, 2, 128]);
        let b = u32::from_le_bytes([0xff, 0x80, 0x7f, 0x01]);
        let one = u32::from_le_bytes([1, 0, 0, 0]);
        assert_eq!(dot_lane0::<Model<I>, L>(10, a, b), 9);
        // Wrapping at the top of int32.
        assert_eq!(dot_lane0::<Model<I>, L>(i32::MAX, one, one), i32::MIN);
        if kernel_or_model(I::NAME) {
            assert_eq!(dot(10, a, b), 9);
            assert_eq!(dot(i32::MAX, one, one), i32::MIN);
        }
    }

    #[test]
    fn the_models_follow_the_instruction_definition() {
        follows_the_instruction_definition::<Zmm, 16>(|acc, a, b| {
            // SAFETY: reached only where the CPU has the instructions (checked by the
            // caller through kernel_or_model).
            unsafe { avx512::tests::dot_lane0(acc, a, b) }
        });
        follows_the_instruction_definition::<Ymm, 8>(|acc, a, b| {
            // SAFETY: as above.
            unsafe { avx::tests::dot_lane0(acc, a, b) }
        });
    }

    #[test]
    fn rejects_inputs_that_do_not_fit_the_layer() {
        let packed = Packed::pack(&QuantRows::from_f32(&values(12, 5), 4, 3), 32);
        let model = linear::<Model<Zmm>, 16>;
        assert!(model(&[0.0; 5], (1, 5), &packed, Prologue::None).is_err());
        assert!(model(&[0.0; 3], (1, 3), &packed, Prologue::SwiGlu).is_err());
        assert!(model(
            &[0.0; 3],
            (1, 3),
            &packed,
            Prologue::RmsNorm(&[1.0; 2], 1e-6)
        )
        .is_err());
        // A weight packed for the other width.
        let err = linear::<Model<Ymm>, 8>(&[0.0; 3], (1, 3), &packed, Prologue::None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("panels of 32 columns"), "{err}");
    }
}
