use std::path::PathBuf;

/// Everything that can go wrong between a checkpoint on disk and a pooled vector.
///
/// Variants carry the file and tensor names so that an operator pointed at a broken
/// checkpoint learns what to fix without reading our source.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("invalid weights index {path}: {message}")]
    Index { path: PathBuf, message: String },
    #[error("no weights in {dir}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights { dir: PathBuf },
    #[error("cannot open safetensors file {path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor `{name}` not found in {files} (looked for `{name}` and `model.{name}`)")]
    MissingTensor { name: String, files: String },
    #[error("tensor `{name}` in {file} has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error(
        "tensor `{name}` in {file} is stored as {dtype}; only f32, f16 and bf16 are supported"
    )]
    StorageDType {
        name: String,
        file: PathBuf,
        dtype: String,
    },
    /// The CPU GEMM kernel asked for (`QEMBED_CPU_KERNEL`) cannot run here.
    #[error("CPU kernel: {0}")]
    CpuKernel(String),
    #[error("{dir} has no output projection for a reranker head: neither `lm_head.weight` nor tied embeddings (`tie_word_embeddings` in config.json)")]
    NoScoreHead { dir: PathBuf },
    #[error("token id {id} of `{token}` is outside the model's vocabulary of {vocab}")]
    HeadToken {
        token: String,
        id: u32,
        vocab: usize,
    },
    #[error("tensor parallelism: {0}")]
    TensorParallel(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
