//! Measuring, at load, the activations an int8 model's linear layers will see, so that
//! their weights can be smoothed for them (SmoothQuant; the rule is `cpu::gemm::int8`'s).
//!
//! Real checkpoints have a few hidden channels whose activations are tens of times the
//! rest; quantized per token without smoothing, those channels take a row's whole int8
//! range and the others round to a few levels. Which channels, and by how much, is a
//! property of the weights, so a short batch run in float at load finds them.
//!
//! Layer by layer: a layer's tensors are read once and prepared in float, the
//! calibration batch's hidden states run through it recording each linear input's
//! largest |value| per channel, then the same tensors are prepared as int8 smoothed for
//! those maxima and the float copy dropped.
//! The next layer sees the float layer's output. One float layer is resident at a time.

use candle_core::{DType, Tensor};

use super::layers::{InputMaxima, LayerLoader};
use super::Qwen3Embedding;
use crate::cpu::gemm::Gemm;
use crate::{PackedBatch, Result};

/// The calibration batch: this many sequences of [`TOKENS`] tokens.
const SEQUENCES: usize = 4;
const TOKENS: usize = 64;

/// Token ids spread over the whole vocabulary (a fixed pseudo-random draw): channel
/// outliers come from the embedding table and the norm weights, which every token
/// passes through, so no tokenizer or text is needed to find them.
fn calibration_batch(vocab: usize) -> PackedBatch {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % vocab.max(1) as u64) as u32
    };
    let seqs: Vec<Vec<u32>> = (0..SEQUENCES)
        .map(|_| (0..TOKENS).map(|_| next()).collect())
        .collect();
    PackedBatch::new(&seqs)
}

impl InputMaxima {
    /// All zero, sized for one layer of this rank.
    fn zeros(m: &Qwen3Embedding) -> Self {
        let h = m.cfg.hidden_size;
        Self {
            qkv: vec![0.0; h],
            o_proj: vec![0.0; m.local.heads * m.cfg.head_dim],
            gate_up: vec![0.0; h],
            down: vec![0.0; m.local.intermediate],
        }
    }
}

impl Qwen3Embedding {
    /// Loads every layer for the int8 kernel `int8`, each smoothed for the activations
    /// the calibration batch gives it through the float kernel `float`.
    pub(super) fn load_int8_layers(
        &mut self,
        loader: &LayerLoader,
        float: &'static dyn Gemm,
        int8: &'static dyn Gemm,
    ) -> Result<()> {
        let batch = calibration_batch(self.cfg.vocab_size);
        let ids = Tensor::from_slice(batch.ids(), batch.num_tokens(), &self.device)?;
        let mut x = self.embed_tokens.index_select(&ids, DType::F32)?;
        let (cos, sin) = self.rotary_tables(&batch.positions());
        // Attention's products on the float kernel while it runs.
        let chosen = std::mem::replace(&mut self.gemm, float);
        for i in 0..self.cfg.num_hidden_layers {
            // Read once, prepared twice.
            let tensors = loader.tensors(i)?;
            let layer = LayerLoader::build(tensors.clone(), float, None)?;
            let mut maxima = InputMaxima::zeros(self);
            let rope = (cos.as_slice(), sin.as_slice());
            x = self.fused_layer(&layer, x, rope, batch.cu_seqlens(), Some(&mut maxima))?;
            drop(layer);
            self.layers
                .push(LayerLoader::build(tensors, int8, Some(&maxima))?);
        }
        self.gemm = chosen;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_calibration_batch_is_fixed_and_covers_the_vocabulary() {
        let a = super::calibration_batch(151_936);
        assert_eq!(a, super::calibration_batch(151_936));
        assert_eq!(a.num_seqs(), super::SEQUENCES);
        assert!(a.ids().iter().all(|&id| id < 151_936));
        let distinct: std::collections::HashSet<_> = a.ids().iter().collect();
        assert!(distinct.len() > 250, "{}", distinct.len());
        assert!(a.ids().iter().any(|&id| id > 100_000));
    }
}
