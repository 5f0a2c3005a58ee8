//! What the four rerank APIs (Jina/Cohere v1, Cohere v2, TEI, vLLM score) share: their
//! documents parsed the same way, pairs tokenised with the reranker's template off the
//! executor, scored through the same batcher as embeddings, and ranked.

use std::sync::atomic::{AtomicU64, Ordering};

use qembed_engine::rerank::sigmoid;
use qembed_engine::{Admission, EngineError, Pair, Task};
use serde_json::{Map, Value};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;

use super::{body, instruction_for, opt_string, parse_json_object, serving, type_name, AppResult};
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

/// A rerank request let in: the model (a reranker), its queue slot, its JSON body.
pub struct Admitted<'a> {
    pub loaded: &'a Loaded,
    pub slot: Admission,
    pub body: Map<String, Value>,
}

/// The gates every rerank route passes, cheapest first: 503 while loading or
/// draining, 400 on an embedding server, 429 past the admission limit, then the body.
pub fn admit(
    state: &AppState,
    arrival: Arrival,
    raw: Result<Bytes, BytesRejection>,
) -> AppResult<Admitted<'_>> {
    let loaded = serving(state, arrival)?;
    reranker(loaded)?;
    let slot = loaded.batcher.admit()?;
    let body = parse_json_object(&body(raw)?)?;
    Ok(Admitted { loaded, slot, body })
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
    }
}

/// The loaded model if it is a reranker; a 400 naming `--task` otherwise.
pub fn reranker(loaded: &Loaded) -> AppResult<()> {
    match loaded.embedder.task() {
        Task::Rerank => Ok(()),
        loaded_task => Err(ApiError::wrong_task(&EngineError::WrongTask {
            wanted: Task::Rerank,
            loaded: loaded_task,
        })),
    }
}

/// The `model` field: a served name, or absent (the first one).
pub fn model_name(state: &AppState, obj: &Map<String, Value>) -> AppResult<String> {
    match opt_string(obj, "model")? {
        Some(m) if !state.served_names.contains(&m) => Err(ApiError::model_not_found(&m)),
        Some(m) => Ok(m),
        None => Ok(state.served_names[0].clone()),
    }
}

/// A required, non-empty string field.
pub fn required_string(obj: &Map<String, Value>, key: &str) -> AppResult<String> {
    match opt_string(obj, key)? {
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

/// A list of documents: strings or `{"text": string}` objects, at least one, at most
/// `max`, none empty.
pub fn documents(value: Option<&Value>, field: &'static str, max: usize) -> AppResult<Vec<String>> {
    let items = match value {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                format!("'{field}' is a required property"),
                Some(field),
            ))
        }
        Some(Value::Array(items)) => items,
        Some(v) => {
            return Err(ApiError::invalid(
                format!("'{field}' must be an array, got {}", type_name(v)),
                Some(field),
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            format!("'{field}' must not be empty"),
            Some(field),
        ));
    }
    if items.len() > max {
        return Err(ApiError::invalid(
            format!(
                "'{field}' has {} items, more than the limit of {max}",
                items.len()
            ),
            Some(field),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = match item {
                Value::String(s) => s,
                Value::Object(o) => match o.get("text") {
                    Some(Value::String(s)) => s,
                    _ => {
                        return Err(ApiError::invalid(
                            format!(
                                "{field}[{i}] must be a string or an object with a string 'text'"
                            ),
                            Some(field),
                        ))
                    }
                },
                v => {
                    return Err(ApiError::invalid(
                        format!(
                            "{field}[{i}] must be a string or {{\"text\": ...}}, got {}",
                            type_name(v)
                        ),
                        Some(field),
                    ))
                }
            };
            if text.is_empty() {
                return Err(ApiError::invalid(
                    format!("{field}[{i}] is an empty string"),
                    Some(field),
                ));
            }
            Ok(text.clone())
        })
        .collect()
}

/// An optional boolean field.
pub fn opt_bool(obj: &Map<String, Value>, key: &str) -> AppResult<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::invalid(
            format!("'{key}' must be a boolean, got {}", type_name(v)),
            Some(key),
        )),
    }
}

/// An optional positive integer field.
pub fn opt_positive(obj: &Map<String, Value>, key: &str) -> AppResult<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                format!("'{key}' must be a positive integer, got {v}"),
                Some(key),
            )),
        },
    }
}

/// The request's task: `instruction` (or its alias `instruct`), else its
/// `prompt_name`, else `--default-instruction`; `None` leaves the card's default.
pub fn instruction(state: &AppState, obj: &Map<String, Value>) -> AppResult<Option<String>> {
    let given = match (
        opt_string(obj, "instruction")?,
        opt_string(obj, "instruct")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "Give 'instruction' or its alias 'instruct', not both",
                Some("instruct"),
            ))
        }
        (a, b) => a.or(b),
    };
    instruction_for(state, given, opt_string(obj, "prompt_name")?)
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
                    .tokenize_pair_capped(pair, input.truncate, input.max_tokens_per_doc)
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

    #[test]
    fn documents_are_strings_or_text_objects() {
        let v = serde_json::json!(["a", {"text": "b"}]);
        assert_eq!(documents(Some(&v), "documents", 8).unwrap(), ["a", "b"]);
        for bad in [
            serde_json::json!([]),
            serde_json::json!("a"),
            serde_json::json!(["a", 1]),
            serde_json::json!([{"content": "a"}]),
            serde_json::json!(["a", ""]),
            serde_json::json!(["a", "b", "c"]),
        ] {
            let err = documents(Some(&bad), "documents", 2).unwrap_err();
            assert_eq!(err.param.as_deref(), Some("documents"), "{bad}");
        }
        assert!(documents(None, "documents", 2).is_err());
    }
}
