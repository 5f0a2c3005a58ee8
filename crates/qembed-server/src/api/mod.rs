//! The API families the server speaks, one module each (OpenAI embeddings; rerank in
//! Jina/Cohere v1, Cohere v2, TEI and vLLM shapes, with their shared core in `rerank`;
//! qembed's own service routes), and what their handlers share: the 503 gate, body
//! errors, instruction choice and tokenisation off the executor.

pub mod cohere;
pub mod jina;
pub mod openai;
pub mod rerank;
pub mod service;
pub mod tei;
pub mod vllm;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use qembed_engine::{EngineError, Input, Task};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::middleware::Arrival;
use crate::state::{AppState, Loaded};
use openai::Inputs;

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

/// The loaded model if it serves embeddings; a 400 naming `--task` on a reranker.
pub fn embedder(loaded: &Loaded) -> AppResult<()> {
    match loaded.embedder.task() {
        Task::Embed => Ok(()),
        loaded_task => Err(ApiError::wrong_task(&EngineError::WrongTask {
            wanted: Task::Embed,
            loaded: loaded_task,
        })),
    }
}

/// The request body, with axum's rejections (413 above the limit) in OpenAI's shape.
pub fn body(body: Result<Bytes, BytesRejection>) -> AppResult<Bytes> {
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

/// Validates and tokenises inputs on a blocking thread (tokenising 2048 texts is not
/// something to do on the async executor).
pub async fn prepare(
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

pub fn parse_json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
        .with_code("invalid_json")
    })?;
    match value {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::invalid(
            "The request body must be a JSON object",
            None,
        )),
    }
}

/// A string field that may be absent or null; any other type is an error naming it.
pub fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::invalid(
            format!("'{key}' must be a string, got {}", type_name(v)),
            Some(key),
        )),
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
