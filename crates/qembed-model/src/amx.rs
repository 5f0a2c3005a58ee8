//! bf16 linear layers on Intel AMX tiles (Sapphire Rapids and later), with no library.
//!
//! With bf16 weights the GEMMs are most of a CPU forward pass. candle's CPU matmul
//! converts bf16 to f32 (~150 GFLOP/s) and MKL's bf16 GEMM reached ~690 GFLOP per
//! CPU-second on our 2-vCPU benchmark machine, where PyTorch's oneDNN reaches ~1,300:
//! both of those still pack the weights on every call. One `TDPBF16PS` multiplies a
//! 16x32 bf16 tile by a 32x16 one into 16x16 f32 accumulators; what limits it is
//! feeding the tiles from cache. So the weights are packed once, at load, into the
//! layout a tile load reads in one pass (and replace the dense copy: no extra memory),
//! the activations are rounded to bf16 into a buffer of whole tiles, and every buffer a
//! tile touches is 64-byte aligned: a misaligned tile load splits each 64-byte row
//! across two cache lines, which halved the throughput in our measurements.
//!
//! The micro-kernel keeps a 32x32 output block in four accumulator tiles (two A tiles
//! by two B tiles: four loads per four products, the fewest the eight tile registers
//! allow) over the whole K, then stores it once. A task takes a strip of output
//! columns sized so its packed weights stay in L2 and walks down the rows.
//!
//! Set `QEMBED_AMX=0` (or `false`, `off`) to turn it off, e.g. to compare against MKL or
//! candle.

use std::arch::asm;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use crate::cpu_ops::{causal_softmax, inv_rms, multiversion, silu_mul, SyncPtr};

/// A 64-byte, 64-byte-aligned run of 32 bf16 values (their bits): a tile row.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u16; 32]);

/// Output columns a tile block covers (two 16-column B tiles).
const BLOCK_COLS: usize = 32;
/// Rows a tile block covers (two 16-row A tiles).
const BLOCK_ROWS: usize = 32;
/// K elements one `TDPBF16PS` consumes.
const K_STEP: usize = 32;
/// Packed weight bytes a task keeps hot (in L2) while it walks down the rows.
const TASK_WEIGHT_BYTES: usize = 512 << 10;
/// Row strips (of 32 rows) per task: enough work to amortise the tile configuration.
const TASK_STRIPS: usize = 8;

/// Whether linear layers with bf16 weights run on AMX: the CPU has AMX-BF16, Linux
/// granted this process the tile state, and `QEMBED_AMX` is not `0`/`false`/`off`.
pub fn available() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        let off = std::env::var("QEMBED_AMX").is_ok_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "0" | "false" | "off" | "no"
            )
        });
        !off && detect()
    })
}

fn detect() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 7 exists on every x86-64 CPU that runs this code (std's
    // feature detection reads it too).
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    // Linux (5.16+) hands out the 8 KiB tile register state on request, per process.
    // SAFETY: arch_prctl with these codes reads/writes only the u64 we pass.
    unsafe {
        if libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) != 0
        {
            return false;
        }
        let mut granted: u64 = 0;
        let rc = libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_XCOMP_PERM,
            &mut granted as *mut u64,
        );
        rc == 0 && granted & (1 << XFEATURE_XTILEDATA) != 0
    }
}

/// A `[n, k]` weight matrix (a linear layer's `[out, in]`) in AMX tile order: panels of
/// 32 output columns; in a panel, rows of 32 columns x 2 consecutive k (the pairs
/// `TDPBF16PS` multiplies), so a B tile is 16 such rows, half of each (128-byte) row.
/// K is padded with zeros to a multiple of 32, the columns to a multiple of 32.
pub(crate) struct PackedWeight {
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of 32.
    kp: usize,
    /// `ceil(n / 32)` panels of `kp` lines each.
    lines: Vec<Line>,
}

impl PackedWeight {
    /// Packs row-major `[n, k]` bf16 weights (in parallel: called at load).
    pub(crate) fn pack(w: &[half::bf16], n: usize, k: usize) -> candle_core::Result<Self> {
        if w.len() != n * k || n == 0 || k == 0 {
            candle_core::bail!("amx: weight of {} values is not {n}x{k}", w.len());
        }
        let mut packed = Self::zeroed(n, k);
        advise_huge_pages(&mut packed.lines);
        let kp = packed.kp;
        packed
            .lines
            .par_chunks_mut(kp)
            .enumerate()
            .for_each(|(panel, dst)| {
                fill_panel(dst, panel, n, k, |col, kk| w[col * k + kk].to_bits())
            });
        Ok(packed)
    }

    /// Packs `n` rows of `src` (row stride `stride`) of `k` values each, rounded to
    /// bf16: attention's keys as the weights of an `[n, k]` layer (scores = q k^T). On
    /// this thread: attention packs inside a task.
    fn pack_rows(src: &[f32], (n, k): (usize, usize), stride: usize) -> Self {
        let mut packed = Self::zeroed(n, k);
        let kp = packed.kp;
        for (panel, dst) in packed.lines.chunks_mut(kp).enumerate() {
            let dst = pairs_mut(dst);
            for j in 0..BLOCK_COLS.min(n - panel * BLOCK_COLS) {
                let row = &src[(panel * BLOCK_COLS + j) * stride..][..k];
                let mut pairs = row.chunks_exact(2);
                for (r, p) in (&mut pairs).enumerate() {
                    dst[r * BLOCK_COLS + j] = pair(p[0], p[1]);
                }
                if let [last] = pairs.remainder() {
                    dst[(k / 2) * BLOCK_COLS + j] = pair(*last, 0.0);
                }
            }
        }
        packed
    }

    /// Packs the transpose of `k` rows of `src` (row stride `stride`) of `n` values
    /// each, rounded to bf16: attention's values as the weights of an `[n, k]` layer
    /// (out = p v).
    fn pack_columns(src: &[f32], (n, k): (usize, usize), stride: usize) -> Self {
        let mut packed = Self::zeroed(n, k);
        let kp = packed.kp;
        for (panel, dst) in packed.lines.chunks_mut(kp).enumerate() {
            let dst = pairs_mut(dst);
            let c0 = panel * BLOCK_COLS;
            let cols = BLOCK_COLS.min(n - c0);
            for r in 0..k.div_ceil(2) {
                let even = &src[2 * r * stride + c0..][..cols];
                let out = &mut dst[r * BLOCK_COLS..][..cols];
                if 2 * r + 1 < k {
                    let odd = &src[(2 * r + 1) * stride + c0..][..cols];
                    for ((o, &a), &b) in out.iter_mut().zip(even).zip(odd) {
                        *o = pair(a, b);
                    }
                } else {
                    for (o, &a) in out.iter_mut().zip(even) {
                        *o = pair(a, 0.0);
                    }
                }
            }
        }
        packed
    }

    fn zeroed(n: usize, k: usize) -> Self {
        let kp = k.next_multiple_of(K_STEP);
        let lines = vec![Line([0; 32]); n.div_ceil(BLOCK_COLS) * kp];
        Self { n, k, kp, lines }
    }

    fn panel(&self, p: usize) -> *const u16 {
        self.lines[p * self.kp..].as_ptr().cast()
    }
}

/// Two consecutive k values of one column in bf16, as a tile row holds them (the
/// even one in the low half: x86 is little-endian).
#[inline(always)]
fn pair(even: f32, odd: f32) -> u32 {
    bf16_bits(even) as u32 | (bf16_bits(odd) as u32) << 16
}

/// A panel's lines as its (column, k pair) slots: 32 `u32` a pair row.
fn pairs_mut(lines: &mut [Line]) -> &mut [u32] {
    // SAFETY: Line is repr(C) [u16; 32], 64-byte aligned, no padding: 16 u32s.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 16) }
}

/// Writes panel `panel` (columns `32 * panel..`, `kp` lines) from `value(col, kk)`. A
/// panel is kp/2 rows of 64 values: column j, k index 2r + e at row r, slot 2j + e.
fn fill_panel(
    dst: &mut [Line],
    panel: usize,
    n: usize,
    k: usize,
    value: impl Fn(usize, usize) -> u16,
) {
    let cols = BLOCK_COLS.min(n - panel * BLOCK_COLS);
    for (pair, row) in dst.chunks_exact_mut(2).enumerate() {
        for kk in 2 * pair..(2 * pair + 2).min(k) {
            let e = kk - 2 * pair;
            for j in 0..cols {
                let at = 2 * j + e;
                row[at / 32].0[at % 32] = value(panel * BLOCK_COLS + j, kk);
            }
        }
    }
}

/// Asks for transparent huge pages under a large, long-lived buffer: tile loads walk
/// many rows at once, and 4 KiB pages cost TLB misses (9% in our GEMM measurements,
/// more under a hypervisor's nested page tables). Best effort: errors are ignored.
fn advise_huge_pages(lines: &mut [Line]) {
    const HUGE: usize = 2 << 20;
    let start = lines.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(lines);
    let (first, last) = (start.next_multiple_of(HUGE), end & !(HUGE - 1));
    if last > first {
        // SAFETY: the range lies inside `lines`; MADV_HUGEPAGE changes no contents.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            )
        };
    }
}

/// `f32` to bf16 bits, rounding to nearest even (as `half::bf16::from_f32` and
/// PyTorch do); NaN stays NaN.
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// `dst` = `src * scale` in bf16, then zeros to the end of `dst` (the K padding).
#[inline(always)]
fn round_row_impl(dst: &mut [MaybeUninit<u16>], src: &[f32], scale: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(bf16_bits(s * scale));
    }
    for d in &mut dst[src.len()..] {
        d.write(0);
    }
}

multiversion!(fn round_row(dst: &mut [MaybeUninit<u16>], src: &[f32], scale: f32) => round_row_impl);

/// Initialised bf16 bits seen as writable-only slots for [`round_row`] (sound: only
/// valid `u16`s are ever written through it).
fn slots(bits: &mut [u16]) -> &mut [MaybeUninit<u16>] {
    // SAFETY: MaybeUninit<u16> has u16's layout; writes through it keep values valid.
    unsafe { &mut *(bits as *mut [u16] as *mut [MaybeUninit<u16>]) }
}

/// `m` rows of bf16 activations, `kp` values each (zero-padded from `k`), in whole
/// 32-row strips (the rows past `m` are zero): `row(r, dst)` writes row `r < m`, all of
/// `dst` (`kp` values). In parallel.
///
/// # Safety
/// `row` must write every element of the `dst` it is given.
unsafe fn round_rows(
    m: usize,
    kp: usize,
    row: impl Fn(usize, &mut [MaybeUninit<u16>]) + Sync,
) -> Vec<Line> {
    let rows = m.next_multiple_of(BLOCK_ROWS);
    let lines_per_row = kp / 32;
    let mut a: Vec<Line> = Vec::with_capacity(rows * lines_per_row);
    let spare = &mut a.spare_capacity_mut()[..rows * lines_per_row];
    spare
        .par_chunks_mut(lines_per_row * 16)
        .enumerate()
        .for_each(|(chunk, dst)| {
            // SAFETY: an uninitialised Line is 32 uninitialised u16s (repr(C), no padding).
            let dst: &mut [MaybeUninit<u16>] =
                unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), dst.len() * 32) };
            for (i, dst) in dst.chunks_exact_mut(kp).enumerate() {
                let r = chunk * 16 + i;
                if r < m {
                    row(r, dst);
                } else {
                    round_row(dst, &[], 1.0);
                }
            }
        });
    // SAFETY: every line of the first rows * lines_per_row was written above (`row`
    // writes all of its row, the caller's contract; round_row pads).
    unsafe { a.set_len(rows * lines_per_row) };
    a
}

/// RMSNorm of `x` by `w` then bf16, zeros to the end of `dst`: the same values as the
/// f32 RMSNorm rounded afterwards, in one pass.
#[inline(always)]
fn round_norm_row_impl(dst: &mut [MaybeUninit<u16>], x: &[f32], w: &[f32], eps: f32) {
    let inv = inv_rms(x, eps);
    for ((d, &v), &w) in dst.iter_mut().zip(x).zip(w) {
        d.write(bf16_bits(v * inv * w));
    }
    for d in &mut dst[x.len()..] {
        d.write(0);
    }
}

multiversion!(fn round_norm_row(dst: &mut [MaybeUninit<u16>], x: &[f32], w: &[f32], eps: f32) => round_norm_row_impl);

/// `silu(gate) * up` then bf16, zeros to the end of `dst`.
#[inline(always)]
fn round_swiglu_row_impl(dst: &mut [MaybeUninit<u16>], gate: &[f32], up: &[f32]) {
    for ((d, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
        d.write(bf16_bits(silu_mul(g, u)));
    }
    for d in &mut dst[gate.len()..] {
        d.write(0);
    }
}

multiversion!(fn round_swiglu_row(dst: &mut [MaybeUninit<u16>], gate: &[f32], up: &[f32]) => round_swiglu_row_impl);

/// The tile configuration (palette 1): eight 16-row x 64-byte tiles. tmm0-3 hold the
/// 32x32 f32 output block, tmm4/5 the two A tiles, tmm6/7 the two B tiles.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// Tile state loaded on this thread for the guard's lifetime; released on drop so that
/// context switches stop saving 8 KiB of tile registers. The tile registers carry data
/// from one `asm!` block to the next (zero, multiply-accumulate, store): Rust cannot
/// name them as operands or clobbers, and that is sound because the compiler never
/// allocates tile registers itself and nothing between the blocks calls out. Neither
/// `Send` nor `Sync`: tile registers belong to the thread that configured them.
struct Tiles(PhantomData<*const ()>);

impl Tiles {
    fn configure() -> Self {
        debug_assert!(available(), "AMX tiles used without AMX");
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for t in 0..8 {
            cfg[16 + 2 * t] = 64; // bytes per row
            cfg[48 + t] = 16; // rows
        }
        let cfg = TileConfig(cfg);
        // SAFETY: `available()` confirmed AMX and the OS grant; the config is valid.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
        Tiles(PhantomData)
    }

    /// `out` (32x32 f32, row stride 32) = the 32 rows of A at `a` (row stride `lda`
    /// elements) times the weight panel at `b`, over `ksteps` * 32 of K.
    ///
    /// # Safety
    /// `a` must cover 32 rows of `ksteps * 32` values at stride `lda`, `b` a panel of
    /// `ksteps * 32` lines, both 64-byte aligned.
    #[inline(always)]
    unsafe fn block(
        &self,
        a: *const u16,
        lda: usize,
        b: *const u16,
        ksteps: usize,
        out: &mut Block,
    ) {
        let a1 = a.add(16 * lda);
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for s in 0..ksteps {
            // A rows at stride lda * 2 bytes; a B tile is 16 128-byte panel rows, the
            // left (columns 0-15) or right (16-31) half of each.
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a.add(s * K_STEP),
                a1 = in(reg) a1.add(s * K_STEP),
                b = in(reg) b.add(s * K_STEP * 32),
                sa = in(reg) lda * 2,
                sb = in(reg) 128usize,
                options(nostack, readonly),
            );
        }
        let c = out.0.as_mut_ptr().cast::<f32>();
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c2} + {s}*1 + 64], tmm3",
            c = in(reg) c,
            c2 = in(reg) c.add(16 * BLOCK_COLS),
            s = in(reg) BLOCK_COLS * 4,
            options(nostack),
        );
    }
}

impl Tiles {
    /// `out[r][c]` for rows `r < rows` and the columns of `panels` below `width`: the bf16
    /// rows of `a` (row stride `lda`) times the panels of `w`, over `ksteps` * 32 of K.
    /// Strip by strip, panel by panel, through a 32x32 block.
    ///
    /// # Safety
    /// `a` must hold whole 32-row strips covering `rows` (`lda` a multiple of 32, at
    /// least `ksteps * 32`) and `ksteps * 32 <= w.kp`; `out` must be valid for writes at
    /// `r * ldo + c` for those rows and columns, and no one else may access them.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        &self,
        a: &[u16],
        lda: usize,
        rows: usize,
        w: &PackedWeight,
        panels: std::ops::Range<usize>,
        ksteps: usize,
        (out, ldo, width): (*mut f32, usize, usize),
    ) {
        let mut block = Block([[0.0; BLOCK_COLS]; BLOCK_ROWS]);
        for r0 in (0..rows).step_by(BLOCK_ROWS) {
            let strip_rows = BLOCK_ROWS.min(rows - r0);
            for p in panels.clone() {
                let c0 = p * BLOCK_COLS;
                let cols = BLOCK_COLS.min(width.min(w.n).saturating_sub(c0));
                self.block(a[r0 * lda..].as_ptr(), lda, w.panel(p), ksteps, &mut block);
                for (r, src) in block.0[..strip_rows].iter().enumerate() {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), out.add((r0 + r) * ldo + c0), cols);
                }
            }
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releases the tile state this guard configured.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// A 32x32 f32 output block, 64-byte aligned for the tile stores.
#[repr(C, align(64))]
struct Block([[f32; BLOCK_COLS]; BLOCK_ROWS]);

/// `a @ w.T` for `m` rows of activations already rounded by [`round_rows`] (width
/// `w.kp`): f32 `m x n`, products of bf16 values accumulated in f32.
fn matmul(a: &[Line], m: usize, w: &PackedWeight) -> candle_core::Result<Vec<f32>> {
    let (n, kp) = (w.n, w.kp);
    if a.len() < m.next_multiple_of(BLOCK_ROWS) * kp / 32 {
        candle_core::bail!("amx: activations shorter than {m} rows of {kp}");
    }
    if !available() {
        candle_core::bail!("amx: not available on this CPU");
    }
    let a: &[u16] = lines(a);
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast());
    let panels = n.div_ceil(BLOCK_COLS);
    let panels_per_task = (TASK_WEIGHT_BYTES / (kp * 64)).clamp(1, 8);
    let strips = m.div_ceil(BLOCK_ROWS);
    let tasks: Vec<(usize, usize)> = (0..panels)
        .step_by(panels_per_task)
        .flat_map(|p0| (0..strips).step_by(TASK_STRIPS).map(move |s0| (p0, s0)))
        .collect();
    tasks.into_par_iter().for_each(|(p0, s0)| {
        let tiles = Tiles::configure();
        let r0 = s0 * BLOCK_ROWS;
        let rows = (TASK_STRIPS * BLOCK_ROWS).min(m - r0);
        let panels = p0..(p0 + panels_per_task).min(panels);
        // SAFETY: `a` has whole 32-row strips of kp values from row r0 on; the task's
        // rows r0..r0 + rows and its panels' columns are its own part of the m x n
        // output (row stride n).
        unsafe {
            tiles.product(
                &a[r0 * kp..],
                kp,
                rows,
                w,
                panels,
                kp / K_STEP,
                (dst.at(r0 * n), n, n),
            )
        };
    });
    // SAFETY: the tasks cover every (strip, panel), so all m x n values were written.
    unsafe { out.set_len(m * n) };
    Ok(out)
}

/// Causal attention of the query heads that share `kv_head`, over one sequence
/// (`start`, `len` tokens), from the normed and rotated fused qkv rows (`width` wide):
/// the scores and the weighted values are bf16 products on AMX tiles with f32
/// accumulation, the softmax is f32 (as PyTorch's bf16 attention). Writes those heads'
/// columns of the sequence's rows of `out` (`[tokens, H * D]`).
///
/// Keys and values are packed once for the whole group of query heads; query rows are
/// taken `block` at a time, each seeing only the keys up to its own position.
pub(crate) fn group_attention(
    qkv: &[f32],
    width: usize,
    (h, kv, d): (usize, usize, usize),
    (start, len, kv_head): (usize, usize, usize),
    block: usize,
    out: SyncPtr,
) {
    let seq = &qkv[start * width..(start + len) * width];
    let keys_at = (h + kv_head) * d;
    let values_at = (h + kv + kv_head) * d;
    // Keys as the weights of a [len, d] layer (scores = q k^T); values transposed, as
    // those of a [d, len] one (out = p v).
    let kpack = PackedWeight::pack_rows(&seq[keys_at..], (len, d), width);
    let vpack = PackedWeight::pack_columns(&seq[values_at..], (d, len), width);
    let kp_d = d.next_multiple_of(K_STEP);
    let block = block.clamp(1, len);
    let strip_rows = block.next_multiple_of(BLOCK_ROWS);
    let mut qa = vec![Line([0; 32]); strip_rows * kp_d / 32];
    let mut pa = vec![Line([0; 32]); strip_rows * len.next_multiple_of(K_STEP) / 32];
    let mut scores = vec![0f32; block * len];
    let scale = 1.0 / (d as f32).sqrt();
    let group = h / kv;
    let tiles = Tiles::configure();
    for head in kv_head * group..(kv_head + 1) * group {
        let mut r0 = 0;
        while r0 < len {
            let rows = block.min(len - r0);
            // Causal: rows r0..r0+rows see keys 0..r0+rows, nothing later.
            let keys = r0 + rows;
            let qa_bits = lines_mut(&mut qa);
            for (i, dst) in qa_bits.chunks_exact_mut(kp_d).take(rows).enumerate() {
                let q = &seq[(r0 + i) * width + head * d..][..d];
                round_row(slots(dst), q, scale);
            }
            let s = &mut scores[..rows * keys];
            // SAFETY: qa holds whole strips of kp_d-wide rows; kpack has kp_d lines a
            // panel; s is rows x keys and this task's own scratch.
            unsafe {
                tiles.product(
                    lines(&qa),
                    kp_d,
                    rows,
                    &kpack,
                    0..keys.div_ceil(BLOCK_COLS),
                    kp_d / K_STEP,
                    (s.as_mut_ptr(), keys, keys),
                )
            };
            causal_softmax(s, keys, r0);
            let kp_keys = keys.next_multiple_of(K_STEP);
            let pa_bits = lines_mut(&mut pa);
            for (dst, p) in pa_bits.chunks_exact_mut(kp_keys).zip(s.chunks_exact(keys)) {
                round_row(slots(dst), p, 1.0);
            }
            // SAFETY: pa holds whole strips of kp_keys-wide rows (kp_keys <= vpack's kp);
            // the destination (rows start+r0.., columns head*D..+D, row stride H*D)
            // belongs to this (sequence, head) alone.
            unsafe {
                tiles.product(
                    lines(&pa),
                    kp_keys,
                    rows,
                    &vpack,
                    0..d.div_ceil(BLOCK_COLS),
                    kp_keys / K_STEP,
                    (out.at((start + r0) * h * d + head * d), h * d, d),
                )
            };
            r0 += rows;
        }
    }
}

fn lines_mut(lines: &mut [Line]) -> &mut [u16] {
    // SAFETY: Line is repr(C) [u16; 32] with no padding.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 32) }
}

fn lines(lines: &[Line]) -> &[u16] {
    // SAFETY: Line is repr(C) [u16; 32] with no padding.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast(), lines.len() * 32) }
}

/// What a linear layer on AMX applies to its input rows while rounding them to bf16:
/// fusing the step before the GEMM saves writing and re-reading an f32 activation.
pub(crate) enum Input<'a> {
    /// The rows as they are.
    Plain,
    /// RMSNorm by this weight (`eps`) first: the pre-attention and pre-MLP norms.
    RmsNorm(&'a [f32], f32),
    /// `silu(gate) * up` of rows `[gate | up]` twice the layer's width: the MLP.
    SwiGlu,
}

/// `input(x) @ w.T` as a candle op on a contiguous 2-D f32 CPU tensor.
pub(crate) struct AmxLinear<'a> {
    pub(crate) weight: &'a PackedWeight,
    pub(crate) input: Input<'a>,
}

impl AmxLinear<'_> {
    /// `x` (`m` rows of `width`) as rounded activations for this layer.
    fn round(&self, x: &[f32], m: usize, width: usize) -> candle_core::Result<Vec<Line>> {
        let (k, kp) = (self.weight.k, self.weight.kp);
        let expected = match self.input {
            Input::SwiGlu => 2 * k,
            Input::Plain | Input::RmsNorm(..) => k,
        };
        if width != expected || x.len() != m * width {
            candle_core::bail!("amx linear: input rows of {width}, weight width {k}");
        }
        if let Input::RmsNorm(w, _) = self.input {
            if w.len() != k {
                candle_core::bail!("amx linear: norm weight of {} for rows of {k}", w.len());
            }
        }
        // SAFETY: each row function writes its whole `dst` (values, then zero padding).
        Ok(unsafe {
            match self.input {
                Input::Plain => round_rows(m, kp, |r, dst| round_row(dst, &x[r * k..][..k], 1.0)),
                Input::RmsNorm(w, eps) => round_rows(m, kp, |r, dst| {
                    round_norm_row(dst, &x[r * k..][..k], w, eps)
                }),
                Input::SwiGlu => round_rows(m, kp, |r, dst| {
                    let (gate, up) = x[r * 2 * k..][..2 * k].split_at(k);
                    round_swiglu_row(dst, gate, up)
                }),
            }
        })
    }
}

impl CustomOp1 for AmxLinear<'_> {
    fn name(&self) -> &'static str {
        "amx-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else {
            candle_core::bail!("amx linear: f32 activations expected, got {:?}", s.dtype())
        };
        let (m, width) = l.shape().dims2()?;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("amx linear: input not contiguous")
        };
        let a = self.round(&x[start..end], m, width)?;
        let out = matmul(&a, m, self.weight)?;
        Ok((CpuStorage::F32(out), Shape::from((m, self.weight.n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// `x @ w.T` through the op's plain input path.
    fn plain(x: &[f32], m: usize, w: &PackedWeight) -> candle_core::Result<Vec<f32>> {
        let op = AmxLinear {
            weight: w,
            input: Input::Plain,
        };
        let width = x.len().checked_div(m).unwrap_or(w.k);
        matmul(&op.round(x, m, width)?, m, w)
    }

    fn round(v: f32) -> f32 {
        half::bf16::from_f32(v).to_f32()
    }

    /// Whether to run the AMX tests: skipped on CPUs without AMX, unless
    /// `QEMBED_REQUIRE_AMX` is set (CI sets it where /proc/cpuinfo lists amx_bf16).
    fn amx_or_skip() -> bool {
        if available() {
            return true;
        }
        assert!(
            std::env::var_os("QEMBED_REQUIRE_AMX").is_none(),
            "QEMBED_REQUIRE_AMX is set but AMX is not usable"
        );
        eprintln!("skipped: no AMX on this CPU");
        false
    }

    /// Against an f64 product of the same bf16-rounded values, over shapes with every
    /// kind of tail: rows not a multiple of 32 (and of 16), columns not a multiple of 32,
    /// K not a multiple of 32, a single row and none.
    #[test]
    fn matches_a_reference_product_on_ragged_shapes() {
        if !amx_or_skip() {
            return;
        }
        for &(m, n, k) in &[
            (1, 32, 32),
            (17, 40, 50),
            (33, 64, 96),
            (64, 100, 1024),
            (100, 7, 3),
            (300, 300, 200),
        ] {
            let x = values(m * k, 1 + m as u64);
            let w = values(n * k, 2 + n as u64);
            let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let packed = PackedWeight::pack(&wb, n, k).unwrap();
            let got = plain(&x, m, &packed).unwrap();
            assert_eq!(got.len(), m * n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| round(x[i * k + t]) as f64 * round(w[j * k + t]) as f64)
                        .sum();
                    let diff = (got[i * n + j] as f64 - want).abs();
                    assert!(
                        diff < 1e-4 * (k as f64).sqrt(),
                        "{m}x{n}x{k} at ({i},{j}): {} vs {want}",
                        got[i * n + j]
                    );
                }
            }
        }
    }

    /// Causal GQA attention against an f64 reference that rounds where the kernel does
    /// (q * scale, k, v and the probabilities to bf16): sequences of ragged lengths packed
    /// together, blocks smaller than a sequence, a one-row block, and inputs large
    /// enough to make the softmax peaked (where a score error would show).
    #[test]
    fn group_attention_matches_a_reference() {
        if !amx_or_skip() {
            return;
        }
        // (heads, kv heads, head dim, block, sequence lengths, input amplitude)
        type Case = (usize, usize, usize, usize, &'static [usize], f32);
        let cases: &[Case] = &[
            (4, 2, 32, 16, &[37, 70], 1.0),
            (2, 1, 64, 40, &[37, 70], 1.0),
            (3, 3, 16, 128, &[37, 70], 1.0),
            (2, 1, 128, 32, &[1, 32, 64], 8.0),
            (2, 2, 80, 1, &[5, 33], 8.0),
        ];
        for &(h, kv, d, block, lens, amp) in cases {
            let tokens: usize = lens.iter().sum();
            let width = (h + 2 * kv) * d;
            let qkv: Vec<f32> = values(tokens * width, (h * d + block) as u64)
                .into_iter()
                .map(|v| v * amp)
                .collect();
            let mut out = vec![f32::NAN; tokens * h * d];
            let ptr = SyncPtr(out.as_mut_ptr());
            let mut start = 0;
            for &len in lens {
                for g in 0..kv {
                    group_attention(&qkv, width, (h, kv, d), (start, len, g), block, ptr);
                }
                start += len;
            }
            let r = |v: f32| round(v) as f64;
            let scale = 1.0 / (d as f32).sqrt();
            let mut start = 0;
            for &len in lens {
                for head in 0..h {
                    let g = head / (h / kv);
                    for i in 0..len {
                        let q = &qkv[(start + i) * width + head * d..][..d];
                        let scores: Vec<f64> = (0..=i)
                            .map(|j| {
                                let k = &qkv[(start + j) * width + (h + g) * d..][..d];
                                q.iter().zip(k).map(|(&a, &b)| r(a * scale) * r(b)).sum()
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        for c in 0..d {
                            let want: f64 = (0..=i)
                                .map(|j| {
                                    let v = qkv[(start + j) * width + (h + kv + g) * d + c];
                                    r((e[j] / sum) as f32) * r(v)
                                })
                                .sum();
                            let got = out[(start + i) * h * d + head * d + c] as f64;
                            let tol = 2e-3 * amp as f64;
                            assert!(
                                (got - want).abs() < tol,
                                "h{h} kv{kv} d{d} b{block} len {len} head {head} row {i} col {c}: {got} vs {want}"
                            );
                        }
                    }
                }
                start += len;
            }
        }
    }

    /// The fused input stages give what the stage in f32 followed by the plain GEMM gives.
    #[test]
    fn fused_norm_and_swiglu_inputs_match_the_unfused_ones() {
        if !amx_or_skip() {
            return;
        }
        let (m, n, k) = (45, 70, 96);
        let w: Vec<half::bf16> = values(n * k, 3)
            .iter()
            .map(|&v| half::bf16::from_f32(v))
            .collect();
        let packed = PackedWeight::pack(&w, n, k).unwrap();
        let run = |x: &[f32], input: Input| {
            let op = AmxLinear {
                weight: &packed,
                input,
            };
            matmul(&op.round(x, m, x.len() / m).unwrap(), m, &packed).unwrap()
        };
        let close = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-2 * (1.0 + y.abs()))
        };
        let x = values(m * k, 4);
        let norm_w = values(k, 5);
        let normed: Vec<f32> = x
            .chunks(k)
            .flat_map(|row| {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / k as f32;
                let inv = 1.0 / (ms + 1e-6).sqrt();
                row.iter()
                    .zip(&norm_w)
                    .map(move |(v, w)| v * inv * w)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(close(
            &run(&x, Input::RmsNorm(&norm_w, 1e-6)),
            &run(&normed, Input::Plain)
        ));
        let gate_up = values(m * 2 * k, 6);
        let act: Vec<f32> = gate_up
            .chunks(2 * k)
            .flat_map(|row| {
                let (g, u) = row.split_at(k);
                g.iter()
                    .zip(u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(close(
            &run(&gate_up, Input::SwiGlu),
            &run(&act, Input::Plain)
        ));
        // Widths that do not fit the layer are errors, not panics.
        let op = AmxLinear {
            weight: &packed,
            input: Input::SwiGlu,
        };
        assert!(op.round(&x, m, k).is_err());
    }

    #[test]
    fn rounding_matches_half() {
        for v in values(10_000, 7).into_iter().chain([
            0.0,
            -0.0,
            1e-40,
            f32::MAX,
            f32::INFINITY,
            -f32::INFINITY,
        ]) {
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
        assert!(half::bf16::from_bits(bf16_bits(f32::NAN)).is_nan());
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let wb = vec![half::bf16::ZERO; 6];
        assert!(PackedWeight::pack(&wb, 4, 2).is_err());
        let packed = PackedWeight::pack(&wb, 3, 2).unwrap();
        assert!(plain(&[0.0; 5], 2, &packed).is_err());
    }
}
