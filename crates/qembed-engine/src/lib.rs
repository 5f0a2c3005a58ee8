//! The seam between HTTP and tensors: tokenisation with Qwen3-Embedding's instruction
//! format and EOS rule and Qwen3-Reranker's template, truncation, Matryoshka dimensions
//! and normalisation, the reranker's score, and model resolution (local directory or
//! hub id). Testable without a server.

mod backend;
pub mod batcher;
mod embedder;
mod error;
mod fingerprint;
pub mod parity;
pub mod postprocess;
pub mod quantize;
pub mod rerank;
mod source;
mod tokenize;

pub use backend::{Backend, DeviceSpec, GpuMemory, RankGroup};
pub use batcher::{Admission, BatchObserver, BatchStats, Batcher, BatcherConfig, SubmitError};
pub use embedder::{
    DTypeChoice, Embedder, Input, LoadOptions, OutputOptions, Task, MAX_BATCH_SEQUENCES,
    MAX_LENGTH_CAP,
};
pub use error::{EngineError, Result};
pub use fingerprint::fingerprint;
pub use qembed_model::{DType, Device, Quantize};
pub use rerank::Pair;
pub use source::{resolve_model, resolve_model_with, HubSettings, ProgressMode};
pub use tokenize::{
    format_query, query_prefix, Qwen3Tokenizer, Truncate, DEFAULT_QUERY_INSTRUCTION,
};
