//! text-embeddings-inference's native routes: `POST /rerank` (TEI's shape when the
//! body has `texts`; Jina's, as vLLM serves it, when it has `documents`). Errors in
//! TEI's shape (`{"error", "error_type"}`).
//!
//! `{query, texts, raw_scores?, return_text?, truncate?, truncation_direction?,
//! instruction? | instruct?, prompt_name?}` → `[{index, score, text?}]` from the most
//! relevant down. As in TEI, over-long input is refused unless `truncate` is true.

use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::rerank::{
    admit, instruction, one_query, ranked, required, required_documents, score, Admitted,
};
use super::{jina, AppResult};
use crate::error::{ApiError, Family};
use crate::middleware::Arrival;
use crate::state::AppState;

pub async fn rerank(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    request: Request,
) -> Response {
    let admitted = match admit(&state, arrival, request).await {
        Ok(a) => a,
        Err(e) => return e.in_family(Family::Tei).into_response(),
    };
    // vLLM serves Jina's shape at /rerank too: tell them apart by the documents' field.
    if admitted.body.texts.is_none() && admitted.body.documents.is_some() {
        return jina::respond(&state, admitted)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    respond(&state, admitted)
        .await
        .unwrap_or_else(|e| e.in_family(Family::Tei).into_response())
}

async fn respond(state: &AppState, mut a: Admitted<'_>) -> AppResult<Response> {
    let f = &mut a.body;
    let query = required(f.query.take(), "query")?;
    let docs = required_documents(f.texts.take(), "texts")?;
    let raw_scores = f.raw_scores.unwrap_or(false);
    let return_text = f.return_text.unwrap_or(false);
    match f.truncation_direction.as_deref() {
        None | Some("right") | Some("Right") => {}
        Some("left") | Some("Left") => {
            return Err(ApiError::invalid(
                "truncation_direction 'left' would cut the reranker's instruction and query; only 'right' is supported for rerank",
                Some("truncation_direction"),
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                format!("'{other}' is not one of ['right', 'left'] - 'truncation_direction'"),
                Some("truncation_direction"),
            ))
        }
    }
    let mut input = one_query(query, docs, "texts");
    input.truncate = f.truncate.unwrap_or(false);
    input.instruction = instruction(state, f)?;
    let scored = score(state, a.loaded, &a.slot, input).await?;
    let scores = scored.scores(raw_scores);
    let results: Vec<_> = ranked(&scores, None)
        .into_iter()
        .map(|i| {
            let mut r = json!({"index": i, "score": scores[i]});
            if return_text {
                r["text"] = json!(scored.documents[i].1);
            }
            r
        })
        .collect();
    Ok(Json(results).into_response())
}
