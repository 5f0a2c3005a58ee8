//! `qembed serve`: start-up (bind, load, warm, ready), and graceful drain on SIGTERM.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qembed_engine::{
    fingerprint, resolve_model, Batcher, BatcherConfig, Embedder, Input, LoadOptions, Pair, Task,
};

use crate::app::app;
use crate::args::ServeArgs;
use crate::listen::{self, Limits};
use crate::state::{AppState, Loaded};

pub fn run(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<()> {
    if args.model.max_batch_tokens == 0
        || args.max_batch_requests == 0
        || args.max_concurrent_requests == 0
        || args.max_queued_tokens == Some(0)
        || args.max_connections == Some(0)
        || args.header_read_timeout == 0
        || args.keep_alive_timeout == 0
    {
        bail!("--max-batch-tokens, --max-batch-requests, --max-concurrent-requests, --max-queued-tokens, --max-connections and the timeouts must be positive");
    }
    let state = Arc::new(AppState::new(args).context("registering metrics")?);

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
    let app = app(state.clone());
    let shutdown_state = state.clone();
    let limits = Limits {
        header_read_timeout: Duration::from_secs(state.args.header_read_timeout),
        keep_alive_timeout: Duration::from_secs(state.args.keep_alive_timeout),
        max_connections: state
            .args
            .max_connections
            .unwrap_or_else(listen::default_max_connections),
    };
    tracing::info!(?limits, "connection limits");
    let server = listen::serve(listener, app, limits, async move {
        drain(shutdown_state).await;
    });
    let server = tokio::spawn(server);
    if state.args.memory_trim_after > 0 {
        tokio::spawn(trim_when_idle(state.clone()));
    }

    match loader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => bail!("model loading task failed: {e}"),
    }
    server.await.context("server task")?.context("serving")?;
    tracing::info!("drained and stopped");
    Ok(())
}

/// Loads the model the flags name, runs one forward pass, starts the batcher and marks
/// the state ready. Blocking (seconds to minutes): run it off the async executor.
pub fn load_and_warm(state: &AppState) -> Result<()> {
    let args = &state.args;
    let dir = resolve_model(&args.model.model_path)?;
    let opts = LoadOptions {
        task: args.task,
        ..args.model.load_options()
    };
    let started = Instant::now();
    let embedder = Arc::new(
        Embedder::load(&dir, &opts)
            .with_context(|| format!("loading model from {}", dir.display()))?,
    );
    let fingerprint = fingerprint(&dir, args.task, args.model.quantize)?;
    let dtype = format!("{:?}", embedder.model().dtype()).to_lowercase();
    // Warm-up: one real forward pass (and score) before turning ready.
    match args.task {
        Task::Embed => {
            let input = Input {
                text: "warm-up",
                instruction: None,
            };
            embedder.embed_ids(&[embedder.tokenize(input, true)?])?;
        }
        Task::Rerank => {
            let pair = Pair {
                query: "warm-up",
                document: "warm-up",
                instruction: None,
            };
            embedder.rerank(&[pair], true)?;
        }
    }
    let batcher = Batcher::spawn(
        embedder.clone(),
        BatcherConfig {
            max_batch_tokens: args.model.max_batch_tokens,
            max_batch_requests: args.max_batch_requests,
            max_concurrent_requests: args.max_concurrent_requests,
            max_queued_tokens: args.max_queued_tokens.unwrap_or_else(|| {
                BatcherConfig::default_max_queued_tokens(args.model.max_batch_tokens)
            }),
            batch_wait: Duration::from_millis(args.batch_wait_ms),
        },
        state.metrics.clone(),
    )
    .context("starting the embedding worker")?;
    state
        .metrics
        .model_info
        .with_label_values(&[
            &state.color,
            &state.served_names[0],
            &fingerprint,
            &dtype,
            &args.task.to_string(),
        ])
        .set(1);
    // The CPU GEMM kernel chosen at load (`none` off the CPU): which instruction set
    // the numbers a deployment sees come from.
    let cpu_kernel = embedder.model().cpu_kernel().unwrap_or("none");
    let quantize = embedder.model().quantize();
    tracing::info!(
        model = %dir.display(), task = %args.task, %fingerprint, %dtype, %quantize, cpu_kernel, secs = started.elapsed().as_secs_f64(),
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

/// Returns freed memory to the OS once no request has arrived or run for
/// `--memory-trim-after` seconds after some work: a burst's peak (hostile bodies, a
/// large batch) is not held for good, and a busy server keeps its warm pages.
async fn trim_when_idle(state: Arc<AppState>) {
    let quiet = Duration::from_secs(state.args.memory_trim_after);
    let tick = (quiet / 4).max(Duration::from_millis(250));
    let mut trimmed_at = state.answered.load(Ordering::Relaxed);
    let (mut last_seen, mut since) = (trimmed_at, Instant::now());
    loop {
        tokio::time::sleep(tick).await;
        let seen = state.answered.load(Ordering::Relaxed);
        if seen != last_seen || state.metrics.in_flight.get() > 0 {
            (last_seen, since) = (seen, Instant::now());
            continue;
        }
        if seen != trimmed_at && since.elapsed() >= quiet {
            trimmed_at = seen;
            let _ = tokio::task::spawn_blocking(qembed_model::release_freed_memory).await;
            tracing::debug!("idle: freed memory returned to the OS");
        }
    }
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
    // Requests whose bodies are still arriving are not waited for: a client that stalls
    // mid-body must not hold the shutdown (a body that completes joins the count).
    let waiting = || {
        let reading = state.reading_bodies.load(Ordering::SeqCst) as i64;
        (state.metrics.in_flight.get() - reading).max(0)
    };
    while waiting() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = waiting();
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
