//! `POST /v1/rerank`: the shape Jina's and Cohere's v1 rerank APIs share (and vLLM's
//! `/v1/rerank`), so their clients and the integrations built on them work unchanged.
//!
//! `{model?, query, documents: [string | {"text"}], top_n?, return_documents?,
//! instruction? | instruct?, prompt_name?, truncate?, raw_scores?}` →
//! `{id, model, results: [{index, relevance_score, document?: {text}}], usage, meta}`,
//! results from the most relevant down, cut to `top_n`. Documents are returned unless
//! `return_documents` is false (Jina's and vLLM's default; Cohere's clients ask).

use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::rerank::{
    admit_rerank, instruction, model_name, one_query, positive, ranked, required,
    required_documents, response_id, score, RerankAdmitted,
};
use super::AppResult;
use crate::middleware::Arrival;
use crate::state::AppState;

pub async fn rerank(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    request: Request,
) -> AppResult<Response> {
    let admitted = admit_rerank(&state, arrival, request).await?;
    respond(&state, admitted).await
}

/// The Jina/Cohere v1 answer to an admitted request (also `/rerank` with `documents`).
pub async fn respond(state: &AppState, mut a: RerankAdmitted<'_>) -> AppResult<Response> {
    let f = &mut a.body;
    let model = model_name(state, &f.model)?;
    let query = required(f.query.take(), "query")?;
    let docs = required_documents(f.documents.take(), "documents")?;
    let top_n = positive(f.top_n, "top_n")?;
    let return_documents = f.return_documents.unwrap_or(true);
    let raw_scores = f.raw_scores.unwrap_or(false);
    let mut input = one_query(query, docs, "documents");
    input.truncate = f.truncate.unwrap_or(true);
    input.instruction = instruction(state, f)?;
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
