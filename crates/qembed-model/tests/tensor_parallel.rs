//! Tensor parallelism proven on CPU: TP ranks on threads of one process, joined by the
//! in-process all-reduce, give what one rank gives (and what transformers gives).

use std::path::Path;
use std::sync::Arc;

use qembed_model::{DType, Device, LocalGroup, ModelError, PackedBatch, Quantize, Qwen3Embedding};
use qembed_testkit::{assert_close, fixture, gate, int8_gate, same_gate, Quality};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    input_ids: Vec<u32>,
    raw: Vec<f32>,
}

/// Fixture `name`'s reference cases as one packed batch, and what one rank in `dtype`
/// gives for it.
fn single_rank(name: &str, dtype: DType) -> (Reference, PackedBatch, Vec<Vec<f32>>) {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    let r: Reference = serde_json::from_str(&text).unwrap();
    let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
    let batch = PackedBatch::new(&ids);
    let single = Qwen3Embedding::load(&fixture(name), dtype, &Device::Cpu)
        .unwrap()
        .embed(&batch)
        .unwrap();
    (r, batch, single)
}

/// Runs `batch` on `size` ranks, one thread each; returns every rank's output.
fn run_tp(
    dir: &Path,
    dtype: DType,
    size: usize,
    batch: &PackedBatch,
) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
    let handles: Vec<_> = LocalGroup::new(size)
        .into_iter()
        .map(|comm| {
            let (dir, batch) = (dir.to_path_buf(), batch.clone());
            std::thread::spawn(move || {
                let model =
                    Qwen3Embedding::load_sharded(&dir, dtype, &Device::Cpu, Arc::new(comm))?;
                model.embed(&batch)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Every rank's output against one rank's (same arithmetic, split differently) and
/// against transformers, each within the test kit's gates for `dtype`.
fn check_ranks(
    label: &str,
    ranks: &[Vec<Vec<f32>>],
    size: usize,
    single: &[Vec<f32>],
    r: &Reference,
    dtype: DType,
) {
    assert_eq!(ranks.len(), size, "{label}: one output per rank");
    let want: Vec<&[f32]> = r.cases.iter().map(|c| c.raw.as_slice()).collect();
    let names = vec![""; 0];
    for (rank, out) in ranks.iter().enumerate() {
        assert_close(
            &format!("{label} rank {rank} vs TP=1"),
            out,
            single,
            &names,
            same_gate(dtype),
        );
        assert_close(
            &format!("{label} rank {rank} vs transformers"),
            out,
            &want,
            &names,
            gate(dtype),
        );
    }
}

#[test]
fn tp_equals_single_rank_on_every_fixture_that_divides() {
    // (fixture, TP sizes): gqa has 4 heads / 2 kv heads, f16 2 / 2, tp4 8 / 4.
    for (name, sizes) in [
        ("qwen3-tiny-gqa", vec![2]),
        ("qwen3-tiny-f16", vec![2]),
        ("qwen3-tiny-tp4", vec![2, 4]),
    ] {
        let (r, batch, single) = single_rank(name, DType::F32);
        for size in sizes {
            let ranks = run_tp(&fixture(name), DType::F32, size, &batch).unwrap();
            check_ranks(
                &format!("{name} TP={size}"),
                &ranks,
                size,
                &single,
                &r,
                DType::F32,
            );
        }
    }
}

/// bf16 (on this machine the AMX kernels, each rank's threads configuring their own
/// tiles while the other ranks run): ranks agree with one rank, and with transformers
/// to bf16 accuracy.
#[test]
fn tp_in_bf16_equals_single_rank() {
    let name = "qwen3-tiny-tp4";
    let (r, batch, single) = single_rank(name, DType::BF16);
    let ranks = run_tp(&fixture(name), DType::BF16, 4, &batch).unwrap();
    check_ranks(
        &format!("{name} bf16 TP=4"),
        &ranks,
        4,
        &single,
        &r,
        DType::BF16,
    );
}

#[test]
fn tp_size_that_does_not_divide_heads_is_a_clear_error() {
    // qwen3-tiny-mqa has 3 attention heads and 1 kv head; gqa has 2 kv heads.
    for (name, size, what) in [
        ("qwen3-tiny-mqa", 2, "num_attention_heads (3)"),
        ("qwen3-tiny-gqa", 4, "num_key_value_heads (2)"),
    ] {
        let batch = PackedBatch::new(&[vec![1u32, 2, 3]]);
        let err = run_tp(&fixture(name), DType::F32, size, &batch).unwrap_err();
        assert!(matches!(err, ModelError::TensorParallel(_)), "{err}");
        assert!(err.to_string().contains(what), "{err}");
    }
}

/// int8 over 2 ranks (every rank calibrating its own share, in step through the
/// all-reduce): not the same bits as one rank (o_proj and down are quantized per output
/// row over a rank's columns only), so held to the int8 gate against one int8 rank and
/// against transformers.
#[test]
fn tp_in_int8_keeps_the_int8_gate() {
    let name = qembed_testkit::OUTLIER_FIXTURE;
    let dir = fixture(name);
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let r: Reference = serde_json::from_str(&text).unwrap();
    let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
    let batch = PackedBatch::new(&ids);
    let load = |comm: Option<Arc<dyn qembed_model::AllReduce>>| {
        Qwen3Embedding::load_quantized(&dir, DType::BF16, &Device::Cpu, Quantize::Int8, comm)
    };
    let single = load(None).unwrap().embed(&batch).unwrap();
    let handles: Vec<_> = LocalGroup::new(2)
        .into_iter()
        .map(|comm| {
            let (dir, batch) = (dir.clone(), batch.clone());
            std::thread::spawn(move || {
                Qwen3Embedding::load_quantized(
                    &dir,
                    DType::BF16,
                    &Device::Cpu,
                    Quantize::Int8,
                    Some(Arc::new(comm)),
                )?
                .embed(&batch)
            })
        })
        .collect();
    let want: Vec<&[f32]> = r.cases.iter().map(|c| c.raw.as_slice()).collect();
    for (rank, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap().unwrap();
        for (label, q) in [
            ("one int8 rank", Quality::of(&out, &single)),
            ("transformers", Quality::of(&out, &want)),
        ] {
            println!("{name} int8 TP=2 rank {rank} vs {label}: {q:?}");
            assert!(q.meets(int8_gate()), "rank {rank} vs {label}: {q:?}");
        }
    }
}
