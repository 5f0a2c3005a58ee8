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

/// The layers of rank `rank` of `size`: whole heads and whole kv heads, a slice of the
/// MLP columns; o_proj and down_proj split by row (their partial sums are completed by
/// an all-reduce). Norms and biases are in `act`, the linear weights prepared for `gemm`.
/// A group size that does not divide the heads, kv heads and intermediate size is an
/// error.
pub(super) fn load_layers(
    cfg: &Qwen3Config,
    w: &Weights,
    (rank, size): (usize, usize),
    act: DType,
    gemm: &'static dyn Gemm,
) -> Result<(Vec<DecoderLayer>, Local)> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let inter = cfg.intermediate_size;
    let (q0, qn) = shard_range("num_attention_heads", nq, rank, size)?;
    let (k0, kn) = shard_range("num_key_value_heads", nkv, rank, size)?;
    let (i0, inn) = shard_range("intermediate_size", inter, rank, size)?;
    // Rows (dim 0) or columns (dim 1) of a full tensor that belong to this rank.
    let rows = |t: Tensor, start: usize, len: usize| -> Result<Tensor> {
        Ok(t.narrow(0, start, len)?.contiguous()?)
    };
    let cols = |t: Tensor, start: usize, len: usize| -> Result<Tensor> {
        Ok(t.narrow(1, start, len)?.contiguous()?)
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("layers.{i}");
        let attn = |n: &str, shape: &[usize]| w.get(&format!("{p}.self_attn.{n}"), shape);
        // Biases are added to the GEMM output, which is in the activation dtype.
        let bias = |n: &str, len: usize| w.get_as(&format!("{p}.self_attn.{n}.bias"), &[len], act);
        let mlp = |n: &str, shape: &[usize]| w.get(&format!("{p}.mlp.{n}.weight"), shape);
        let qkv_weight = Tensor::cat(
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
        let o_bias = if cfg.attention_bias && rank == 0 {
            Some(bias("o_proj", h)?)
        } else {
            None
        };
        let norm = |n: &str, len: usize| w.get_as(&format!("{p}.{n}.weight"), &[len], act);
        layers.push(DecoderLayer {
            input_norm: norm("input_layernorm", h)?,
            post_attention_norm: norm("post_attention_layernorm", h)?,
            qkv: Linear::new(gemm, qkv_weight, qkv_bias)?,
            q_norm: norm("self_attn.q_norm", hd)?,
            k_norm: norm("self_attn.k_norm", hd)?,
            o_proj: Linear::new(
                gemm,
                cols(attn("o_proj.weight", &[h, nq * hd])?, q0 * hd, qn * hd)?,
                o_bias,
            )?,
            gate_up: Linear::new(
                gemm,
                Tensor::cat(
                    &[
                        rows(mlp("gate_proj", &[inter, h])?, i0, inn)?,
                        rows(mlp("up_proj", &[inter, h])?, i0, inn)?,
                    ],
                    0,
                )?,
                None,
            )?,
            down: Linear::new(gemm, cols(mlp("down_proj", &[h, inter])?, i0, inn)?, None)?,
        });
    }
    let local = Local {
        heads: qn,
        kv_heads: kn,
        intermediate: inn,
    };
    Ok((layers, local))
}
