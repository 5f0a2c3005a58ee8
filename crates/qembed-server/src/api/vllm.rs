//! vLLM's score API: `POST /v1/score` (and `/score`), one score per (text_1, text_2)
//! pair, in input order.
//!
//! `{model?, text_1: string | [string], text_2: string | [string],
//! truncate_prompt_tokens?, instruction? | instruct?, prompt_name?, raw_scores?}` →
//! `{id, object: "list", created, model, data: [{index, object: "score", score}],
//! usage}`. One `text_1` is scored against every `text_2`; two lists of one length
//! pair up index by index. `truncate_prompt_tokens` holds each pair to that many
//! tokens, cut at the end of the body.

use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::rerank::{
    admit_rerank, instruction, model_name, required_documents, response_id, score,
};
use super::rerank::{RerankAdmitted, RerankInput};
use super::AppResult;
use crate::error::ApiError;
use crate::middleware::Arrival;
use crate::state::AppState;

pub async fn score_route(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    request: Request,
) -> AppResult<Response> {
    let admitted = admit_rerank(&state, arrival, request).await?;
    respond(&state, admitted).await
}

async fn respond(state: &AppState, mut a: RerankAdmitted<'_>) -> AppResult<Response> {
    let f = &mut a.body;
    let model = model_name(state, &f.model)?;
    let queries = required_documents(f.text_1.take(), "text_1")?;
    let seconds = required_documents(f.text_2.take(), "text_2")?;
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
    let input = RerankInput {
        queries,
        documents,
        field: "text_2",
        instruction: instruction(state, f)?,
        // Over-long pairs are cut at the end of the body (the card's way), at
        // `truncate_prompt_tokens` when given (-1: the model's limit), else at
        // --max-input-tokens.
        truncate: true,
        max_tokens_per_doc: None,
        max_length: match f.truncate_prompt_tokens {
            None | Some(-1) => None,
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Some(n) => {
                return Err(ApiError::invalid(
                    format!("'truncate_prompt_tokens' must be -1 or a positive integer, got {n}"),
                    Some("truncate_prompt_tokens"),
                ))
            }
        },
    };
    let raw_scores = f.raw_scores.unwrap_or(false);
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
