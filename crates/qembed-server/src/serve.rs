//! `qembed serve`: start-up (bind, load, warm, ready), and graceful drain on SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use qembed_engine::{
    fingerprint, resolve_model, Batcher, BatcherConfig, DTypeChoice, DeviceSpec, Embedder, Input,
    LoadOptions,
};

use crate::metrics::Metrics;
use crate::routes;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Checkpoint directory, or a Hugging Face hub id (`Qwen/Qwen3-Embedding-0.6B[@rev]`).
    #[arg(long, env = "QEMBED_MODEL_PATH")]
    pub model_path: String,
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
    /// Compute dtype: auto (f32 on CPU, f16 on CUDA), f32, f16, bf16.
    #[arg(long, env = "QEMBED_DTYPE", default_value = "auto")]
    pub dtype: DTypeChoice,
    /// Where the model runs: cpu, cuda or cuda:N (needs a build with `--features cuda`).
    #[arg(long, env = "QEMBED_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Split the model over N ranks: N consecutive GPUs from the one `--device` names,
    /// joined by NCCL. On CPU the ranks share the cores: to check a sharding, not for speed.
    #[arg(long, env = "QEMBED_TENSOR_PARALLEL", default_value_t = 1)]
    pub tensor_parallel: usize,
    /// Most tokens in one forward pass.
    #[arg(long, env = "QEMBED_MAX_BATCH_TOKENS", default_value_t = 16_384)]
    pub max_batch_tokens: usize,
    /// Most requests combined into one forward pass.
    #[arg(long, env = "QEMBED_MAX_BATCH_REQUESTS", default_value_t = 64)]
    pub max_batch_requests: usize,
    /// Requests admitted at once (queued or computing); beyond it, 429.
    #[arg(long, env = "QEMBED_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Most inputs in one request.
    #[arg(long, env = "QEMBED_MAX_CLIENT_BATCH_SIZE", default_value_t = 2048)]
    pub max_client_batch_size: usize,
    /// Token limit per input, end-of-text token included (default: the model's, at most 32768).
    #[arg(long, env = "QEMBED_MAX_INPUT_TOKENS")]
    pub max_input_tokens: Option<usize>,
    /// How long an idle worker waits to fill a batch.
    #[arg(long, env = "QEMBED_BATCH_WAIT_MS", default_value_t = 2)]
    pub batch_wait_ms: u64,
    /// Largest request body in bytes; larger gets 413.
    #[arg(long, env = "QEMBED_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
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

/// What exists once the model is loaded and warmed.
pub struct Loaded {
    pub embedder: Arc<Embedder>,
    pub batcher: Batcher,
    pub fingerprint: String,
    pub dtype: String,
    pub model_dir: std::path::PathBuf,
}

pub struct AppState {
    pub args: ServeArgs,
    pub served_names: Vec<String>,
    pub prompts: HashMap<String, String>,
    pub color: String,
    pub loaded: OnceLock<Loaded>,
    pub draining: AtomicBool,
    pub metrics: Arc<Metrics>,
    /// Unix time of start-up, the `created` of /v1/models entries.
    pub created_unix: u64,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.loaded.get().is_some() && !self.draining.load(Ordering::SeqCst)
    }
}

/// The name a model is served under when `--served-model-name` is not given.
fn default_served_name(model_path: &str) -> String {
    let trimmed = model_path.trim_end_matches('/');
    if std::path::Path::new(trimmed).is_dir() {
        std::path::Path::new(trimmed)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| trimmed.to_string())
    } else {
        trimmed.split('@').next().unwrap_or(trimmed).to_string()
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<()> {
    if args.max_batch_tokens == 0
        || args.max_batch_requests == 0
        || args.max_concurrent_requests == 0
    {
        bail!("--max-batch-tokens, --max-batch-requests and --max-concurrent-requests must be positive");
    }
    let served_names = if args.served_model_names.is_empty() {
        vec![default_served_name(&args.model_path)]
    } else {
        args.served_model_names.clone()
    };
    let state = Arc::new(AppState {
        served_names,
        prompts: args.prompts.iter().cloned().collect(),
        color: args.color.clone().unwrap_or_default(),
        loaded: OnceLock::new(),
        draining: AtomicBool::new(false),
        metrics: Arc::new(Metrics::new().context("registering metrics")?),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        args,
    });

    // Listen first: /health answers and /ready says 503 while the model loads.
    let addr: SocketAddr = format!("{}:{}", state.args.host, state.args.port)
        .parse()
        .with_context(|| format!("bad listen address {}:{}", state.args.host, state.args.port))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "listening");
    eprintln!("qembed listening on {local}");

    let loader = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || load_and_warm(&state))
    };
    let app = routes::router(state.clone());
    let shutdown_state = state.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        drain(shutdown_state).await;
    });
    let server = tokio::spawn(async move { server.await });

    match loader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => bail!("model loading task failed: {e}"),
    }
    server.await.context("server task")?.context("serving")?;
    tracing::info!("drained and stopped");
    Ok(())
}

fn load_and_warm(state: &AppState) -> Result<()> {
    let args = &state.args;
    let dir = resolve_model(&args.model_path)?;
    let opts = LoadOptions {
        device: args.device,
        tensor_parallel: args.tensor_parallel,
        dtype: args.dtype,
        max_length: args.max_input_tokens,
        max_batch_tokens: args.max_batch_tokens,
    };
    let started = Instant::now();
    let embedder = Arc::new(
        Embedder::load(&dir, &opts)
            .with_context(|| format!("loading model from {}", dir.display()))?,
    );
    let fingerprint = fingerprint(&dir)?;
    let dtype = format!("{:?}", embedder.model().dtype()).to_lowercase();
    // Warm-up: one real forward pass before turning ready.
    let warm = embedder.tokenize(
        Input {
            text: "warm-up",
            instruction: None,
        },
        true,
    )?;
    embedder.embed_ids(&[warm])?;
    let batcher = Batcher::spawn(
        embedder.clone(),
        BatcherConfig {
            max_batch_tokens: args.max_batch_tokens,
            max_batch_requests: args.max_batch_requests,
            max_concurrent_requests: args.max_concurrent_requests,
            batch_wait: Duration::from_millis(args.batch_wait_ms),
        },
        state.metrics.clone(),
    )
    .context("starting the embedding worker")?;
    state
        .metrics
        .model_info
        .with_label_values(&[&state.color, &state.served_names[0], &fingerprint, &dtype])
        .set(1);
    tracing::info!(
        model = %dir.display(), %fingerprint, %dtype, secs = started.elapsed().as_secs_f64(),
        "model loaded and warmed; ready"
    );
    let _ = state.loaded.set(Loaded {
        embedder,
        batcher,
        fingerprint,
        dtype,
        model_dir: dir,
    });
    state.metrics.ready.set(1);
    Ok(())
}

/// Resolves when the server should stop accepting connections: after SIGTERM/SIGINT,
/// once in-flight requests have finished or the shutdown timeout has passed.
async fn drain(state: Arc<AppState>) {
    wait_for_signal().await;
    state.draining.store(true, Ordering::SeqCst);
    // Pairs with the fence in the observe middleware (the in-flight gauge is relaxed).
    std::sync::atomic::fence(Ordering::SeqCst);
    state.metrics.ready.set(0);
    tracing::info!("signal received: not ready, draining in-flight requests");
    let deadline = Instant::now() + Duration::from_secs(state.args.shutdown_timeout);
    while state.metrics.in_flight.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = state.metrics.in_flight.get();
    if left > 0 {
        tracing::warn!(
            left,
            "shutdown timeout reached with requests still in flight"
        );
        // Graceful shutdown would wait on them forever; the timeout is the promise.
        std::process::exit(1);
    }
    // Nothing in flight: idle keep-alive connections get a moment to close, no more.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        std::process::exit(0);
    });
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
