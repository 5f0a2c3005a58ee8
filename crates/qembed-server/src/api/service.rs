//! qembed's own routes: what is served (/info), the ids the model sees (/tokenize),
//! probes for orchestrators (/health, /ready) and Prometheus metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use qembed_engine::{postprocess, Task, Truncate};
use serde::Deserialize;
use serde_json::json;

use super::json::{parse, Inputs};
use super::{admit, instruction_for, prepare, AppResult, Prepare};
use crate::error::ApiError;
use crate::middleware::Arrival;
use crate::state::AppState;

pub async fn info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let loaded = state.loaded.get();
    let cfg = loaded.map(|l| l.embedder.model().config());
    Json(json!({
        "color": state.color,
        "model_id": state.served_names[0],
        "served_model_names": state.served_names,
        "model_path": state.args.model.model_path,
        "model_dir": loaded.map(|l| l.model_dir.display().to_string()),
        "fingerprint": loaded.map(|l| l.fingerprint.as_str()),
        "dtype": loaded.map(|l| l.dtype.as_str()),
        "device": state.args.model.device.to_string(),
        "tensor_parallel": state.args.model.tensor_parallel,
        "hidden_size": cfg.map(|c| c.hidden_size),
        "max_dimensions": cfg.map(|c| c.hidden_size),
        "min_dimensions": postprocess::MIN_DIMENSIONS,
        "max_input_tokens": loaded.map(|l| l.embedder.max_length()),
        "max_batch_tokens": state.args.model.max_batch_tokens,
        "max_batch_requests": state.args.max_batch_requests,
        "max_concurrent_requests": state.args.max_concurrent_requests,
        "max_client_batch_size": state.args.max_client_batch_size,
        "default_instruction": state.args.default_instruction,
        "prompts": state.prompts,
        "ready": state.is_ready(),
        "task": state.args.task.to_string(),
        "cpu_kernel": loaded.and_then(|l| l.embedder.model().cpu_kernel()),
        "quantize": state.args.model.quantize.to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        // text-embeddings-inference's names for the same facts, for its clients.
        "model_sha": null,
        "model_dtype": loaded.map(|l| l.dtype.as_str()),
        "model_type": tei_model_type(state.args.task),
        "max_input_length": loaded.map(|l| l.embedder.max_length()),
        "auto_truncate": false,
    }))
}

/// TEI's `model_type`: the pooling of an embedding model, the labels of a reranker.
fn tei_model_type(task: Task) -> serde_json::Value {
    match task {
        Task::Embed => json!({"embedding": {"pooling": "last_token"}}),
        Task::Rerank => json!({"reranker": {}}),
    }
}

/// A `/tokenize` body.
#[derive(Deserialize)]
struct TokenizeRequest {
    input: Option<Inputs>,
    instruction: Option<String>,
    prompt_name: Option<String>,
}

/// The token ids the model would see for each input (instruction and EOS included).
/// Admitted like an embedding request: tokenising is work, and its body is bounded.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    request: Request,
) -> AppResult<Json<serde_json::Value>> {
    let a = admit(
        &state,
        arrival,
        request,
        Task::Embed,
        parse::<TokenizeRequest>,
    )
    .await?;
    let (loaded, req) = (a.loaded, a.body);
    let input = req
        .input
        .ok_or_else(|| ApiError::invalid("'input' is a required property", Some("input")))?;
    if matches!(input, Inputs::Tokens(_)) {
        return Err(ApiError::invalid(
            "'input' must be text for /tokenize",
            Some("input"),
        ));
    }
    let instruction = instruction_for(&state, req.instruction, req.prompt_name)?;
    let p = Prepare {
        input,
        instruction,
        explicit_instruction: false,
        truncate: Truncate::End,
        cap: None,
    };
    let seqs = prepare(loaded, p).await?;
    let data: Vec<_> = seqs
        .iter()
        .enumerate()
        .map(|(i, ids)| json!({"index": i, "tokens": ids, "count": ids.len()}))
        .collect();
    Ok(Json(
        json!({"object": "list", "data": data, "model": state.served_names[0]}),
    ))
}

/// Liveness: ok while the process can serve, 503 once its model backend is out of
/// service for good (a tensor-parallel group whose rank failed), so it gets restarted.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.loaded.get() {
        Some(l) if !l.embedder.model().is_healthy() => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": "tensor-parallel group out of service"})),
        )
            .into_response(),
        _ => Json(json!({"status": "ok"})).into_response(),
    }
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let status = if state.draining.load(Ordering::SeqCst) {
        "draining"
    } else if state.loaded.get().is_none() {
        "loading"
    } else {
        "ready"
    };
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"status": status, "color": state.color}))).into_response()
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // GPU memory only once the model is on its GPUs (asking the driver earlier would
    // open a context of its own); resident memory always.
    let mut gpus = Vec::new();
    if let Some(l) = state.loaded.get() {
        state.metrics.queue_depth.set(l.batcher.in_flight() as i64);
        state
            .metrics
            .queued_tokens
            .set(l.batcher.queued_tokens() as i64);
        let model = &state.args.model;
        gpus = model.device.gpu_memory(model.tensor_parallel);
    }
    state.metrics.observe_memory(&gpus);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
