//! What the four rerank APIs (Jina/Cohere v1, Cohere v2, TEI, vLLM score) share: their
//! documents parsed the same way, pairs tokenised with the reranker's template off the
//! executor, scored through the same batcher as embeddings, and ranked.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use qembed_engine::rerank::sigmoid;
use qembed_engine::{Admission, Pair, Task};
use serde::Deserialize;

use super::json::{self, parse, Documents};
use super::{admit, instruction_for, Admitted, AppResult};
use crate::error::ApiError;
use crate::middleware::Arrival;
use crate::state::{AppState, Loaded};

/// Pairs to score: each document with the query it is judged against. Queries are
/// kept once each and referred to by index, so that a long query scored against a
/// thousand documents is not copied a thousand times.
pub struct RerankInput {
    pub queries: Vec<String>,
    /// (index into `queries`, document)
    pub documents: Vec<(usize, String)>,
    /// The field documents came from, for error messages (`documents`, `texts`, ...).
    pub field: &'static str,
    pub instruction: Option<String>,
    /// Cut over-long pairs at the end of the body instead of refusing them.
    pub truncate: bool,
    /// Cohere's `max_tokens_per_doc`: each document cut to this many tokens first.
    pub max_tokens_per_doc: Option<usize>,
    /// vLLM's `truncate_prompt_tokens`: each pair held to this many tokens (at most
    /// `--max-input-tokens`).
    pub max_length: Option<usize>,
}

/// Each pair's `l_yes - l_no`, in input order, the tokens the model read, and the
/// documents back (for responses that return them).
pub struct Scored {
    pub logits: Vec<f32>,
    pub tokens: usize,
    pub documents: Vec<(usize, String)>,
}

impl Scored {
    /// Relevance scores in (0, 1), or the raw logit differences.
    pub fn scores(&self, raw: bool) -> Vec<f32> {
        if raw {
            self.logits.clone()
        } else {
            self.logits.iter().map(|&l| sigmoid(l)).collect()
        }
    }
}

/// The fields of every rerank API's body, as sent; each family reads its own (a
/// `/rerank` body with `texts` is TEI's, with `documents` Jina's). Unknown fields are
/// skipped; the lists stop at `--max-client-batch-size`.
#[derive(Deserialize)]
pub struct RerankFields {
    pub model: Option<String>,
    pub query: Option<String>,
    #[serde(default, deserialize_with = "json::documents_field")]
    pub documents: Option<Documents>,
    #[serde(default, deserialize_with = "json::texts_field")]
    pub texts: Option<Documents>,
    #[serde(default, deserialize_with = "json::text_1_field")]
    pub text_1: Option<Documents>,
    #[serde(default, deserialize_with = "json::text_2_field")]
    pub text_2: Option<Documents>,
    pub top_n: Option<u64>,
    pub return_documents: Option<bool>,
    pub return_text: Option<bool>,
    pub raw_scores: Option<bool>,
    pub truncate: Option<bool>,
    pub truncation_direction: Option<String>,
    pub max_tokens_per_doc: Option<u64>,
    pub truncate_prompt_tokens: Option<i64>,
    pub instruction: Option<String>,
    pub instruct: Option<String>,
    pub prompt_name: Option<String>,
}

/// A rerank request let in: the model (a reranker), its queue slot, its fields.
pub type RerankAdmitted<'a> = Admitted<'a, RerankFields>;

/// The gates every rerank route passes (`api::admit` for the reranker task).
pub async fn admit_rerank(
    state: &AppState,
    arrival: Arrival,
    request: Request,
) -> AppResult<RerankAdmitted<'_>> {
    admit(state, arrival, request, Task::Rerank, parse::<RerankFields>).await
}

/// One query against every document of a list, the shape of all but vLLM's API.
pub fn one_query(query: String, documents: Vec<String>, field: &'static str) -> RerankInput {
    RerankInput {
        queries: vec![query],
        documents: documents.into_iter().map(|d| (0, d)).collect(),
        field,
        instruction: None,
        truncate: true,
        max_tokens_per_doc: None,
        max_length: None,
    }
}

/// The `model` field: a served name, or absent (the first one).
pub fn model_name(state: &AppState, model: &Option<String>) -> AppResult<String> {
    match model {
        Some(m) if !state.served_names.contains(m) => Err(ApiError::model_not_found(m)),
        Some(m) => Ok(m.clone()),
        None => Ok(state.served_names[0].clone()),
    }
}

/// A required, non-empty string field.
pub fn required(value: Option<String>, key: &str) -> AppResult<String> {
    match value {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(ApiError::invalid(
            format!("'{key}' must not be empty"),
            Some(key),
        )),
        None => Err(ApiError::invalid(
            format!("'{key}' is a required property"),
            Some(key),
        )),
    }
}

/// A required list of documents.
pub fn required_documents(value: Option<Documents>, key: &str) -> AppResult<Vec<String>> {
    value
        .map(|Documents(d)| d)
        .ok_or_else(|| ApiError::invalid(format!("'{key}' is a required property"), Some(key)))
}

/// An optional count that must be at least 1 (`top_n`, `max_tokens_per_doc`).
pub fn positive(value: Option<u64>, key: &str) -> AppResult<Option<usize>> {
    match value {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Some(n) => Err(ApiError::invalid(
            format!("'{key}' must be a positive integer, got {n}"),
            Some(key),
        )),
    }
}

/// The request's task: `instruction` (or its alias `instruct`), else its
/// `prompt_name`, else `--default-instruction`; `None` leaves the card's default.
pub fn instruction(state: &AppState, f: &mut RerankFields) -> AppResult<Option<String>> {
    let given = match (f.instruction.take(), f.instruct.take()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "Give 'instruction' or its alias 'instruct', not both",
                Some("instruct"),
            ))
        }
        (a, b) => a.or(b),
    };
    instruction_for(state, given, f.prompt_name.take())
}

/// Tokenises every pair (on a blocking thread), runs them through the batcher and
/// applies the score head. All pairs are checked before any compute.
pub async fn score(
    state: &AppState,
    loaded: &Loaded,
    slot: &Admission,
    input: RerankInput,
) -> AppResult<Scored> {
    let embedder = loaded.embedder.clone();
    let field = input.field;
    let task = tokio::task::spawn_blocking(move || -> AppResult<(RerankInput, Vec<Vec<u32>>)> {
        let seqs = input
            .documents
            .iter()
            .enumerate()
            .map(|(i, (q, document))| {
                let pair = Pair {
                    query: &input.queries[*q],
                    document,
                    instruction: input.instruction.as_deref(),
                };
                embedder
                    .tokenize_pair_capped(
                        pair,
                        input.truncate,
                        input.max_tokens_per_doc,
                        input.max_length,
                    )
                    .map_err(|e| ApiError::from_engine(e, &format!("{field}[{i}]")))
            })
            .collect::<AppResult<Vec<_>>>()?;
        Ok((input, seqs))
    });
    let (input, seqs) = task
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))??;
    let tokens = seqs.iter().map(Vec::len).sum();
    let pairs = seqs.len();
    let hidden = loaded.batcher.embed(slot, seqs).await?;
    let logits = hidden
        .iter()
        .map(|h| loaded.embedder.logit(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    state.metrics.rerank_pairs.inc_by(pairs as u64);
    Ok(Scored {
        logits,
        tokens,
        documents: input.documents,
    })
}

/// Indices of `scores` from the most to the least relevant (ties by input order),
/// cut to `top_n`.
pub fn ranked(scores: &[f32], top_n: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(top_n.unwrap_or(order.len()));
    order
}

/// A response id: unique within this process and across restarts.
pub fn response_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{nanos:x}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_score_then_input_order() {
        assert_eq!(ranked(&[0.1, 0.9, 0.5, 0.9], None), vec![1, 3, 2, 0]);
        assert_eq!(ranked(&[0.1, 0.9, 0.5], Some(2)), vec![1, 2]);
        assert_eq!(ranked(&[0.1, 0.9], Some(5)), vec![1, 0]);
    }
}
