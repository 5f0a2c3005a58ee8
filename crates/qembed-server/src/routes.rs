//! HTTP routes: OpenAI's embeddings and models, plus info, tokenize, health, ready and
//! metrics. Handlers only translate; the engine does the work.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use qembed_engine::{postprocess, Input};
use serde_json::json;

use crate::api::{self, EmbeddingData, EmbeddingResponse, EmbeddingValue, Inputs, Usage};
use crate::error::ApiError;
use crate::serve::{AppState, Loaded};

type AppResult<T> = Result<T, ApiError>;

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/info", get(info))
        .route("/tokenize", post(tokenize))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.args.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts, times and labels every response, and stamps it with colour and fingerprint
/// so a client or a load balancer can tell which instance answered.
async fn observe(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let in_flight = InFlight::enter(&state.metrics.in_flight);
    // Counted first, then stamped: drain sets its flag before it reads the gauge, so
    // a request stamped as arriving before the signal is one drain waits for.
    // The gauge is a relaxed atomic: the fence orders its increment before the flag's
    // load, as drain's fence orders the flag's store before its reads of the gauge.
    std::sync::atomic::fence(Ordering::SeqCst);
    req.extensions_mut()
        .insert(Arrival::new(state.draining.load(Ordering::SeqCst)));
    let mut resp = next.run(req).await;
    drop(in_flight);
    let m = &state.metrics;
    m.latency
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&state.color) {
        headers.insert("x-qembed-color", v);
    }
    if let Some(fp) = state.loaded.get().map(|l| l.fingerprint.as_str()) {
        if let Ok(v) = HeaderValue::from_str(fp) {
            headers.insert("x-qembed-fingerprint", v);
        }
    }
    resp
}

/// Whether a request arrived before the shutdown signal. Such a request is served to
/// the end even if draining starts while its body is still being read; only requests
/// that arrive after the signal are refused.
#[derive(Clone, Copy)]
struct Arrival {
    while_draining: bool,
}

impl Arrival {
    fn new(while_draining: bool) -> Self {
        Self { while_draining }
    }
}

/// Counts a request as in flight until dropped, including when the client disconnects
/// and axum drops the handler mid-way: drain waits on this gauge reaching zero.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = state.args.api_key.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => ApiError::unauthorized("Missing API key: send it as `Authorization: Bearer KEY`")
            .into_response(),
        Some(g) if !constant_time_eq(g.trim().as_bytes(), key.as_bytes()) => {
            ApiError::unauthorized("Incorrect API key provided").into_response()
        }
        Some(_) => next.run(req).await,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The loaded model, or 503 while loading or for a request that arrived while draining.
fn serving(state: &AppState, arrival: Arrival) -> AppResult<&Loaded> {
    if arrival.while_draining {
        return Err(ApiError::unavailable("The server is shutting down"));
    }
    state
        .loaded
        .get()
        .ok_or_else(|| ApiError::unavailable("The model is still loading"))
}

/// The request body, with axum's rejections (413 above the limit) in OpenAI's shape.
fn body(body: Result<Bytes, BytesRejection>) -> AppResult<Bytes> {
    body.map_err(|r| {
        let status = r.status();
        let err = ApiError::invalid(r.body_text(), None).with_status(status);
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            err.with_code("request_too_large")
        } else {
            err
        }
    })
}

/// Instruction for text inputs: the request's, else its named prompt, else the default.
fn instruction_for(
    state: &AppState,
    instruction: Option<String>,
    prompt_name: Option<String>,
) -> AppResult<Option<String>> {
    if let Some(name) = prompt_name {
        return match state.prompts.get(&name) {
            Some(text) if instruction.is_none() => Ok(Some(text.clone())),
            Some(_) => Err(ApiError::invalid(
                "Give either 'instruction' or 'prompt_name', not both",
                Some("prompt_name"),
            )),
            None => Err(ApiError::invalid(
                format!("Unknown prompt_name `{name}`"),
                Some("prompt_name"),
            )),
        };
    }
    Ok(instruction.or_else(|| state.args.default_instruction.clone()))
}

/// Validates and tokenises inputs on a blocking thread (tokenising 2048 texts is not
/// something to do on the async executor).
async fn prepare(
    loaded: &Loaded,
    input: Inputs,
    instruction: Option<String>,
    explicit_instruction: bool,
    truncate: bool,
) -> AppResult<Vec<Vec<u32>>> {
    let embedder = loaded.embedder.clone();
    let task = tokio::task::spawn_blocking(move || -> AppResult<Vec<Vec<u32>>> {
        match input {
            Inputs::Texts(texts) => texts
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    let input = Input {
                        text,
                        instruction: instruction.as_deref(),
                    };
                    embedder
                        .tokenize(input, truncate)
                        .map_err(|e| ApiError::from_engine(e, &format!("input[{i}]")))
                })
                .collect(),
            Inputs::Tokens(_) if explicit_instruction => Err(ApiError::invalid(
                "An instruction cannot be applied to token input: include the formatted prompt in the tokens",
                Some("instruction"),
            )),
            Inputs::Tokens(seqs) => seqs
                .into_iter()
                .enumerate()
                .map(|(i, ids)| {
                    embedder
                        .prepare_ids(ids, truncate)
                        .map_err(|e| ApiError::from_engine(e, &format!("input[{i}]")))
                })
                .collect(),
        }
    });
    task.await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
}

async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    raw: Result<Bytes, BytesRejection>,
) -> AppResult<Response> {
    let loaded = serving(&state, arrival)?;
    let slot = loaded.batcher.admit()?;
    let req = api::parse_embedding_request(&body(raw)?)?;
    let model = match req.model {
        Some(m) if !state.served_names.contains(&m) => return Err(ApiError::model_not_found(&m)),
        Some(m) => m,
        None => state.served_names[0].clone(),
    };
    if req.input.len() > state.args.max_client_batch_size {
        return Err(ApiError::invalid(
            format!(
                "'input' has {} items, more than the limit of {}",
                req.input.len(),
                state.args.max_client_batch_size
            ),
            Some("input"),
        ));
    }
    loaded
        .embedder
        .check_dimensions(req.dimensions)
        .map_err(|e| ApiError::from_engine(e, "dimensions"))?;
    let explicit = req.instruction.is_some() || req.prompt_name.is_some();
    let instruction = instruction_for(&state, req.instruction, req.prompt_name)?;
    let seqs = prepare(
        loaded,
        req.input,
        instruction,
        explicit,
        req.truncate.unwrap_or(false),
    )
    .await?;
    let prompt_tokens = seqs.iter().map(Vec::len).sum();
    let vectors = loaded.batcher.embed(&slot, seqs).await?;
    let mut data = Vec::with_capacity(vectors.len());
    for (index, raw) in vectors.iter().enumerate() {
        let v = postprocess::finish(raw, req.dimensions, true)
            .map_err(|e| ApiError::from_engine(e, "dimensions"))?;
        data.push(EmbeddingData {
            object: "embedding",
            index,
            embedding: EmbeddingValue::encode(v, req.encoding_format),
        });
    }
    Ok(Json(EmbeddingResponse {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
    .into_response())
}

fn model_card(state: &AppState, id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "object": "model",
        "created": state.created_unix,
        "owned_by": "qembed",
    })
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let data: Vec<_> = state
        .served_names
        .iter()
        .map(|n| model_card(&state, n))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> AppResult<Json<serde_json::Value>> {
    if state.served_names.contains(&id) {
        Ok(Json(model_card(&state, &id)))
    } else {
        Err(ApiError::model_not_found(&id))
    }
}

async fn info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let loaded = state.loaded.get();
    let cfg = loaded.map(|l| l.embedder.model().config());
    Json(json!({
        "color": state.color,
        "model_id": state.served_names[0],
        "served_model_names": state.served_names,
        "model_path": state.args.model_path,
        "model_dir": loaded.map(|l| l.model_dir.display().to_string()),
        "fingerprint": loaded.map(|l| l.fingerprint.as_str()),
        "dtype": loaded.map(|l| l.dtype.as_str()),
        "device": state.args.device.to_string(),
        "tensor_parallel": state.args.tensor_parallel,
        "hidden_size": cfg.map(|c| c.hidden_size),
        "max_dimensions": cfg.map(|c| c.hidden_size),
        "min_dimensions": postprocess::MIN_DIMENSIONS,
        "max_input_tokens": loaded.map(|l| l.embedder.max_length()),
        "max_batch_tokens": state.args.max_batch_tokens,
        "max_batch_requests": state.args.max_batch_requests,
        "max_concurrent_requests": state.args.max_concurrent_requests,
        "max_client_batch_size": state.args.max_client_batch_size,
        "default_instruction": state.args.default_instruction,
        "prompts": state.prompts,
        "ready": state.is_ready(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// The token ids the model would see for each input (instruction and EOS included).
async fn tokenize(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    raw: Result<Bytes, BytesRejection>,
) -> AppResult<Json<serde_json::Value>> {
    let loaded = serving(&state, arrival)?;
    let obj = api::parse_json_object(&body(raw)?)?;
    let input = api::parse_input(obj.get("input"))?;
    if matches!(input, Inputs::Tokens(_)) {
        return Err(ApiError::invalid(
            "'input' must be text for /tokenize",
            Some("input"),
        ));
    }
    if input.len() > state.args.max_client_batch_size {
        return Err(ApiError::invalid(
            "'input' has too many items",
            Some("input"),
        ));
    }
    let instruction = instruction_for(
        &state,
        api::opt_string(&obj, "instruction")?,
        api::opt_string(&obj, "prompt_name")?,
    )?;
    let seqs = prepare(loaded, input, instruction, false, true).await?;
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
async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.loaded.get() {
        Some(l) if !l.embedder.model().is_healthy() => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": "tensor-parallel group out of service"})),
        )
            .into_response(),
        _ => Json(json!({"status": "ok"})).into_response(),
    }
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
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

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(l) = state.loaded.get() {
        state.metrics.queue_depth.set(l.batcher.in_flight() as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn unknown_route(req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
