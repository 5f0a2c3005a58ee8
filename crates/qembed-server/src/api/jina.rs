//! `POST /v1/rerank`: the shape Jina's and Cohere's v1 rerank APIs share (and vLLM's
//! `/v1/rerank`), so their clients and the integrations built on them work unchanged.
//!
//! `{model?, query, documents: [string | {"text"}], top_n?, return_documents?,
//! instruction? | instruct?, prompt_name?, truncate?, raw_scores?}` →
//! `{id, model, results: [{index, relevance_score, document?: {text}}], usage, meta}`,
//! results from the most relevant down, cut to `top_n`. Documents are returned unless
//! `return_documents` is false (Jina's and vLLM's default; Cohere's clients ask).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::rerank::{
    admit, documents, instruction, model_name, one_query, opt_bool, opt_positive, ranked,
    required_string, response_id, score, Admitted,
};
use super::AppResult;
use crate::middleware::Arrival;
use crate::state::AppState;

pub async fn rerank(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    raw: Result<Bytes, BytesRejection>,
) -> AppResult<Response> {
    let admitted = admit(&state, arrival, raw)?;
    respond(&state, admitted).await
}

/// The Jina/Cohere v1 answer to an admitted request (also `/rerank` with `documents`).
pub async fn respond(state: &AppState, a: Admitted<'_>) -> AppResult<Response> {
    let obj = &a.body;
    let model = model_name(state, obj)?;
    let query = required_string(obj, "query")?;
    let docs = documents(
        obj.get("documents"),
        "documents",
        state.args.max_client_batch_size,
    )?;
    let top_n = opt_positive(obj, "top_n")?;
    let return_documents = opt_bool(obj, "return_documents")?.unwrap_or(true);
    let raw_scores = opt_bool(obj, "raw_scores")?.unwrap_or(false);
    let mut input = one_query(query, docs, "documents");
    input.truncate = opt_bool(obj, "truncate")?.unwrap_or(true);
    input.instruction = instruction(state, obj)?;
    let scored = score(state, a.loaded, &a.slot, input).await?;
    let scores = scored.scores(raw_scores);
    let results: Vec<_> = ranked(&scores, top_n)
        .into_iter()
        .map(|i| {
            let mut r = json!({"index": i, "relevance_score": scores[i]});
            if return_documents {
                r["document"] = json!({"text": scored.documents[i].1});
            }
            r
        })
        .collect();
    Ok(Json(json!({
        "id": response_id("rerank"),
        "model": model,
        "results": results,
        "usage": {"total_tokens": scored.tokens},
        "meta": {
            "api_version": {"version": "1"},
            "billed_units": {"search_units": 1},
            "tokens": {"input_tokens": scored.tokens},
        },
    }))
    .into_response())
}
