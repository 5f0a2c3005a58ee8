//! The forward pass with candle ops between the GEMMs: what runs where our fused CPU
//! kernels do not (other devices without their own path), and the reference the fused
//! kernels are tested against. The GEMMs are the model's kernel, without prologues.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::rope_thd;

use super::layers::DecoderLayer;
use super::Qwen3Embedding;
use crate::{PackedBatch, Result};

impl Qwen3Embedding {
    /// The hidden states after the last layer, from the embedded tokens `x`.
    pub(super) fn forward_reference(&self, mut x: Tensor, batch: &PackedBatch) -> Result<Tensor> {
        let (cos, sin) = self.rotary_tables(&batch.positions());
        let (cos, sin) = self.rotary_tensors(cos, sin, self.act_dtype)?;
        for layer in &self.layers {
            x = self.reference_layer(layer, &x, (&cos, &sin), batch.cu_seqlens())?;
        }
        Ok(x)
    }

    fn reference_layer(
        &self,
        l: &DecoderLayer,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        cu_seqlens: &[usize],
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let qkv = l.qkv.forward(&rms_norm(x, &l.input_norm, eps)?)?;
        let attn = self.qkv_attention(l, &qkv, cos, sin, cu_seqlens)?;
        let x = (x + self.reduce(l.o_proj.forward(&attn)?)?)?;

        let gate_up = l
            .gate_up
            .forward(&rms_norm(&x, &l.post_attention_norm, eps)?)?;
        let inter = self.local.intermediate;
        let gate = gate_up.narrow(1, 0, inter)?;
        let up = gate_up.narrow(1, inter, inter)?;
        let act = (candle_nn::Activation::Silu.forward(&gate)? * up)?;
        Ok((&x + self.reduce(l.down.forward(&act)?)?)?)
    }

    /// q/k norm, rotary embedding and attention with candle ops, from the fused qkv
    /// projection to `[tokens, H * D]`.
    fn qkv_attention(
        &self,
        l: &DecoderLayer,
        qkv: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cu_seqlens: &[usize],
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let (q, k, v) = self.split_qkv(qkv)?;
        let q = rope_thd(&rms_norm(&q, &l.q_norm, eps)?.unsqueeze(0)?, cos, sin)?.squeeze(0)?;
        let k = rope_thd(&rms_norm(&k, &l.k_norm, eps)?.unsqueeze(0)?, cos, sin)?.squeeze(0)?;
        self.attention(&q, &k, &v, cu_seqlens)
    }

    /// q `[tokens, H, D]`, k and v `[tokens, KV, D]` as views of the fused qkv
    /// projection `[tokens, (H + 2 KV) * D]`.
    pub(super) fn split_qkv(&self, qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, hd) = (qkv.dim(0)?, self.cfg.head_dim);
        let (nq, nkv) = (self.local.heads, self.local.kv_heads);
        let q = qkv.narrow(1, 0, nq * hd)?.reshape((n, nq, hd))?;
        let k = qkv.narrow(1, nq * hd, nkv * hd)?.reshape((n, nkv, hd))?;
        let v = qkv
            .narrow(1, (nq + nkv) * hd, nkv * hd)?
            .reshape((n, nkv, hd))?;
        Ok((q, k, v))
    }

    /// Causal grouped-query attention over each sequence of the packed batch.
    /// q: `[tokens, H, D]`, k/v: `[tokens, KV, D]`; returns `[tokens, H * D]`.
    pub(super) fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cu: &[usize],
    ) -> Result<Tensor> {
        let (hd, nq, nkv) = (self.cfg.head_dim, self.local.heads, self.local.kv_heads);
        let groups = nq / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut per_seq = Vec::with_capacity(cu.len() - 1);
        for w in cu.windows(2) {
            let (start, len) = (w[0], w[1] - w[0]);
            // [KV, G, len, D]: query heads grouped under the kv head they share, so that
            // GQA needs no copy of k and v per query head.
            let qs = q
                .narrow(0, start, len)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((nkv, groups, len, hd))?;
            let ks = k.narrow(0, start, len)?.transpose(0, 1)?.contiguous()?;
            let vs = v.narrow(0, start, len)?.transpose(0, 1)?.contiguous()?;
            let mut blocks = Vec::new();
            let mut r0 = 0;
            while r0 < len {
                let rows = self.attention_block.min(len - r0);
                // Causal: rows r0..r0+rows see keys 0..r0+rows and nothing later.
                let keys = r0 + rows;
                let qb = qs.narrow(2, r0, rows)?.reshape((nkv, groups * rows, hd))?;
                let kb = ks.narrow(1, 0, keys)?;
                let vb = vs.narrow(1, 0, keys)?;
                let scores = (qb.matmul(&kb.t()?)? * scale)?
                    .to_dtype(DType::F32)?
                    .reshape((nkv, groups, rows, keys))?
                    .broadcast_add(&causal_mask(r0, rows, keys, &self.device)?)?;
                let probs = softmax_last_dim(&scores)?
                    .to_dtype(self.act_dtype)?
                    .reshape((nkv, groups * rows, keys))?;
                blocks.push(probs.matmul(&vb.contiguous()?)?.reshape((nq, rows, hd))?);
                r0 += rows;
            }
            let out = if blocks.len() == 1 {
                blocks.remove(0)
            } else {
                Tensor::cat(&blocks, 1)?
            };
            per_seq.push(out.transpose(0, 1)?);
        }
        let n = q.dim(0)?;
        Ok(Tensor::cat(&per_seq, 0)?.reshape((n, nq * hd))?)
    }
}

/// `[rows, keys]` additive mask: query row `r0 + i` may see keys `0..=r0 + i`.
fn causal_mask(r0: usize, rows: usize, keys: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..rows)
        .flat_map(|i| (0..keys).map(move |j| if j > r0 + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (rows, keys), device)?)
}
