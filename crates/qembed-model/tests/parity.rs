//! The forward pass against vectors that Hugging Face transformers produced for the
//! fixture checkpoints in `models/` (see `models/generate.py`). Token ids come from the
//! reference file, so this isolates the model from tokenisation.

use std::io::Write;

use qembed_model::{cpu_kernels, DType, Device, ModelError, PackedBatch, Qwen3Embedding};
use qembed_testkit::{cosine, fixture, kernel_required, FIXTURES};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    input_ids: Vec<u32>,
    raw: Vec<f32>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Runs every case of every fixture as one mixed-length packed batch, and returns the
/// worst cosine against transformers per fixture.
fn check_parity(dtype: DType, threshold: f64) {
    for name in FIXTURES {
        let model = Qwen3Embedding::load(&fixture(name), dtype, &Device::Cpu).unwrap();
        let r = reference(name);
        let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
        let got = model.embed(&PackedBatch::new(&ids)).unwrap();
        let mut worst = (1.0f64, "");
        for (case, v) in r.cases.iter().zip(&got) {
            let c = cosine(v, &case.raw);
            if c < worst.0 {
                worst = (c, &case.name);
            }
        }
        println!(
            "{name} {dtype:?}: worst cosine {:.7} ({})",
            worst.0, worst.1
        );
        assert!(
            worst.0 >= threshold,
            "{name} {dtype:?}: case {} cosine {} < {threshold}",
            worst.1,
            worst.0
        );
    }
}

/// Every CPU GEMM kernel built in, in every dtype it runs, against transformers on
/// every fixture: f32 weights to cosine 0.99999, bf16 and f16 to 0.9999. A kernel this
/// CPU cannot run is reported on stderr (past the harness's capture) as SKIPPED, or
/// fails the test where it is required.
#[test]
fn every_cpu_kernel_matches_transformers() {
    let mut ran = 0;
    for kernel in cpu_kernels() {
        if let Some(why) = &kernel.unavailable {
            assert!(
                !kernel_required(kernel.name),
                "kernel {} required, but {why}",
                kernel.name
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: parity of the {} kernel ({why}); QEMBED_REQUIRE_{} makes this fail",
                kernel.name,
                kernel.name.to_ascii_uppercase()
            );
            continue;
        }
        for &dtype in &kernel.dtypes {
            let threshold = if dtype == DType::F32 { 0.99999 } else { 0.9999 };
            for name in FIXTURES {
                let model = Qwen3Embedding::load_with_cpu_kernel(
                    &fixture(name),
                    dtype,
                    &Device::Cpu,
                    kernel.name,
                )
                .unwrap();
                assert_eq!(model.cpu_kernel(), Some(kernel.name));
                let r = reference(name);
                let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
                let got = model.embed(&PackedBatch::new(&ids)).unwrap();
                assert_eq!(got.len(), r.cases.len(), "{} {name} {dtype:?}", kernel.name);
                let (worst, case) = r
                    .cases
                    .iter()
                    .zip(&got)
                    .map(|(case, v)| (cosine(v, &case.raw), &case.name))
                    .fold((f64::INFINITY, &r.cases[0].name), |a, b| {
                        if b.0 < a.0 {
                            b
                        } else {
                            a
                        }
                    });
                println!(
                    "{} {name} {dtype:?}: worst cosine {worst:.7} ({case})",
                    kernel.name
                );
                assert!(
                    worst >= threshold,
                    "{} kernel, {name} {dtype:?}: case {case} cosine {worst} < {threshold}",
                    kernel.name
                );
                ran += 1;
            }
        }
    }
    assert!(ran >= FIXTURES.len(), "no kernel could run");
}

/// A forced kernel that does not exist, or cannot run the dtype, is an error at load.
#[test]
fn a_kernel_that_cannot_run_is_an_error_at_load() {
    let dir = fixture("qwen3-tiny-mqa");
    let err = Qwen3Embedding::load_with_cpu_kernel(&dir, DType::F32, &Device::Cpu, "sse9")
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::CpuKernel(_)), "{err}");
    let err = Qwen3Embedding::load_with_cpu_kernel(&dir, DType::F32, &Device::Cpu, "amx")
        .err()
        .unwrap();
    assert!(err.to_string().contains("QEMBED_CPU_KERNEL=amx"), "{err}");
}

#[test]
fn f32_matches_transformers() {
    check_parity(DType::F32, 0.99999);
}

#[test]
fn bf16_matches_transformers() {
    check_parity(DType::BF16, 0.999);
}

#[test]
fn f16_matches_transformers() {
    check_parity(DType::F16, 0.999);
}

/// A text alone and the same text inside a batch of other lengths give the same vector:
/// nothing leaks between sequences and no padding changes the result.
#[test]
fn batch_invariance() {
    for name in FIXTURES {
        let model = Qwen3Embedding::load(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let r = reference(name);
        let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
        let batched = model.embed(&PackedBatch::new(&ids)).unwrap();
        // Reverse order too, so each sequence has different neighbours.
        let rev: Vec<&[u32]> = ids.iter().rev().copied().collect();
        let reversed = model.embed(&PackedBatch::new(&rev)).unwrap();
        for (i, seq) in ids.iter().enumerate() {
            let alone = &model.embed(&PackedBatch::new(&[*seq])).unwrap()[0];
            let c1 = cosine(alone, &batched[i]);
            let c2 = cosine(alone, &reversed[ids.len() - 1 - i]);
            assert!(
                c1 >= 0.999999 && c2 >= 0.999999,
                "{name} case {i}: {c1} {c2}"
            );
        }
    }
}

/// Attention split into query blocks (as long inputs are) equals one block.
#[test]
fn attention_blocks_do_not_change_results() {
    let name = "qwen3-tiny-gqa";
    let r = reference(name);
    let longest = r.cases.iter().max_by_key(|c| c.input_ids.len()).unwrap();
    assert!(longest.input_ids.len() > 700);
    let batch = PackedBatch::new(&[longest.input_ids.as_slice()]);
    let load = || Qwen3Embedding::load(&fixture(name), DType::F32, &Device::Cpu).unwrap();
    let one_block = load().with_attention_block(4096).embed(&batch).unwrap();
    let small_blocks = load().with_attention_block(37).embed(&batch).unwrap();
    assert!(cosine(&one_block[0], &small_blocks[0]) >= 0.999999);
    assert!(cosine(&small_blocks[0], &longest.raw) >= 0.99999);
}

/// The fused CPU kernels (attention from the qkv projection, SwiGLU) and the candle
/// ops they replace give the same vectors, with attention in one block or many.
#[test]
fn fused_cpu_kernels_equal_candle_ops() {
    for name in FIXTURES {
        let r = reference(name);
        let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
        let batch = PackedBatch::new(&ids);
        let load = || Qwen3Embedding::load(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let fused = load().with_attention_block(29).embed(&batch).unwrap();
        let candle = load().with_fused_cpu_ops(false).embed(&batch).unwrap();
        for ((f, c), case) in fused.iter().zip(&candle).zip(&r.cases) {
            assert!(cosine(f, c) >= 0.999999, "{name} {}", case.name);
            assert!(cosine(c, &case.raw) >= 0.99999, "{name} {}", case.name);
        }
    }
}

#[test]
fn rejects_ids_outside_vocabulary_and_overlong_input() {
    let model = Qwen3Embedding::load(&fixture("qwen3-tiny-mqa"), DType::F32, &Device::Cpu).unwrap();
    let vocab = model.config().vocab_size as u32;
    let err = model
        .forward(&PackedBatch::new(&[vec![1, vocab]]))
        .unwrap_err();
    assert!(
        matches!(err, ModelError::Input(ref m) if m.contains("outside the vocabulary")),
        "{err}"
    );
    let too_long = vec![1u32; model.config().max_position_embeddings + 1];
    let err = model.forward(&PackedBatch::new(&[too_long])).unwrap_err();
    assert!(
        matches!(err, ModelError::Input(ref m) if m.contains("positions")),
        "{err}"
    );
    let err = model
        .forward(&PackedBatch::new(&[Vec::<u32>::new()]))
        .unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err}");
}

/// Copies a fixture, rewriting its single weights file with `edit` applied.
fn edited_copy(
    name: &str,
    edit: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) -> tempfile::TempDir {
    let src = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn missing_tensor_is_named_with_its_file() {
    let dir = edited_copy("qwen3-tiny-mqa", |t| {
        t.remove("layers.1.self_attn.k_norm.weight").unwrap();
    });
    let err = match Qwen3Embedding::load(dir.path(), DType::F32, &Device::Cpu) {
        Err(e) => e,
        Ok(_) => panic!("loaded a checkpoint with a missing tensor"),
    };
    let msg = err.to_string();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{msg}");
    assert!(
        msg.contains("layers.1.self_attn.k_norm.weight") && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn mis_shaped_tensor_is_named_with_its_file() {
    let dir = edited_copy("qwen3-tiny-mqa", |t| {
        let w = candle_core::Tensor::zeros((7, 48), DType::F32, &Device::Cpu).unwrap();
        t.insert("layers.0.mlp.up_proj.weight".into(), w);
    });
    let err = match Qwen3Embedding::load(dir.path(), DType::F32, &Device::Cpu) {
        Err(e) => e,
        Ok(_) => panic!("loaded a checkpoint with a mis-shaped tensor"),
    };
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Shape { .. }), "{msg}");
    assert!(
        msg.contains("layers.0.mlp.up_proj.weight") && msg.contains("[7, 48]"),
        "{msg}"
    );
}

#[test]
fn bad_config_and_missing_weights_are_clear_errors() {
    let dir = edited_copy("qwen3-tiny-mqa", |_| {});
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 12").unwrap();
    let err = Qwen3Embedding::load(dir.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::Config { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("qwen3-tiny-mqa").join("config.json"),
        empty.path().join("config.json"),
    )
    .unwrap();
    let err = Qwen3Embedding::load(empty.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::NoWeights { .. }), "{err}");
}

#[test]
fn sharded_index_pointing_at_a_missing_shard_is_an_index_error() {
    let src = fixture("qwen3-tiny-gqa");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap() != "model-00003-of-00009.safetensors" {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let err = Qwen3Embedding::load(dir.path(), DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::Index { .. }), "{err}");
    assert!(
        err.to_string().contains("model-00003-of-00009.safetensors"),
        "{err}"
    );
}
