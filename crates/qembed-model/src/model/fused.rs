//! The forward pass on CPU with our fused kernels: each linear layer on the model's
//! GEMM kernel with the norm or SwiGLU before it as its prologue, attention from the
//! fused qkv projection in one op, the residual adds in parallel. Activations are f32.

use candle_core::{DType, Tensor};

use super::layers::DecoderLayer;
use super::Qwen3Embedding;
use crate::cpu::attention::QkvAttention;
use crate::cpu::gemm::Prologue;
use crate::cpu::ops;
use crate::{PackedBatch, Result};

impl Qwen3Embedding {
    /// The hidden states after the last layer, from the embedded tokens `x`.
    pub(super) fn forward_fused_cpu(&self, mut x: Tensor, batch: &PackedBatch) -> Result<Tensor> {
        let (cos, sin) = self.rotary_tables(&batch.positions());
        for layer in &self.layers {
            x = self.fused_layer(layer, &x, (&cos, &sin), batch.cu_seqlens())?;
        }
        Ok(x)
    }

    fn fused_layer(
        &self,
        l: &DecoderLayer,
        x: &Tensor,
        (cos, sin): (&[f32], &[f32]),
        cu_seqlens: &[usize],
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let input_norm = host(&l.input_norm)?;
        let qkv = l.qkv.forward_with(x, Prologue::RmsNorm(&input_norm, eps))?;
        let attn = qkv.apply_op1_no_bwd(&QkvAttention {
            heads: self.local.heads,
            kv_heads: self.local.kv_heads,
            head_dim: self.cfg.head_dim,
            eps,
            q_norm: &host(&l.q_norm)?,
            k_norm: &host(&l.k_norm)?,
            cos,
            sin,
            cu_seqlens,
            block: self.attention_block,
            products: self.gemm.attention(),
        })?;
        let x = ops::add(x, &self.reduce(l.o_proj.forward(&attn)?)?)?;

        let post_norm = host(&l.post_attention_norm)?;
        let gate_up = l
            .gate_up
            .forward_with(&x, Prologue::RmsNorm(&post_norm, eps))?;
        let down = l.down.forward_with(&gate_up, Prologue::SwiGlu)?;
        Ok(ops::add(&x, &self.reduce(down)?)?)
    }
}

/// A norm weight's values in f32, as the fused kernels take them.
fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}
