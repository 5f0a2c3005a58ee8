//! vLLM's score API: `POST /v1/score` (and `/score`), one score per (text_1, text_2)
//! pair, in input order.
//!
//! `{model?, text_1: string | [string], text_2: string | [string],
//! truncate_prompt_tokens?, instruction? | instruct?, prompt_name?, raw_scores?}` →
//! `{id, object: "list", created, model, data: [{index, object: "score", score}],
//! usage}`. One `text_1` is scored against every `text_2`; two lists of one length
//! pair up index by index.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::rerank::{admit, documents, instruction, model_name, opt_bool, response_id, score};
use super::rerank::{Admitted, RerankInput};
use super::AppResult;
use crate::error::ApiError;
use crate::middleware::Arrival;
use crate::state::AppState;

pub async fn score_route(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    raw: Result<Bytes, BytesRejection>,
) -> AppResult<Response> {
    let admitted = admit(&state, arrival, raw)?;
    respond(&state, admitted).await
}

/// `text_1` or `text_2`: one string, or a list of them.
fn texts(
    obj: &serde_json::Map<String, Value>,
    key: &'static str,
    max: usize,
) -> AppResult<Vec<String>> {
    match obj.get(key) {
        Some(Value::String(s)) => documents(Some(&json!([s])), key, max),
        other => documents(other, key, max),
    }
}

async fn respond(state: &AppState, a: Admitted<'_>) -> AppResult<Response> {
    let obj = &a.body;
    let model = model_name(state, obj)?;
    let max = state.args.max_client_batch_size;
    let queries = texts(obj, "text_1", max)?;
    let seconds = texts(obj, "text_2", max)?;
    let documents: Vec<(usize, String)> = match queries.len() {
        1 => seconds.into_iter().map(|d| (0, d)).collect(),
        n if n == seconds.len() => seconds.into_iter().enumerate().collect(),
        n => {
            return Err(ApiError::invalid(
                format!(
                "'text_1' has {n} items and 'text_2' {}: give one text_1, or lists of one length",
                seconds.len()
            ),
                Some("text_1"),
            ))
        }
    };
    if !matches!(obj.get("truncate_prompt_tokens"), None | Some(Value::Null))
        && !obj["truncate_prompt_tokens"].is_i64()
    {
        return Err(ApiError::invalid(
            "'truncate_prompt_tokens' must be an integer",
            Some("truncate_prompt_tokens"),
        ));
    }
    let input = RerankInput {
        queries,
        documents,
        field: "text_2",
        instruction: instruction(state, obj)?,
        // Over-long pairs are cut at --max-input-tokens (the card's behaviour) whether
        // or not truncate_prompt_tokens is given.
        truncate: true,
        max_tokens_per_doc: None,
    };
    let raw_scores = opt_bool(obj, "raw_scores")?.unwrap_or(false);
    let scored = score(state, a.loaded, &a.slot, input).await?;
    let data: Vec<_> = scored
        .scores(raw_scores)
        .into_iter()
        .enumerate()
        .map(|(index, s)| json!({"index": index, "object": "score", "score": s}))
        .collect();
    Ok(Json(json!({
        "id": response_id("score"),
        "object": "list",
        "created": state.created_unix,
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": scored.tokens, "total_tokens": scored.tokens},
    }))
    .into_response())
}
