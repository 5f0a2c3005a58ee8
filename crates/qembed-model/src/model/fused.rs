//! The forward pass on CPU with our fused kernels: each linear layer on the model's
//! GEMM kernel with the norm or SwiGLU before it as its prologue, attention from the
//! fused qkv projection in one op, the residual adds in parallel. Activations are f32.

use candle_core::{DType, Tensor};

use super::layers::{DecoderLayer, InputMaxima};
use super::linear::Linear;
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
            x = self.fused_layer(layer, x, (&cos, &sin), batch.cu_seqlens(), None)?;
        }
        Ok(x)
    }

    /// One decoder layer; with `measure`, each linear layer's input maxima recorded
    /// into it as well (for smoothing int8 weights at load). `x` is consumed: where the
    /// kernel fuses the residual adds, the layer adds into its storage in place (the
    /// caller's tensor, fresh from the embedding lookup or the layer before, that
    /// nothing else holds).
    pub(super) fn fused_layer(
        &self,
        l: &DecoderLayer,
        x: Tensor,
        (cos, sin): (&[f32], &[f32]),
        cu_seqlens: &[usize],
        mut measure: Option<&mut InputMaxima>,
    ) -> Result<Tensor> {
        let run = |lin: &Linear, x: &Tensor, p: Prologue, max: Option<&mut Vec<f32>>| match max {
            Some(max) => lin.forward_measured(x, p, max),
            None => lin.forward_with(x, p),
        };
        let eps = self.cfg.rms_norm_eps as f32;
        let input_norm = host(&l.input_norm)?;
        let qkv = run(
            &l.qkv,
            &x,
            Prologue::RmsNorm(&input_norm, eps),
            measure.as_mut().map(|m| &mut m.qkv),
        )?;
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
        // The residual adds in the products where the kernel fuses them: not across
        // tensor-parallel ranks (whose partial products are summed first), nor while
        // measuring.
        let fuse_add = measure.is_none() && self.comm.as_ref().is_none_or(|c| c.world_size() == 1);
        let x = if fuse_add && l.o_proj.forward_add(&x, &attn, Prologue::None)? {
            x
        } else {
            let o = run(
                &l.o_proj,
                &attn,
                Prologue::None,
                measure.as_mut().map(|m| &mut m.o_proj),
            )?;
            ops::add(&x, &self.reduce(o)?)?
        };

        let post_norm = host(&l.post_attention_norm)?;
        let post = Prologue::RmsNorm(&post_norm, eps);
        // The SwiGLU in the gate_up product where the kernel fuses it (not while
        // measuring: calibration records the maxima of the unfused layers' inputs).
        let fused = match measure {
            None => l.gate_up.forward_swiglu(&x, post)?,
            Some(_) => None,
        };
        let (hidden, prologue) = match fused {
            Some(h) => (h, Prologue::None),
            None => {
                let max = measure.as_mut().map(|m| &mut m.gate_up);
                (run(&l.gate_up, &x, post, max)?, Prologue::SwiGlu)
            }
        };
        if fuse_add && l.down.forward_add(&x, &hidden, prologue)? {
            return Ok(x);
        }
        let down = run(
            &l.down,
            &hidden,
            prologue,
            measure.as_mut().map(|m| &mut m.down),
        )?;
        Ok(ops::add(&x, &self.reduce(down)?)?)
    }
}

/// A norm weight's values in f32, as the fused kernels take them.
fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}
