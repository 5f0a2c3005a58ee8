//! Qwen3-Reranker against the model card's own transformers scoring of the fixtures
//! in `models/` (template, left padding, log-softmax over no/yes): the ids, the scores
//! in every dtype, the rankings, batch invariance, tensor parallelism, and the real
//! Qwen3 vocabulary's template ids.

use std::path::Path;

use qembed_engine::rerank::{sigmoid, RerankTemplate};
use qembed_engine::{DTypeChoice, Embedder, EngineError, LoadOptions, Pair, Qwen3Tokenizer, Task};
use qembed_testkit::{
    fixture, read_json, rerank_gate, root, RerankGroup, RerankReference, RERANK_FIXTURES,
};
use serde::Deserialize;

fn load(name: &str, dtype: DTypeChoice, max_length: Option<usize>, tp: usize) -> Embedder {
    let opts = LoadOptions {
        task: Task::Rerank,
        dtype,
        max_length,
        tensor_parallel: tp,
        max_batch_tokens: 2048,
        ..LoadOptions::default()
    };
    Embedder::load(&fixture(name), &opts).unwrap()
}

fn pairs(g: &RerankGroup) -> Vec<Pair<'_>> {
    g.documents
        .iter()
        .map(|d| Pair {
            query: &g.query,
            document: d,
            instruction: g.instruction.as_deref(),
        })
        .collect()
}

/// Every group's (logit, tokens) per document, each group at its own length limit.
fn score_all(name: &str, dtype: DTypeChoice, tp: usize) -> Vec<Vec<(f32, usize)>> {
    let r = RerankReference::load(name);
    r.groups
        .iter()
        .map(|g| {
            load(name, dtype, g.max_length, tp)
                .rerank(&pairs(g), true)
                .unwrap()
        })
        .collect()
}

#[test]
fn template_ids_match_the_cards() {
    for name in RERANK_FIXTURES {
        let r = RerankReference::load(name);
        for g in &r.groups {
            let m = load(name, DTypeChoice::F32, g.max_length, 1);
            for (i, (pair, want)) in pairs(g).iter().zip(&g.input_ids).enumerate() {
                let got = m.tokenize_pair(*pair, true).unwrap();
                assert_eq!(&got, want, "{name}/{} document {i}", g.name);
                assert!(got.starts_with(&r.prefix_ids) && got.ends_with(&r.suffix_ids));
            }
        }
    }
}

/// Worst |score - reference| over all documents of a fixture, with the count checked.
fn worst_score_error(name: &str, dtype: DTypeChoice) -> (f64, f64) {
    let r = RerankReference::load(name);
    let got = score_all(name, dtype, 1);
    assert_eq!(got.len(), r.groups.len(), "{name}: one result per group");
    let (mut worst_score, mut worst_logit) = (0.0f64, 0.0f64);
    for (g, scored) in r.groups.iter().zip(&got) {
        assert_eq!(
            scored.len(),
            g.documents.len(),
            "{name}/{}: one score per document",
            g.name
        );
        for (i, ((logit, tokens), (want_logit, want_score))) in scored
            .iter()
            .zip(g.logits.iter().zip(&g.scores))
            .enumerate()
        {
            assert_eq!(
                *tokens,
                g.input_ids[i].len(),
                "{name}/{} document {i}",
                g.name
            );
            worst_score = worst_score.max((sigmoid(*logit) as f64 - *want_score as f64).abs());
            worst_logit = worst_logit.max((*logit as f64 - *want_logit as f64).abs());
        }
    }
    println!("{name} {dtype:?}: worst |score - reference| {worst_score:.2e}, worst |logit - reference| {worst_logit:.2e}");
    (worst_score, worst_logit)
}

#[test]
fn f32_scores_match_transformers() {
    for name in RERANK_FIXTURES {
        let (score, _) = worst_score_error(name, DTypeChoice::F32);
        assert!(score <= rerank_gate("f32"), "{name}: {score}");
    }
}

/// Reduced precision is held to what its rounding allows (the bounds and their
/// measurements: `qembed_gates::rerank_gate`).
#[test]
fn bf16_scores_match_transformers() {
    for name in RERANK_FIXTURES {
        let (score, _) = worst_score_error(name, DTypeChoice::Bf16);
        assert!(score <= rerank_gate("bf16"), "{name}: {score}");
    }
}

#[test]
fn f16_scores_match_transformers() {
    for name in RERANK_FIXTURES {
        let (score, _) = worst_score_error(name, DTypeChoice::F16);
        assert!(score <= rerank_gate("f16"), "{name}: {score}");
    }
}

/// The order a user sees: identical to the card's in f32 in every group.
#[test]
fn f32_rankings_are_the_cards() {
    for name in RERANK_FIXTURES {
        let r = RerankReference::load(name);
        for (g, scored) in r.groups.iter().zip(score_all(name, DTypeChoice::F32, 1)) {
            let order = |s: &[f32]| {
                let mut o: Vec<usize> = (0..s.len()).collect();
                o.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
                o
            };
            let got: Vec<f32> = scored.iter().map(|(l, _)| *l).collect();
            assert_eq!(order(&got), order(&g.scores), "{name}/{}", g.name);
        }
    }
}

/// All documents of all groups in one forward pass score as each does alone.
#[test]
fn batched_equals_one_by_one() {
    let name = RERANK_FIXTURES[0];
    let r = RerankReference::load(name);
    let m = load(name, DTypeChoice::F32, None, 1);
    let all: Vec<Pair> = r
        .groups
        .iter()
        .filter(|g| g.max_length.is_none())
        .flat_map(pairs)
        .collect();
    assert!(all.len() >= 20, "enough pairs to batch: {}", all.len());
    let batched = m.rerank(&all, true).unwrap();
    assert_eq!(batched.len(), all.len());
    for (i, (pair, (logit, _))) in all.iter().zip(&batched).enumerate() {
        let (alone, _) = m.rerank(std::slice::from_ref(pair), true).unwrap()[0];
        assert!(
            (alone - logit).abs() <= 1e-5,
            "pair {i}: {alone} alone, {logit} batched"
        );
    }
}

/// The head on the replicated final hidden state: TP=2 scores equal one rank's.
#[test]
fn tensor_parallel_scores_equal_one_rank() {
    for name in RERANK_FIXTURES {
        let one = score_all(name, DTypeChoice::F32, 1);
        let two = score_all(name, DTypeChoice::F32, 2);
        assert_eq!(one.len(), two.len());
        let mut worst = 0.0f32;
        for (a, b) in one.iter().zip(&two) {
            assert_eq!(a.len(), b.len());
            for ((la, ta), (lb, tb)) in a.iter().zip(b) {
                assert_eq!(ta, tb);
                worst = worst.max((la - lb).abs());
            }
        }
        println!("{name}: TP=2 vs TP=1 worst |logit difference| {worst:.2e}");
        assert!(worst <= 1e-4, "{name}: {worst}");
    }
}

#[test]
fn over_long_pairs_are_cut_or_refused() {
    let name = RERANK_FIXTURES[0];
    let r = RerankReference::load(name);
    let g = r.groups.iter().find(|g| g.max_length.is_some()).unwrap();
    let max = g.max_length.unwrap();
    let m = load(name, DTypeChoice::F32, Some(max), 1);
    let long = pairs(g)
        .into_iter()
        .find(|p| m.tokenize_pair(*p, true).unwrap().len() == max)
        .expect("a truncated document in the group");
    match m.tokenize_pair(long, false) {
        Err(EngineError::PairTooLong { tokens, max: m }) => assert!(tokens > max && m == max),
        other => panic!("expected PairTooLong, got {other:?}"),
    }
    let empty = Pair {
        document: "",
        ..long
    };
    assert!(matches!(
        m.tokenize_pair(empty, true),
        Err(EngineError::EmptyInput)
    ));
    // A limit that leaves no room after the template is refused at load.
    let opts = LoadOptions {
        task: Task::Rerank,
        max_length: Some(r.prefix_ids.len() + r.suffix_ids.len()),
        ..LoadOptions::default()
    };
    assert!(matches!(
        Embedder::load(&fixture(name), &opts),
        Err(EngineError::Setting(_))
    ));
}

#[test]
fn checkpoint_without_output_projection_cannot_rerank() {
    // The tied fixture with `tie_word_embeddings` off: no lm_head, nothing tied.
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(RERANK_FIXTURES[0]);
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    assert!(config.contains("\"tie_word_embeddings\": true"));
    std::fs::write(
        dir.path().join("config.json"),
        config.replace(
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": false",
        ),
    )
    .unwrap();
    let opts = LoadOptions {
        task: Task::Rerank,
        ..LoadOptions::default()
    };
    let err = Embedder::load(dir.path(), &opts).err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("lm_head") && msg.contains("tie_word_embeddings"),
        "{msg}"
    );
    // The same checkpoint still loads for embeddings.
    assert!(Embedder::load(dir.path(), &LoadOptions::default()).is_ok());
    // And an embedding tokenizer without single `yes`/`no` tokens is refused clearly.
    let err = Embedder::load(&fixture("qwen3-tiny-mqa"), &opts)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("yes"), "{err}");
}

#[test]
fn embedding_model_refuses_pairs_and_reranker_names_its_task() {
    let m = Embedder::load(&fixture("qwen3-tiny-gqa"), &LoadOptions::default()).unwrap();
    assert_eq!(m.task(), Task::Embed);
    let pair = Pair {
        query: "q",
        document: "d",
        instruction: None,
    };
    let err = m.tokenize_pair(pair, true).unwrap_err();
    assert!(matches!(err, EngineError::WrongTask { .. }));
    assert!(err.to_string().contains("--task rerank"), "{err}");
    assert_eq!(
        load(RERANK_FIXTURES[1], DTypeChoice::F32, None, 1).task(),
        Task::Rerank
    );
}

#[derive(Deserialize)]
struct RealVocab {
    yes_id: u32,
    no_id: u32,
    prefix_ids: Vec<u32>,
    suffix_ids: Vec<u32>,
    cases: Vec<RealCase>,
}

#[derive(Deserialize)]
struct RealCase {
    name: String,
    query: String,
    instruction: Option<String>,
    max_length: Option<usize>,
    document: String,
    input_ids: Vec<u32>,
}

/// The template with the real Qwen3 vocabulary (`../shared`), against the ids the
/// card's code produced with transformers' tokenizer for the same files.
#[test]
fn real_qwen3_vocabulary_gives_the_cards_ids() {
    let dir = root().join("../shared/data/qwen3-tokenizer");
    if !dir.join("tokenizer.json").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {}",
            dir.display()
        );
        qembed_testkit::skipped(
            "real_qwen3_vocabulary_gives_the_cards_ids",
            &format!(
                "no {} (../shared is not beside this checkout)",
                dir.display()
            ),
        );
        return;
    }
    let want: RealVocab = read_json(&root().join("models/rerank-template-real-vocab.json"));
    let tok = Qwen3Tokenizer::from_dir(Path::new(&dir)).unwrap();
    let t = RerankTemplate::new(&tok).unwrap();
    assert_eq!((t.yes, t.no), (want.yes_id, want.no_id));
    assert_eq!((t.yes, t.no), (9693, 2152), "PROVENANCE.md's ids");
    assert_eq!(t.overhead(), want.prefix_ids.len() + want.suffix_ids.len());
    assert!(want.cases.len() >= 4);
    for c in &want.cases {
        let pair = Pair {
            query: &c.query,
            document: &c.document,
            instruction: c.instruction.as_deref(),
        };
        let ids = t
            .encode(&tok, pair, c.max_length.unwrap_or(8192), true, None)
            .unwrap();
        assert_eq!(ids, c.input_ids, "{}", c.name);
        assert!(ids.starts_with(&want.prefix_ids) && ids.ends_with(&want.suffix_ids));
    }
}
