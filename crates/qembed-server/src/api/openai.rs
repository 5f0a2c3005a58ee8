//! OpenAI's `/v1/embeddings` and `/v1/models`. The request is parsed straight into
//! typed fields (`json`), so every malformed field gets its own message and `param`, as
//! OpenAI's API does, and no hostile body costs more than its own size.

use std::sync::Arc;

use axum::extract::{Extension, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use qembed_engine::{Task, Truncate};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::json::{parse, Inputs};
use super::{admit, embed_inputs, instruction_for, truncation, AppResult, Prepare};
use crate::error::ApiError;
use crate::middleware::Arrival;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// The fields of a `/v1/embeddings` body, as sent (unknown fields are skipped).
#[derive(Deserialize)]
struct Raw {
    input: Option<Inputs>,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<u64>,
    instruction: Option<String>,
    prompt_name: Option<String>,
    truncate: Option<bool>,
    truncation_direction: Option<String>,
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EmbeddingRequest {
    pub input: Inputs,
    pub model: Option<String>,
    pub encoding_format: EncodingFormat,
    pub dimensions: Option<usize>,
    /// Extension: task instruction for queries.
    pub instruction: Option<String>,
    /// Extension: name of a prompt configured with `--prompt NAME=TEXT`.
    pub prompt_name: Option<String>,
    /// Extensions `truncate` and `truncation_direction` (TEI's): cut over-long input at
    /// the end (`right`, the default) or the start (`left`) instead of refusing it.
    pub truncate: Truncate,
}

/// Parses a `/v1/embeddings` body with at most `max_inputs` inputs.
pub fn parse_embedding_request(
    body: &[u8],
    max_inputs: usize,
) -> Result<EmbeddingRequest, ApiError> {
    let raw: Raw = parse(body, max_inputs)?;
    let input = raw
        .input
        .ok_or_else(|| ApiError::invalid("'input' is a required property", Some("input")))?;
    let encoding_format = match raw.encoding_format.as_deref() {
        None | Some("float") => EncodingFormat::Float,
        Some("base64") => EncodingFormat::Base64,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("'{other}' is not one of ['float', 'base64'] - 'encoding_format'"),
                Some("encoding_format"),
            ))
        }
    };
    let dimensions = raw
        .dimensions
        .map(|d| {
            usize::try_from(d).map_err(|_| {
                ApiError::invalid(format!("'dimensions' {d} is too large"), Some("dimensions"))
            })
        })
        .transpose()?;
    Ok(EmbeddingRequest {
        input,
        model: raw.model,
        encoding_format,
        dimensions,
        instruction: raw.instruction,
        prompt_name: raw.prompt_name,
        truncate: truncation(raw.truncate, raw.truncation_direction.as_deref())?,
    })
}

#[derive(Serialize)]
pub struct EmbeddingResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Serialize)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingValue,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    /// Little-endian f32 bytes, base64: what the OpenAI SDKs decode.
    Base64(String),
}

impl EmbeddingValue {
    pub fn encode(v: Vec<f32>, format: EncodingFormat) -> Self {
        match format {
            EncodingFormat::Float => EmbeddingValue::Float(v),
            EncodingFormat::Base64 => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

#[derive(Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    request: Request,
) -> AppResult<Response> {
    let a = admit(
        &state,
        arrival,
        request,
        Task::Embed,
        parse_embedding_request,
    )
    .await?;
    let (loaded, slot, req) = (a.loaded, a.slot, a.body);
    let model = match req.model {
        Some(m) if !state.served_names.contains(&m) => return Err(ApiError::model_not_found(&m)),
        Some(m) => m,
        None => state.served_names[0].clone(),
    };
    loaded
        .embedder
        .check_dimensions(req.dimensions)
        .map_err(|e| ApiError::from_engine(e, "dimensions"))?;
    let explicit_instruction = req.instruction.is_some() || req.prompt_name.is_some();
    let instruction = instruction_for(&state, req.instruction, req.prompt_name)?;
    let p = Prepare {
        input: req.input,
        instruction,
        explicit_instruction,
        truncate: req.truncate,
        cap: None,
    };
    let (vectors, prompt_tokens) = embed_inputs(loaded, &slot, p, req.dimensions, true).await?;
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            index,
            embedding: EmbeddingValue::encode(v, req.encoding_format),
        })
        .collect();
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

pub async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let data: Vec<_> = state
        .served_names
        .iter()
        .map(|n| model_card(&state, n))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> AppResult<Json<serde_json::Value>> {
    if state.served_names.contains(&id) {
        Ok(Json(model_card(&state, &id)))
    } else {
        Err(ApiError::model_not_found(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EmbeddingRequest, ApiError> {
        parse_embedding_request(s.as_bytes(), 8)
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let EmbeddingValue::Base64(s) =
            EmbeddingValue::encode(vec![1.0, -2.5], EncodingFormat::Base64)
        else {
            panic!("not base64")
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn errors_name_the_parameter() {
        for (body, param) in [
            (r#"{"input":[]}"#, "input"),
            (r#"{}"#, "input"),
            (r#"{"input":["a", 1]}"#, "input"),
            (r#"{"input":[-1]}"#, "input"),
            (
                r#"{"input":["a","a","a","a","a","a","a","a","a"]}"#,
                "input",
            ),
            (
                r#"{"input":"a","encoding_format":"int8"}"#,
                "encoding_format",
            ),
            (r#"{"input":"a","dimensions":1.5}"#, "dimensions"),
            (r#"{"input":"a","dimensions":-1}"#, "dimensions"),
            (r#"{"input":"a","model":7}"#, "model"),
            (r#"{"input":"a","user":7}"#, "user"),
            (r#"{"input":"a","truncate":"yes"}"#, "truncate"),
            (
                r#"{"input":"a","truncate":true,"truncation_direction":"up"}"#,
                "truncation_direction",
            ),
        ] {
            assert_eq!(
                parse(body).unwrap_err().param.as_deref(),
                Some(param),
                "{body}"
            );
        }
        let ok = parse(r#"{"input":"a","dimensions":32,"encoding_format":"base64"}"#).unwrap();
        assert_eq!(ok.dimensions, Some(32));
        assert_eq!(ok.encoding_format, EncodingFormat::Base64);
    }
}
