//! Cohere's v2 API: `POST /v2/embed` and `POST /v2/rerank`, what
//! `cohere.ClientV2(base_url=...).embed` and `.rerank` call. Errors in Cohere's shape
//! (`{"message"}`).
//!
//! `/v2/embed`: `{model?, texts | inputs, input_type, embedding_types? ([float]),
//! output_dimension?, truncate? (END), max_tokens?}` → `{id, embeddings: {float?, int8?,
//! uint8?, binary?, ubinary?, base64?}, texts, meta, response_type}`. `input_type`
//! chooses the instruction: `search_query` takes `--prompt search_query=...`, else
//! `--default-instruction`, else the model card's web-search instruction;
//! `search_document` none; `classification` and `clustering` their `--prompt` entry
//! when there is one, else none. The integer and binary forms follow the rules in
//! `qembed_engine::quantize`; `base64` is the float vector's little-endian f32 bytes.
//!
//! `/v2/rerank`:
//! `{model?, query, documents: [string | {"text"}], top_n?, max_tokens_per_doc?,
//! instruction? | instruct?, prompt_name?}` → `{id, results: [{index,
//! relevance_score}], meta}`. Like Cohere, long documents are truncated, not refused:
//! to `max_tokens_per_doc` when given, and the pair to `--max-input-tokens`.

use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use qembed_engine::{quantize, Task, Truncate, DEFAULT_QUERY_INSTRUCTION};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::json::{self, parse, Documents, Inputs};
use super::rerank::{
    admit_rerank, instruction, model_name, one_query, positive, ranked, required,
    required_documents, response_id, score, RerankAdmitted,
};
use super::{admit, dimensions, embed_inputs, AppResult, Prepare};
use crate::error::{ApiError, Family};
use crate::middleware::Arrival;
use crate::state::AppState;

pub async fn rerank(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    request: Request,
) -> Response {
    let answer = match admit_rerank(&state, arrival, request).await {
        Ok(admitted) => respond(&state, admitted).await,
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(|e| e.in_family(Family::Cohere).into_response())
}

async fn respond(state: &AppState, mut a: RerankAdmitted<'_>) -> AppResult<Response> {
    let f = &mut a.body;
    model_name(state, &f.model)?;
    let query = required(f.query.take(), "query")?;
    let docs = required_documents(f.documents.take(), "documents")?;
    let top_n = positive(f.top_n, "top_n")?;
    let mut input = one_query(query, docs, "documents");
    input.max_tokens_per_doc = positive(f.max_tokens_per_doc, "max_tokens_per_doc")?;
    input.instruction = instruction(state, f)?;
    let scored = score(state, a.loaded, &a.slot, input).await?;
    let scores = scored.scores(false);
    let results: Vec<_> = ranked(&scores, top_n)
        .into_iter()
        .map(|i| json!({"index": i, "relevance_score": scores[i]}))
        .collect();
    Ok(Json(json!({
        "id": response_id("rerank"),
        "results": results,
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {"search_units": 1},
            "tokens": {"input_tokens": scored.tokens},
        },
    }))
    .into_response())
}

/// The fields of a `/v2/embed` body, as sent (unknown fields are skipped).
#[derive(Deserialize)]
struct EmbedRequest {
    model: Option<String>,
    #[serde(default, deserialize_with = "json::texts_field")]
    texts: Option<Documents>,
    #[serde(default, deserialize_with = "json::content_inputs_field")]
    inputs: Option<Documents>,
    images: Option<serde::de::IgnoredAny>,
    input_type: Option<String>,
    embedding_types: Option<EmbeddingTypes>,
    output_dimension: Option<u64>,
    truncate: Option<String>,
    max_tokens: Option<u64>,
}

/// An output form of `/v2/embed`, in the order Cohere lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmbeddingType {
    Float,
    Int8,
    Uint8,
    Binary,
    Ubinary,
    Base64,
}

impl EmbeddingType {
    const ALL: [(&'static str, Self); 6] = [
        ("float", Self::Float),
        ("int8", Self::Int8),
        ("uint8", Self::Uint8),
        ("binary", Self::Binary),
        ("ubinary", Self::Ubinary),
        ("base64", Self::Base64),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("float", |(n, _)| n)
    }

    /// The vectors in this form, one JSON value each.
    fn encode(self, vectors: &[Vec<f32>]) -> Value {
        let each = |v: &Vec<f32>| -> Value {
            match self {
                Self::Float => json!(v),
                Self::Int8 => json!(quantize::int8(v)),
                Self::Uint8 => json!(quantize::uint8(v)),
                Self::Binary => json!(quantize::binary(v)),
                Self::Ubinary => json!(quantize::ubinary(v)),
                Self::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            }
        };
        Value::Array(vectors.iter().map(each).collect())
    }
}

/// `embedding_types`: distinct known names, refused at the first unknown one (so a
/// hostile list costs nothing to hold).
struct EmbeddingTypes(Vec<EmbeddingType>);

impl<'de> Deserialize<'de> for EmbeddingTypes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EmbeddingTypes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of embedding types")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EmbeddingTypes, A::Error> {
                let mut types = Vec::new();
                while let Some(name) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
                    let Some(&(_, t)) = EmbeddingType::ALL.iter().find(|(n, _)| *n == name) else {
                        return Err(de::Error::custom(format!(
                            "'{name}' is not one of float, int8, uint8, binary, ubinary, base64"
                        )));
                    };
                    if !types.contains(&t) {
                        types.push(t);
                    }
                }
                Ok(EmbeddingTypes(types))
            }
        }
        d.deserialize_seq(V)
    }
}

pub async fn embed(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    request: Request,
) -> Response {
    embed_response(&state, arrival, request)
        .await
        .unwrap_or_else(|e| e.in_family(Family::Cohere).into_response())
}

async fn embed_response(
    state: &AppState,
    arrival: Arrival,
    request: Request,
) -> AppResult<Response> {
    let a = admit(state, arrival, request, Task::Embed, parse::<EmbedRequest>).await?;
    let req = a.body;
    model_name(state, &req.model)?;
    if req.images.is_some() {
        return Err(ApiError::invalid(
            "'images' is not supported: this model embeds text only",
            Some("images"),
        ));
    }
    let texts = match (req.texts, req.inputs) {
        (Some(Documents(t)), None) | (None, Some(Documents(t))) => t,
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "Give either 'texts' or 'inputs', not both",
                Some("inputs"),
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "One of 'texts' or 'inputs' is required",
                Some("texts"),
            ))
        }
    };
    let instruction = instruction_for_input_type(state, req.input_type.as_deref())?;
    let types = match req.embedding_types {
        Some(EmbeddingTypes(t)) if t.is_empty() => {
            return Err(ApiError::invalid(
                "'embedding_types' must not be empty",
                Some("embedding_types"),
            ))
        }
        Some(EmbeddingTypes(t)) => t,
        None => vec![EmbeddingType::Float],
    };
    let dimensions = dimensions(a.loaded, req.output_dimension, "output_dimension")?;
    let truncate = match req
        .truncate
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("END") => Truncate::End,
        Some("START") => Truncate::Start,
        Some("NONE") => Truncate::Refuse,
        Some(_) => {
            return Err(ApiError::invalid(
                "'truncate' must be one of NONE, START, END",
                Some("truncate"),
            ))
        }
    };
    let p = Prepare {
        input: Inputs::Texts(texts.clone()),
        instruction,
        explicit_instruction: true,
        truncate,
        cap: positive(req.max_tokens, "max_tokens")?,
    };
    let (vectors, tokens) = embed_inputs(a.loaded, &a.slot, p, dimensions, true).await?;
    let mut embeddings = Map::new();
    for t in types {
        embeddings.insert(t.name().to_string(), t.encode(&vectors));
    }
    Ok(Json(json!({
        "id": response_id("embed"),
        "embeddings": embeddings,
        "texts": texts,
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {"input_tokens": tokens},
        },
        "response_type": "embeddings_by_type",
    }))
    .into_response())
}

/// The instruction Cohere's `input_type` stands for (see the module docs).
fn instruction_for_input_type(
    state: &AppState,
    input_type: Option<&str>,
) -> AppResult<Option<String>> {
    let prompt = |name: &str| state.prompts.get(name).cloned();
    match input_type {
        Some("search_query") => Ok(Some(
            prompt("search_query")
                .or_else(|| state.args.default_instruction.clone())
                .unwrap_or_else(|| DEFAULT_QUERY_INSTRUCTION.to_string()),
        )),
        Some("search_document") => Ok(None),
        Some(kind @ ("classification" | "clustering")) => Ok(prompt(kind)),
        Some("image") => Err(ApiError::invalid(
            "input_type 'image' is not supported: this model embeds text only",
            Some("input_type"),
        )),
        Some(other) => Err(ApiError::invalid(
            format!(
                "'{other}' is not one of search_document, search_query, classification, clustering"
            ),
            Some("input_type"),
        )),
        None => Err(ApiError::invalid(
            "'input_type' is a required property",
            Some("input_type"),
        )),
    }
}
