//! text-embeddings-inference's native routes: `POST /embed` (and `POST /`, where
//! `huggingface_hub.InferenceClient(base_url).feature_extraction` posts), and `POST
//! /rerank` (TEI's shape when the body has `texts`; Jina's, as vLLM serves it, when it
//! has `documents`). Errors in TEI's shape (`{"error", "error_type"}`).
//!
//! `/embed`: `{inputs: string | [string] | [[token id]], normalize? (true), truncate?
//! (false), truncation_direction? (right | left), prompt_name?, dimensions?}` → one
//! `[f32]` per input. `left` cuts the start of the text and keeps an instruction whole.
//!
//! `{query, texts, raw_scores?, return_text?, truncate?, truncation_direction?,
//! instruction? | instruct?, prompt_name?}` → `[{index, score, text?}]` from the most
//! relevant down. As in TEI, over-long input is refused unless `truncate` is true.

use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use qembed_engine::Task;
use serde::Deserialize;
use serde_json::json;

use super::json::{parse, Inputs};
use super::rerank::{
    admit_rerank, instruction, one_query, ranked, required, required_documents, score,
    RerankAdmitted,
};
use super::{
    admit, dimensions, embed_inputs, instruction_for, jina, truncation, AppResult, Prepare,
};
use crate::error::{ApiError, Family};
use crate::middleware::Arrival;
use crate::state::AppState;

pub async fn rerank(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    request: Request,
) -> Response {
    let admitted = match admit_rerank(&state, arrival, request).await {
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

async fn respond(state: &AppState, mut a: RerankAdmitted<'_>) -> AppResult<Response> {
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

/// The fields of a TEI `/embed` body, as sent (unknown fields are skipped).
#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Option<Inputs>,
    normalize: Option<bool>,
    truncate: Option<bool>,
    truncation_direction: Option<String>,
    prompt_name: Option<String>,
    dimensions: Option<u64>,
}

pub async fn embed(
    State(state): State<Arc<AppState>>,
    Extension(arrival): Extension<Arrival>,
    request: Request,
) -> Response {
    embed_response(&state, arrival, request)
        .await
        .unwrap_or_else(|e| e.in_family(Family::Tei).into_response())
}

async fn embed_response(
    state: &AppState,
    arrival: Arrival,
    request: Request,
) -> AppResult<Response> {
    let a = admit(state, arrival, request, Task::Embed, parse::<EmbedRequest>).await?;
    let req = a.body;
    let input = req
        .inputs
        .ok_or_else(|| ApiError::invalid("'inputs' is a required property", Some("inputs")))?;
    let dimensions = dimensions(a.loaded, req.dimensions, "dimensions")?;
    let explicit_instruction = req.prompt_name.is_some();
    let p = Prepare {
        input,
        instruction: instruction_for(state, None, req.prompt_name)?,
        explicit_instruction,
        truncate: truncation(req.truncate, req.truncation_direction.as_deref())?,
        cap: None,
    };
    let normalize = req.normalize.unwrap_or(true);
    let (vectors, _) = embed_inputs(a.loaded, &a.slot, p, dimensions, normalize).await?;
    Ok(Json(vectors).into_response())
}
