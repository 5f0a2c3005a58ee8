//! Weights (and attention's keys and values) packed once into the order tile loads read.

use super::*;

/// A `[n, k]` weight matrix (a linear layer's `[out, in]`) in AMX tile order: panels of
/// 32 output columns; in a panel, rows of 32 columns x 2 consecutive k (the pairs
/// `TDPBF16PS` multiplies), so a B tile is 16 such rows, half of each (128-byte) row.
/// K is padded with zeros to a multiple of 32, the columns to a multiple of 32.
pub(crate) struct PackedWeight {
    pub(super) n: usize,
    pub(super) k: usize,
    /// `k` rounded up to a multiple of 32.
    pub(super) kp: usize,
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
    pub(super) fn pack_rows(src: &[f32], (n, k): (usize, usize), stride: usize) -> Self {
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
    pub(super) fn pack_columns(src: &[f32], (n, k): (usize, usize), stride: usize) -> Self {
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

    pub(super) fn zeroed(n: usize, k: usize) -> Self {
        let kp = k.next_multiple_of(K_STEP);
        let lines = vec![Line([0; 32]); n.div_ceil(BLOCK_COLS) * kp];
        Self { n, k, kp, lines }
    }

    /// Panel `p`'s `kp` lines as the bf16 slots a tile load reads.
    pub(super) fn panel(&self, p: usize) -> &[u16] {
        lines(&self.lines[p * self.kp..][..self.kp])
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
