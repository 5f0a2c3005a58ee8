//! Loading the decoder layers, whole or as one tensor-parallel rank's share.

use candle_core::{DType, Tensor};

use super::linear::Linear;
use crate::cpu::gemm::Gemm;
use crate::tp::shard_range;
use crate::{Qwen3Config, Result, Weights};

/// This rank's share: attention heads, kv heads, MLP columns (all of them at TP=1).
#[derive(Clone, Copy)]
pub(super) struct Local {
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) intermediate: usize,
}

pub(super) struct DecoderLayer {
    pub(super) input_norm: Tensor,
    pub(super) post_attention_norm: Tensor,
    /// q, k and v projections stacked into one `[(H + 2 KV) * D, hidden]` matrix: one
    /// GEMM instead of three over the same input.
    pub(super) qkv: Linear,
    pub(super) q_norm: Tensor,
    pub(super) k_norm: Tensor,
    pub(super) o_proj: Linear,
    /// gate and up projections stacked into one `[2 I, hidden]` matrix.
    pub(super) gate_up: Linear,
    pub(super) down: Linear,
}

/// Loads decoder layers one at a time for rank `rank` of `size`: whole heads and whole
/// kv heads, a slice of the MLP columns; o_proj and down_proj split by row (their
/// partial sums are completed by an all-reduce). Norms and biases are in `act`. A
/// group size that does not divide the heads, kv heads and intermediate size is an
/// error.
pub(super) struct LayerLoader<'a> {
    cfg: &'a Qwen3Config,
    w: &'a Weights,
    rank: usize,
    act: DType,
    /// First and count of this rank's heads, kv heads and MLP columns.
    q: (usize, usize),
    kv: (usize, usize),
    mlp: (usize, usize),
}

/// What each linear layer's input reached per channel when the model measured it,
/// for smoothing int8 weights ([`LayerLoader::load`]).
pub(super) struct InputMaxima {
    pub(super) qkv: Vec<f32>,
    pub(super) o_proj: Vec<f32>,
    pub(super) gate_up: Vec<f32>,
    pub(super) down: Vec<f32>,
}

impl<'a> LayerLoader<'a> {
    pub(super) fn new(
        cfg: &'a Qwen3Config,
        w: &'a Weights,
        (rank, size): (usize, usize),
        act: DType,
    ) -> Result<Self> {
        let [q, kv, mlp] = cfg
            .sharded_dims()
            .map(|(what, total)| shard_range(what, total, rank, size));
        Ok(Self {
            cfg,
            w,
            rank,
            act,
            q: q?,
            kv: kv?,
            mlp: mlp?,
        })
    }

    /// This rank's share.
    pub(super) fn local(&self) -> Local {
        Local {
            heads: self.q.1,
            kv_heads: self.kv.1,
            intermediate: self.mlp.1,
        }
    }

    /// Layer `i`, its linear weights prepared for `gemm`, smoothed for inputs that
    /// reached `maxima` when given (int8 kernels only).
    pub(super) fn load(
        &self,
        i: usize,
        gemm: &'static dyn Gemm,
        maxima: Option<&InputMaxima>,
    ) -> Result<DecoderLayer> {
        Self::build(self.tensors(i)?, gemm, maxima)
    }

    /// Layer `i`'s tensors as this rank holds them, read from the checkpoint once:
    /// q/k/v and gate/up stacked, norms and biases in the activation dtype.
    pub(super) fn tensors(&self, i: usize) -> Result<LayerTensors> {
        let (cfg, w, act) = (self.cfg, self.w, self.act);
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let inter = cfg.intermediate_size;
        let ((q0, qn), (k0, kn), (i0, inn)) = (self.q, self.kv, self.mlp);
        // Rows (dim 0) or columns (dim 1) of a full tensor that belong to this rank.
        let rows = |t: Tensor, start: usize, len: usize| -> Result<Tensor> {
            Ok(t.narrow(0, start, len)?.contiguous()?)
        };
        let cols = |t: Tensor, start: usize, len: usize| -> Result<Tensor> {
            Ok(t.narrow(1, start, len)?.contiguous()?)
        };
        let p = format!("layers.{i}");
        let attn = |n: &str, shape: &[usize]| w.get(&format!("{p}.self_attn.{n}"), shape);
        // Biases are added to the GEMM output, which is in the activation dtype.
        let bias = |n: &str, len: usize| w.get_as(&format!("{p}.self_attn.{n}.bias"), &[len], act);
        let mlp = |n: &str, shape: &[usize]| w.get(&format!("{p}.mlp.{n}.weight"), shape);
        let qkv = Tensor::cat(
            &[
                rows(attn("q_proj.weight", &[nq * hd, h])?, q0 * hd, qn * hd)?,
                rows(attn("k_proj.weight", &[nkv * hd, h])?, k0 * hd, kn * hd)?,
                rows(attn("v_proj.weight", &[nkv * hd, h])?, k0 * hd, kn * hd)?,
            ],
            0,
        )?;
        let qkv_bias = if cfg.attention_bias {
            Some(Tensor::cat(
                &[
                    bias("q_proj", nq * hd)?.narrow(0, q0 * hd, qn * hd)?,
                    bias("k_proj", nkv * hd)?.narrow(0, k0 * hd, kn * hd)?,
                    bias("v_proj", nkv * hd)?.narrow(0, k0 * hd, kn * hd)?,
                ],
                0,
            )?)
        } else {
            None
        };
        // The bias is added once, by rank 0, before the all-reduce sums the ranks.
        let o_bias = if cfg.attention_bias && self.rank == 0 {
            Some(bias("o_proj", h)?)
        } else {
            None
        };
        let norm = |n: &str, len: usize| w.get_as(&format!("{p}.{n}.weight"), &[len], act);
        Ok(LayerTensors {
            input_norm: norm("input_layernorm", h)?,
            post_attention_norm: norm("post_attention_layernorm", h)?,
            qkv: (qkv, qkv_bias),
            q_norm: norm("self_attn.q_norm", hd)?,
            k_norm: norm("self_attn.k_norm", hd)?,
            o_proj: (
                cols(attn("o_proj.weight", &[h, nq * hd])?, q0 * hd, qn * hd)?,
                o_bias,
            ),
            gate_up: Tensor::cat(
                &[
                    rows(mlp("gate_proj", &[inter, h])?, i0, inn)?,
                    rows(mlp("up_proj", &[inter, h])?, i0, inn)?,
                ],
                0,
            )?,
            down: cols(mlp("down_proj", &[h, inter])?, i0, inn)?,
        })
    }

    /// A layer from its tensors, the linear weights prepared for `gemm` (smoothed for
    /// `maxima` when given, int8 kernels only).
    pub(super) fn build(
        t: LayerTensors,
        gemm: &'static dyn Gemm,
        maxima: Option<&InputMaxima>,
    ) -> Result<DecoderLayer> {
        let linear = |weight: Tensor, bias: Option<Tensor>, max: Option<&Vec<f32>>| match max {
            None => Linear::new(gemm, weight, bias),
            Some(max) => Linear::new_smoothed(gemm, weight, bias, max),
        };
        Ok(DecoderLayer {
            input_norm: t.input_norm,
            post_attention_norm: t.post_attention_norm,
            qkv: linear(t.qkv.0, t.qkv.1, maxima.map(|m| &m.qkv))?,
            q_norm: t.q_norm,
            k_norm: t.k_norm,
            o_proj: linear(t.o_proj.0, t.o_proj.1, maxima.map(|m| &m.o_proj))?,
            gate_up: linear(t.gate_up, None, maxima.map(|m| &m.gate_up))?,
            down: linear(t.down, None, maxima.map(|m| &m.down))?,
        })
    }
}

/// One decoder layer's tensors before their linear weights are prepared for a kernel
/// (cheap to clone: tensors share their storage), so that one read of the checkpoint
/// can be prepared twice (float to measure, then int8).
#[derive(Clone)]
pub(super) struct LayerTensors {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    /// Stacked weight and bias.
    qkv: (Tensor, Option<Tensor>),
    q_norm: Tensor,
    k_norm: Tensor,
    o_proj: (Tensor, Option<Tensor>),
    gate_up: Tensor,
    down: Tensor,
}
