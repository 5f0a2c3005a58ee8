//! Fused f32 CPU kernels for the work between the GEMMs.
//!
//! Written with candle ops, one layer's attention made ~20 tensors (narrowed q/k/v
//! copied to contiguous, transposed per sequence, a materialised causal mask, scores,
//! probabilities, one output per block, then a concatenation), and its matmuls ran
//! candle's own thread pool next to MKL's, each spinning while the other worked. Here
//! the q/k norm, rotary embedding and causal attention read the fused qkv projection
//! once and write the attention output once; sequences and heads are the unit of
//! parallelism, and each runs single-threaded GEMMs on strided views, so no copy of q,
//! k or v is made and no padding or mask exists.

use candle_core::backend::BackendStorage;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape};
use gemm::Parallelism;
use rayon::prelude::*;

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
    /// Scores and weighted values as bf16 products on AMX tiles (`crate::amx`), for
    /// models whose linear layers are bf16 anyway; f32 GEMMs otherwise.
    #[cfg_attr(not(amx), allow(dead_code))]
    pub amx: bool,
}

/// A pointer that rayon tasks may share because each writes a disjoint region of the
/// buffer behind it (attention's (sequence, head) tiles, a GEMM's column ranges).
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: only used to write disjoint regions of one buffer (attention's (sequence,
// head) tiles, a GEMM's (rows, columns) blocks), as each user documents.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// Element `i` (a method, so that closures capture the `Send` wrapper, not the
    /// raw field).
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

fn contiguous<'s>(s: &'s CpuStorage, l: &Layout) -> candle_core::Result<&'s [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("fused CPU op: expected f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused CPU op: input not contiguous"),
    }
}

/// `c = alpha * a @ op(b)` on strided row-major f32 views, single-threaded (callers
/// run inside rayon tasks): `a` is `m x k` (row stride lda); `b` is `n x k` when `b_t`
/// (so op(b) is its transpose) or `k x n`, row stride ldb; `c` is `m x n`, row stride
/// ldc. MKL's sgemm (AVX-512) where loaded, the `gemm` crate otherwise.
///
/// # Safety
/// The pointers must cover those views.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (*const f32, usize),
    (b, ldb, b_t): (*const f32, usize, bool),
    (c, ldc): (*mut f32, usize),
) {
    #[cfg(feature = "mkl")]
    {
        let i = |v: usize| v as i32;
        if crate::mkl::sgemm_strided(
            (i(m), i(n), i(k)),
            alpha,
            (a, i(lda)),
            (b, i(ldb), b_t),
            (c, i(ldc)),
        ) {
            return;
        }
    }
    // Element (kk, j) of op(b): b[j * ldb + kk] when transposed, else b[kk * ldb + j].
    let (rhs_cs, rhs_rs) = if b_t { (ldb, 1) } else { (1, ldb) };
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        false,
        a,
        1,
        lda as isize,
        b,
        rhs_cs as isize,
        rhs_rs as isize,
        0.0,
        alpha,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// e^x for f32 in plain arithmetic (no libm call, no rounding instruction), so loops
/// over it vectorise; relative error below 2e-7 (Cephes' expf polynomial). Inputs
/// are clamped to the finite range: below -87.3 the result is ~1e-38 instead of a
/// denormal, which no softmax or SiLU here can tell apart from 0.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5 * 2^23 rounds to an integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // ln 2 split in two so that x - n ln 2 stays exact.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from the exponent bits: n is in -126..=127 after the clamp.
    let bits = (t.to_bits() as i32)
        .wrapping_sub(0x4B40_0000)
        .wrapping_add(127)
        << 23;
    y * f32::from_bits(bits as u32)
}

/// Softmax of each score row over the keys it may see (row `i` of a block starting at
/// query `r0` sees keys `0..=r0 + i`); the keys it may not see get probability 0.
#[inline(always)]
fn causal_softmax_impl(s: &mut [f32], keys: usize, r0: usize) {
    for (i, row) in s.chunks_exact_mut(keys).enumerate() {
        let visible = r0 + i + 1;
        let (live, masked) = row.split_at_mut(visible);
        let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        live.iter_mut().for_each(|x| *x = exp(*x - max));
        let inv = 1.0 / sum_map(live, |v| v);
        live.iter_mut().for_each(|x| *x *= inv);
        masked.fill(0.0);
    }
}

/// A sum in 16 independent lanes, so that it vectorises (a plain f32 sum is a chain of
/// dependent adds the compiler may not reorder).
#[inline(always)]
fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `fn $name(args)` that runs `$body` compiled for AVX-512 or AVX2+FMA when the CPU has
/// them (detected once, cached by std), and for baseline x86-64 otherwise: the release
/// build targets baseline x86-64, where these loops would get 4-lane SSE2.
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),*) => $body:ident) => {
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

#[cfg(amx)]
pub(crate) use multiversion;

multiversion!(pub(crate) fn causal_softmax(s: &mut [f32], keys: usize, r0: usize) => causal_softmax_impl);

/// RMSNorm (weight `w`) then rotate-half rope (tables `cos`, `sin` of `D / 2`) of each
/// `D`-wide head in `heads`.
#[inline(always)]
fn norm_rotate_impl(heads: &mut [f32], w: &[f32], cos: &[f32], sin: &[f32], eps: f32) {
    let d = w.len();
    let half = d / 2;
    for head in heads.chunks_exact_mut(d) {
        let ms = sum_map(head, |v| v * v) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, w) in head.iter_mut().zip(w) {
            *v = *v * inv * w;
        }
        let (x1, x2) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (x1[i], x2[i]);
            x1[i] = a * cos[i] - b * sin[i];
            x2[i] = a * sin[i] + b * cos[i];
        }
    }
}

multiversion!(fn norm_rotate(heads: &mut [f32], w: &[f32], cos: &[f32], sin: &[f32], eps: f32) => norm_rotate_impl);

#[inline(always)]
fn swiglu_impl(out: &mut [MaybeUninit<f32>], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        o.write(silu_mul(g, u));
    }
}

multiversion!(fn swiglu_row(out: &mut [MaybeUninit<f32>], gate: &[f32], up: &[f32]) => swiglu_impl);

/// `1 / rms(x)` as transformers computes it: `rsqrt(mean(x^2) + eps)`.
#[inline(always)]
pub(crate) fn inv_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_map(x, |v| v * v) / x.len() as f32 + eps).sqrt()
}

/// SwiGLU of one gate and up value: `silu(g) * u`.
#[inline(always)]
pub(crate) fn silu_mul(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

/// `x * w / rms(x)` of one row (as transformers: `x * rsqrt(mean(x^2) + eps) * w`).
#[inline(always)]
fn rms_row_impl(out: &mut [MaybeUninit<f32>], x: &[f32], w: &[f32], eps: f32) {
    let inv = inv_rms(x, eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        o.write(v * inv * w);
    }
}

multiversion!(fn rms_row(out: &mut [MaybeUninit<f32>], x: &[f32], w: &[f32], eps: f32) => rms_row_impl);

#[inline(always)]
fn add_impl(out: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        o.write(a + b);
    }
}

multiversion!(fn add_rows(out: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32]) => add_impl);

/// Rows of an f32 result handed to rayon tasks that write every element: no zeroing
/// first (a serial memset of tens of MiB per op), set to its length once they are done.
///
/// # Safety
/// `fill(row, dst)` must write every element of `dst` (each `width` long, the last
/// one `len % width` when that is not 0).
unsafe fn par_rows(
    len: usize,
    width: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(width.max(1))
        .enumerate()
        .for_each(|(row, dst)| fill(row, dst));
    // SAFETY: `fill` wrote every element (the caller's contract).
    unsafe { out.set_len(len) };
    out
}

/// Rows of work per rayon task in the element-wise ops: a few hundred KiB of f32.
const ROWS_PER_TASK: usize = 64;

/// RMSNorm of each row of `[tokens, width]` by a `[width]` weight: vectorised rows in
/// rayon tasks of many rows, and no zero-filled output (candle's op zero-fills, then
/// runs one scalar task per row).
pub(crate) struct RmsNorm {
    pub eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-par"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, width) = l1.shape().dims2()?;
        let (x, w) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        if w.len() != width {
            candle_core::bail!("rms norm: weight of {} for rows of {width}", w.len())
        }
        // SAFETY: a chunk is whole rows of `width`; rms_row writes each row whole.
        let out = unsafe {
            par_rows(tokens * width, width * ROWS_PER_TASK, |chunk, dst| {
                let x = &x[chunk * width * ROWS_PER_TASK..];
                for (o, x) in dst.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                    rms_row(o, x, w, self.eps);
                }
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `a + b` for two contiguous f32 tensors of one shape (the residual connections), in
/// parallel: candle's element-wise add runs on one thread.
pub(crate) struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "add-par"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("add: shapes {:?} and {:?}", l1.shape(), l2.shape())
        }
        const CHUNK: usize = 1 << 15;
        // SAFETY: add_rows writes all of `dst` (a and b are as long as the output).
        let out = unsafe {
            par_rows(a.len(), CHUNK, |chunk, dst| {
                let at = chunk * CHUNK;
                add_rows(dst, &a[at..], &b[at..]);
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

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
            for (o, &v) in dst.iter_mut().zip(&src[t * width..(t + 1) * width]) {
                o.write(v);
            }
            // SAFETY: every element of the row was written just above.
            let row = unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) };
            let cos = &self.cos[t * half..(t + 1) * half];
            let sin = &self.sin[t * half..(t + 1) * half];
            let (q, rest) = row.split_at_mut(h * d);
            norm_rotate(q, self.q_norm, cos, sin, self.eps);
            norm_rotate(&mut rest[..kv * d], self.k_norm, cos, sin, self.eps);
        };
        // SAFETY: `fill` writes each row whole (copied) before normalising it in place.
        unsafe { par_rows(src.len(), width, fill) }
    }

    /// Causal softmax(q k^T / sqrt(D)) v for one query head of one sequence, writing
    /// rows `start..start + len` of that head's output columns.
    fn head_attention(
        &self,
        qkv: &[f32],
        width: usize,
        (start, len, head): (usize, usize, usize),
        out: SyncPtr,
    ) {
        let (h, d) = (self.heads, self.head_dim);
        let group = h / self.kv_heads;
        let kv_head = head / group;
        let q = &qkv[start * width + head * d..];
        let k = &qkv[start * width + (h + kv_head) * d..];
        let v = &qkv[start * width + (h + self.kv_heads + kv_head) * d..];
        let scale = 1.0 / (d as f32).sqrt();
        let block = self.block.max(1);
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
}

impl CustomOp1 for QkvAttention<'_> {
    fn name(&self) -> &'static str {
        "qkv-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, width) = l.shape().dims2()?;
        self.check(tokens, width)?;
        let qkv = self.norm_and_rotate(contiguous(s, l)?, width);
        let (h, d) = (self.heads, self.head_dim);
        let mut out = vec![0f32; tokens * h * d];
        let ptr = SyncPtr(out.as_mut_ptr());
        #[cfg(amx)]
        if self.amx && crate::amx::available() {
            // One task per (sequence, kv head): its keys and values are packed once for
            // all the query heads that share them.
            let mut work: Vec<(usize, usize, usize)> = self
                .cu_seqlens
                .windows(2)
                .flat_map(|w| (0..self.kv_heads).map(move |g| (w[0], w[1] - w[0], g)))
                .collect();
            work.sort_by_key(|&(_, len, _)| std::cmp::Reverse(len));
            let dims = (h, self.kv_heads, d);
            work.into_par_iter().for_each(|item| {
                crate::amx::group_attention(&qkv, width, dims, item, self.block, ptr)
            });
            return Ok((CpuStorage::F32(out), Shape::from((tokens, h * d))));
        }
        let mut work: Vec<(usize, usize, usize)> = self
            .cu_seqlens
            .windows(2)
            .flat_map(|w| (0..h).map(move |head| (w[0], w[1] - w[0], head)))
            .collect();
        // Longest sequences first, so a long one does not start last and run alone.
        work.sort_by_key(|&(_, len, _)| std::cmp::Reverse(len));
        work.into_par_iter()
            .for_each(|item| self.head_attention(&qkv, width, item, ptr));
        Ok((CpuStorage::F32(out), Shape::from((tokens, h * d))))
    }
}

/// `silu(gate) * up` from the fused gate/up projection `[tokens, 2 I]` (f32) to
/// `[tokens, I]`, in one pass instead of a copy, two temporaries and a product.
pub(crate) struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tokens, width) = l.shape().dims2()?;
        if !width.is_multiple_of(2) {
            candle_core::bail!("swiglu: odd width {width}")
        }
        let inter = width / 2;
        let x = contiguous(s, l)?;
        // SAFETY: swiglu_row writes all `inter` outputs of a row.
        let out = unsafe {
            par_rows(tokens * inter, inter, |t, o| {
                let (gate, up) = x[t * width..(t + 1) * width].split_at(inter);
                swiglu_row(o, gate, up);
            })
        };
        Ok((CpuStorage::F32(out), Shape::from((tokens, inter))))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_std_to_f32_precision() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1000.0) < 1e-37);
        assert!(super::exp(1000.0).is_finite());
    }
}
