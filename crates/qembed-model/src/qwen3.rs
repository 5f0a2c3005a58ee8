//! The Qwen3 decoder stack run as an encoder: causal attention, last-token pooling.
//!
//! candle-transformers' `qwen3` is a causal LM with a KV cache and padded batches; an
//! embedding server wants the opposite trade-offs (no cache, many sequences of mixed
//! length at once), so the forward pass is ours. Dense layers run on all tokens of
//! the batch as one matrix; attention runs per sequence, so nothing leaks between
//! sequences and no compute is spent on padding.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::rope_thd;

use crate::cpu_ops::{Add, QkvAttention, RmsNorm, SwiGlu};
use crate::tp::{shard_range, AllReduce};
use crate::{ModelError, PackedBatch, Qwen3Config, Result, Weights};

/// The forward pass on CUDA devices: our fused kernels (see `crate::cuda`).
#[cfg(feature = "cuda")]
mod gpu;

/// Query rows attended at once. Bounds the score matrix to `heads x rows x keys` (a
/// 32k-token input needs 16 MiB of f32 scores per head, not 4 GiB), and keeps the
/// work above the causal diagonal small: a block computes `rows x (r0 + rows)` scores
/// where only the lower triangle counts (128 rows: 8x512 ran 7% faster than 512).
const DEFAULT_ATTENTION_BLOCK: usize = 128;

pub struct Qwen3Embedding {
    cfg: Qwen3Config,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    /// Dtype of the linear layers' weights and GEMM operands (what `--dtype` picks).
    dtype: DType,
    /// Dtype of activations, norms and attention. On CPU always f32: element-wise work
    /// in bf16/f16 costs a conversion per element there, and f32 accumulation between
    /// GEMMs is also the more exact choice (as oneDNN's bf16 autocast does).
    act_dtype: DType,
    device: Device,
    attention_block: usize,
    /// On CPU, norms, attention and SwiGLU run as fused kernels (`cpu_ops`) instead of
    /// candle ops; the candle path stays for other devices and as the fused kernels'
    /// reference. (bf16 layers on AMX always take the AMX path, which fuses its own.)
    fused_cpu: bool,
    /// This rank's share: attention heads, kv heads, MLP columns (all of them at TP=1).
    local: Local,
    comm: Option<Arc<dyn AllReduce>>,
}

#[derive(Clone, Copy)]
struct Local {
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
}

/// Rotary tables for one forward pass: host slices for the fused CPU kernels, tensors
/// for the candle path.
enum Rope {
    Host(Vec<f32>, Vec<f32>),
    Tensors(Tensor, Tensor),
}

struct DecoderLayer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    /// q, k and v projections stacked into one `[(H + 2 KV) * D, hidden]` matrix: one
    /// GEMM instead of three over the same input.
    qkv: Linear,
    q_norm: Tensor,
    k_norm: Tensor,
    o_proj: Linear,
    /// gate and up projections stacked into one `[2 I, hidden]` matrix.
    gate_up: Linear,
    down: Linear,
}

struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

/// A linear layer's `[out, in]` weight, in the form the GEMM that runs it reads.
enum Weight {
    /// For candle's matmul, MKL or cuBLAS.
    Dense(Tensor),
    /// bf16 on a CPU with AMX: packed in tile order at load (the only copy kept).
    #[cfg(amx)]
    Amx(crate::amx::PackedWeight),
}

impl Linear {
    /// Takes a `[out, in]` weight; bf16 weights on a CPU with AMX are packed for it.
    fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        #[cfg(amx)]
        if weight.device().is_cpu() && weight.dtype() == DType::BF16 && crate::amx::available() {
            let (n, k) = weight.dims2()?;
            let values = weight.flatten_all()?.to_vec1::<half::bf16>()?;
            let packed = crate::amx::PackedWeight::pack(&values, n, k)?;
            return Ok(Self {
                weight: Weight::Amx(packed),
                bias,
            });
        }
        Ok(Self {
            weight: Weight::Dense(weight),
            bias,
        })
    }

    /// `x @ W.T (+ b)`. With bf16/f16 weights and f32 activations (the CPU layout) the
    /// GEMM runs on the weights' dtype and returns f32.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            #[cfg(amx)]
            Weight::Amx(weight) => return self.amx(x, weight, crate::amx::Input::Plain),
            Weight::Dense(w) => Self::dense(x, w)?,
        };
        self.add_bias(y)
    }

    /// The GEMM on AMX tiles, `input` applied to the rows of `x` on the way in.
    #[cfg(amx)]
    fn amx(
        &self,
        x: &Tensor,
        weight: &crate::amx::PackedWeight,
        input: crate::amx::Input,
    ) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        self.add_bias(x.apply_op1_no_bwd(&crate::amx::AmxLinear { weight, input })?)
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn dense(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "mkl")]
        if let Some(y) = crate::mkl::linear(x, w)? {
            return Ok(y);
        }
        Ok(if x.dtype() == w.dtype() {
            x.matmul(&w.t()?)?
        } else {
            x.to_dtype(w.dtype())?
                .matmul(&w.t()?)?
                .to_dtype(x.dtype())?
        })
    }
}

impl Qwen3Embedding {
    /// Loads `config.json` and the safetensors weights from a checkpoint directory.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = Qwen3Config::from_file(&dir.join("config.json"))?;
        let weights = Weights::open(dir, dtype, device)?;
        Self::from_weights(cfg, &weights)
    }

    pub fn from_weights(cfg: Qwen3Config, w: &Weights) -> Result<Self> {
        Self::from_weights_sharded(cfg, w, None)
    }

    /// Loads one tensor-parallel rank: whole heads and whole kv heads, a slice of the MLP
    /// columns; `comm` completes the row-split o_proj and down_proj. A group size that
    /// does not divide the heads, kv heads and intermediate size is an error.
    pub fn load_sharded(
        dir: &Path,
        dtype: DType,
        device: &Device,
        comm: Arc<dyn AllReduce>,
    ) -> Result<Self> {
        let cfg = Qwen3Config::from_file(&dir.join("config.json"))?;
        let weights = Weights::open(dir, dtype, device)?;
        Self::from_weights_sharded(cfg, &weights, Some(comm))
    }

    pub fn from_weights_sharded(
        cfg: Qwen3Config,
        w: &Weights,
        comm: Option<Arc<dyn AllReduce>>,
    ) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let inter = cfg.intermediate_size;
        let (rank, size) = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()));
        let act = if w.device().is_cpu() {
            DType::F32
        } else {
            w.dtype()
        };
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
            let bias =
                |n: &str, len: usize| w.get_as(&format!("{p}.self_attn.{n}.bias"), &[len], act);
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
                qkv: Linear::new(qkv_weight, qkv_bias)?,
                q_norm: norm("self_attn.q_norm", hd)?,
                k_norm: norm("self_attn.k_norm", hd)?,
                o_proj: Linear::new(
                    cols(attn("o_proj.weight", &[h, nq * hd])?, q0 * hd, qn * hd)?,
                    o_bias,
                )?,
                gate_up: Linear::new(
                    Tensor::cat(
                        &[
                            rows(mlp("gate_proj", &[inter, h])?, i0, inn)?,
                            rows(mlp("up_proj", &[inter, h])?, i0, inn)?,
                        ],
                        0,
                    )?,
                    None,
                )?,
                down: Linear::new(cols(mlp("down_proj", &[h, inter])?, i0, inn)?, None)?,
            });
        }
        Ok(Self {
            embed_tokens: w.get_as("embed_tokens.weight", &[cfg.vocab_size, h], act)?,
            norm: w.get_as("norm.weight", &[h], act)?,
            layers,
            dtype: w.dtype(),
            act_dtype: act,
            device: w.device().clone(),
            attention_block: DEFAULT_ATTENTION_BLOCK,
            fused_cpu: act == DType::F32 && w.device().is_cpu(),
            local: Local {
                heads: qn,
                kv_heads: kn,
                intermediate: inn,
            },
            comm,
            cfg,
        })
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Sets how many query rows attention processes at once (memory vs. overhead).
    pub fn with_attention_block(mut self, rows: usize) -> Self {
        self.attention_block = rows.max(1);
        self
    }

    /// Turns the fused CPU kernels off (candle ops between the GEMMs) or back on where
    /// they apply (CPU, f32 activations): for comparing the two paths. Linear layers
    /// packed for AMX (bf16 on AMX CPUs) keep their AMX GEMMs either way.
    pub fn with_fused_cpu_ops(mut self, on: bool) -> Self {
        self.fused_cpu = on && self.device.is_cpu() && self.act_dtype == DType::F32;
        self
    }

    /// The final-norm hidden state of each sequence's last token, `[num_seqs, hidden]`
    /// in f32 whatever the compute dtype: un-normalised, un-truncated embeddings.
    pub fn forward(&self, batch: &PackedBatch) -> Result<Tensor> {
        if batch.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        batch.validate(&self.cfg)?;
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() {
            return self.forward_cuda(batch);
        }
        let n = batch.num_tokens();
        let ids = Tensor::from_slice(batch.ids(), n, &self.device)?;
        let mut x = self.embed_tokens.index_select(&ids, 0)?;
        let (cos, sin) = self.rotary_tables(&batch.positions());
        let rope = if self.fused_cpu {
            Rope::Host(cos, sin)
        } else {
            let (cos, sin) = self.rotary_tensors(cos, sin, self.act_dtype)?;
            Rope::Tensors(cos, sin)
        };
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &rope, batch.cu_seqlens())?;
        }
        let last = Tensor::from_vec(batch.last_token_indices(), batch.num_seqs(), &self.device)?;
        let pooled = x.index_select(&last, 0)?;
        let eps = self.cfg.rms_norm_eps as f32;
        Ok(rms_norm(&pooled, &self.norm, eps)?.to_dtype(DType::F32)?)
    }

    /// Convenience over [`forward`](Self::forward): one `Vec<f32>` per sequence.
    pub fn embed(&self, batch: &PackedBatch) -> Result<Vec<Vec<f32>>> {
        Ok(self.forward(batch)?.to_vec2::<f32>()?)
    }

    /// cos/sin of every token's own position, `[tokens, head_dim / 2]` in f32: with
    /// positions restarting at each sequence this is what makes one rope call serve a
    /// packed batch.
    fn rotary_tables(&self, positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
        let half = self.cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / self.cfg.head_dim as f32;
                1.0 / (self.cfg.rope_theta as f32).powf(exponent)
            })
            .collect();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        (cos, sin)
    }

    /// The tables of [`rotary_tables`](Self::rotary_tables) on the model's device in
    /// `dtype`.
    fn rotary_tensors(
        &self,
        cos: Vec<f32>,
        sin: Vec<f32>,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let shape = (cos.len() / (self.cfg.head_dim / 2), self.cfg.head_dim / 2);
        let cos = Tensor::from_vec(cos, shape, &self.device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape, &self.device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    fn layer_forward(
        &self,
        l: &DecoderLayer,
        x: &Tensor,
        rope: &Rope,
        cu_seqlens: &[usize],
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        let qkv = self.norm_linear(x, &l.input_norm, &l.qkv)?;
        let attn = match rope {
            Rope::Host(cos, sin) => qkv.apply_op1_no_bwd(&QkvAttention {
                heads: self.local.heads,
                kv_heads: self.local.kv_heads,
                head_dim: self.cfg.head_dim,
                eps,
                q_norm: &l.q_norm.to_vec1::<f32>()?,
                k_norm: &l.k_norm.to_vec1::<f32>()?,
                cos,
                sin,
                cu_seqlens,
                block: self.attention_block,
                amx: self.amx_attention(),
            })?,
            Rope::Tensors(cos, sin) => self.qkv_attention(l, &qkv, cos, sin, cu_seqlens)?,
        };
        let x = self.residual(x, &self.reduce(l.o_proj.forward(&attn)?)?)?;

        let gate_up = self.norm_linear(&x, &l.post_attention_norm, &l.gate_up)?;
        self.residual(&x, &self.reduce(self.swiglu_linear(&gate_up, &l.down)?)?)
    }

    /// `linear(rms_norm(x))`. On AMX the norm is applied while the GEMM rounds its
    /// input to bf16, so the normed activations are never written in f32.
    fn norm_linear(&self, x: &Tensor, norm: &Tensor, linear: &Linear) -> Result<Tensor> {
        #[cfg(amx)]
        if let Weight::Amx(weight) = &linear.weight {
            let w = norm.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let eps = self.cfg.rms_norm_eps as f32;
            return linear.amx(x, weight, crate::amx::Input::RmsNorm(&w, eps));
        }
        linear.forward(&self.rms_norm(x, norm)?)
    }

    /// `linear(silu(gate) * up)` from the fused gate/up projection; on AMX, SwiGLU is
    /// applied while the GEMM rounds its input.
    fn swiglu_linear(&self, gate_up: &Tensor, linear: &Linear) -> Result<Tensor> {
        #[cfg(amx)]
        if let Weight::Amx(weight) = &linear.weight {
            return linear.amx(gate_up, weight, crate::amx::Input::SwiGlu);
        }
        let act = if self.fused_cpu {
            gate_up.apply_op1_no_bwd(&SwiGlu)?
        } else {
            let inter = self.local.intermediate;
            let gate = gate_up.narrow(1, 0, inter)?;
            let up = gate_up.narrow(1, inter, inter)?;
            (candle_nn::Activation::Silu.forward(&gate)? * up)?
        };
        linear.forward(&act)
    }

    /// RMSNorm of each token's row: our parallel kernel on CPU, candle's elsewhere.
    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps as f32;
        Ok(if self.fused_cpu {
            x.apply_op2_no_bwd(weight, &RmsNorm { eps })?
        } else {
            rms_norm(x, weight, eps)?
        })
    }

    /// The residual connection `x + delta`.
    fn residual(&self, x: &Tensor, delta: &Tensor) -> Result<Tensor> {
        Ok(if self.fused_cpu {
            x.apply_op2_no_bwd(delta, &Add)?
        } else {
            (x + delta)?
        })
    }

    /// Whether the fused CPU attention runs its products in bf16 on AMX: only where the
    /// linear layers are bf16 (an f32 model keeps f32 attention).
    fn amx_attention(&self) -> bool {
        #[cfg(amx)]
        return self.dtype == DType::BF16 && self.device.is_cpu() && crate::amx::available();
        #[cfg(not(amx))]
        false
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
    fn split_qkv(&self, qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, hd) = (qkv.dim(0)?, self.cfg.head_dim);
        let (nq, nkv) = (self.local.heads, self.local.kv_heads);
        let q = qkv.narrow(1, 0, nq * hd)?.reshape((n, nq, hd))?;
        let k = qkv.narrow(1, nq * hd, nkv * hd)?.reshape((n, nkv, hd))?;
        let v = qkv
            .narrow(1, (nq + nkv) * hd, nkv * hd)?
            .reshape((n, nkv, hd))?;
        Ok((q, k, v))
    }

    /// Completes a row-parallel projection across ranks (a no-op without TP).
    fn reduce(&self, partial: Tensor) -> Result<Tensor> {
        match &self.comm {
            Some(c) if c.world_size() > 1 => c.all_reduce_sum(&partial),
            _ => Ok(partial),
        }
    }

    /// Causal grouped-query attention over each sequence of the packed batch.
    /// q: `[tokens, H, D]`, k/v: `[tokens, KV, D]`; returns `[tokens, H * D]`.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, cu: &[usize]) -> Result<Tensor> {
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
