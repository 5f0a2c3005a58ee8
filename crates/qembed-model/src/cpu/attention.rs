//! Fused causal attention for one layer of a packed batch, from the fused qkv
//! projection.
//!
//! Written with candle ops, one layer's attention made ~20 tensors (narrowed q/k/v
//! copied to contiguous, transposed per sequence, a materialised causal mask, scores,
//! probabilities, one output per block, then a concatenation), and its matmuls ran
//! candle's own thread pool next to the GEMM's, each spinning while the other worked.
//! Here the q/k norm, rotary embedding and causal attention read the fused qkv
//! projection once and write the attention output once; sequences and heads are the
//! unit of parallelism, and each runs single-threaded products on strided views, so no
//! copy of q, k or v is made and no padding or mask exists.
//!
//! The two products come from the model's GEMM kernel ([`AttentionProducts`]): f32
//! strided GEMMs per (sequence, head), or the kernel's own attention per (sequence, kv
//! head) (AMX and AVX512_BF16: both products on the kernel's bf16 tiles).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

use super::f32_slice;
use super::par::{par_rows, SyncPtr};
use super::simd::{exp, multiversion, sum_map};

/// `c = alpha * a @ op(b)` on strided row-major f32 views, single-threaded (callers
/// run inside rayon tasks): `a` is `m x k` (row stride lda); `b` is `n x k` when `b_t`
/// (so op(b) is its transpose) or `k x n`, row stride ldb; `c` is `m x n`, row stride
/// ldc.
///
/// # Safety
/// The pointers must cover those views.
pub(crate) type StridedGemm = unsafe fn(
    (usize, usize, usize),
    f32,
    (*const f32, usize),
    (*const f32, usize, bool),
    (*mut f32, usize),
);

/// Causal attention of the query heads that share one kv head, over one sequence:
/// `(rows, (start, len, kv head), block, out)`, from the fused qkv rows to those heads'
/// columns of `out` (`[tokens, H * D]`; the caller gives each task its own columns and
/// rows).
pub(crate) type GroupAttention = fn(&QkvRows, (usize, usize, usize), usize, SyncPtr);

/// One layer's fused qkv projection, `[tokens, (H + 2 KV) * D]`, as a kernel's own
/// attention reads it: the q and k heads normed and rotated as they are taken (into
/// the task's own buffer, which the kernel then packs), not in a copy of the whole
/// projection made first. That copy was a pass over every row of the layer, written
/// and read back (6 % of an int8 forward pass on AMX at 32x128).
pub(crate) struct QkvRows<'a> {
    pub qkv: &'a [f32],
    /// The row width, `(H + 2 KV) * D`.
    pub width: usize,
    /// `(H, KV, D)`.
    pub dims: (usize, usize, usize),
    /// What turns q and k heads into attention's operands; `None` where the rows are
    /// normed and rotated already (the kernels' own tests).
    pub norm: Option<HeadNorm<'a>>,
}

/// The per-head RMSNorm weights of q and k (`[D]` each), their `eps`, and the rotary
/// tables of each token's own position (`[tokens, D / 2]`).
#[derive(Clone, Copy)]
pub(crate) struct HeadNorm<'a> {
    pub q_norm: &'a [f32],
    pub k_norm: &'a [f32],
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub eps: f32,
}

impl QkvRows<'_> {
    /// Head `c` of the row layout (q heads `0..H`, k heads `H..H + KV`, v heads after
    /// them) of the `len` tokens from `start`, contiguous `[len, D]` in `dst`: q and k
    /// normed and rotated (as [`QkvAttention`]'s copy would hold them, bit for bit), v
    /// as it is.
    pub(crate) fn head_rows(&self, c: usize, (start, len): (usize, usize), dst: &mut Vec<f32>) {
        let (h, kv, d) = self.dims;
        dst.clear();
        let norm = self.norm.and_then(|n| match c {
            c if c < h => Some((n, n.q_norm)),
            c if c < h + kv => Some((n, n.k_norm)),
            _ => None,
        });
        let Some((n, w)) = norm else {
            for t in start..start + len {
                dst.extend_from_slice(&self.qkv[t * self.width + c * d..][..d]);
            }
            return;
        };
        // Normed and rotated as they are read, not copied first and then changed in
        // place (that copy, a call per token, was 1.6 % of an int8 pass at 32x128).
        dst.reserve(len * d);
        let half = d / 2;
        let src = (&self.qkv[start * self.width + c * d..], self.width);
        let tables = (&n.cos[start * half..], &n.sin[start * half..]);
        norm_rotate_rows(
            &mut dst.spare_capacity_mut()[..len * d],
            src,
            w,
            tables,
            n.eps,
        );
        // SAFETY: `norm_rotate_rows` wrote each of the first `len * d` elements.
        unsafe { dst.set_len(len * d) };
    }

    /// The rows of the `len` tokens from `start`, `width` each.
    pub(crate) fn sequence(&self, (start, len): (usize, usize)) -> &[f32] {
        &self.qkv[start * self.width..(start + len) * self.width]
    }
}

/// [`norm_rotate`] of `dst.len() / D` rows of `D` (`D = w.len()`), row `t` read from
/// `src[t * stride..]` and rotated by the tables' row `t` (`D / 2` each), into `dst`.
#[inline(always)]
fn norm_rotate_rows_impl(
    dst: &mut [MaybeUninit<f32>],
    (src, stride): (&[f32], usize),
    w: &[f32],
    (cos, sin): (&[f32], &[f32]),
    eps: f32,
) {
    let (d, half) = (w.len(), w.len() / 2);
    if d == 0 {
        return;
    }
    for (t, row) in dst.chunks_exact_mut(d).enumerate() {
        let (cos, sin) = (&cos[t * half..][..half], &sin[t * half..][..half]);
        norm_rotate_impl(row, &src[t * stride..][..d], w, cos, sin, eps);
    }
}

multiversion!(fn norm_rotate_rows(dst: &mut [MaybeUninit<f32>], src: (&[f32], usize), w: &[f32], tables: (&[f32], &[f32]), eps: f32) => norm_rotate_rows_impl);

/// How a GEMM kernel runs attention's two products (scores and weighted values), with
/// the name of that way (`CpuKernelInfo::attention`: kernels with the same one compute
/// attention alike, bit for bit).
#[derive(Clone, Copy)]
pub(crate) enum AttentionProducts {
    /// Two f32 products per (sequence, query head) through this GEMM.
    PerHead(&'static str, StridedGemm),
    /// The kernel's own attention per (sequence, kv head).
    PerGroup(&'static str, GroupAttention),
}

impl AttentionProducts {
    /// What the products are called: `f32` (the portable product), `f32-avx512`,
    /// `f32-mkl`, `bf16-amx`, `bf16-avx512bf16`, ...
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::PerHead(name, _) | Self::PerGroup(name, _) => name,
        }
    }
}

/// Attention for one layer of a packed batch, from the fused qkv projection
/// `[tokens, (H + 2 KV) * D]` (f32) to `[tokens, H * D]`.
pub(crate) struct QkvAttention<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    /// Per-head RMSNorm weights of q and k, `[D]` each.
    pub q_norm: &'a [f32],
    pub k_norm: &'a [f32],
    /// Rotary tables of each token's own position, `[tokens, D / 2]`.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    /// Sequence boundaries in tokens: `num_seqs + 1` offsets from 0 to `tokens`.
    pub cu_seqlens: &'a [usize],
    /// Query rows per score block: bounds scratch to `block x keys` floats per thread.
    pub block: usize,
    /// The products, from the model's GEMM kernel.
    pub products: AttentionProducts,
}

/// Softmax of each score row over the keys it may see (row `i` of a block starting at
/// query `r0` sees keys `0..=r0 + i`); the keys it may not see get probability 0.
#[inline(always)]
fn causal_softmax_impl(s: &mut [f32], keys: usize, r0: usize) {
    for (i, row) in s.chunks_exact_mut(keys).enumerate() {
        let visible = r0 + i + 1;
        let (live, masked) = row.split_at_mut(visible);
        let inv = exp_row(live);
        live.iter_mut().for_each(|x| *x *= inv);
        masked.fill(0.0);
    }
}

multiversion!(pub(crate) fn causal_softmax(s: &mut [f32], keys: usize, r0: usize) => causal_softmax_impl);

/// `e^(x - max)` of a score row in place; returns `1 / sum`, what turns it into the
/// softmax.
#[inline(always)]
fn exp_row(live: &mut [f32]) -> f32 {
    let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    live.iter_mut().for_each(|x| *x = exp(*x - max));
    1.0 / sum_map(live, |v| v)
}

/// [`causal_softmax`] but for its last product: each row's visible keys hold
/// `e^(x - max)` and `inv[i]` the factor that makes them probabilities, for kernels
/// that apply it as they round the row to bf16 (the same bits as rounding the
/// probabilities, without a pass that writes them and one that clears the masked
/// keys). The masked keys are left as they are.
#[inline(always)]
fn causal_exp_impl(s: &mut [f32], keys: usize, r0: usize, inv: &mut [f32]) {
    for (i, (row, inv)) in s.chunks_exact_mut(keys).zip(inv).enumerate() {
        *inv = exp_row(&mut row[..r0 + i + 1]);
    }
}

multiversion!(pub(crate) fn causal_exp(s: &mut [f32], keys: usize, r0: usize, inv: &mut [f32]) => causal_exp_impl);

/// RMSNorm (weight `w`) then rotate-half rope (tables `cos`, `sin` of `D / 2`) of each
/// `D`-wide head of `src`, into `dst` (as long: every element written).
#[inline(always)]
fn norm_rotate_impl(
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    w: &[f32],
    cos: &[f32],
    sin: &[f32],
    eps: f32,
) {
    let d = w.len();
    if d == 0 {
        return;
    }
    let half = d / 2;
    let (cos, sin) = (&cos[..half], &sin[..half]);
    for (out, head) in dst.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
        let ms = sum_map(head, |v| v * v) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        let (x1, x2) = head.split_at(half);
        let (w1, w2) = w.split_at(half);
        let (o1, o2) = out.split_at_mut(half);
        // Zipped, not indexed: the halves' lengths differ for an odd D, and indexing
        // kept bounds checks that stopped the loop from vectorising.
        let firsts = o1.iter_mut().zip(x1).zip(w1);
        let seconds = o2.iter_mut().zip(x2).zip(w2);
        for (((o1, &x1), &w1), (((o2, &x2), &w2), (&c, &s))) in
            firsts.zip(seconds.zip(cos.iter().zip(sin)))
        {
            let (a, b) = (x1 * inv * w1, x2 * inv * w2);
            o1.write(a * c - b * s);
            o2.write(a * s + b * c);
        }
        // An odd D's last value is normed, not rotated.
        for ((o, &v), &w) in o2.iter_mut().zip(x2).zip(w2).skip(half) {
            o.write(v * inv * w);
        }
    }
}

multiversion!(fn norm_rotate(dst: &mut [MaybeUninit<f32>], src: &[f32], w: &[f32], cos: &[f32], sin: &[f32], eps: f32) => norm_rotate_impl);

impl QkvAttention<'_> {
    fn check(&self, tokens: usize, width: usize) -> candle_core::Result<()> {
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let ok = kv > 0
            && h.is_multiple_of(kv)
            && d.is_multiple_of(2)
            && width == (h + 2 * kv) * d
            && self.q_norm.len() == d
            && self.k_norm.len() == d
            && self.cos.len() == tokens * d / 2
            && self.sin.len() == tokens * d / 2
            && self.cu_seqlens.first() == Some(&0)
            && self.cu_seqlens.last() == Some(&tokens)
            && self.cu_seqlens.windows(2).all(|w| w[0] < w[1]);
        if !ok {
            candle_core::bail!("fused attention: inconsistent shapes for {tokens} x {width}")
        }
        Ok(())
    }

    /// A copy of the fused qkv rows with RMSNorm then rotary embedding applied to every
    /// q and k head (v copied as is), one parallel pass.
    fn norm_and_rotate(&self, src: &[f32], width: usize) -> Vec<f32> {
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let half = d / 2;
        let fill = |t: usize, dst: &mut [MaybeUninit<f32>]| {
            let row = &src[t * width..(t + 1) * width];
            let cos = &self.cos[t * half..(t + 1) * half];
            let sin = &self.sin[t * half..(t + 1) * half];
            let (q, rest) = dst.split_at_mut(h * d);
            let (k, v) = rest.split_at_mut(kv * d);
            norm_rotate(q, &row[..h * d], self.q_norm, cos, sin, self.eps);
            norm_rotate(k, &row[h * d..][..kv * d], self.k_norm, cos, sin, self.eps);
            for (o, &x) in v.iter_mut().zip(&row[(h + kv) * d..]) {
                o.write(x);
            }
        };
        // SAFETY: `fill` writes each row whole: q and k heads normed and rotated, v copied.
        unsafe { par_rows(src.len(), width, fill) }
    }
}

/// Causal softmax(q k^T / sqrt(D)) v for one query head of one sequence (`start`,
/// `len` tokens) through the f32 product `matmul`, from the normed and rotated fused
/// qkv rows (`width` wide), `block` query rows at a time: writes rows `start..start +
/// len` of that head's columns of `out` (`[tokens, H * D]`).
pub(crate) fn head_attention(
    matmul: StridedGemm,
    qkv: &[f32],
    width: usize,
    (h, kv, d): (usize, usize, usize),
    (start, len, head): (usize, usize, usize),
    block: usize,
    out: SyncPtr,
) {
    let group = h / kv;
    let kv_head = head / group;
    let q = &qkv[start * width + head * d..];
    let k = &qkv[start * width + (h + kv_head) * d..];
    let v = &qkv[start * width + (h + kv + kv_head) * d..];
    let scale = 1.0 / (d as f32).sqrt();
    let block = block.max(1);
    let mut scores = vec![0f32; block.min(len) * len];
    let mut r0 = 0;
    while r0 < len {
        let rows = block.min(len - r0);
        // Causal: rows r0..r0+rows see keys 0..r0+rows, nothing later.
        let keys = r0 + rows;
        let s = &mut scores[..rows * keys];
        // SAFETY: q rows r0.. and k rows 0..keys lie inside this sequence's slice of
        // qkv (row stride `width`, D contiguous columns); s is rows x keys.
        unsafe {
            matmul(
                (rows, keys, d),
                scale,
                (q[r0 * width..].as_ptr(), width),
                (k.as_ptr(), width, true),
                (s.as_mut_ptr(), keys),
            )
        };
        causal_softmax(s, keys, r0);
        // SAFETY: the destination tile (rows start+r0.., columns head*D..+D, row
        // stride H*D) belongs to this (sequence, head) alone; v rows 0..keys lie in
        // this sequence's slice of qkv.
        unsafe {
            matmul(
                (rows, d, keys),
                1.0,
                (s.as_ptr(), keys),
                (v.as_ptr(), width, false),
                (out.at((start + r0) * h * d + head * d), h * d),
            )
        };
        r0 += rows;
    }
}

impl CustomOp1 for QkvAttention<'_> {
    fn name(&self) -> &'static str {
        "qkv-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, width) = l.shape().dims2()?;
        self.check(tokens, width)?;
        let src = f32_slice(s, l)?;
        let (h, d) = (self.heads, self.head_dim);
        let mut out = vec![0f32; tokens * h * d];
        let ptr = SyncPtr(out.as_mut_ptr());
        let dims = (h, self.kv_heads, d);
        match self.products {
            AttentionProducts::PerGroup(_, group_attention) => {
                // One task per (sequence, kv head): the kernel may prepare its keys and
                // values once for all the query heads that share them, norming and
                // rotating them as it does.
                let rows = QkvRows {
                    qkv: src,
                    width,
                    dims,
                    norm: Some(HeadNorm {
                        q_norm: self.q_norm,
                        k_norm: self.k_norm,
                        cos: self.cos,
                        sin: self.sin,
                        eps: self.eps,
                    }),
                };
                let mut work: Vec<(usize, usize, usize)> = self
                    .cu_seqlens
                    .windows(2)
                    .flat_map(|w| (0..self.kv_heads).map(move |g| (w[0], w[1] - w[0], g)))
                    .collect();
                work.sort_by_key(|&(_, len, _)| std::cmp::Reverse(len));
                work.into_par_iter()
                    .for_each(|item| group_attention(&rows, item, self.block, ptr));
            }
            AttentionProducts::PerHead(_, matmul) => {
                let qkv = self.norm_and_rotate(src, width);
                let mut work: Vec<(usize, usize, usize)> = self
                    .cu_seqlens
                    .windows(2)
                    .flat_map(|w| (0..h).map(move |head| (w[0], w[1] - w[0], head)))
                    .collect();
                // Longest sequences first, so a long one does not start last and run alone.
                work.sort_by_key(|&(_, len, _)| std::cmp::Reverse(len));
                work.into_par_iter().for_each(|item| {
                    head_attention(matmul, &qkv, width, dims, item, self.block, ptr)
                });
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((tokens, h * d))))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpu::gemm::test_values as values;

    fn round(v: f32) -> f32 {
        half::bf16::from_f32(v).to_f32()
    }

    /// A kernel's causal GQA attention (`attention`, named `what` in failures) against
    /// an f64 reference that rounds where a bf16 kernel does (q * scale, k, v and the
    /// probabilities to bf16): sequences of ragged lengths packed together (one of a
    /// single token), blocks smaller than a sequence, of one row, of a tile's height
    /// plus one and longer than the sequence, head dims past one K pass of a tile
    /// (272) and with column tails of 8, 16 and 24, 300 and 600 keys (past one and two
    /// K passes of the weighted values), a group of 8 query heads per kv head, and
    /// inputs large enough to make the softmax peaked (where a score error would show).
    /// Each call writes into a buffer of its own, NaN before, which must then hold
    /// values exactly in that call's rows and heads' columns and nowhere else.
    /// A kernel's attention norming and rotating q and k as it takes them gives the
    /// bits it gives from a copy normed and rotated first (what `QkvAttention` made for
    /// every kernel before): ragged sequences, GQA, a head dim with a column tail, a
    /// block shorter than a sequence.
    pub(crate) fn check_fused_norm(what: &str, attention: GroupAttention) {
        for (h, kv, d, block, lens) in
            [(4, 2, 32, 16, &[37usize, 5][..]), (2, 1, 72, 64, &[70][..])]
        {
            let tokens: usize = lens.iter().sum();
            let width = (h + 2 * kv) * d;
            let qkv: Vec<f32> = values(tokens * width, 31).iter().map(|v| 3.0 * v).collect();
            let q_norm: Vec<f32> = values(d, 32).iter().map(|v| 1.0 + v).collect();
            let k_norm: Vec<f32> = values(d, 33).iter().map(|v| 1.0 + v).collect();
            let angle = |i: usize| (i % 97) as f32 * 0.37;
            let cos: Vec<f32> = (0..tokens * d / 2).map(|i| angle(i).cos()).collect();
            let sin: Vec<f32> = (0..tokens * d / 2).map(|i| angle(i).sin()).collect();
            let mut cu = vec![0];
            for &len in lens {
                cu.push(cu.last().unwrap() + len);
            }
            let op = QkvAttention {
                heads: h,
                kv_heads: kv,
                head_dim: d,
                eps: 1e-6,
                q_norm: &q_norm,
                k_norm: &k_norm,
                cos: &cos,
                sin: &sin,
                cu_seqlens: &cu,
                block,
                products: AttentionProducts::PerGroup("test", attention),
            };
            let normed = op.norm_and_rotate(&qkv, width);
            let fused = QkvRows {
                qkv: &qkv,
                width,
                dims: (h, kv, d),
                norm: Some(HeadNorm {
                    q_norm: &q_norm,
                    k_norm: &k_norm,
                    cos: &cos,
                    sin: &sin,
                    eps: 1e-6,
                }),
            };
            let apart = QkvRows {
                qkv: &normed,
                norm: None,
                ..fused
            };
            for w in cu.windows(2) {
                for g in 0..kv {
                    let item = (w[0], w[1] - w[0], g);
                    let mut want = vec![0f32; tokens * h * d];
                    let mut got = vec![0f32; tokens * h * d];
                    attention(&apart, item, block, SyncPtr(want.as_mut_ptr()));
                    attention(&fused, item, block, SyncPtr(got.as_mut_ptr()));
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{what}: h{h} kv{kv} d{d} sequence {w:?} group {g}");
                }
            }
        }
    }

    pub(crate) fn check_group_attention(what: &str, attention: GroupAttention) {
        // (heads, kv heads, head dim, block, sequence lengths, input amplitude)
        type Case = (usize, usize, usize, usize, &'static [usize], f32);
        let cases: &[Case] = &[
            (4, 2, 32, 16, &[37, 70], 1.0),
            (2, 1, 64, 40, &[37, 70], 1.0),
            (3, 3, 16, 128, &[37, 70], 1.0),
            (2, 1, 128, 32, &[1, 32, 64], 8.0),
            (2, 2, 80, 1, &[5, 33], 8.0),
            (2, 1, 64, 300, &[300], 1.0),
            (2, 1, 272, 16, &[20, 9], 1.0),
            (2, 2, 40, 13, &[1, 26], 4.0),
            (16, 2, 72, 512, &[30], 1.0),
            (8, 1, 24, 600, &[600], 1.0),
        ];
        // Past the output's end: a write there is a write out of bounds.
        const SLACK: usize = 64;
        for &(h, kv, d, block, lens, amp) in cases {
            let tokens: usize = lens.iter().sum();
            let width = (h + 2 * kv) * d;
            let qkv: Vec<f32> = values(tokens * width, (h * d + block) as u64)
                .into_iter()
                .map(|v| v * amp)
                .collect();
            let mut out = vec![f32::NAN; tokens * h * d];
            let group = h / kv;
            let mut start = 0;
            for &len in lens {
                for g in 0..kv {
                    let mut own = vec![f32::NAN; tokens * h * d + SLACK];
                    let rows = QkvRows {
                        qkv: &qkv,
                        width,
                        dims: (h, kv, d),
                        norm: None,
                    };
                    attention(&rows, (start, len, g), block, SyncPtr(own.as_mut_ptr()));
                    let columns = g * group * d..(g + 1) * group * d;
                    for (at, &v) in own.iter().enumerate() {
                        let (t, c) = (at / (h * d), at % (h * d));
                        let mine = (start..start + len).contains(&t) && columns.contains(&c);
                        assert_eq!(
                            v.is_nan(),
                            !mine,
                            "{what}: h{h} kv{kv} d{d} b{block} len {len} group {g}: element {at} (token {t}, column {c}) is {v}"
                        );
                        if mine {
                            out[at] = v;
                        }
                    }
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
                                "{what}: h{h} kv{kv} d{d} b{block} len {len} head {head} row {i} col {c}: {got} vs {want}"
                            );
                        }
                    }
                }
                start += len;
            }
        }
    }
}
