//! What the workspace's test suites share (a dev-dependency only): where the fixture
//! checkpoints live, their reference outputs, the cosine every parity test compares
//! with, and a spawner for real `qembed serve` processes, so that the suites of the
//! model, the engine, the server and the rollout measure the same way.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod parity;
mod server;

pub use parity::{assert_close, cuda_gate, gate, rerank_gate, same_gate, Gate};
pub use qembed_gates::{int8_gate, int8_rerank_gate, spearman, Quality, QuantGate};
pub use server::Server;

/// The fixture checkpoints `models/generate.py` makes, each with the vectors Hugging
/// Face transformers produced for it (`reference.json`). The last has activation
/// outliers as real checkpoints do ([`OUTLIER_FIXTURE`]).
pub const FIXTURES: [&str; 5] = [
    "qwen3-tiny-gqa",
    "qwen3-tiny-mqa",
    "qwen3-tiny-f16",
    "qwen3-tiny-tp4",
    OUTLIER_FIXTURE,
];

/// The fixture whose activations have a few channels far above the rest (in the
/// embeddings and norm weights, with the weights reading them small in proportion):
/// hard for int8 without smoothing.
pub const OUTLIER_FIXTURE: &str = "qwen3-tiny-outliers";

/// The workspace root (where `models/` and `Cargo.toml` are).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory of fixture `name`: `models/<name>` at the workspace root.
pub fn fixture(name: &str) -> PathBuf {
    root().join("models").join(name)
}

/// An embedding fixture's `reference.json`: what transformers produced for each case.
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub eos_id: u32,
    pub eos_post_processor: bool,
    pub hidden_size: usize,
    pub cases: Vec<Case>,
}

/// One reference case: the input, the ids transformers saw, and its outputs.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    pub text: String,
    pub instruction: Option<String>,
    /// Matryoshka size of `embedding` (`None`: the full hidden size).
    pub dimensions: Option<usize>,
    /// Token limit the ids were truncated to (`None`: not truncated).
    pub max_length: Option<usize>,
    pub input_ids: Vec<u32>,
    /// The last token's final hidden state, un-normalised.
    pub raw: Vec<f32>,
    /// `raw` truncated to `dimensions` and L2-normalised.
    pub embedding: Vec<f32>,
}

impl Reference {
    /// Loads `models/<name>/reference.json`; panics with the path on any problem.
    pub fn load(name: &str) -> Self {
        read_json(&fixture(name).join("reference.json"))
    }

    /// Cases at full size and without truncation.
    pub fn plain(&self) -> impl Iterator<Item = &Case> {
        self.cases
            .iter()
            .filter(|c| c.dimensions.is_none() && c.max_length.is_none())
    }
}

/// The reranker fixtures `models/generate.py` makes: one with tied embeddings (like
/// Qwen3-Reranker-0.6B), one with its own `lm_head` (like 4B and 8B).
pub const RERANK_FIXTURES: [&str; 2] = ["qwen3-rerank-tied", "qwen3-rerank-head"];

/// A reranker fixture's `reference.json`: the model card's transformers scoring.
#[derive(Debug, Clone, Deserialize)]
pub struct RerankReference {
    pub yes_id: u32,
    pub no_id: u32,
    pub prefix_ids: Vec<u32>,
    pub suffix_ids: Vec<u32>,
    pub default_instruction: String,
    pub max_length: usize,
    pub groups: Vec<RerankGroup>,
}

/// One query with its documents, as the card scored them.
#[derive(Debug, Clone, Deserialize)]
pub struct RerankGroup {
    pub name: String,
    pub query: String,
    /// `None`: the card's default instruction.
    pub instruction: Option<String>,
    /// Token limit of the pairs (`None`: the card's 8192).
    pub max_length: Option<usize>,
    pub documents: Vec<String>,
    /// prefix + body + suffix ids per document, as the card built them.
    pub input_ids: Vec<Vec<u32>>,
    /// `l_yes - l_no` per document.
    pub logits: Vec<f32>,
    /// `sigmoid(l_yes - l_no)` per document.
    pub scores: Vec<f32>,
}

impl RerankReference {
    /// Loads `models/<name>/reference.json`; panics with the path on any problem.
    pub fn load(name: &str) -> Self {
        let r: Self = read_json(&fixture(name).join("reference.json"));
        for g in &r.groups {
            let n = g.documents.len();
            assert!(
                n > 0 && g.input_ids.len() == n && g.logits.len() == n && g.scores.len() == n,
                "{name}/{}: documents, ids, logits and scores differ in number",
                g.name
            );
        }
        r
    }
}

/// Parses a JSON file into `T`, panicking with the path (test code only).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Cosine similarity of two vectors of one length, accumulated in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    qembed_gates::cosine(a, b)
}

/// Says on stderr that `test` did not run its subject, and why: one line starting
/// `SKIPPED`, written past the test harness's capture (which swallows `println!` and
/// `eprintln!` of passing tests), so that CI's output shows every skip.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Whether this machine's tests must run CPU kernel `name` (`avx2`, `amx`, ...) rather
/// than skip it: `QEMBED_REQUIRE_<NAME>` is set (`QEMBED_REQUIRE_AVX2`,
/// `QEMBED_REQUIRE_AMX`, ...), or `QEMBED_REQUIRE_KERNELS` (comma-separated names, or
/// `all`) names it. CI sets these from /proc/cpuinfo, so a kernel the CPU has can
/// never pass as skipped.
pub fn kernel_required(name: &str) -> bool {
    let own = require_var(name);
    let list = std::env::var("QEMBED_REQUIRE_KERNELS").unwrap_or_default();
    std::env::var_os(own).is_some_and(|v| !v.is_empty())
        || list
            .split(',')
            .map(str::trim)
            .any(|k| k.eq_ignore_ascii_case(name) || k == "all")
}

/// The variable that requires kernel `name`'s tests: `QEMBED_REQUIRE_` and the name in
/// capitals, `-` as `_` (`amx-int8`: `QEMBED_REQUIRE_AMX_INT8`).
pub fn require_var(name: &str) -> String {
    format!(
        "QEMBED_REQUIRE_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixtures_exist_and_cosine_is_scale_free() {
        for name in super::FIXTURES {
            let r = super::Reference::load(name);
            assert_eq!(r.cases.len(), 46, "{name}");
            assert!(r.plain().count() > 0, "{name}");
        }
        for name in super::RERANK_FIXTURES {
            assert!(
                super::RerankReference::load(name).groups.len() >= 6,
                "{name}"
            );
        }
        let a = [1.0, 2.0, -3.0];
        assert!((super::cosine(&a, &[2.0, 4.0, -6.0]) - 1.0).abs() < 1e-12);
        assert!((super::cosine(&a, &[-1.0, -2.0, 3.0]) + 1.0).abs() < 1e-12);
        assert!(super::cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
    }
}
