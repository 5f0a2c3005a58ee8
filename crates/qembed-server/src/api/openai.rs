//! OpenAI's `/v1/embeddings` and `/v1/models`: the request parsed by hand from JSON so
//! that every malformed field gets its own message and `param`, as OpenAI's API does.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use qembed_engine::postprocess;
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    body, embedder, instruction_for, opt_string, parse_json_object, prepare, serving, type_name,
    AppResult,
};
use crate::error::ApiError;
use crate::middleware::Arrival;
use crate::state::AppState;

#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl Inputs {
    pub fn len(&self) -> usize {
        match self {
            Inputs::Texts(t) => t.len(),
            Inputs::Tokens(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    Float,
    Base64,
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
    /// Extension: truncate over-long input instead of refusing it.
    pub truncate: Option<bool>,
}

pub fn parse_embedding_request(body: &[u8]) -> Result<EmbeddingRequest, ApiError> {
    let obj = parse_json_object(body)?;
    let input = parse_input(obj.get("input"))?;
    let encoding_format = match opt_string(&obj, "encoding_format")?.as_deref() {
        None | Some("float") => EncodingFormat::Float,
        Some("base64") => EncodingFormat::Base64,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("'{other}' is not one of ['float', 'base64'] - 'encoding_format'"),
                Some("encoding_format"),
            ))
        }
    };
    let dimensions = match obj.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("'dimensions' must be a positive integer, got {v}"),
                        Some("dimensions"),
                    )
                })?,
        ),
    };
    let truncate = match obj.get("truncate") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            return Err(ApiError::invalid(
                format!("'truncate' must be a boolean, got {v}"),
                Some("truncate"),
            ))
        }
    };
    opt_string(&obj, "user")?;
    Ok(EmbeddingRequest {
        input,
        model: opt_string(&obj, "model")?,
        encoding_format,
        dimensions,
        instruction: opt_string(&obj, "instruction")?,
        prompt_name: opt_string(&obj, "prompt_name")?,
        truncate,
    })
}

/// `input`: a string, an array of strings, an array of token ids, or an array of arrays
/// of token ids.
pub fn parse_input(value: Option<&Value>) -> Result<Inputs, ApiError> {
    let bad = |m: String| ApiError::invalid(m, Some("input"));
    match value {
        None | Some(Value::Null) => Err(bad("'input' is a required property".into())),
        Some(Value::String(s)) => {
            if s.is_empty() {
                return Err(bad("'input' must not be an empty string".into()));
            }
            Ok(Inputs::Texts(vec![s.clone()]))
        }
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(bad("'input' must not be an empty array".into()));
            }
            match &items[0] {
                Value::String(_) => {
                    let mut texts = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        match item {
                            Value::String(s) if s.is_empty() => {
                                return Err(bad(format!("input[{i}] is an empty string")))
                            }
                            Value::String(s) => texts.push(s.clone()),
                            v => {
                                return Err(bad(format!(
                                    "input[{i}] is {}, but input[0] is a string: arrays must not mix types",
                                    type_name(v)
                                )))
                            }
                        }
                    }
                    Ok(Inputs::Texts(texts))
                }
                Value::Number(_) => Ok(Inputs::Tokens(vec![token_ids(items, "input")?])),
                Value::Array(_) => {
                    let mut seqs = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let param = format!("input[{i}]");
                        match item {
                            Value::Array(ids) if ids.is_empty() => {
                                return Err(bad(format!("{param} is an empty array of tokens")))
                            }
                            Value::Array(ids) => seqs.push(token_ids(ids, &param)?),
                            v => {
                                return Err(bad(format!(
                                    "{param} is {}, but input[0] is an array of tokens",
                                    type_name(v)
                                )))
                            }
                        }
                    }
                    Ok(Inputs::Tokens(seqs))
                }
                v => Err(bad(format!(
                    "'input' must be a string or an array of strings or token ids, got an array of {}",
                    type_name(v)
                ))),
            }
        }
        Some(v) => Err(bad(format!(
            "'input' must be a string or an array, got {}",
            type_name(v)
        ))),
    }
}

fn token_ids(items: &[Value], param: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("{param}[{i}] must be a non-negative integer token id, got {v}"),
                        Some("input"),
                    )
                })
        })
        .collect()
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
    raw: Result<Bytes, BytesRejection>,
) -> AppResult<Response> {
    let loaded = serving(&state, arrival)?;
    embedder(loaded)?;
    let slot = loaded.batcher.admit()?;
    let req = parse_embedding_request(&body(raw)?)?;
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
        parse_embedding_request(s.as_bytes())
    }

    #[test]
    fn accepts_the_four_input_shapes() {
        assert_eq!(
            parse(r#"{"input":"a"}"#).unwrap().input,
            Inputs::Texts(vec!["a".into()])
        );
        assert_eq!(
            parse(r#"{"input":["a","b"]}"#).unwrap().input,
            Inputs::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse(r#"{"input":[1,2]}"#).unwrap().input,
            Inputs::Tokens(vec![vec![1, 2]])
        );
        assert_eq!(
            parse(r#"{"input":[[1],[2,3]]}"#).unwrap().input,
            Inputs::Tokens(vec![vec![1], vec![2, 3]])
        );
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
            (r#"{"input":["a", 1]}"#, "input"),
            (r#"{"input":[-1]}"#, "input"),
            (
                r#"{"input":"a","encoding_format":"int8"}"#,
                "encoding_format",
            ),
            (r#"{"input":"a","dimensions":1.5}"#, "dimensions"),
            (r#"{"input":"a","model":7}"#, "model"),
        ] {
            assert_eq!(
                parse(body).unwrap_err().param.as_deref(),
                Some(param),
                "{body}"
            );
        }
    }
}
