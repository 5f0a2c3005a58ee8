//! Causal attention with both products on the kernel's bf16 tile, for the models whose
//! linear layers run on it.
//!
//! On the `avx512` f32 tile (what this kernel ran before) attention's products do 16
//! multiply-adds per instruction where `VDPBF16PS` does 32, and they were a sixth of a
//! bf16 forward pass at 512 tokens, more at 900. Here the scores and the weighted values
//! are bf16 products with f32 sums and the softmax is f32: what PyTorch's bf16 attention
//! and the AMX kernel compute. Keys and values are rounded and packed once per
//! (sequence, kv head), as the weights of a `[len, D]` and of a `[D, len]` layer, and
//! shared by the query heads of the group; queries (scaled by `1 / sqrt(D)`) and
//! probabilities are packed per block of query rows, and each block sees only the keys
//! up to its last row.

use std::mem::MaybeUninit;

use super::isa::DotIsa;
use super::{Packed, TileArgs, KC, MR, NR};
use crate::cpu::attention::{causal_exp, head_attention, QkvRows};
use crate::cpu::gemm::bf16::round_row;
use crate::cpu::gemm::blocking::tile_rows;
use crate::cpu::par::SyncPtr;

/// Causal attention of the query heads that share `kv_head`, over one sequence
/// (`start`, `len` tokens), from the fused qkv rows to those heads' columns of the
/// sequence's rows of `out` (`[tokens, H * D]`), `block` query rows at a time, on the
/// instructions `I` ([`super::isa::Hw`], or their software model in tests and in the
/// `software-models` kernel). Keys and queries are normed and rotated as they are
/// taken ([`QkvRows::head_rows`]).
pub(super) fn group_attention<I: DotIsa>(
    rows: &QkvRows,
    (start, len, kv_head): (usize, usize, usize),
    block: usize,
    out: SyncPtr,
) {
    let (h, kv, d) = rows.dims;
    let width = rows.width;
    let group = h / kv;
    let heads = kv_head * group..(kv_head + 1) * group;
    if len == 0 {
        return;
    }
    let mut buf = Vec::with_capacity(len * d);
    if I::unavailable().is_some() {
        // Not reached by a model (it takes a kernel's attention only once the kernel
        // was chosen, which needs the instructions); the f32 products keep it sound.
        // The sequence's rows normed and rotated, as the f32 path reads them.
        let mut normed = vec![0f32; len * width];
        for c in 0..width / d {
            rows.head_rows(c, (start, len), &mut buf);
            for (dst, src) in normed.chunks_exact_mut(width).zip(buf.chunks_exact(d)) {
                dst[c * d..][..d].copy_from_slice(src);
            }
        }
        let matmul = super::super::portable::strided_gemm;
        // The copy starts at the sequence's first token, and so does `out` here.
        let out = SyncPtr(out.at(start * h * d));
        for head in heads {
            let at = (0, len, head);
            head_attention(matmul, &normed, width, (h, kv, d), at, block, out);
        }
        return;
    }
    let seq = rows.sequence((start, len));
    rows.head_rows(h + kv_head, (start, len), &mut buf);
    let keys = Packed::round_rows(&buf, (len, d), d);
    let values = Packed::round_columns(&seq[(h + kv + kv_head) * d..], (d, len), width);
    let block = block.clamp(1, len);
    let kp_d = d.div_ceil(2);
    let kp_len = len.div_ceil(2);
    let panels = block.div_ceil(MR);
    let mut qa = vec![0u32; panels * kp_d * MR];
    let mut pa = vec![0u32; panels * kp_len * MR];
    let mut scores = vec![0f32; block * len];
    let mut inv = vec![0f32; block];
    let mut row = vec![MaybeUninit::<u16>::uninit(); 2 * kp_d.max(kp_len)];
    let scale = 1.0 / (d as f32).sqrt();
    for head in heads {
        // This head's queries, normed and rotated, [len, d].
        rows.head_rows(head, (start, len), &mut buf);
        let mut r0 = 0;
        while r0 < len {
            let rows = block.min(len - r0);
            // Causal: rows r0..r0+rows see keys 0..r0+rows, nothing later.
            let visible = r0 + rows;
            let q = |i: usize| &buf[(r0 + i) * d..][..d];
            pack_pairs(&mut qa, (rows, kp_d), q, |_| scale, &mut row);
            let s = &mut scores[..rows * visible];
            // SAFETY: s is rows x visible, this task's own scratch; `I` is available
            // (checked above).
            unsafe { product::<I>((&qa, rows, kp_d), &keys, visible, (s.as_mut_ptr(), visible)) };
            causal_exp(s, visible, r0, &mut inv);
            let kp = visible.div_ceil(2);
            // Each row's visible keys, made probabilities as they are rounded; zeros
            // after them.
            pack_pairs(
                &mut pa,
                (rows, kp),
                |i| &s[i * visible..][..r0 + i + 1],
                |i| inv[i],
                &mut row,
            );
            let dst = out.at((start + r0) * h * d + head * d);
            // SAFETY: the destination (rows start+r0.., columns head*D..+D, row stride
            // H*D) belongs to this (sequence, head) alone; `I` is available.
            unsafe { product::<I>((&pa, rows, kp), &values, d, (dst, h * d)) };
            r0 += rows;
        }
    }
}

/// `m` rows (`row(i)`, at most `2 kp` values each) times `scale(i)`, rounded to bf16 pairs
/// into `dst` as the kernel's row panels of `kp` pairs (`[kp][12]` each); the odd pair
/// past a row's end is zero, the rows past `m` in the last panel are left as they were
/// (the tile reads only its own rows). `scratch` holds at least `2 kp` values.
fn pack_pairs<'a>(
    dst: &mut [u32],
    (m, kp): (usize, usize),
    row: impl Fn(usize) -> &'a [f32],
    scale: impl Fn(usize) -> f32,
    scratch: &mut [MaybeUninit<u16>],
) {
    let scratch = &mut scratch[..2 * kp];
    for i in 0..m {
        round_row(scratch, row(i), scale(i));
        // SAFETY: round_row wrote all of `scratch` (values, then zeros), and
        // MaybeUninit<u16> has u16's layout.
        let pairs: &[u16] = unsafe { std::slice::from_raw_parts(scratch.as_ptr().cast(), 2 * kp) };
        let panel = &mut dst[(i / MR) * kp * MR..][..kp * MR];
        for (t, pair) in pairs.chunks_exact(2).enumerate() {
            panel[t * MR + i % MR] = u32::from(pair[0]) | u32::from(pair[1]) << 16;
        }
    }
}

/// `c = a @ w.T` over the first `kp` pairs of K: `a` is `m` rows in row panels of `kp`
/// pairs ([`pack_pairs`]), `w` a packed layer of which the first `n` columns are
/// computed; `c` is `m x n` at row stride `ldc`.
///
/// # Safety
/// `c` must be valid for writes of that `m x n` view and nobody else may access it
/// meanwhile; `kp` must not exceed `w`'s pairs; the CPU must have `I`'s instructions.
unsafe fn product<I: DotIsa>(
    (a, m, kp): (&[u32], usize, usize),
    w: &Packed,
    n: usize,
    (c, ldc): (*mut f32, usize),
) {
    for r in 0..m.div_ceil(MR) {
        let panel = &a[r * kp * MR..][..kp * MR];
        for p in 0..n.div_ceil(NR) {
            for t0 in (0..kp).step_by(KC) {
                let kc = KC.min(kp - t0);
                let args = TileArgs {
                    a: &panel[t0 * MR..][..kc * MR],
                    b: w.lines(p, t0, kc),
                    // SAFETY: row r*12, column p*32 of the m x n view (the contract).
                    out: (unsafe { c.add(r * MR * ldc + p * NR) }, ldc),
                    cols: NR.min(n - p * NR),
                    accumulate: t0 > 0,
                };
                // SAFETY: the tile's rows (MR.min(m - r*MR)) and columns lie inside the
                // view, which is ours (the contract); each tile's passes run in order.
                unsafe { tile_rows::<_, I>(args, MR.min(m - r * MR)) };
            }
        }
    }
}

impl Packed {
    /// `n` rows of `k` values from `src` at row stride `stride` (the keys of one kv head
    /// in the fused qkv rows), rounded to bf16, as the weights of an `[n, k]` layer.
    fn round_rows(src: &[f32], (n, k): (usize, usize), stride: usize) -> Self {
        let mut packed = Self::zeros(n, k);
        let mut row = vec![MaybeUninit::<u16>::uninit(); k];
        for j in 0..n {
            round_row(&mut row, &src[j * stride..][..k], 1.0);
            let (panel, half, slot) = (j / NR, (j % NR) / 16, 2 * (j % 16));
            let lines = &mut packed.data[2 * panel * packed.kp..][..2 * packed.kp];
            for (kk, v) in row.iter().enumerate() {
                // SAFETY: round_row wrote every value of `row`.
                lines[2 * (kk / 2) + half].0[slot + kk % 2] = unsafe { v.assume_init() };
            }
        }
        packed
    }

    /// The transpose of `k` rows of `n` values at row stride `stride` (the values of
    /// one kv head: `n` = D columns, `k` = the sequence's tokens), rounded to bf16, as
    /// the weights of an `[n, k]` layer.
    fn round_columns(src: &[f32], (n, k): (usize, usize), stride: usize) -> Self {
        let mut packed = Self::zeros(n, k);
        let kp = packed.kp;
        // Rows 2t and 2t + 1 rounded, zero-padded to whole panels: each line of pair t
        // is 16 values of both, interleaved, so it is written whole and in order.
        let width = n.next_multiple_of(NR);
        let mut rows = [(); 2].map(|_| vec![MaybeUninit::<u16>::uninit(); width]);
        for t in 0..kp {
            for (e, row) in rows.iter_mut().enumerate() {
                let kk = 2 * t + e;
                let values = if kk < k {
                    &src[kk * stride..][..n]
                } else {
                    &[]
                };
                round_row(row, values, 1.0);
            }
            // SAFETY: round_row wrote all of both rows (values, then zeros), and
            // MaybeUninit<u16> has u16's layout.
            let [even, odd] = rows
                .each_ref()
                .map(|r| unsafe { std::slice::from_raw_parts(r.as_ptr().cast::<u16>(), width) });
            for (c, (e, o)) in even.chunks_exact(16).zip(odd.chunks_exact(16)).enumerate() {
                let line = &mut packed.data[2 * ((c / 2) * kp + t) + c % 2].0;
                for (i, (&e, &o)) in e.iter().zip(o).enumerate() {
                    line[2 * i] = e;
                    line[2 * i + 1] = o;
                }
            }
        }
        packed
    }
}
