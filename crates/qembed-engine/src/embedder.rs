//! A loaded model and its tokenizer: texts in, vectors out, in input order.

use std::path::Path;

use qembed_model::{DType, PackedBatch, Quantize, ScoreHead};

use crate::backend::{Backend, DeviceSpec};

use crate::postprocess::{check_dimensions, finish};
use crate::rerank::{Pair, RerankTemplate, RERANK_MAX_LENGTH};
use crate::tokenize::{format_query, query_prefix, Qwen3Tokenizer, Truncate};
use crate::{EngineError, Result};

/// Most sequences in one forward pass: the CUDA kernels index sequences with a grid
/// dimension of at most 65535.
pub const MAX_BATCH_SEQUENCES: usize = 65_535;

/// Longest input Qwen3-Embedding is trained for.
pub const MAX_LENGTH_CAP: usize = 32_768;

/// Compute precision as users spell it on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    /// f32 on CPU (exact parity with the reference); the checkpoint's dtype elsewhere.
    Auto,
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype `{other}` (auto, f32, f16, bf16)")),
        }
    }
}

impl DTypeChoice {
    pub fn resolve(self, device: DeviceSpec) -> DType {
        self.resolve_for(device, Quantize::None)
    }

    /// The load dtype for weights held as `quantize` says: with int8, `auto` loads bf16
    /// (what is quantized gains nothing from an f32 original, and the load's transient
    /// copies are half the size).
    pub fn resolve_for(self, device: DeviceSpec, quantize: Quantize) -> DType {
        match self {
            Self::Auto if device.is_cpu() && quantize == Quantize::Int8 => DType::BF16,
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => DType::F16,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// What a checkpoint is served for. Qwen3-Embedding and Qwen3-Reranker checkpoints
/// have the same architecture (`Qwen3ForCausalLM`), so the config cannot tell; the
/// operator says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    /// Last-token hidden state, normalised: a vector per text.
    #[default]
    Embed,
    /// The yes/no head over a (query, document) template: a score per pair.
    Rerank,
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "embed" | "embedding" | "embeddings" => Ok(Self::Embed),
            "rerank" | "reranker" | "score" => Ok(Self::Rerank),
            other => Err(format!("unknown task `{other}` (embed, rerank)")),
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Embed => "embed",
            Self::Rerank => "rerank",
        })
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Embeddings or reranker scores.
    pub task: Task,
    pub device: DeviceSpec,
    /// Ranks of a tensor-parallel group (1: no tensor parallelism).
    pub tensor_parallel: usize,
    pub dtype: DTypeChoice,
    /// How the linear layers' weights are held (`--quantize`).
    pub quantize: Quantize,
    /// Token limit per input including the EOS (embeddings) or the template (rerank);
    /// default from the config, capped at 32k for embeddings and 8192 for rerank.
    pub max_length: Option<usize>,
    /// Upper bound on tokens per forward pass (bounds activation memory).
    pub max_batch_tokens: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            task: Task::Embed,
            device: DeviceSpec::Cpu,
            tensor_parallel: 1,
            dtype: DTypeChoice::Auto,
            quantize: Quantize::None,
            max_length: None,
            max_batch_tokens: 16_384,
        }
    }
}

/// One text to embed. `instruction` turns it into a query.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub text: &'a str,
    pub instruction: Option<&'a str>,
}

/// How to shape output vectors.
#[derive(Debug, Clone, Copy)]
pub struct OutputOptions {
    pub dimensions: Option<usize>,
    pub normalize: bool,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            dimensions: None,
            normalize: true,
        }
    }
}

pub struct Embedder {
    model: Backend,
    tokenizer: Qwen3Tokenizer,
    max_length: usize,
    max_batch_tokens: usize,
    /// The reranker's template and head when the task is `Rerank`.
    rerank: Option<Reranking>,
}

/// What a reranker adds to the forward pass: its input template and its score head.
struct Reranking {
    template: RerankTemplate,
    head: ScoreHead,
}

impl Embedder {
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let tokenizer = Qwen3Tokenizer::from_dir(dir)?;
        let dtype = opts.dtype.resolve_for(opts.device, opts.quantize);
        // The head needs only the config and two rows of the checkpoint: check it before
        // the (slow) model load, so a checkpoint that cannot rerank fails at once.
        let rerank = match opts.task {
            Task::Embed => None,
            Task::Rerank => {
                let cfg = qembed_model::Qwen3Config::from_file(&dir.join("config.json"))?;
                let template = RerankTemplate::new(&tokenizer)?;
                let head = ScoreHead::load(dir, &cfg, template.yes, template.no)?;
                Some(Reranking { template, head })
            }
        };
        let model =
            Backend::load_quantized(dir, opts.device, dtype, opts.quantize, opts.tensor_parallel)?;
        let positions = model.config().max_position_embeddings;
        let cap = match opts.task {
            Task::Embed => MAX_LENGTH_CAP,
            Task::Rerank => RERANK_MAX_LENGTH,
        };
        let max_length = match opts.max_length {
            Some(0) => return Err(EngineError::Setting("max length must be positive".into())),
            Some(n) if n > positions => {
                return Err(EngineError::Setting(format!(
                    "max length {n} exceeds the model's {positions} positions"
                )))
            }
            Some(n) => n,
            None => positions.min(cap),
        };
        if let Some(r) = &rerank {
            if max_length <= r.template.overhead() {
                return Err(EngineError::Setting(format!(
                    "max length {max_length} leaves no room for a pair after the reranker template's {} tokens",
                    r.template.overhead()
                )));
            }
        }
        if opts.max_batch_tokens == 0 {
            return Err(EngineError::Setting(
                "max batch tokens must be positive".into(),
            ));
        }
        Ok(Self {
            model,
            tokenizer,
            max_length,
            max_batch_tokens: opts.max_batch_tokens,
            rerank,
        })
    }

    /// What this model serves.
    pub fn task(&self) -> Task {
        if self.rerank.is_some() {
            Task::Rerank
        } else {
            Task::Embed
        }
    }

    fn reranking(&self) -> Result<&Reranking> {
        self.rerank.as_ref().ok_or(EngineError::WrongTask {
            wanted: Task::Rerank,
            loaded: Task::Embed,
        })
    }

    /// The ids the reranker sees for `pair` (template included, no EOS), truncated at
    /// the end of the body to the length limit when `truncate`, else refused.
    pub fn tokenize_pair(&self, pair: Pair<'_>, truncate: bool) -> Result<Vec<u32>> {
        self.tokenize_pair_capped(pair, truncate, None, None)
    }

    /// As [`tokenize_pair`](Self::tokenize_pair), with the document first cut to
    /// `max_document_tokens` tokens (Cohere's `max_tokens_per_doc`) and the pair held to
    /// `max_length` when that is below the model's limit (vLLM's
    /// `truncate_prompt_tokens`).
    pub fn tokenize_pair_capped(
        &self,
        pair: Pair<'_>,
        truncate: bool,
        max_document_tokens: Option<usize>,
        max_length: Option<usize>,
    ) -> Result<Vec<u32>> {
        let limit = self.limit(max_length);
        self.reranking()?.template.encode(
            &self.tokenizer,
            pair,
            limit,
            truncate,
            max_document_tokens,
        )
    }

    /// `l_yes - l_no` for a pooled hidden state from [`embed_ids`](Self::embed_ids) of
    /// a tokenised pair; [`crate::rerank::sigmoid`] turns it into the relevance score.
    pub fn logit(&self, hidden: &[f32]) -> Result<f32> {
        Ok(self.reranking()?.head.logit(hidden)?)
    }

    /// Tokenises and scores `pairs` (all checked before any compute), in order: each
    /// pair's `l_yes - l_no` with its token count.
    pub fn rerank(&self, pairs: &[Pair<'_>], truncate: bool) -> Result<Vec<(f32, usize)>> {
        let ids = pairs
            .iter()
            .map(|p| self.tokenize_pair(*p, truncate))
            .collect::<Result<Vec<_>>>()?;
        let hidden = self.embed_ids(&ids)?;
        hidden
            .iter()
            .zip(&ids)
            .map(|(h, ids)| Ok((self.logit(h)?, ids.len())))
            .collect()
    }

    pub fn model(&self) -> &Backend {
        &self.model
    }

    pub fn tokenizer(&self) -> &Qwen3Tokenizer {
        &self.tokenizer
    }

    pub fn hidden_size(&self) -> usize {
        self.model.config().hidden_size
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The length limit for a request with its own `cap` (`max_tokens`,
    /// `truncate_prompt_tokens`): the lower of the two.
    fn limit(&self, cap: Option<usize>) -> usize {
        cap.map_or(self.max_length, |c| c.min(self.max_length))
    }

    /// Token ids the model will see for `input`, EOS included.
    pub fn tokenize(&self, input: Input<'_>, truncate: impl Into<Truncate>) -> Result<Vec<u32>> {
        self.tokenize_capped(input, truncate.into(), None)
    }

    /// As `tokenize`, held to `cap` tokens (EOS included) when that is below the
    /// model's limit: a client's own per-input budget (Cohere's `max_tokens`).
    pub fn tokenize_capped(
        &self,
        input: Input<'_>,
        truncate: Truncate,
        cap: Option<usize>,
    ) -> Result<Vec<u32>> {
        let max = self.limit(cap);
        match input.instruction {
            Some(task) if !input.text.is_empty() => {
                let keep = query_prefix(task).len();
                let prompt = format_query(task, input.text);
                self.tokenizer.encode_keeping(&prompt, keep, max, truncate)
            }
            _ => self.tokenizer.encode(input.text, max, truncate),
        }
    }

    /// Token ids given by a client instead of text (OpenAI's token-array input): checked
    /// against the vocabulary, ended with exactly one EOS (appended unless the client
    /// already ended with it) and held to the length limit like text.
    pub fn prepare_ids(&self, ids: Vec<u32>, truncate: impl Into<Truncate>) -> Result<Vec<u32>> {
        self.prepare_ids_capped(ids, truncate.into(), None)
    }

    /// As `prepare_ids`, held to `cap` tokens when that is below the model's limit.
    pub fn prepare_ids_capped(
        &self,
        mut ids: Vec<u32>,
        truncate: Truncate,
        cap: Option<usize>,
    ) -> Result<Vec<u32>> {
        if ids.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        let vocab = self.model.config().vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(EngineError::InvalidToken { id: bad, vocab });
        }
        let eos = self.tokenizer.eos_id();
        if ids.last() == Some(&eos) {
            ids.pop();
        }
        let max = self.limit(cap);
        let room = max.saturating_sub(1);
        if ids.len() > room {
            match truncate {
                Truncate::Refuse => {
                    return Err(EngineError::TooLong {
                        tokens: ids.len() + 1,
                        max,
                    })
                }
                Truncate::End => ids.truncate(room),
                Truncate::Start => {
                    ids.drain(..ids.len() - room);
                }
            }
        }
        ids.push(eos);
        Ok(ids)
    }

    pub fn check_dimensions(&self, dims: Option<usize>) -> Result<()> {
        dims.map_or(Ok(()), |d| check_dimensions(d, self.hidden_size()))
    }

    /// Raw pooled vectors for already-tokenised sequences, in order, split into forward
    /// passes of at most `max_batch_tokens` tokens and `MAX_BATCH_SEQUENCES` sequences.
    pub fn embed_ids<S: AsRef<[u32]>>(&self, seqs: &[S]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(seqs.len());
        let mut batch = PackedBatch::default();
        for seq in seqs {
            let seq = seq.as_ref();
            let full = batch.num_tokens() + seq.len() > self.max_batch_tokens
                || batch.num_seqs() == MAX_BATCH_SEQUENCES;
            if !batch.is_empty() && full {
                out.extend(self.model.embed(&batch)?);
                batch = PackedBatch::default();
            }
            batch.push(seq);
        }
        if !batch.is_empty() {
            out.extend(self.model.embed(&batch)?);
        }
        Ok(out)
    }

    /// Tokenises and embeds `inputs`; all inputs are checked before any compute.
    /// Returns each vector with its token count.
    pub fn embed(
        &self,
        inputs: &[Input<'_>],
        truncate: impl Into<Truncate>,
        out: OutputOptions,
    ) -> Result<Vec<(Vec<f32>, usize)>> {
        self.check_dimensions(out.dimensions)?;
        let truncate = truncate.into();
        let ids = inputs
            .iter()
            .map(|i| self.tokenize(*i, truncate))
            .collect::<Result<Vec<_>>>()?;
        let raw = self.embed_ids(&ids)?;
        raw.iter()
            .zip(&ids)
            .map(|(r, ids)| Ok((finish(r, out.dimensions, out.normalize)?, ids.len())))
            .collect()
    }
}
