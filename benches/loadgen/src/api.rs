//! The request shapes qembed answers, one per route family, so that a load (or a
//! rollout check) can speak to a colour exactly as its clients do: OpenAI embeddings,
//! and the four rerank APIs (Jina/Cohere v1, Cohere v2, TEI, vLLM score). Each rerank
//! shape knows its body and where its answer keeps the scores and the token count.

use serde_json::{json, Value};

/// Every route qembed serves rerank requests on.
pub const RERANK_ROUTES: &[&str] = &["/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score"];

/// What a load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// `/v1/embeddings` or `/embeddings`: `{"input": [...]}`.
    #[default]
    Embeddings,
    /// One query against the request's inputs as documents.
    Rerank(RerankApi),
}

/// The rerank APIs, by the shape of their body and answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RerankApi {
    /// `/v1/rerank`: `{query, documents}` → `{results: [{index, relevance_score}], usage}`.
    JinaV1,
    /// `/v2/rerank`: `{query, documents}` → `{results: [{index, relevance_score}], meta}`.
    CohereV2,
    /// `/rerank`: `{query, texts}` → `[{index, score}]`.
    Tei,
    /// `/v1/score`, `/score`: `{text_1, text_2}` → `{data: [{index, score}], usage}`.
    Score,
}

/// An answer that does not hold what its shape promises.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadAnswer(String);

impl Api {
    /// The shape a route's clients send, or `None` for a route qembed does not serve
    /// requests of either kind on.
    pub fn from_route(route: &str) -> Option<Self> {
        match route {
            "/v1/embeddings" | "/embeddings" => Some(Self::Embeddings),
            r => RerankApi::from_route(r).map(Self::Rerank),
        }
    }

    /// A load request's body: `texts` embedded, or ranked against `query`. Over-long
    /// inputs are cut rather than refused where the API lets the client ask (a load
    /// measures serving, not the length check).
    pub fn load_body(&self, query: &str, texts: &[String]) -> Value {
        match self {
            Self::Embeddings => json!({"input": texts, "truncate": true}),
            Self::Rerank(r) => {
                let mut body = r.body(query, texts, None);
                if matches!(r, RerankApi::JinaV1 | RerankApi::Tei) {
                    body["truncate"] = json!(true);
                }
                body
            }
        }
    }

    /// The tokens the server reports having read (0 where the shape reports none).
    pub fn tokens(&self, answer: &Value) -> usize {
        let n = match self {
            Self::Embeddings | Self::Rerank(RerankApi::Score) => &answer["usage"]["prompt_tokens"],
            Self::Rerank(RerankApi::JinaV1) => &answer["usage"]["total_tokens"],
            Self::Rerank(RerankApi::CohereV2) => &answer["meta"]["tokens"]["input_tokens"],
            Self::Rerank(RerankApi::Tei) => &Value::Null,
        };
        n.as_u64().unwrap_or(0) as usize
    }
}

impl RerankApi {
    pub fn from_route(route: &str) -> Option<Self> {
        match route {
            "/v1/rerank" => Some(Self::JinaV1),
            "/v2/rerank" => Some(Self::CohereV2),
            "/rerank" => Some(Self::Tei),
            "/v1/score" | "/score" => Some(Self::Score),
            _ => None,
        }
    }

    /// The body scoring every document against `query` (no `model`: the caller adds
    /// its own), with the task's instruction where one is given.
    pub fn body(&self, query: &str, documents: &[String], instruction: Option<&str>) -> Value {
        let mut body = match self {
            Self::JinaV1 | Self::CohereV2 => json!({"query": query, "documents": documents}),
            Self::Tei => json!({"query": query, "texts": documents}),
            Self::Score => json!({"text_1": query, "text_2": documents}),
        };
        if let Some(i) = instruction {
            body["instruction"] = json!(i);
        }
        body
    }

    /// Each document's score, in the order the documents were sent (the ranked shapes
    /// list them best first): exactly `n`, every index once.
    pub fn scores(&self, answer: &Value, n: usize) -> Result<Vec<f64>, BadAnswer> {
        let (items, key) = match self {
            Self::JinaV1 | Self::CohereV2 => (&answer["results"], "relevance_score"),
            Self::Tei => (answer, "score"),
            Self::Score => (&answer["data"], "score"),
        };
        let items = items
            .as_array()
            .ok_or_else(|| BadAnswer(format!("no list of results in {}", short(answer))))?;
        if items.len() != n {
            return Err(BadAnswer(format!(
                "{} results for {n} documents",
                items.len()
            )));
        }
        let mut scores = vec![None; n];
        for item in items {
            let index = item["index"]
                .as_u64()
                .map(|i| i as usize)
                .filter(|i| *i < n)
                .ok_or_else(|| BadAnswer(format!("result without a valid index: {item}")))?;
            let score = item[key]
                .as_f64()
                .ok_or_else(|| BadAnswer(format!("result without a numeric `{key}`: {item}")))?;
            if scores[index].replace(score).is_some() {
                return Err(BadAnswer(format!("index {index} answered twice")));
            }
        }
        // n results, each index below n and none twice: every slot is filled.
        Ok(scores.into_iter().flatten().collect())
    }
}

fn short(v: &Value) -> String {
    v.to_string().chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rerank_route_has_a_shape() {
        for r in RERANK_ROUTES {
            assert!(matches!(Api::from_route(r), Some(Api::Rerank(_))), "{r}");
        }
        assert_eq!(Api::from_route("/v1/embeddings"), Some(Api::Embeddings));
        assert_eq!(Api::from_route("/v1/rerank/"), None);
    }

    #[test]
    fn scores_come_back_in_input_order() {
        let ranked = json!({"results": [{"index": 1, "relevance_score": 0.9},
                                        {"index": 0, "relevance_score": 0.2}],
                            "usage": {"total_tokens": 7}});
        assert_eq!(RerankApi::JinaV1.scores(&ranked, 2).unwrap(), [0.2, 0.9]);
        assert_eq!(Api::Rerank(RerankApi::JinaV1).tokens(&ranked), 7);
        let tei = json!([{"index": 1, "score": 0.9}, {"index": 0, "score": 0.2}]);
        assert_eq!(RerankApi::Tei.scores(&tei, 2).unwrap(), [0.2, 0.9]);
        let score = json!({"data": [{"index": 0, "score": 0.2}, {"index": 1, "score": 0.9}]});
        assert_eq!(RerankApi::Score.scores(&score, 2).unwrap(), [0.2, 0.9]);
        // Too few, out of range, twice, not a number, not a list: errors.
        assert!(RerankApi::Tei.scores(&tei, 3).is_err());
        assert!(RerankApi::Tei
            .scores(&json!([{"index": 2, "score": 0.1}]), 1)
            .is_err());
        let twice = json!([{"index": 0, "score": 0.2}, {"index": 0, "score": 0.9}]);
        assert!(RerankApi::Tei.scores(&twice, 2).is_err());
        assert!(RerankApi::Tei
            .scores(&json!([{"index": 0, "score": "x"}]), 1)
            .is_err());
        assert!(RerankApi::JinaV1
            .scores(&json!({"error": "no"}), 1)
            .is_err());
    }

    #[test]
    fn bodies_name_each_apis_fields() {
        let docs = ["a".to_string()];
        let b = RerankApi::Score.body("q", &docs, Some("task"));
        assert_eq!(
            b,
            json!({"text_1": "q", "text_2": ["a"], "instruction": "task"})
        );
        assert_eq!(RerankApi::Tei.body("q", &docs, None)["texts"], json!(["a"]));
        let load = Api::Rerank(RerankApi::CohereV2).load_body("q", &docs);
        assert_eq!(load, json!({"query": "q", "documents": ["a"]}));
        assert_eq!(Api::Embeddings.load_body("", &docs)["input"], json!(["a"]));
    }
}
