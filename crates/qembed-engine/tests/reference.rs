//! Text in, vector out, against transformers' vectors for the fixtures in `models/`:
//! tokenisation (instruction format, EOS rule, truncation), forward pass, Matryoshka
//! truncation and normalisation together.

use qembed_engine::{
    DTypeChoice, Embedder, EngineError, Input, LoadOptions, OutputOptions, Qwen3Tokenizer,
};
use qembed_testkit::{assert_close, fixture, gate, root, skipped, Case, Reference, FIXTURES};

fn reference(name: &str) -> Reference {
    Reference::load(name)
}

fn load(name: &str, dtype: DTypeChoice, max_length: Option<usize>) -> Embedder {
    let opts = LoadOptions {
        dtype,
        max_length,
        max_batch_tokens: 1024,
        ..LoadOptions::default()
    };
    Embedder::load(&fixture(name), &opts).unwrap()
}

fn input(c: &Case) -> Input<'_> {
    Input {
        text: &c.text,
        instruction: c.instruction.as_deref(),
    }
}

/// Both tokenizer kinds (EOS from the post-processor, EOS appended by the caller) give
/// the reference ids: one EOS at the end, instruction format, truncation keeping the EOS.
#[test]
fn token_ids_match_reference_for_both_tokenizer_kinds() {
    let mut kinds = std::collections::HashSet::new();
    for name in FIXTURES {
        let r = reference(name);
        kinds.insert(r.eos_post_processor);
        let e = load(name, DTypeChoice::F32, None);
        assert_eq!(e.tokenizer().eos_id(), r.eos_id);
        for c in &r.cases {
            let ids = match c.max_length {
                Some(m) => load(name, DTypeChoice::F32, Some(m)).tokenize(input(c), true),
                None => e.tokenize(input(c), true),
            }
            .unwrap();
            assert_eq!(ids, c.input_ids, "{name} {}", c.name);
            assert_eq!(
                ids.iter().filter(|&&t| t == r.eos_id).count(),
                c.text.matches("<|endoftext|>").count() + 1
            );
            assert_eq!(ids.last(), Some(&r.eos_id));
        }
    }
    assert_eq!(kinds.len(), 2, "fixtures must cover both tokenizer kinds");
}

/// Every case of every fixture through tokenisation, forward pass, Matryoshka
/// truncation and normalisation, against transformers within the test kit's gate.
fn check_embeddings(dtype: DTypeChoice) {
    for name in FIXTURES {
        let r = reference(name);
        let (mut got, mut want, mut names) = (Vec::new(), Vec::new(), Vec::new());
        // Group by (dims, max_length) so each call is one mixed-length batch.
        let mut groups: Vec<(Option<usize>, Option<usize>)> = r
            .cases
            .iter()
            .map(|c| (c.dimensions, c.max_length))
            .collect();
        groups.sort();
        groups.dedup();
        for (dims, max_length) in groups {
            let e = load(name, dtype, max_length);
            let cases: Vec<&Case> = r
                .cases
                .iter()
                .filter(|c| (c.dimensions, c.max_length) == (dims, max_length))
                .collect();
            let inputs: Vec<Input> = cases.iter().map(|c| input(c)).collect();
            let out = OutputOptions {
                dimensions: dims,
                normalize: true,
            };
            let vectors = e.embed(&inputs, true, out).unwrap();
            assert_eq!(vectors.len(), cases.len(), "{name} {dims:?} {max_length:?}");
            for (c, (v, tokens)) in cases.iter().zip(vectors) {
                assert_eq!(tokens, c.input_ids.len());
                assert_eq!(v.len(), dims.unwrap_or(r.hidden_size));
                let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4, "{name} {}: norm {norm}", c.name);
                got.push(v);
                want.push(c.embedding.as_slice());
                names.push(c.name.as_str());
            }
        }
        assert_eq!(got.len(), r.cases.len(), "{name}: every case ran");
        assert_close(
            &format!("{name} {dtype:?}"),
            &got,
            &want,
            &names,
            gate(dtype),
        );
    }
}

#[test]
fn f32_embeddings_match_transformers() {
    check_embeddings(DTypeChoice::F32);
}

#[test]
fn bf16_embeddings_match_transformers() {
    check_embeddings(DTypeChoice::Bf16);
}

#[test]
fn f16_embeddings_match_transformers() {
    check_embeddings(DTypeChoice::F16);
}

#[test]
fn raw_output_is_the_unnormalised_hidden_state() {
    let r = reference("qwen3-tiny-mqa");
    let e = load("qwen3-tiny-mqa", DTypeChoice::F32, None);
    let c = r
        .cases
        .iter()
        .find(|c| c.dimensions.is_none() && c.max_length.is_none())
        .unwrap();
    let raw = OutputOptions {
        dimensions: None,
        normalize: false,
    };
    let (v, _) = &e.embed(&[input(c)], true, raw).unwrap()[0];
    for (a, b) in v.iter().zip(&c.raw) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
    let raw32 = OutputOptions {
        dimensions: Some(32),
        normalize: false,
    };
    let (v32, _) = &e.embed(&[input(c)], true, raw32).unwrap()[0];
    assert_eq!(v32.as_slice(), &v[..32]);
}

#[test]
fn input_errors_are_typed() {
    let e = load("qwen3-tiny-gqa", DTypeChoice::F32, Some(16));
    let long = Input {
        text: "many words here to exceed sixteen tokens for sure, really many words",
        instruction: None,
    };
    let err = e
        .embed(&[long], false, OutputOptions::default())
        .unwrap_err();
    assert!(matches!(err, EngineError::TooLong { max: 16, .. }), "{err}");
    assert!(err.is_input_error());
    assert_eq!(
        e.embed(&[long], true, OutputOptions::default()).unwrap()[0].1,
        16
    );

    let empty = Input {
        text: "",
        instruction: Some("task"),
    };
    assert!(matches!(
        e.embed(&[empty], true, OutputOptions::default())
            .unwrap_err(),
        EngineError::EmptyInput
    ));

    let ok = Input {
        text: "fine",
        instruction: None,
    };
    for dims in [0, 31, 65] {
        let out = OutputOptions {
            dimensions: Some(dims),
            normalize: true,
        };
        let err = e.embed(&[ok], true, out).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::Dimensions {
                    min: 32,
                    max: 64,
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn max_length_above_model_positions_is_refused() {
    let opts = LoadOptions {
        max_length: Some(1_000_000),
        ..LoadOptions::default()
    };
    let err = Embedder::load(&fixture("qwen3-tiny-mqa"), &opts)
        .err()
        .unwrap();
    assert!(
        matches!(err, EngineError::Setting(ref m) if m.contains("positions")),
        "{err}"
    );
}

/// The real Qwen3 vocabulary from ../shared: our tokenisation and EOS rule give the ids
/// the Hugging Face stack gives. Required in CI, where ../shared is always present.
#[test]
fn real_qwen3_tokenizer_matches_expected_ids() {
    let dir = root().join("../shared/data/qwen3-tokenizer");
    if !dir.join("tokenizer.json").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {}",
            dir.display()
        );
        skipped(
            "real_qwen3_tokenizer_matches_expected_ids",
            &format!(
                "no {} (../shared is not beside this checkout)",
                dir.display()
            ),
        );
        return;
    }
    let tok = Qwen3Tokenizer::from_dir(&dir).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_ids.json")).unwrap())
            .unwrap();
    assert_eq!(tok.eos_id() as u64, expected["eos_id"].as_u64().unwrap());
    assert_eq!(tok.vocab_size(), 151_669);
    let cases = expected["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = |k: &str| -> Vec<u32> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        assert_eq!(tok.encode_plain(text).unwrap(), want("ids"), "{text:?}");
        assert_eq!(
            tok.encode(text, 32_768, false).unwrap(),
            want("model_input_ids"),
            "{text:?}"
        );
    }
}

/// `--tensor-parallel` on CPU: ranks on threads with the in-process all-reduce give the
/// reference vectors, across several forward passes (the ranks stay in step).
#[test]
fn tensor_parallel_group_matches_transformers() {
    let name = "qwen3-tiny-tp4";
    let r = reference(name);
    for size in [2, 4] {
        let opts = LoadOptions {
            dtype: DTypeChoice::F32,
            tensor_parallel: size,
            max_batch_tokens: 512,
            ..LoadOptions::default()
        };
        let embedder = Embedder::load(&fixture(name), &opts).unwrap();
        assert_eq!(embedder.model().tensor_parallel(), size);
        let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
        let got = embedder.embed_ids(&ids).unwrap();
        let (want, names): (Vec<&[f32]>, Vec<&str>) = r
            .cases
            .iter()
            .map(|c| (c.raw.as_slice(), c.name.as_str()))
            .unzip();
        assert_close(
            &format!("TP={size}"),
            &got,
            &want,
            &names,
            gate(DTypeChoice::F32),
        );
        // A bad batch is refused by the group as a whole, and it keeps serving.
        assert!(embedder.embed_ids(&[vec![u32::MAX]]).is_err());
        assert_eq!(embedder.embed_ids(&ids[..1]).unwrap()[0], got[0]);
    }
}

#[test]
fn tensor_parallel_size_that_does_not_divide_the_heads_is_a_clear_error() {
    let opts = LoadOptions {
        tensor_parallel: 3,
        ..LoadOptions::default()
    };
    let err = Embedder::load(&fixture("qwen3-tiny-tp4"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not divide"), "{err}");
    let opts = LoadOptions {
        tensor_parallel: 0,
        ..LoadOptions::default()
    };
    assert!(Embedder::load(&fixture("qwen3-tiny-tp4"), &opts).is_err());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_without_the_feature_is_a_clear_error() {
    let opts = LoadOptions {
        device: "cuda:0".parse().unwrap(),
        ..LoadOptions::default()
    };
    let err = Embedder::load(&fixture("qwen3-tiny-gqa"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--features cuda"), "{err}");
}
