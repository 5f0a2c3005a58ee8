//! The API families the server speaks, one module each (OpenAI embeddings; rerank in
//! Jina/Cohere v1, Cohere v2, TEI and vLLM shapes, with their shared core in `rerank`;
//! qembed's own service routes), and what their handlers share: the 503 gate, body
//! errors, instruction choice and tokenisation off the executor.

pub mod cohere;
pub mod jina;
pub mod json;
pub mod openai;
pub mod rerank;
pub mod service;
pub mod tei;
pub mod vllm;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::StatusCode;
use http_body_util::BodyExt;
use qembed_engine::{postprocess, Admission, EngineError, Input, Task, Truncate};

use crate::error::ApiError;
use crate::middleware::Arrival;
use crate::state::{AppState, Loaded};
use json::Inputs;

pub type AppResult<T> = Result<T, ApiError>;

/// The loaded model, or 503 while loading or for a request that arrived while draining.
pub fn serving(state: &AppState, arrival: Arrival) -> AppResult<&Loaded> {
    if arrival.while_draining {
        return Err(ApiError::unavailable("The server is shutting down"));
    }
    state
        .loaded
        .get()
        .ok_or_else(|| ApiError::unavailable("The model is still loading"))
}

/// Ok if the loaded model serves `task`; a 400 naming `--task` otherwise.
pub fn serves(loaded: &Loaded, task: Task) -> AppResult<()> {
    match loaded.embedder.task() {
        t if t == task => Ok(()),
        loaded_task => Err(ApiError::wrong_task(&EngineError::WrongTask {
            wanted: task,
            loaded: loaded_task,
        })),
    }
}

/// A request let in: the loaded model, the request's slot in the queue, its body.
pub struct Admitted<'a, T> {
    pub loaded: &'a Loaded,
    pub slot: Admission,
    pub body: T,
}

/// The gates every model route passes, cheapest first: 503 while loading or draining,
/// 400 on a server of the other task, 429 past the admission limit; only then is the
/// body read and handed to `parse_body` with the item limit of a list field.
pub async fn admit<'a, T>(
    state: &'a AppState,
    arrival: Arrival,
    request: Request,
    task: Task,
    parse_body: impl FnOnce(&[u8], usize) -> AppResult<T>,
) -> AppResult<Admitted<'a, T>> {
    let loaded = serving(state, arrival)?;
    serves(loaded, task)?;
    let slot = loaded.batcher.admit()?;
    let bytes = read_body(state, request.into_body()).await?;
    let body = parse_body(&bytes, state.args.max_client_batch_size)?;
    Ok(Admitted { loaded, slot, body })
}

/// A request's output size (Matryoshka), checked against the model: 32..=hidden.
/// `param` names the field in the error (`dimensions`, `output_dimension`).
pub fn dimensions(
    loaded: &Loaded,
    requested: Option<u64>,
    param: &str,
) -> AppResult<Option<usize>> {
    let dims = requested.map(|d| usize::try_from(d).unwrap_or(usize::MAX));
    loaded
        .embedder
        .check_dimensions(dims)
        .map_err(|e| ApiError::from_engine(e, param))?;
    Ok(dims)
}

/// Reads a request body, called only once the request holds its admission slot (so a
/// flood of bodies is refused before any is buffered): at most `--max-body-bytes`
/// (413 past it, without reading the rest) within `--body-read-timeout` (408).
pub async fn read_body(state: &AppState, body: Body) -> AppResult<Bytes> {
    let limit = state.args.max_body_bytes;
    let timeout = std::time::Duration::from_secs(state.args.body_read_timeout);
    let _reading = state.reading_body();
    let read = async {
        let mut body = body;
        // One allocation of the declared size, not a doubling vector (2x the body).
        let declared = usize::try_from(http_body::Body::size_hint(&body).lower()).unwrap_or(0);
        let mut buf = Vec::with_capacity(declared.min(limit));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::invalid(format!("Failed to read the request body: {e}"), None)
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::invalid(
            format!(
                "The request body did not arrive within {} s",
                timeout.as_secs()
            ),
            None,
        )
        .with_status(StatusCode::REQUEST_TIMEOUT)
        .with_code("request_timeout")
    })?
}

/// 413 for a body over `limit` bytes.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::invalid(
        format!("The request body is larger than the limit of {limit} bytes"),
        None,
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    .with_code("request_too_large")
}

/// Instruction for text inputs: the request's, else its named prompt, else the default.
pub fn instruction_for(
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

/// How an embed request fits over-long input: TEI's `truncate` + `truncation_direction`
/// (`right` cuts the end, `left` the start), which qembed's OpenAI route takes too.
pub fn truncation(truncate: Option<bool>, direction: Option<&str>) -> AppResult<Truncate> {
    let side = match direction {
        None => Truncate::End,
        Some(d) if d.eq_ignore_ascii_case("right") => Truncate::End,
        Some(d) if d.eq_ignore_ascii_case("left") => Truncate::Start,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("'{other}' is not one of ['right', 'left'] - 'truncation_direction'"),
                Some("truncation_direction"),
            ))
        }
    };
    Ok(if truncate.unwrap_or(false) {
        side
    } else {
        Truncate::Refuse
    })
}

/// What every embed route hands to `prepare`: the inputs and how to tokenise them.
pub struct Prepare {
    pub input: Inputs,
    pub instruction: Option<String>,
    /// The client named the instruction (token input cannot take one).
    pub explicit_instruction: bool,
    pub truncate: Truncate,
    /// A client's per-input token budget (Cohere's `max_tokens`).
    pub cap: Option<usize>,
}

/// Validates and tokenises inputs on a blocking thread (tokenising 2048 texts is not
/// something to do on the async executor).
pub async fn prepare(loaded: &Loaded, p: Prepare) -> AppResult<Vec<Vec<u32>>> {
    let Prepare {
        input,
        instruction,
        explicit_instruction,
        truncate,
        cap,
    } = p;
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
                        .tokenize_capped(input, truncate, cap)
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
                        .prepare_ids_capped(ids, truncate, cap)
                        .map_err(|e| ApiError::from_engine(e, &format!("input[{i}]")))
                })
                .collect(),
        }
    });
    task.await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
}

/// Tokenises, embeds and finishes one request's inputs (Matryoshka truncation to
/// `dimensions`, then L2 normalisation unless `normalize` is off): the vectors in input
/// order and the tokens the model read.
pub async fn embed_inputs(
    loaded: &Loaded,
    slot: &Admission,
    p: Prepare,
    dimensions: Option<usize>,
    normalize: bool,
) -> AppResult<(Vec<Vec<f32>>, usize)> {
    let seqs = prepare(loaded, p).await?;
    let tokens = seqs.iter().map(Vec::len).sum();
    let raw = loaded.batcher.embed(slot, seqs).await?;
    let vectors = raw
        .iter()
        .map(|r| {
            postprocess::finish(r, dimensions, normalize)
                .map_err(|e| ApiError::from_engine(e, "dimensions"))
        })
        .collect::<AppResult<Vec<_>>>()?;
    Ok((vectors, tokens))
}
