//! The CUDA forward pass against transformers' vectors for every fixture in `models/`,
//! and NCCL tensor parallelism against one GPU (feature `cuda`; needs a GPU, and two for
//! the NCCL tests, which fail with fewer unless `QEMBED_ALLOW_GPU_SKIP=1` asks for the
//! skip, e.g. on a one-GPU machine).
#![cfg(feature = "cuda")]

use qembed_model::cuda::NcclGroup;
use qembed_model::{DType, Device, PackedBatch, Qwen3Embedding};
use qembed_testkit::{assert_close, cuda_gate, fixture, FIXTURES};
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

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU (device 0)")
}

/// Every fixture on cuda:0 against transformers. Head sizes 32 (gqa, f16) and 16 (mqa,
/// tp4): all run the fused attention kernel in f16/bf16; f32 on CUDA takes candle's
/// attention (the kernel is f16/bf16 only).
fn check_parity(dtype: DType) {
    let dev = gpu();
    for name in FIXTURES {
        let model = Qwen3Embedding::load(&fixture(name), dtype, &dev).unwrap();
        let r = reference(name);
        let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
        let got = model.embed(&PackedBatch::new(&ids)).unwrap();
        let (want, names): (Vec<&[f32]>, Vec<&str>) = r
            .cases
            .iter()
            .map(|c| (c.raw.as_slice(), c.name.as_str()))
            .unzip();
        let label = format!("cuda {name} {dtype:?}");
        assert_close(&label, &got, &want, &names, cuda_gate(dtype));
    }
}

#[test]
fn cuda_f16_matches_transformers() {
    check_parity(DType::F16);
}

#[test]
fn cuda_bf16_matches_transformers() {
    check_parity(DType::BF16);
}

/// f32 on CUDA: fused norms/rope/SwiGLU with candle's attention (the fallback path).
#[test]
fn cuda_f32_matches_transformers() {
    check_parity(DType::F32);
}

/// Alone or among other sequences, in either order: the same vector (no leaks between
/// the sequences of a packed batch on the GPU either).
#[test]
fn cuda_batch_invariance() {
    let dev = gpu();
    for name in FIXTURES {
        let model = Qwen3Embedding::load(&fixture(name), DType::F16, &dev).unwrap();
        let r = reference(name);
        let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
        let batched = model.embed(&PackedBatch::new(&ids)).unwrap();
        let rev: Vec<&[u32]> = ids.iter().rev().copied().collect();
        let mut reversed = model.embed(&PackedBatch::new(&rev)).unwrap();
        reversed.reverse();
        let alone: Vec<Vec<f32>> = ids
            .iter()
            .map(|seq| model.embed(&PackedBatch::new(&[*seq])).unwrap().remove(0))
            .collect();
        let names: Vec<&str> = r.cases.iter().map(|c| c.name.as_str()).collect();
        let gate = cuda_gate(DType::F16);
        assert_close(
            &format!("cuda {name} batched"),
            &batched,
            &alone,
            &names,
            gate,
        );
        assert_close(
            &format!("cuda {name} reversed"),
            &reversed,
            &alone,
            &names,
            gate,
        );
    }
}

/// Whether a two-GPU test can run; with fewer GPUs it fails, unless
/// `QEMBED_ALLOW_GPU_SKIP=1` asks for a skip, which is then printed loudly on stderr.
fn two_gpus_or_skip(what: &str, gpus: usize) -> bool {
    if gpus >= 2 {
        return true;
    }
    let allowed = std::env::var("QEMBED_ALLOW_GPU_SKIP").is_ok_and(|v| v == "1");
    assert!(
        allowed,
        "{what} needs 2 GPUs, found {gpus}; set QEMBED_ALLOW_GPU_SKIP=1 to skip it"
    );
    qembed_testkit::skipped(
        what,
        &format!("needs 2 GPUs, found {gpus} (QEMBED_ALLOW_GPU_SKIP=1)"),
    );
    false
}

fn gpu_count() -> usize {
    candle_core::cuda_backend::cudarc::driver::CudaContext::device_count().unwrap_or(0) as usize
}

/// TP=2 over NCCL (one rank per GPU, ranks on threads) equals TP=1 on one GPU, with
/// rank devices from `Device::new_cuda` (the per-thread default stream, as the engine
/// opens them) and from `Device::new_cuda_with_stream`.
#[test]
fn cuda_tp2_nccl_equals_single_gpu() {
    let gpus = gpu_count();
    if !two_gpus_or_skip("NCCL tensor parallelism", gpus) {
        return;
    }
    let size = 2;
    for own_stream in [false, true] {
        for name in ["qwen3-tiny-gqa", "qwen3-tiny-f16", "qwen3-tiny-tp4"] {
            let r = reference(name);
            let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
            let batch = PackedBatch::new(&ids);
            let single = Qwen3Embedding::load(&fixture(name), DType::F16, &gpu())
                .unwrap()
                .embed(&batch)
                .unwrap();
            let handles: Vec<_> = qembed_model::cuda::nccl_group(0, size)
                .unwrap()
                .into_iter()
                .enumerate()
                .map(|(rank, comm)| {
                    let (dir, batch) = (fixture(name), batch.clone());
                    std::thread::spawn(move || {
                        let device = if own_stream {
                            Device::new_cuda_with_stream(rank)?
                        } else {
                            Device::new_cuda(rank)?
                        };
                        let model = Qwen3Embedding::load_sharded(&dir, DType::F16, &device, comm)?;
                        model.embed(&batch)
                    })
                })
                .collect();
            let outputs: Vec<Vec<Vec<f32>>> = handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect();
            let (want, names): (Vec<&[f32]>, Vec<&str>) = r
                .cases
                .iter()
                .map(|c| (c.raw.as_slice(), c.name.as_str()))
                .unzip();
            assert_eq!(outputs.len(), size, "one output per rank");
            for (rank, out) in outputs.iter().enumerate() {
                let label = format!("cuda {name} TP={size} rank {rank} (own stream: {own_stream})");
                let gate = cuda_gate(DType::F16);
                assert_close(&format!("{label} vs TP=1"), out, &single, &names, gate);
                assert_close(
                    &format!("{label} vs transformers"),
                    out,
                    &want,
                    &names,
                    gate,
                );
            }
        }
    }
}

/// The NCCL sum itself: rank r contributes r + 1 everywhere, in each dtype.
#[test]
fn cuda_nccl_all_reduce_sums() {
    let gpus = gpu_count();
    if !two_gpus_or_skip("the NCCL all-reduce", gpus) {
        return;
    }
    let handles: Vec<_> = NcclGroup::for_gpus(0, 2)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(rank, group)| {
            std::thread::spawn(move || {
                use qembed_model::AllReduce;
                let device = Device::new_cuda(rank).unwrap();
                for dtype in [DType::F16, DType::BF16, DType::F32] {
                    let t = (candle_core::Tensor::ones((3, 5), dtype, &device).unwrap()
                        * (rank + 1) as f64)
                        .unwrap();
                    let sum = group.all_reduce_sum(&t).unwrap();
                    let got = sum.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
                    assert!(
                        got.to_vec1::<f32>().unwrap().iter().all(|&v| v == 3.0),
                        "{dtype:?}"
                    );
                }
                // A tensor on another GPU than the rank's is an error, not a hang.
                let other = Device::new_cuda(1 - rank).unwrap();
                let t = candle_core::Tensor::ones(4, DType::F32, &other).unwrap();
                assert!(group.all_reduce_sum(&t).is_err());
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
