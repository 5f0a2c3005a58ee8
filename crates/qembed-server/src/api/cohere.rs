//! Cohere's v2 API: `POST /v2/rerank`, what `cohere.ClientV2(base_url=...).rerank`
//! calls. Errors in Cohere's shape (`{"message"}`).
//!
//! `{model?, query, documents: [string | {"text"}], top_n?, max_tokens_per_doc?,
//! instruction? | instruct?, prompt_name?}` → `{id, results: [{index,
//! relevance_score}], meta}`. Like Cohere, long documents are truncated, not refused:
//! to `max_tokens_per_doc` when given, and the pair to `--max-input-tokens`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::rerank::{
    admit, documents, instruction, model_name, one_query, opt_positive, ranked, required_string,
    response_id, score, Admitted,
};
use super::AppResult;
use crate::error::Family;
use crate::middleware::Arrival;
use crate::state::AppState;

pub async fn rerank(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = match admit(&state, arrival, raw) {
        Ok(admitted) => respond(&state, admitted).await,
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(|e| e.in_family(Family::Cohere).into_response())
}

async fn respond(state: &AppState, a: Admitted<'_>) -> AppResult<Response> {
    let obj = &a.body;
    model_name(state, obj)?;
    let query = required_string(obj, "query")?;
    let docs = documents(
        obj.get("documents"),
        "documents",
        state.args.max_client_batch_size,
    )?;
    let top_n = opt_positive(obj, "top_n")?;
    let mut input = one_query(query, docs, "documents");
    input.max_tokens_per_doc = opt_positive(obj, "max_tokens_per_doc")?;
    input.instruction = instruction(state, obj)?;
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
