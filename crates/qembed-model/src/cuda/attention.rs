//! Padding-free causal GQA attention over a packed batch (kernels/varlen_attention.cu).

use candle_core::cuda_backend::cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice as S, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, Device, Layout, Result, Shape,
    Storage, Tensor,
};

use super::{as_i32, cuda_only, load_func, Elem, VARLEN_ATTENTION};

const OP: &str = "cuda varlen_attention";
/// Query rows per block and keys per tile (BM = BN in the kernel).
const TILE: usize = 64;
const THREADS: u32 = 128;

/// Dynamic shared memory of `varlen_attention_*_d{D}`: mirrors `Smem<D>::BYTES` in
/// kernels/varlen_attention.cu (a Q tile and one K/V tile with a pitch of D + 8, f32 scores with a
/// pitch of 68, f16/bf16 probabilities with a pitch of 72, f32 output with a pitch of
/// D + 4; 64 rows each, every region rounded up to 128 bytes).
fn smem_bytes(d: usize) -> usize {
    let up = |x: usize| x.div_ceil(128) * 128;
    2 * up(TILE * (d + 8) * 2)
        + up(TILE * (TILE + 4) * 4)
        + up(TILE * (TILE + 8) * 2)
        + up(TILE * (d + 4) * 4)
}

/// Whether [`varlen_attention`] handles this head size and dtype on `device`: head_dim
/// 16, 32, 64 or 128, f16 or bf16 (tensor cores), and enough shared memory per block.
/// Where it returns false, use candle's attention.
pub fn attention_supported(head_dim: usize, dtype: DType, device: &Device) -> bool {
    if !matches!(head_dim, 16 | 32 | 64 | 128) || !matches!(dtype, DType::F16 | DType::BF16) {
        return false;
    }
    let Ok(dev) = device.as_cuda_device() else {
        return false;
    };
    let optin = dev
        .cuda_stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
    matches!(optin, Ok(bytes) if bytes >= 0 && smem_bytes(head_dim) <= bytes as usize)
}

/// Sequence boundaries of a packed batch, checked once and copied to the device once per
/// forward pass (not once per layer).
pub struct CuSeqlens {
    offsets: Tensor,
    tokens: usize,
    num_seqs: usize,
    max_len: usize,
}

impl CuSeqlens {
    /// `cu` is `[0, end of seq 0, end of seq 1, ...]`, as [`crate::PackedBatch`] has it.
    pub fn new(cu: &[usize], device: &Device) -> Result<Self> {
        if cu.len() < 2 || cu[0] != 0 {
            bail!("{OP}: cu_seqlens must start at 0 and hold at least one sequence");
        }
        if let Some(w) = cu.windows(2).find(|w| w[1] < w[0]) {
            bail!("{OP}: cu_seqlens decreases ({} then {})", w[0], w[1]);
        }
        let tokens = cu[cu.len() - 1];
        let num_seqs = cu.len() - 1;
        if tokens == 0 || tokens > i32::MAX as usize {
            bail!("{OP}: {tokens} tokens (1 ..= {})", i32::MAX);
        }
        if num_seqs > 65535 {
            bail!("{OP}: {num_seqs} sequences, at most 65535 per batch");
        }
        let max_len = cu.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let host: Vec<u32> = cu.iter().map(|&c| c as u32).collect();
        Ok(Self {
            offsets: Tensor::from_vec(host, cu.len(), device)?,
            tokens,
            num_seqs,
            max_len,
        })
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens
    }

    pub fn num_seqs(&self) -> usize {
        self.num_seqs
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

/// Causal attention within each sequence of a packed batch, flash-attention style on
/// tensor cores. q `[tokens, H, D]`, k and v `[tokens, KV, D]` (H a multiple of KV; the
/// heads of a token must be contiguous, rows may be strided), f16 or bf16; returns
/// `[tokens, H * D]`. `scale` multiplies q.k (Qwen3: 1/sqrt(D)). See
/// [`attention_supported`] for the head sizes.
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu: &CuSeqlens,
    scale: f32,
) -> Result<Tensor> {
    let (tokens, heads, d) = q.dims3()?;
    let (tk, kv_heads, dk) = k.dims3()?;
    if v.dims() != k.dims() || tk != tokens || dk != d {
        bail!(
            "{OP}: q {:?}, k {:?}, v {:?} do not match",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    run(q, k, v, cu, heads, kv_heads, d, scale)
}

/// [`varlen_attention`] straight from the packed `[tokens, (H + 2 KV) * D]` output of
/// [`qk_norm_rope`](super::qk_norm_rope) (q heads, then k heads, then v heads): no copy
/// of q, k or v is made.
pub fn varlen_attention_packed(
    qkv: &Tensor,
    heads: usize,
    kv_heads: usize,
    cu: &CuSeqlens,
    scale: f32,
) -> Result<Tensor> {
    let (_, width) = qkv.dims2()?;
    let total = heads + 2 * kv_heads;
    if heads == 0 || kv_heads == 0 || !width.is_multiple_of(total) {
        bail!(
            "{OP}: qkv {:?} does not split into {heads} + 2 x {kv_heads} heads",
            qkv.shape()
        );
    }
    let d = width / total;
    let q = qkv.narrow(1, 0, heads * d)?;
    let k = qkv.narrow(1, heads * d, kv_heads * d)?;
    let v = qkv.narrow(1, (heads + kv_heads) * d, kv_heads * d)?;
    run(&q, &k, &v, cu, heads, kv_heads, d, scale)
}

#[allow(clippy::too_many_arguments)]
fn run(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu: &CuSeqlens,
    heads: usize,
    kv_heads: usize,
    d: usize,
    scale: f32,
) -> Result<Tensor> {
    let tokens = q.dim(0)?;
    if tokens != cu.tokens {
        bail!("{OP}: {tokens} tokens but cu_seqlens covers {}", cu.tokens);
    }
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || heads > 65535 {
        bail!("{OP}: {heads} query heads over {kv_heads} kv heads");
    }
    if !attention_supported(d, q.dtype(), q.device()) {
        bail!(
            "{OP}: head_dim {d} / {:?} not supported on this device",
            q.dtype()
        );
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        bail!("{OP}: q, k and v must share a dtype");
    }
    if !cu.offsets.device().same_device(q.device()) {
        bail!("{OP}: cu_seqlens is on another device than q");
    }
    let op = VarlenAttention {
        heads,
        kv_heads,
        d,
        scale,
        cu: cu.offsets.clone(),
        num_seqs: cu.num_seqs,
        max_len: cu.max_len,
    };
    q.apply_op3_no_bwd(k, v, &op)
}

struct VarlenAttention {
    heads: usize,
    kv_heads: usize,
    d: usize,
    scale: f32,
    cu: Tensor,
    num_seqs: usize,
    max_len: usize,
}

/// The part of `slice` that `layout` reads as `[tokens, heads, D]` with contiguous heads
/// (`[tokens, heads * D]` or `[tokens, heads, D]`), and its row stride in elements.
fn head_view<'a, T>(
    slice: &'a CudaSlice<T>,
    layout: &Layout,
    heads: usize,
    d: usize,
    what: &str,
) -> Result<(CudaView<'a, T>, usize)> {
    let dims = layout.dims();
    let stride = layout.stride();
    let tokens = dims.first().copied().unwrap_or(0);
    let heads_ok = match (dims, stride) {
        ([_, w], [_, 1]) => *w == heads * d,
        ([_, h, dd], [_, sh, 1]) => *h == heads && *dd == d && *sh == d,
        _ => false,
    };
    if !heads_ok || tokens == 0 {
        bail!("{OP}: {what} {:?} (strides {stride:?}) is not [tokens, {heads}, {d}] with contiguous heads", layout.shape());
    }
    let row_stride = if tokens == 1 { heads * d } else { stride[0] };
    if row_stride < heads * d {
        bail!("{OP}: {what} rows overlap (row stride {row_stride})");
    }
    let start = layout.start_offset();
    let end = start + (tokens - 1) * row_stride + heads * d;
    if end > slice.len() {
        bail!("{OP}: {what} layout runs past its storage");
    }
    Ok((slice.slice(start..end), row_stride))
}

impl VarlenAttention {
    #[allow(clippy::too_many_arguments)]
    fn launch<T: Elem>(
        &self,
        dev: &CudaDevice,
        (q, lq): (&CudaSlice<T>, &Layout),
        (k, lk): (&CudaSlice<T>, &Layout),
        (v, lv): (&CudaSlice<T>, &Layout),
        cu: &CudaView<u32>,
    ) -> Result<CudaStorage> {
        let (h, kvh, d) = (self.heads, self.kv_heads, self.d);
        let (qv, q_rs) = head_view(q, lq, h, d, "q")?;
        let (kv, k_rs) = head_view(k, lk, kvh, d, "k")?;
        let (vv, v_rs) = head_view(v, lv, kvh, d, "v")?;
        let tokens = lq.dims()[0];
        if lk.dims()[0] != tokens || lv.dims()[0] != tokens {
            bail!("{OP}: q, k and v hold different numbers of tokens");
        }
        let name = format!("varlen_attention_{}_d{d}", T::NAME);
        let func = load_func(dev, &VARLEN_ATTENTION, &name)?;
        let smem = smem_bytes(d);
        dev.cuda_stream().context().bind_to_thread().w()?;
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .w()?;
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(self.max_len.div_ceil(TILE).max(1))
                    .map_err(|_| candle_core::Error::Msg(format!("{OP}: sequence too long")))?,
                h as u32,
                self.num_seqs as u32,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: every (token, head) row of the output is written by exactly one block:
        // cu_seqlens covers all `tokens` rows (checked in CuSeqlens::new and run).
        let mut out = unsafe { dev.alloc::<T>(tokens * h * d)? };
        let (h_i, kvh_i) = (as_i32(h, OP, "heads")?, as_i32(kvh, OP, "kv heads")?);
        let (q_rs, k_rs, v_rs) = (q_rs as i64, k_rs as i64, v_rs as i64);
        {
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&qv);
            b.arg(&kv);
            b.arg(&vv);
            b.arg(&mut out);
            b.arg(cu);
            b.arg(&h_i);
            b.arg(&kvh_i);
            b.arg(&q_rs);
            b.arg(&k_rs);
            b.arg(&v_rs);
            b.arg(&self.scale);
            // SAFETY: argument types and order match `varlen_attention_*` in
            // kernels/varlen_attention.cu; the views cover every row the kernel reads
            // (cu_seqlens ends at `tokens`), and the dynamic shared memory is the
            // kernel's Smem<D>::BYTES.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

impl CustomOp3 for VarlenAttention {
    fn name(&self) -> &'static str {
        OP
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
        Err(cuda_only(OP))
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
        let (cu_storage, cu_layout) = self.cu.storage_and_layout();
        let Storage::Cuda(cu_storage) = &*cu_storage else {
            bail!("{OP}: cu_seqlens is not on a CUDA device")
        };
        let S::U32(cu) = &cu_storage.slice else {
            bail!("{OP}: cu_seqlens must be u32")
        };
        let cu = super::contiguous_view(cu, cu_layout, OP, "cu_seqlens")?;
        if cu.len() != self.num_seqs + 1 {
            bail!(
                "{OP}: cu_seqlens holds {} entries for {} sequences",
                cu.len(),
                self.num_seqs
            );
        }
        let dev = &s1.device;
        let out = match (&s1.slice, &s2.slice, &s3.slice) {
            (S::F16(q), S::F16(k), S::F16(v)) => {
                self.launch(dev, (q, l1), (k, l2), (v, l3), &cu)?
            }
            (S::BF16(q), S::BF16(k), S::BF16(v)) => {
                self.launch(dev, (q, l1), (k, l2), (v, l3), &cu)?
            }
            _ => bail!("{OP}: q, k and v must all be f16 or all bf16"),
        };
        let tokens = l1.dims()[0];
        Ok((out, Shape::from((tokens, self.heads * self.d))))
    }
}

#[cfg(test)]
mod tests {
    /// The same numbers are checked against the kernel's `Smem<D>::BYTES` by
    /// kernels/emu (`.ci/cuda-check emu`).
    #[test]
    fn shared_memory_matches_the_kernel_layout() {
        let bytes: Vec<usize> = [16, 32, 64, 128].map(super::smem_bytes).to_vec();
        assert_eq!(bytes, [37888, 46080, 62464, 95232]);
    }
}
