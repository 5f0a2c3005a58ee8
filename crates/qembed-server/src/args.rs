//! The model flags every subcommand shares, declared once so that `embed` and `serve`
//! cannot drift apart in names, defaults or environment variables.

use clap::Args;
use qembed_engine::{DTypeChoice, DeviceSpec, LoadOptions, Quantize, Task};

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Checkpoint directory, or a Hugging Face hub id (`Qwen/Qwen3-Embedding-0.6B[@rev]`).
    #[arg(long, env = "QEMBED_MODEL_PATH")]
    pub model_path: String,
    /// Compute dtype: auto (f32 on CPU, f16 on CUDA), f32, f16, bf16.
    #[arg(long, env = "QEMBED_DTYPE", default_value = "auto")]
    pub dtype: DTypeChoice,
    /// Quantize the linear layers' weights at load: `none`, or `int8` (symmetric per
    /// output channel; activations per token at run time; CPU only). With `int8`,
    /// `--dtype auto` loads bf16.
    #[arg(long, env = "QEMBED_QUANTIZE", default_value = "none")]
    pub quantize: Quantize,
    /// Where the model runs: cpu, cuda or cuda:N (needs a build with `--features cuda`).
    #[arg(long, env = "QEMBED_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Split the model over N ranks: N consecutive GPUs from the one `--device` names,
    /// joined by NCCL. On CPU the ranks share the cores: to check a sharding, not for speed.
    #[arg(long, env = "QEMBED_TENSOR_PARALLEL", default_value_t = 1)]
    pub tensor_parallel: usize,
    /// Token limit per input, end-of-text token included; for a reranker, per pair with
    /// its template (default: the model's, at most 32768 for embeddings and 8192 for
    /// rerankers).
    #[arg(long, alias = "max-length", env = "QEMBED_MAX_INPUT_TOKENS")]
    pub max_input_tokens: Option<usize>,
    /// Most tokens in one forward pass.
    #[arg(long, env = "QEMBED_MAX_BATCH_TOKENS", default_value_t = 16_384)]
    pub max_batch_tokens: usize,
}

impl ModelArgs {
    /// What the engine needs to load the model these flags name.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            device: self.device,
            tensor_parallel: self.tensor_parallel,
            dtype: self.dtype,
            quantize: self.quantize,
            max_length: self.max_input_tokens,
            max_batch_tokens: self.max_batch_tokens,
            ..LoadOptions::default()
        }
    }
}

/// `qembed serve`: the model flags plus the HTTP server's.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// What the checkpoint is served for: `embed` (vectors, /v1/embeddings) or `rerank`
    /// (Qwen3-Reranker scores, /v1/rerank and friends). Both kinds of checkpoint are
    /// `Qwen3ForCausalLM`, so the config cannot tell.
    #[arg(long, env = "QEMBED_TASK", default_value = "embed")]
    pub task: Task,
    #[arg(long, env = "QEMBED_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the address is logged).
    #[arg(long, env = "QEMBED_PORT", default_value_t = 30000)]
    pub port: u16,
    /// Deployment colour, reported in /info, headers and metrics.
    #[arg(long, env = "QEMBED_COLOR", value_parser = ["blue", "green"])]
    pub color: Option<String>,
    /// Name clients use in `model` (repeatable; default: the model directory's name).
    #[arg(
        long = "served-model-name",
        env = "QEMBED_SERVED_MODEL_NAME",
        value_delimiter = ','
    )]
    pub served_model_names: Vec<String>,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long, env = "QEMBED_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Instruction applied to text inputs whose request names none.
    #[arg(long, env = "QEMBED_DEFAULT_INSTRUCTION")]
    pub default_instruction: Option<String>,
    /// Named instruction, `NAME=TEXT`, selected by a request's `prompt_name` (repeatable).
    #[arg(long = "prompt", env = "QEMBED_PROMPT", value_parser = parse_prompt)]
    pub prompts: Vec<(String, String)>,
    /// Most requests combined into one forward pass.
    #[arg(long, env = "QEMBED_MAX_BATCH_REQUESTS", default_value_t = 64)]
    pub max_batch_requests: usize,
    /// Requests admitted at once (queued or computing); beyond it, 429.
    #[arg(long, env = "QEMBED_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Most inputs in one request.
    #[arg(long, env = "QEMBED_MAX_CLIENT_BATCH_SIZE", default_value_t = 2048)]
    pub max_client_batch_size: usize,
    /// Most tokens queued or computing at once, over all requests (default: 64 batches of
    /// --max-batch-tokens). Past it, 429; a request larger than it alone, 413.
    #[arg(long, env = "QEMBED_MAX_QUEUED_TOKENS")]
    pub max_queued_tokens: Option<usize>,
    /// How long an idle worker waits to fill a batch.
    #[arg(long, env = "QEMBED_BATCH_WAIT_MS", default_value_t = 2)]
    pub batch_wait_ms: u64,
    /// Largest request body in bytes; larger gets 413.
    #[arg(long, env = "QEMBED_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a client has to send a request's whole body once its headers arrived;
    /// slower gets 408.
    #[arg(long, env = "QEMBED_BODY_READ_TIMEOUT", default_value_t = 30)]
    pub body_read_timeout: u64,
    /// Seconds from the first byte of a request to its complete head; slower clients are
    /// disconnected (slow-loris).
    #[arg(long, env = "QEMBED_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Seconds an idle keep-alive connection stays open. Keep it above the upstream
    /// keep-alive of the proxy in front (nginx: 60 s), so the proxy closes first.
    #[arg(long, env = "QEMBED_KEEP_ALIVE_TIMEOUT", default_value_t = 75)]
    pub keep_alive_timeout: u64,
    /// Most open client connections (default: the file limit less 64). At the cap the
    /// connection idle longest is closed to make room.
    #[arg(long, env = "QEMBED_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds without a request after which memory freed by a burst is returned to the
    /// OS (0: never; the process then keeps its peak).
    #[arg(long, env = "QEMBED_MEMORY_TRIM_AFTER", default_value_t = 2)]
    pub memory_trim_after: u64,
    /// Seconds to let in-flight requests finish after SIGTERM before exiting anyway.
    #[arg(long, env = "QEMBED_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
}

fn parse_prompt(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, text)) if !name.is_empty() => Ok((name.to_string(), text.to_string())),
        _ => Err(format!("expected NAME=TEXT, got `{s}`")),
    }
}

/// The command line, for the binary and for tests that build a server in-process.
#[derive(clap::Parser)]
#[command(
    name = "qembed",
    version,
    about = "Qwen3-Embedding and Qwen3-Reranker inference"
)]
pub struct Cli {
    /// Log as JSON lines instead of text (to stderr).
    #[arg(long, global = true, env = "QEMBED_JSON_LOGS")]
    pub json_logs: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Embed JSON Lines from stdin or a file; one JSON line out per input, in order.
    Embed(crate::embed_cmd::EmbedArgs),
    /// Score JSON Lines of documents against `--query` with a Qwen3-Reranker; one JSON
    /// line out per document, in order.
    Rerank(crate::rerank_cmd::RerankArgs),
    /// Run the repository's fixture checkpoints on a device and dtype against
    /// transformers' reference outputs; one row per fixture, non-zero exit on any miss.
    Check(crate::check_cmd::CheckArgs),
    /// Forward-pass tokens/s of a Qwen3-Embedding shape (0.6b, 4b, 8b) with random
    /// weights: nothing to download, the real loader and kernels.
    Bench(crate::bench_cmd::BenchArgs),
    /// Serve embeddings (OpenAI) or rerank scores (Cohere, Jina, TEI, vLLM) over HTTP.
    Serve(ServeArgs),
}

impl ServeArgs {
    /// Parses `qembed serve ARGS...` (without the program name and subcommand), as the
    /// binary would: for tests and embedders of the library.
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        let argv = ["qembed".into(), "serve".into()]
            .into_iter()
            .chain(args.into_iter().map(Into::into));
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(args) => Ok(args),
            _ => Err(clap::Error::raw(
                clap::error::ErrorKind::InvalidSubcommand,
                "expected the serve subcommand",
            )),
        }
    }
}
