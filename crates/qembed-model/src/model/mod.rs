//! The Qwen3 decoder stack run as an encoder: causal attention, last-token pooling.
//!
//! candle-transformers' `qwen3` is a causal LM with a KV cache and padded batches; an
//! embedding server wants the opposite trade-offs (no cache, many sequences of mixed
//! length at once), so the forward pass is ours. Dense layers run on all tokens of
//! the batch as one matrix; attention runs per sequence, so nothing leaks between
//! sequences and no compute is spent on padding.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::rms_norm;

use crate::cpu::gemm::{self, Gemm};
use crate::tp::AllReduce;
use crate::{ModelError, PackedBatch, Quantize, Qwen3Config, Result, Weights};

mod calibrate;
mod embedding;
mod fused;
/// The forward pass on CUDA devices: our fused kernels (see `crate::cuda`).
#[cfg(feature = "cuda")]
mod gpu;
mod layers;
mod linear;
mod reference;

use embedding::Embedding;
use layers::{DecoderLayer, LayerLoader, Local};

/// Query rows attended at once. Bounds the score matrix to `heads x rows x keys` (a
/// 32k-token input needs 16 MiB of f32 scores per head, not 4 GiB), and keeps the
/// work above the causal diagonal small: a block computes `rows x (r0 + rows)` scores
/// where only the lower triangle counts (128 rows: 8x512 ran 7% faster than 512).
const DEFAULT_ATTENTION_BLOCK: usize = 128;

pub struct Qwen3Embedding {
    cfg: Qwen3Config,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    /// Dtype of the linear layers' weights and GEMM operands (what `--dtype` picks), as
    /// loaded: with `quantize` int8 the kernel holds them quantized.
    dtype: DType,
    /// The form the linear layers' weights are held in (what `--quantize` picks).
    quantize: Quantize,
    /// Dtype of activations, norms and attention. On CPU always f32: element-wise work
    /// in bf16/f16 costs a conversion per element there, and f32 accumulation between
    /// GEMMs is also the more exact choice (as oneDNN's bf16 autocast does).
    act_dtype: DType,
    device: Device,
    attention_block: usize,
    /// On CPU, norms, attention and SwiGLU run as fused kernels (`crate::cpu`) instead
    /// of candle ops; the candle path stays for other devices and as the fused kernels'
    /// reference.
    fused_cpu: bool,
    /// The GEMM kernel every linear layer's weight was prepared for, chosen at load
    /// (candle's matmul off the CPU).
    gemm: &'static dyn Gemm,
    /// This rank's share: attention heads, kv heads, MLP columns (all of them at TP=1).
    local: Local,
    comm: Option<Arc<dyn AllReduce>>,
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
        Self::from_weights_with_kernel(cfg, w, comm, None)
    }

    /// As [`load`](Self::load) (or [`load_sharded`](Self::load_sharded) with `comm`),
    /// the linear layers' weights held as `quantize` says: `Int8` quantizes them at load
    /// for an int8 CPU kernel (an error off the CPU).
    pub fn load_quantized(
        dir: &Path,
        dtype: DType,
        device: &Device,
        quantize: Quantize,
        comm: Option<Arc<dyn AllReduce>>,
    ) -> Result<Self> {
        let cfg = Qwen3Config::from_file(&dir.join("config.json"))?;
        let weights = Weights::open(dir, dtype, device)?;
        Self::from_weights_with(cfg, &weights, comm, None, quantize)
    }

    /// As [`load`](Self::load) with the CPU GEMM kernel named (`amx`, `avx2`,
    /// `portable`, ...) instead of chosen: an error if this CPU or build cannot run it
    /// or it does not support `dtype`. It overrides `QEMBED_CPU_KERNEL`.
    pub fn load_with_cpu_kernel(
        dir: &Path,
        dtype: DType,
        device: &Device,
        kernel: &str,
    ) -> Result<Self> {
        let cfg = Qwen3Config::from_file(&dir.join("config.json"))?;
        let weights = Weights::open(dir, dtype, device)?;
        Self::from_weights_with_kernel(cfg, &weights, None, Some(kernel))
    }

    /// The general constructor: one rank of `comm` (all of the model without it), with
    /// the CPU GEMM kernel `kernel` if named, else the one `QEMBED_CPU_KERNEL` names,
    /// else the best this CPU runs for the weights' dtype.
    pub fn from_weights_with_kernel(
        cfg: Qwen3Config,
        w: &Weights,
        comm: Option<Arc<dyn AllReduce>>,
        kernel: Option<&str>,
    ) -> Result<Self> {
        Self::from_weights_with(cfg, w, comm, kernel, Quantize::None)
    }

    /// [`from_weights_with_kernel`](Self::from_weights_with_kernel) with the linear
    /// layers' weights held as `quantize` says (the kernel, named or chosen, must hold
    /// them that way).
    pub fn from_weights_with(
        cfg: Qwen3Config,
        w: &Weights,
        comm: Option<Arc<dyn AllReduce>>,
        kernel: Option<&str>,
        quantize: Quantize,
    ) -> Result<Self> {
        Self::build(cfg, w, comm, kernel, quantize, true)
    }

    /// int8 on kernel `kernel` without the smoothing a load measures (`calibrate`):
    /// only to show what smoothing buys (tests, benchmarks). Not a serving API.
    #[doc(hidden)]
    pub fn from_weights_int8_unsmoothed(
        cfg: Qwen3Config,
        w: &Weights,
        kernel: &str,
    ) -> Result<Self> {
        Self::build(cfg, w, None, Some(kernel), Quantize::Int8, false)
    }

    fn build(
        cfg: Qwen3Config,
        w: &Weights,
        comm: Option<Arc<dyn AllReduce>>,
        kernel: Option<&str>,
        quantize: Quantize,
        smooth: bool,
    ) -> Result<Self> {
        let (rank, size) = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()));
        let act = if w.device().is_cpu() {
            DType::F32
        } else {
            w.dtype()
        };
        let gemm = gemm::select(w.dtype(), quantize, w.device(), kernel)?;
        let h = cfg.hidden_size;
        // In the checkpoint's dtype: the rows a batch looks up are widened to the
        // activations' dtype per forward pass, not the whole 151k-row table at load (in
        // bf16 that is 311 MB kept instead of 622 MB). Loaded first, while the heap is
        // empty: after the layers it would land past their freed load-time copies.
        // With int8 weights the table is int8 too: a quarter of the 0.6B model's
        // parameters would otherwise stay in the load dtype. (The loaded table is
        // dropped here, before the layers load.)
        let embed_tokens = {
            let table = w.get("embed_tokens.weight", &[cfg.vocab_size, h])?;
            match quantize {
                Quantize::Int8 if w.device().is_cpu() => Embedding::int8(&table)?,
                _ => Embedding::Dense(table),
            }
        };
        let loader = LayerLoader::new(&cfg, w, (rank, size), act)?;
        let mut model = Self {
            embed_tokens,
            norm: w.get_as("norm.weight", &[h], act)?,
            layers: Vec::with_capacity(cfg.num_hidden_layers),
            dtype: w.dtype(),
            quantize,
            act_dtype: act,
            device: w.device().clone(),
            attention_block: DEFAULT_ATTENTION_BLOCK,
            fused_cpu: act == DType::F32 && w.device().is_cpu(),
            gemm,
            local: loader.local(),
            comm,
            cfg: cfg.clone(),
        };
        if quantize == Quantize::Int8 && smooth {
            // Smoothed for the activations a float pass measures (`calibrate`).
            let float = gemm::best(w.dtype(), Quantize::None);
            model.load_int8_layers(&loader, float, gemm)?;
        } else {
            for i in 0..cfg.num_hidden_layers {
                model.layers.push(loader.load(i, gemm, None)?);
            }
        }
        // The layers' load-time copies (each tensor as read, before its kernel packed
        // it) are free now; hand that memory back rather than keep it as heap.
        crate::release_freed_memory();
        Ok(model)
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The form the linear layers' weights are held in (`--quantize`).
    pub fn quantize(&self) -> Quantize {
        self.quantize
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The CPU GEMM kernel the linear layers run on (`amx`, `avx2`, `portable`, ...),
    /// for logs and `/info`; `None` on other devices.
    pub fn cpu_kernel(&self) -> Option<&'static str> {
        self.device.is_cpu().then(|| self.gemm.name())
    }

    /// Sets how many query rows attention processes at once (memory vs. overhead).
    pub fn with_attention_block(mut self, rows: usize) -> Self {
        self.attention_block = rows.max(1);
        self
    }

    /// Turns the fused CPU kernels off (candle ops between the GEMMs) or back on where
    /// they apply (CPU, f32 activations): for comparing the two paths. The linear layers
    /// keep their GEMM kernel either way (their weights were prepared for it at load).
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
        let x = self.embed_tokens.index_select(&ids, self.act_dtype)?;
        let x = if self.fused_cpu {
            self.forward_fused_cpu(x, batch)?
        } else {
            self.forward_reference(x, batch)?
        };
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

    /// Completes a row-parallel projection across ranks (a no-op without TP).
    fn reduce(&self, partial: Tensor) -> Result<Tensor> {
        match &self.comm {
            Some(c) if c.world_size() > 1 => c.all_reduce_sum(&partial),
            _ => Ok(partial),
        }
    }
}
