//! The golden-set gate: reference answers the new colour must reproduce.
//!
//! A golden set is JSON Lines; each line is one case, and the fields it carries say
//! its kind: `embedding` (a vector, matched by cosine: an embedding colour) or `scores`
//! (one relevance score per document, matched within an absolute error: a reranker).
//! A kind is a `Case` variant with its own request and its own measure of agreement.
//! Every case must be of the colour's task: a reranker checked against vectors (or the
//! other way round) would check nothing its clients rely on, and means the golden set
//! or the colour is not the one meant.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Config;
use crate::instance::{cosine, Caller, EmbedRequest, Instance, RerankRequest};
use crate::task::Task;

/// An embedding case: a text and the vector the new colour must reproduce.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingCase {
    pub text: String,
    #[serde(default)]
    pub instruction: Option<String>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    pub embedding: Vec<f32>,
}

/// A reranker case: a query, its documents and the score of each, in order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoresCase {
    pub query: String,
    pub documents: Vec<String>,
    #[serde(default)]
    pub instruction: Option<String>,
    pub scores: Vec<f64>,
}

#[derive(Debug)]
pub enum Case {
    Embedding(EmbeddingCase),
    Scores(ScoresCase),
}

/// How one case came out: a value against its limit, and which way is better.
#[derive(Debug, Clone)]
struct Measure {
    value: f64,
    limit: f64,
    higher_is_better: bool,
    /// Where in the case it was worst (a document), for the log.
    detail: String,
}

impl Measure {
    /// NaN (a broken vector or score) fails rather than slipping past a comparison.
    fn passes(&self) -> bool {
        !self.value.is_nan()
            && if self.higher_is_better {
                self.value >= self.limit
            } else {
                self.value <= self.limit
            }
    }

    /// How far from perfect, comparable between cases of one kind (NaN is worst).
    fn badness(&self) -> f64 {
        match (self.value.is_nan(), self.higher_is_better) {
            (true, _) => f64::INFINITY,
            (false, true) => -self.value,
            (false, false) => self.value,
        }
    }
}

/// The largest |got - want| and its index; NaN if any difference is NaN, infinite
/// when the lengths differ.
fn max_error(got: &[f64], want: &[f64]) -> (f64, usize) {
    if got.len() != want.len() {
        return (f64::INFINITY, 0);
    }
    let mut worst = (0.0, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if d.is_nan() {
            return (f64::NAN, i);
        }
        if d > worst.0 {
            worst = (d, i);
        }
    }
    worst
}

impl Case {
    fn parse(line: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(line)?;
        match (v.get("embedding").is_some(), v.get("scores").is_some()) {
            (true, true) => bail!("a golden case holds `embedding` or `scores`, not both"),
            (true, false) => Ok(Self::Embedding(serde_json::from_value(v)?)),
            (false, true) => {
                let c: ScoresCase = serde_json::from_value(v)?;
                if c.documents.is_empty() || c.documents.len() != c.scores.len() {
                    bail!(
                        "a scores case needs one score per document ({} documents, {} scores)",
                        c.documents.len(),
                        c.scores.len()
                    );
                }
                Ok(Self::Scores(c))
            }
            (false, false) => bail!(
                "a golden case needs `embedding` (an embedding colour's reference vector) or \
                 `scores` (a reranker's reference score per document)"
            ),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Embedding(_) => "embedding",
            Self::Scores(_) => "scores",
        }
    }

    /// The task a colour must serve for this case to apply.
    fn task(&self) -> Task {
        match self {
            Self::Embedding(_) => Task::Embed,
            Self::Scores(_) => Task::Rerank,
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Embedding(c) => c.text.chars().take(40).collect(),
            Self::Scores(c) => c.query.chars().take(40).collect(),
        }
    }

    /// The colour's answer measured against the reference, sent as `caller` on the
    /// route its clients use.
    async fn judge(&self, inst: &Instance, caller: &Caller, cfg: &Config) -> Measure {
        let v = &cfg.verify;
        match self {
            Self::Embedding(c) => {
                let texts = std::slice::from_ref(&c.text);
                let req = EmbedRequest {
                    texts,
                    instruction: c.instruction.as_deref(),
                    dimensions: c.dimensions,
                };
                let got = match inst.embed(caller, &req).await {
                    Ok(a) => a.embeddings(),
                    Err(e) => Err(e),
                };
                let cos = match got {
                    Ok(vs) => vs.first().map(|x| cosine(x, &c.embedding)).unwrap_or(0.0),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "golden request failed");
                        0.0
                    }
                };
                Measure {
                    value: cos,
                    limit: v.golden_min_cosine,
                    higher_is_better: true,
                    detail: String::new(),
                }
            }
            Self::Scores(c) => {
                let (route, api) = (&cfg.clients.rerank_route, cfg.clients.rerank_api);
                let req = RerankRequest {
                    query: &c.query,
                    documents: &c.documents,
                    instruction: c.instruction.as_deref(),
                };
                let got = match inst.rerank(caller, route, api, &req).await {
                    Ok(a) => a.scores(api, c.documents.len()),
                    Err(e) => Err(e),
                };
                let (value, detail) = match got {
                    Ok(got) => {
                        let (err, i) = max_error(&got, &c.scores);
                        let detail = format!(
                            "document {i}: {:.6} where the golden set has {:.6}",
                            got.get(i).copied().unwrap_or(f64::NAN),
                            c.scores[i]
                        );
                        (err, detail)
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "golden request failed");
                        (f64::INFINITY, format!("POST {route} failed"))
                    }
                };
                Measure {
                    value,
                    limit: v.golden_max_score_error,
                    higher_is_better: false,
                    detail,
                }
            }
        }
    }
}

pub struct GoldenSet {
    cases: Vec<Case>,
}

impl GoldenSet {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cases = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                Case::parse(l).with_context(|| format!("{}: line {}", path.display(), i + 1))
            })
            .collect::<Result<_>>()?;
        Ok(Self { cases })
    }

    /// Cases of a kind that does not apply to a colour serving `task`, by kind.
    fn misfits(&self, task: Task) -> Vec<(&'static str, usize)> {
        let mut out: Vec<(&'static str, usize)> = Vec::new();
        for c in self.cases.iter().filter(|c| c.task() != task) {
            match out.iter_mut().find(|(k, _)| *k == c.kind()) {
                Some((_, n)) => *n += 1,
                None => out.push((c.kind(), 1)),
            }
        }
        out
    }

    /// Runs every case as `caller` against a colour serving `task`; logs the worst
    /// case of each kind.
    pub async fn check(&self, inst: &Instance, caller: &Caller, cfg: &Config, task: Task) -> bool {
        let misfits = self.misfits(task);
        if !misfits.is_empty() {
            tracing::error!(
                color = %inst.name, task = %task,
                "gate golden set: FAIL (it holds {} case(s), which do not apply to a colour \
                 serving {task}: an embedding colour's golden set holds `embedding` lines, a \
                 reranker's `scores` lines)",
                misfits
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return false;
        }
        let mut tallies: Vec<Tally> = Vec::new();
        for case in &self.cases {
            let m = case.judge(inst, caller, cfg).await;
            let t = match tallies.iter().position(|t| t.kind == case.kind()) {
                Some(i) => &mut tallies[i],
                None => {
                    tallies.push(Tally::new(case.kind()));
                    let last = tallies.len() - 1;
                    &mut tallies[last]
                }
            };
            t.add(m, case);
        }
        let mut passed = true;
        for t in tallies {
            passed &= t.failed == 0;
            let worst = t.worst.as_ref();
            let (value, limit) = worst.map(|m| (m.value, m.limit)).unwrap_or_default();
            let measure = match t.kind {
                "scores" => "max |score error|",
                _ => "min cosine",
            };
            if t.failed == 0 {
                tracing::info!(
                    kind = t.kind, cases = t.cases, failed = t.failed, worst = value,
                    threshold = limit, worst_case = %t.worst_label,
                    "gate golden set: ok ({measure})"
                );
            } else {
                tracing::error!(
                    kind = t.kind, cases = t.cases, failed = t.failed, worst = value,
                    threshold = limit, worst_case = %t.worst_label,
                    "gate golden set: FAIL ({measure} {value:.3e} against {limit:.3e})"
                );
            }
        }
        passed
    }
}

/// One kind's results: how many cases, how many failed, and the worst.
struct Tally {
    kind: &'static str,
    cases: usize,
    failed: usize,
    worst: Option<Measure>,
    worst_label: String,
}

impl Tally {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            cases: 0,
            failed: 0,
            worst: None,
            worst_label: String::new(),
        }
    }

    fn add(&mut self, m: Measure, case: &Case) {
        self.cases += 1;
        if !m.passes() {
            self.failed += 1;
        }
        if self
            .worst
            .as_ref()
            .is_none_or(|w| m.badness() > w.badness())
        {
            self.worst_label = match m.detail.as_str() {
                "" => case.label(),
                d => format!("{} ({d})", case.label()),
            };
            self.worst = Some(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_pick_their_kind() {
        let c = Case::parse(r#"{"text": "a", "dimensions": 4, "embedding": [1, 0]}"#).unwrap();
        assert!(matches!(&c, Case::Embedding(e) if e.dimensions == Some(4)));
        assert_eq!(c.task(), Task::Embed);
        assert!(Case::parse(r#"{"text": "a"}"#).is_err());
        assert!(Case::parse(r#"{"text": "a", "embedding": [1], "extra": 1}"#).is_err());
        let c = Case::parse(r#"{"query": "q", "documents": ["a", "b"], "scores": [0.5, 0.25]}"#)
            .unwrap();
        assert!(
            matches!(&c, Case::Scores(s) if s.scores == [0.5, 0.25] && s.instruction.is_none())
        );
        assert_eq!(c.task(), Task::Rerank);
        // One score per document, at least one document, one kind per line.
        assert!(
            Case::parse(r#"{"query": "q", "documents": ["a"], "scores": [0.5, 0.2]}"#).is_err()
        );
        assert!(Case::parse(r#"{"query": "q", "documents": [], "scores": []}"#).is_err());
        assert!(Case::parse(
            r#"{"query": "q", "documents": ["a"], "scores": [1], "embedding": [1]}"#
        )
        .is_err());
    }

    #[test]
    fn score_errors_and_their_limit() {
        let (err, at) = max_error(&[0.5, 0.2, 0.9], &[0.5005, 0.1, 0.9]);
        assert!((err - 0.1).abs() < 1e-12 && at == 1, "{err} at {at}");
        assert!(max_error(&[f64::NAN, 0.2], &[0.5, 0.2]).0.is_nan());
        assert_eq!(max_error(&[0.5], &[0.5, 0.2]).0, f64::INFINITY);
        let m = |value: f64| Measure {
            value,
            limit: 1e-3,
            higher_is_better: false,
            detail: String::new(),
        };
        assert!(m(1e-3).passes() && m(0.0).passes());
        assert!(!m(1.1e-3).passes() && !m(f64::NAN).passes() && !m(f64::INFINITY).passes());
        assert!(m(f64::NAN).badness() > m(0.5).badness() && m(0.5).badness() > m(1e-6).badness());
        let cos = |value: f64| Measure {
            higher_is_better: true,
            limit: 0.999,
            ..m(value)
        };
        assert!(cos(0.9995).passes() && !cos(0.99).passes() && !cos(f64::NAN).passes());
        assert!(cos(0.5).badness() > cos(0.99).badness());
    }

    /// Cases of the other task are named, by kind, before anything is sent.
    #[test]
    fn cases_must_fit_the_colours_task() {
        let set = GoldenSet {
            cases: vec![
                Case::parse(r#"{"text": "a", "embedding": [1, 0]}"#).unwrap(),
                Case::parse(r#"{"query": "q", "documents": ["a"], "scores": [0.5]}"#).unwrap(),
                Case::parse(r#"{"text": "b", "embedding": [0, 1]}"#).unwrap(),
            ],
        };
        assert_eq!(set.misfits(Task::Rerank), vec![("embedding", 2)]);
        assert_eq!(set.misfits(Task::Embed), vec![("scores", 1)]);
    }

    /// The example under deploy/ is a valid reranker golden set, made from the
    /// qwen3-rerank-head fixture's reference (transformers' scores), every group the
    /// server scores with its own limits (those with a `max_length` need another
    /// `--max-input-tokens`).
    #[test]
    fn deploy_example_is_the_head_fixtures_reference() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let set = GoldenSet::load(&root.join("deploy/golden/rerank.example.jsonl")).unwrap();
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("models/qwen3-rerank-head/reference.json")).unwrap(),
        )
        .unwrap();
        let groups: Vec<&Value> = reference["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["max_length"].is_null())
            .collect();
        assert_eq!(set.cases.len(), groups.len());
        for (case, g) in set.cases.iter().zip(groups) {
            let Case::Scores(c) = case else {
                panic!("not a scores case: {case:?}")
            };
            assert_eq!(c.query, g["query"].as_str().unwrap());
            assert_eq!(c.instruction.as_deref(), g["instruction"].as_str());
            let docs: Vec<&str> = g["documents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap())
                .collect();
            assert_eq!(c.documents, docs);
            let want: Vec<f64> = g["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_f64().unwrap())
                .collect();
            assert_eq!(c.scores, want);
        }
    }
}
