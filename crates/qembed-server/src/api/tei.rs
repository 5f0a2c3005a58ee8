//! text-embeddings-inference's native routes: `POST /rerank` (TEI's shape when the
//! body has `texts`; Jina's, as vLLM serves it, when it has `documents`). Errors in
//! TEI's shape (`{"error", "error_type"}`).
//!
//! `{query, texts, raw_scores?, return_text?, truncate?, truncation_direction?,
//! instruction? | instruct?, prompt_name?}` → `[{index, score, text?}]` from the most
//! relevant down. As in TEI, over-long input is refused unless `truncate` is true.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::rerank::{
    admit, documents, instruction, one_query, opt_bool, ranked, required_string, score, Admitted,
};
use super::{jina, opt_string, AppResult};
use crate::error::{ApiError, Family};
use crate::middleware::Arrival;
use crate::state::AppState;

pub async fn rerank(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let admitted = match admit(&state, arrival, raw) {
        Ok(a) => a,
        Err(e) => return e.in_family(Family::Tei).into_response(),
    };
    // vLLM serves Jina's shape at /rerank too: tell them apart by the documents' field.
    if !admitted.body.contains_key("texts") && admitted.body.contains_key("documents") {
        return jina::respond(&state, admitted)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    respond(&state, admitted)
        .await
        .unwrap_or_else(|e| e.in_family(Family::Tei).into_response())
}

async fn respond(state: &AppState, a: Admitted<'_>) -> AppResult<Response> {
    let obj = &a.body;
    let query = required_string(obj, "query")?;
    let docs = documents(obj.get("texts"), "texts", state.args.max_client_batch_size)?;
    let raw_scores = opt_bool(obj, "raw_scores")?.unwrap_or(false);
    let return_text = opt_bool(obj, "return_text")?.unwrap_or(false);
    match opt_string(obj, "truncation_direction")?.as_deref() {
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
    input.truncate = opt_bool(obj, "truncate")?.unwrap_or(false);
    input.instruction = instruction(state, obj)?;
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
