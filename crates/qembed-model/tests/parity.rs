//! The forward pass against vectors that Hugging Face transformers produced for the
//! fixture checkpoints in `models/` (see `models/generate.py`). Token ids come from the
//! reference file, so this isolates the model from tokenisation.

use std::io::Write;

use qembed_model::{cpu_kernels, DType, Device, ModelError, PackedBatch, Quantize, Qwen3Embedding};
use qembed_testkit::{assert_close, fixture, gate, kernel_required, same_gate, FIXTURES};
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

/// Runs every case of every fixture as one mixed-length packed batch against
/// transformers, within the test kit's gate for `dtype`.
fn check_parity(dtype: DType) {
    for name in FIXTURES {
        let model = Qwen3Embedding::load(&fixture(name), dtype, &Device::Cpu).unwrap();
        let r = reference(name);
        let got = model.embed(&batch(&r)).unwrap();
        let (want, names) = raw_and_names(&r);
        assert_close(
            &format!("{name} {dtype:?}"),
            &got,
            &want,
            &names,
            gate(dtype),
        );
    }
}

/// All of a fixture's cases as one packed batch, in reference order.
fn batch(r: &Reference) -> PackedBatch {
    let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
    PackedBatch::new(&ids)
}

/// The reference raw vectors and case names, in order.
fn raw_and_names(r: &Reference) -> (Vec<&[f32]>, Vec<&str>) {
    r.cases
        .iter()
        .map(|c| (c.raw.as_slice(), c.name.as_str()))
        .unzip()
}

/// Every CPU GEMM kernel built in, in every dtype it runs, against transformers on
/// every fixture, within the test kit's gate for each dtype. A kernel this
/// CPU cannot run is reported on stderr (past the harness's capture) as SKIPPED, or
/// fails the test where it is required. The int8 kernels have their own suite
/// (`tests/int8.rs`) and gate.
#[test]
fn every_cpu_kernel_matches_transformers() {
    let mut ran = 0;
    for kernel in cpu_kernels() {
        if kernel.quantize != Quantize::None {
            continue;
        }
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
                let got = model.embed(&batch(&r)).unwrap();
                let (want, names) = raw_and_names(&r);
                let label = format!("{} {name} {dtype:?}", kernel.name);
                assert_close(&label, &got, &want, &names, gate(dtype));
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
    check_parity(DType::F32);
}

#[test]
fn bf16_matches_transformers() {
    check_parity(DType::BF16);
}

#[test]
fn f16_matches_transformers() {
    check_parity(DType::F16);
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
        let mut reversed = model.embed(&PackedBatch::new(&rev)).unwrap();
        reversed.reverse();
        let alone: Vec<Vec<f32>> = ids
            .iter()
            .map(|seq| model.embed(&PackedBatch::new(&[*seq])).unwrap().remove(0))
            .collect();
        let (_, names) = raw_and_names(&r);
        let same = same_gate(DType::F32);
        assert_close(&format!("{name} batched"), &batched, &alone, &names, same);
        assert_close(&format!("{name} reversed"), &reversed, &alone, &names, same);
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
    let names = [longest.name.as_str()];
    assert_close(
        "one block vs 37-row blocks",
        &small_blocks,
        &one_block,
        &names,
        same_gate(DType::F32),
    );
    assert_close(
        "37-row blocks vs transformers",
        &small_blocks,
        &[&longest.raw],
        &names,
        gate(DType::F32),
    );
}

/// The fused CPU kernels (attention from the qkv projection, SwiGLU) and the candle
/// ops they replace give the same vectors, with attention in one block or many.
#[test]
fn fused_cpu_kernels_equal_candle_ops() {
    for name in FIXTURES {
        let r = reference(name);
        let batch = batch(&r);
        let load = || Qwen3Embedding::load(&fixture(name), DType::F32, &Device::Cpu).unwrap();
        let fused = load().with_attention_block(29).embed(&batch).unwrap();
        let candle = load().with_fused_cpu_ops(false).embed(&batch).unwrap();
        let (want, names) = raw_and_names(&r);
        assert_close(
            &format!("{name} fused vs candle ops"),
            &fused,
            &candle,
            &names,
            same_gate(DType::F32),
        );
        assert_close(
            &format!("{name} candle ops"),
            &candle,
            &want,
            &names,
            gate(DType::F32),
        );
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
