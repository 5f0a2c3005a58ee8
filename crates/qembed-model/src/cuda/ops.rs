//! Element-wise and per-row kernels: RMSNorm, q/k norm + rotary, SwiGLU, row gather.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice as S, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout,
    Result, Shape, Tensor,
};

use super::{
    as_i32, blocks_for, contiguous_view, cuda_only, load_func, Elem, GATHER_ROWS, QK_NORM_ROPE,
    RMS_NORM, SWIGLU,
};

/// Threads per block of the row kernels: 4 warps, one row (or head) per warp.
const ROW_THREADS: u32 = 128;
const ROWS_PER_BLOCK: usize = (ROW_THREADS / 32) as usize;

fn row_launch(rows: usize, op: &str) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (blocks_for(rows, ROWS_PER_BLOCK, op)?, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn float_dtype(dtype: DType, op: &str) -> Result<()> {
    match dtype {
        DType::F16 | DType::BF16 | DType::F32 => Ok(()),
        d => bail!("{op}: unsupported dtype {d:?} (f16, bf16 or f32)"),
    }
}

// ---------------------------------------------------------------------------------------
// RMSNorm

/// RMSNorm over the last dim: `x * rsqrt(mean(x^2) + eps) * weight`, f32 math, output in
/// `x`'s dtype and shape. `x` and `weight` (`[last dim]`) share a dtype (f16/bf16/f32).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "cuda rms_norm";
    float_dtype(x.dtype(), OP)?;
    if weight.dtype() != x.dtype() {
        bail!(
            "{OP}: weight is {:?}, input {:?}",
            weight.dtype(),
            x.dtype()
        );
    }
    let cols = x.dims().last().copied().unwrap_or(0);
    if x.elem_count() == 0 || weight.dims() != [cols] {
        bail!(
            "{OP}: input {:?} and weight {:?} do not match (or are empty)",
            x.shape(),
            weight.shape()
        );
    }
    x.contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &RmsNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    fn launch<T: Elem>(
        &self,
        dev: &CudaDevice,
        (x, lx): (&CudaSlice<T>, &Layout),
        (w, lw): (&CudaSlice<T>, &Layout),
    ) -> Result<CudaStorage> {
        let op = self.name();
        let xv = contiguous_view(x, lx, op, "input")?;
        let wv = contiguous_view(w, lw, op, "weight")?;
        let n = lx.shape().elem_count();
        let cols = lw.shape().elem_count();
        if cols == 0 || !n.is_multiple_of(cols) || lx.dims().last() != Some(&cols) {
            bail!("{op}: input {:?} vs weight {:?}", lx.shape(), lw.shape());
        }
        let rows = n / cols;
        let (rows_i, cols_i) = (as_i32(rows, op, "rows")?, as_i32(cols, op, "cols")?);
        let func = load_func(dev, &RMS_NORM, &format!("rms_norm_{}", T::NAME))?;
        // SAFETY: every element is written by the kernel (one warp per row, all columns).
        let mut out = unsafe { dev.alloc::<T>(n)? };
        {
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&xv);
            b.arg(&wv);
            b.arg(&mut out);
            b.arg(&rows_i);
            b.arg(&cols_i);
            b.arg(&self.eps);
            // SAFETY: argument types and order match `rms_norm_*` in kernels/rms_norm.cu;
            // the views hold rows * cols and cols elements.
            unsafe { b.launch(row_launch(rows, op)?) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "cuda rms_norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let out = match (&s1.slice, &s2.slice) {
            (S::F16(x), S::F16(w)) => self.launch(dev, (x, l1), (w, l2))?,
            (S::BF16(x), S::BF16(w)) => self.launch(dev, (x, l1), (w, l2))?,
            (S::F32(x), S::F32(w)) => self.launch(dev, (x, l1), (w, l2))?,
            _ => bail!(
                "{}: input and weight must both be f16, bf16 or f32",
                self.name()
            ),
        };
        Ok((out, l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------
// Rotary embedding, optionally fused with Qwen3's per-head q/k RMSNorm

/// The rotary table the rope kernels read: `[2, tokens, head_dim / 2]` f32, cos then sin,
/// from per-token `cos`/`sin` tables `[tokens, head_dim / 2]` (any float dtype; f32 keeps
/// the angles exact, as the model builds them).
pub fn rope_table(cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if cos.dims().len() != 2 || cos.dims() != sin.dims() {
        bail!(
            "cuda rope_table: cos {:?} and sin {:?} must both be [tokens, head_dim / 2]",
            cos.shape(),
            sin.shape()
        );
    }
    Tensor::stack(&[cos.to_dtype(DType::F32)?, sin.to_dtype(DType::F32)?], 0)?.contiguous()
}

/// Rotary embedding alone (rotate-half / NeoX convention) on `x` `[tokens, heads, D]`
/// with each token's own angles from [`rope_table`]. Returns a new tensor.
pub fn rope(x: &Tensor, table: &Tensor) -> Result<Tensor> {
    let (tokens, heads, d) = x.dims3()?;
    let op = QkNormRope {
        tokens,
        heads_total: heads,
        n_q: heads,
        n_rot: heads,
        head_dim: d,
        eps: 0.0,
    };
    op.check(x, table)?;
    x.contiguous()?.apply_op2_no_bwd(&table.contiguous()?, &op)
}

/// Qwen3's q/k path in one kernel, on the fused qkv projection `[tokens, (H + 2 KV) * D]`
/// (or `[tokens, H + 2 KV, D]`): the H query heads are RMS-normalised with `q_norm`
/// (`[D]`), the KV key heads with `k_norm`, both rotated with [`rope_table`]'s angles,
/// and the KV value heads copied. Returns a tensor of `qkv`'s shape, ready for
/// [`varlen_attention_packed`](super::varlen_attention_packed).
pub fn qk_norm_rope(
    qkv: &Tensor,
    q_norm: &Tensor,
    k_norm: &Tensor,
    table: &Tensor,
    heads: usize,
    kv_heads: usize,
    eps: f32,
) -> Result<Tensor> {
    const OP: &str = "cuda qk_norm_rope";
    let tokens = qkv.dim(0)?;
    let heads_total = heads + 2 * kv_heads;
    let per_token = qkv.elem_count() / tokens.max(1);
    if heads == 0 || kv_heads == 0 || !per_token.is_multiple_of(heads_total) {
        bail!(
            "{OP}: qkv {:?} does not split into {heads} + 2 x {kv_heads} heads",
            qkv.shape()
        );
    }
    let d = per_token / heads_total;
    if q_norm.dims() != [d] || k_norm.dims() != [d] {
        bail!(
            "{OP}: norms {:?} / {:?}, expected [{d}]",
            q_norm.shape(),
            k_norm.shape()
        );
    }
    let op = QkNormRope {
        tokens,
        heads_total,
        n_q: heads,
        n_rot: heads + kv_heads,
        head_dim: d,
        eps,
    };
    op.check(qkv, table)?;
    let norms = Tensor::stack(&[q_norm, k_norm], 0)?.to_dtype(qkv.dtype())?;
    qkv.contiguous()?
        .apply_op3_no_bwd(&norms, &table.contiguous()?, &op)
}

struct QkNormRope {
    tokens: usize,
    heads_total: usize,
    n_q: usize,
    n_rot: usize,
    head_dim: usize,
    eps: f32,
}

impl QkNormRope {
    fn check(&self, x: &Tensor, table: &Tensor) -> Result<()> {
        let op = "cuda qk_norm_rope";
        float_dtype(x.dtype(), op)?;
        let d = self.head_dim;
        if d == 0 || !d.is_multiple_of(2) {
            bail!("{op}: head_dim {d} must be even");
        }
        if x.elem_count() != self.tokens * self.heads_total * d || self.tokens == 0 {
            bail!(
                "{op}: input {:?} is not [tokens, {} x {d}]",
                x.shape(),
                self.heads_total
            );
        }
        if table.dtype() != DType::F32 || table.dims() != [2, self.tokens, d / 2] {
            bail!(
                "{op}: rope table {:?} {:?}, expected f32 [2, {}, {}] (see rope_table)",
                table.dtype(),
                table.shape(),
                self.tokens,
                d / 2
            );
        }
        Ok(())
    }

    fn launch<T: Elem>(
        &self,
        dev: &CudaDevice,
        (x, lx): (&CudaSlice<T>, &Layout),
        norms: Option<(&CudaSlice<T>, &Layout)>,
        (t, lt): (&CudaSlice<f32>, &Layout),
    ) -> Result<CudaStorage> {
        let op = "cuda qk_norm_rope";
        let d = self.head_dim;
        let n = self.tokens * self.heads_total * d;
        if lx.shape().elem_count() != n || lt.shape().elem_count() != self.tokens * d {
            bail!("{op}: shapes changed between check and launch");
        }
        let xv = contiguous_view(x, lx, op, "input")?;
        let tv = contiguous_view(t, lt, op, "rope table")?;
        let (cos, sin) = (
            tv.slice(..self.tokens * d / 2),
            tv.slice(self.tokens * d / 2..),
        );
        let (wq, wk, use_norm) = match norms {
            Some((w, lw)) => {
                if lw.shape().elem_count() != 2 * d {
                    bail!("{op}: norm weights {:?}, expected [2, {d}]", lw.shape());
                }
                let wv = contiguous_view(w, lw, op, "norm weights")?;
                (wv.slice(..d), wv.slice(d..), 1i32)
            }
            // Not read by the kernel when use_norm is 0; any valid pointer will do.
            None => (xv.slice(..d), xv.slice(..d), 0i32),
        };
        let rows = self.tokens * self.heads_total;
        let args = [
            as_i32(self.tokens, op, "tokens")?,
            as_i32(self.heads_total, op, "heads")?,
            as_i32(self.n_q, op, "heads")?,
            as_i32(self.n_rot, op, "heads")?,
            as_i32(d, op, "head_dim")?,
        ];
        as_i32(rows, op, "rows")?;
        let func = load_func(dev, &QK_NORM_ROPE, &format!("qk_norm_rope_{}", T::NAME))?;
        // SAFETY: every element is written (one warp per token-head row, all of D).
        let mut out = unsafe { dev.alloc::<T>(n)? };
        {
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&xv);
            b.arg(&mut out);
            b.arg(&wq);
            b.arg(&wk);
            b.arg(&cos);
            b.arg(&sin);
            for a in &args {
                b.arg(a);
            }
            b.arg(&use_norm);
            b.arg(&self.eps);
            // SAFETY: argument types and order match `qk_norm_rope_*` in
            // kernels/qk_norm_rope.cu; sizes were checked above.
            unsafe { b.launch(row_launch(rows, op)?) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

impl CustomOp2 for QkNormRope {
    fn name(&self) -> &'static str {
        "cuda rope"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(CustomOp2::name(self)))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let S::F32(t) = &s2.slice else {
            bail!("{}: rope table must be f32", CustomOp2::name(self))
        };
        let out = match &s1.slice {
            S::F16(x) => self.launch(dev, (x, l1), None, (t, l2))?,
            S::BF16(x) => self.launch(dev, (x, l1), None, (t, l2))?,
            S::F32(x) => self.launch(dev, (x, l1), None, (t, l2))?,
            _ => bail!("{}: input must be f16, bf16 or f32", CustomOp2::name(self)),
        };
        Ok((out, l1.shape().clone()))
    }
}

impl CustomOp3 for QkNormRope {
    fn name(&self) -> &'static str {
        "cuda qk_norm_rope"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(CustomOp3::name(self)))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let S::F32(t) = &s3.slice else {
            bail!("{}: rope table must be f32", CustomOp3::name(self))
        };
        let out = match (&s1.slice, &s2.slice) {
            (S::F16(x), S::F16(w)) => self.launch(dev, (x, l1), Some((w, l2)), (t, l3))?,
            (S::BF16(x), S::BF16(w)) => self.launch(dev, (x, l1), Some((w, l2)), (t, l3))?,
            (S::F32(x), S::F32(w)) => self.launch(dev, (x, l1), Some((w, l2)), (t, l3))?,
            _ => bail!(
                "{}: qkv and norm weights must both be f16, bf16 or f32",
                CustomOp3::name(self)
            ),
        };
        Ok((out, l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------
// SwiGLU

/// `silu(gate) * up` from the fused gate/up projection `[tokens, 2 I]` (gate first):
/// returns `[tokens, I]`.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    let (tokens, two_i) = gate_up.dims2()?;
    float_dtype(gate_up.dtype(), "cuda swiglu")?;
    if tokens == 0 || two_i == 0 || !two_i.is_multiple_of(2) {
        bail!(
            "cuda swiglu: input {:?} is not [tokens, 2 x I]",
            gate_up.shape()
        );
    }
    gate_up.contiguous()?.apply_op1_no_bwd(&SwiGlu)
}

struct SwiGlu;

impl SwiGlu {
    fn launch<T: Elem>(
        &self,
        dev: &CudaDevice,
        x: &CudaSlice<T>,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (tokens, two_i) = l.shape().dims2()?;
        let inter = two_i / 2;
        let xv = contiguous_view(x, l, op, "input")?;
        let n = tokens * inter;
        let func = load_func(dev, &SWIGLU, &format!("swiglu_{}", T::NAME))?;
        // SAFETY: the grid-stride loop writes all tokens * inter elements.
        let mut out = unsafe { dev.alloc::<T>(n)? };
        let (tokens_i, inter_i) = (tokens as i64, inter as i64);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(n, 256, op)?.min(1 << 16), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        {
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&xv);
            b.arg(&mut out);
            b.arg(&tokens_i);
            b.arg(&inter_i);
            // SAFETY: argument types and order match `swiglu_*` in kernels/swiglu.cu.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((tokens, inter)),
        ))
    }
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "cuda swiglu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        match &s.slice {
            S::F16(x) => self.launch(&s.device, x, l),
            S::BF16(x) => self.launch(&s.device, x, l),
            S::F32(x) => self.launch(&s.device, x, l),
            _ => bail!("{}: input must be f16, bf16 or f32", self.name()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Row gather (last-token pooling)

/// Rows `indices` of `x` `[rows, cols]`: `[indices.len(), cols]`. Every index is checked
/// against `rows` on the host.
pub fn gather_rows(x: &Tensor, indices: &[u32]) -> Result<Tensor> {
    const OP: &str = "cuda gather_rows";
    let (rows, cols) = x.dims2()?;
    float_dtype(x.dtype(), OP)?;
    if indices.is_empty() || cols == 0 {
        bail!(
            "{OP}: nothing to gather ({} indices, {cols} columns)",
            indices.len()
        );
    }
    if indices.len() > 65535 {
        bail!("{OP}: {} indices, at most 65535 per call", indices.len());
    }
    if let Some(bad) = indices.iter().find(|&&i| i as usize >= rows) {
        bail!("{OP}: index {bad} out of range for {rows} rows");
    }
    let idx = Tensor::from_slice(indices, indices.len(), x.device())?;
    x.contiguous()?.apply_op2_no_bwd(&idx, &GatherRows { rows })
}

struct GatherRows {
    rows: usize,
}

impl GatherRows {
    fn launch<T: Elem>(
        &self,
        dev: &CudaDevice,
        (x, lx): (&CudaSlice<T>, &Layout),
        (idx, li): (&CudaSlice<u32>, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let (rows, cols) = lx.shape().dims2()?;
        let n = li.shape().dims1()?;
        if rows != self.rows || n == 0 || n > 65535 {
            bail!("{op}: {n} indices into {:?}", lx.shape());
        }
        let xv = contiguous_view(x, lx, op, "input")?;
        let iv = contiguous_view(idx, li, op, "indices")?;
        let func = load_func(dev, &GATHER_ROWS, &format!("gather_rows_{}", T::NAME))?;
        // SAFETY: block row y copies all `cols` elements of output row y.
        let mut out = unsafe { dev.alloc::<T>(n * cols)? };
        let (n_i, cols_i) = (as_i32(n, op, "indices")?, cols as i64);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(cols, 256, op)?.min(1024), n as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        {
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&xv);
            b.arg(&iv);
            b.arg(&mut out);
            b.arg(&n_i);
            b.arg(&cols_i);
            // SAFETY: argument types and order match `gather_rows_*` in
            // kernels/gather_rows.cu; indices were checked against `rows` by the caller.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((n, cols)),
        ))
    }
}

impl CustomOp2 for GatherRows {
    fn name(&self) -> &'static str {
        "cuda gather_rows"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let S::U32(idx) = &s2.slice else {
            bail!("{}: indices must be u32", self.name())
        };
        match &s1.slice {
            S::F16(x) => self.launch(dev, (x, l1), (idx, l2)),
            S::BF16(x) => self.launch(dev, (x, l1), (idx, l2)),
            S::F32(x) => self.launch(dev, (x, l1), (idx, l2)),
            _ => bail!("{}: input must be f16, bf16 or f32", self.name()),
        }
    }
}
