//! Qwen3-Embedding and Qwen3-Reranker in candle: config, weights, a padding-free
//! batched forward pass that returns each sequence's last-token hidden state, and the
//! reranker's yes/no score head on top of it.
//!
//! This crate knows nothing of HTTP, queues or tokenizers: it maps packed token ids to
//! vectors, and everything else lives in `qembed-engine`.

mod config;
mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod head;
mod memory;
mod model;
mod packed;
mod quantize;
mod tp;
mod weights;

pub use candle_core::{DType, Device, Tensor};
pub use config::Qwen3Config;
#[cfg(feature = "mkl")]
pub use cpu::gemm::mkl;
pub use cpu::gemm::{cpu_kernels, BenchLinear, CpuKernelInfo};
pub use error::{ModelError, Result};
pub use head::ScoreHead;
pub use memory::{release_freed_memory, retain_freed_memory};
pub use model::Qwen3Embedding;
pub use packed::PackedBatch;
pub use quantize::Quantize;
pub use tp::{AllReduce, LocalGroup};
pub use weights::{weight_files, Weights};
