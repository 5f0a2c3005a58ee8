//! The golden-set gate: reference answers the new colour must reproduce.
//!
//! A golden set is JSON Lines; each line is one case, and the fields it carries say
//! its kind. Today there is one kind (`embedding`: a vector to match by cosine); a kind
//! is a `Case` variant with its own request and its own measure of agreement, so a
//! reranker kind (scores to match) slots in beside it without touching the others.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Verify;
use crate::instance::{cosine, Caller, EmbedRequest, Instance};

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

#[derive(Debug)]
pub enum Case {
    Embedding(EmbeddingCase),
}

impl Case {
    fn parse(line: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(line)?;
        if v.get("embedding").is_some() {
            return Ok(Self::Embedding(serde_json::from_value(v)?));
        }
        bail!("a golden case needs `embedding` (the reference vector)")
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Embedding(_) => "embedding",
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Embedding(c) => c.text.chars().take(40).collect(),
        }
    }

    /// How well the colour's answer agrees with the reference (higher is better), and
    /// the floor it must reach.
    async fn judge(&self, inst: &Instance, caller: &Caller, v: &Verify) -> (f64, f64) {
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
                (cos, v.golden_min_cosine)
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

    /// Runs every case as `caller`; logs the worst case of each kind.
    pub async fn check(&self, inst: &Instance, caller: &Caller, v: &Verify) -> bool {
        let mut tallies: Vec<Tally> = Vec::new();
        for case in &self.cases {
            let (score, floor) = case.judge(inst, caller, v).await;
            let t = match tallies.iter().position(|t| t.kind == case.kind()) {
                Some(i) => &mut tallies[i],
                None => {
                    tallies.push(Tally::new(case.kind()));
                    let last = tallies.len() - 1;
                    &mut tallies[last]
                }
            };
            t.add(score, floor, case);
        }
        let mut passed = true;
        for t in tallies {
            passed &= t.failed == 0;
            tracing::info!(
                kind = t.kind, cases = t.cases, failed = t.failed, worst = t.worst,
                threshold = t.worst_floor, worst_case = %t.worst_label,
                "gate golden set: {}", if t.failed == 0 { "ok" } else { "FAIL" }
            );
        }
        passed
    }
}

/// One kind's results: how many cases, how many below their floor, and the worst.
struct Tally {
    kind: &'static str,
    cases: usize,
    failed: usize,
    worst: f64,
    worst_floor: f64,
    worst_label: String,
}

impl Tally {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            cases: 0,
            failed: 0,
            worst: f64::INFINITY,
            worst_floor: 0.0,
            worst_label: String::new(),
        }
    }

    fn add(&mut self, score: f64, floor: f64, case: &Case) {
        self.cases += 1;
        // NaN (a broken vector) fails rather than slipping past the comparison.
        let score = if score.is_nan() {
            f64::NEG_INFINITY
        } else {
            score
        };
        if score < floor {
            self.failed += 1;
        }
        if score < self.worst {
            (self.worst, self.worst_floor, self.worst_label) = (score, floor, case.label());
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
        assert!(Case::parse(r#"{"text": "a"}"#).is_err());
        assert!(Case::parse(r#"{"text": "a", "embedding": [1], "extra": 1}"#).is_err());
    }
}
