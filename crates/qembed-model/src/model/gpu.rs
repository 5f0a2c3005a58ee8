//! [`Qwen3Embedding::forward`] on a CUDA device (feature `cuda`): the same model, with
//! the element-wise work and attention in our fused kernels and the GEMMs in cuBLAS.
//! Activations are in the weights' dtype (f16/bf16; f32 also runs).
//!
//! Per layer: rms_norm -> qkv GEMM -> q/k norm + rope (one kernel, packed output) ->
//! varlen flash attention (reads the packed q/k/v in place) -> o_proj GEMM (+ all-reduce)
//! -> residual -> rms_norm -> gate_up GEMM -> SwiGLU -> down GEMM (+ all-reduce) ->
//! residual. Where the attention kernel does not cover the head size or dtype
//! (`cuda::attention_supported`: f16/bf16, head_dim 16/32/64/128) attention falls back
//! to the candle path of [`Qwen3Embedding::attention`]; everything else stays fused.

use candle_core::{DType, Tensor};

use super::{DecoderLayer, Qwen3Embedding};
use crate::cuda::{self, CuSeqlens};
use crate::{PackedBatch, Result};

impl Qwen3Embedding {
    /// The CUDA forward pass; `batch` was validated by the caller.
    pub(super) fn forward_cuda(&self, batch: &PackedBatch) -> Result<Tensor> {
        let n = batch.num_tokens();
        let ids = Tensor::from_slice(batch.ids(), n, &self.device)?;
        // In the activations' dtype, which on CUDA is the table's: no conversion.
        let mut x = self.embed_tokens.index_select(&ids, self.act_dtype)?;
        // f32 angles (the kernel rotates in f32), uploaded once for all layers.
        let (cos, sin) = self.rotary_tables(&batch.positions());
        let (cos, sin) = self.rotary_tensors(cos, sin, DType::F32)?;
        let rope = cuda::rope_table(&cos, &sin)?;
        let cu = CuSeqlens::new(batch.cu_seqlens(), &self.device)?;
        for layer in &self.layers {
            x = self.layer_forward_cuda(layer, &x, &rope, &cu, batch.cu_seqlens())?;
        }
        let eps = self.cfg.rms_norm_eps as f32;
        let pooled = cuda::gather_rows(&x, &batch.last_token_indices())?;
        Ok(cuda::rms_norm(&pooled, &self.norm, eps)?.to_dtype(DType::F32)?)
    }

    fn layer_forward_cuda(
        &self,
        l: &DecoderLayer,
        x: &Tensor,
        rope: &Tensor,
        cu: &CuSeqlens,
        cu_host: &[usize],
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let (nq, nkv) = (self.local.heads, self.local.kv_heads);

        let h = cuda::rms_norm(x, &l.input_norm, eps)?;
        let qkv = l.qkv.forward(&h)?;
        let qkv = cuda::qk_norm_rope(&qkv, &l.q_norm, &l.k_norm, rope, nq, nkv, eps)?;
        let attn = self.attention_cuda(&qkv, cu, cu_host)?;
        let x = (x + self.reduce(l.o_proj.forward(&attn)?)?)?;

        let h = cuda::rms_norm(&x, &l.post_attention_norm, eps)?;
        let act = cuda::swiglu(&l.gate_up.forward(&h)?)?;
        Ok((x + self.reduce(l.down.forward(&act)?)?)?)
    }

    /// Attention over the packed, normalised and rotated `[tokens, (H + 2 KV) * D]`;
    /// returns `[tokens, H * D]`.
    fn attention_cuda(&self, qkv: &Tensor, cu: &CuSeqlens, cu_host: &[usize]) -> Result<Tensor> {
        let (hd, nq, nkv) = (self.cfg.head_dim, self.local.heads, self.local.kv_heads);
        if cuda::attention_supported(hd, qkv.dtype(), &self.device) {
            let scale = 1.0 / (hd as f32).sqrt();
            return Ok(cuda::varlen_attention_packed(qkv, nq, nkv, cu, scale)?);
        }
        let (q, k, v) = self.split_qkv(qkv)?;
        self.attention(&q, &k, &v, cu_host)
    }
}
