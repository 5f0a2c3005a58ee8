//! `--quantize int8` against the vectors Hugging Face transformers produced in f32 for
//! every fixture (`models/generate.py`): every int8 kernel this CPU runs, loaded from
//! bf16 (what `--dtype auto` loads with int8) and from f32, within the int8 gate
//! (`qembed_gates::int8_gate`): worst and mean cosine, and Spearman's correlation of the
//! pairwise similarities. Kernels whose attention runs the same way must also agree with
//! each other bit for bit: they compute one rule's exact integer sums (`amx-int8` runs
//! attention's products in bf16 on AMX tiles, `avx512vnni` in bf16 on the `avx512bf16`
//! tile where the CPU has AVX512_BF16 and in f32 on the `avx512` tile where it does not,
//! the others in f32 through the portable product).

use std::io::Write;

use qembed_model::{
    cpu_kernels, DType, Device, PackedBatch, Quantize, Qwen3Config, Qwen3Embedding, Weights,
};
use qembed_testkit::{
    assert_close, fixture, gate, int8_gate, kernel_required, Quality, Reference, FIXTURES,
    OUTLIER_FIXTURE,
};

fn load(name: &str, dtype: DType, kernel: &str) -> Qwen3Embedding {
    let dir = fixture(name);
    let cfg = Qwen3Config::from_file(&dir.join("config.json")).unwrap();
    let w = Weights::open(&dir, dtype, &Device::Cpu).unwrap();
    Qwen3Embedding::from_weights_with(cfg, &w, None, Some(kernel), Quantize::Int8).unwrap()
}

fn run(model: &Qwen3Embedding, r: &Reference) -> Vec<Vec<f32>> {
    let ids: Vec<&[u32]> = r.cases.iter().map(|c| c.input_ids.as_slice()).collect();
    model.embed(&PackedBatch::new(&ids)).unwrap()
}

/// The int8 kernels this CPU runs, each with how its attention runs; the others
/// reported (or failing where required).
fn int8_kernels() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for k in cpu_kernels() {
        if k.quantize != Quantize::Int8 {
            continue;
        }
        match &k.unavailable {
            None => out.push((k.name, k.attention)),
            Some(why) => {
                assert!(
                    !kernel_required(k.name),
                    "kernel {} required, but {why}",
                    k.name
                );
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: int8 quality of the {} kernel ({why}); {} makes this fail",
                    k.name,
                    qembed_testkit::require_var(k.name)
                );
            }
        }
    }
    out
}

#[test]
fn int8_keeps_the_quality_gate_on_every_fixture() {
    let gate = int8_gate();
    let kernels = int8_kernels();
    assert!(kernels.contains(&("portable-int8", "f32")));
    for name in FIXTURES {
        let r = Reference::load(name);
        let want: Vec<&[f32]> = r.cases.iter().map(|c| c.raw.as_slice()).collect();
        for dtype in [DType::BF16, DType::F32] {
            // The first kernel of each attention kind, and its vectors.
            let mut firsts: Vec<(&str, &str, Vec<Vec<f32>>)> = Vec::new();
            for &(kernel, attention) in &kernels {
                let model = load(name, dtype, kernel);
                assert_eq!(model.cpu_kernel(), Some(kernel));
                assert_eq!(model.quantize(), Quantize::Int8);
                let got = run(&model, &r);
                let q = Quality::of(&got, &want);
                println!(
                    "int8 {kernel} {name} from {dtype:?}: worst cosine {:.6} ({}), mean {:.6}, spearman {:.6}",
                    q.worst_cosine, r.cases[q.worst_case].name, q.mean_cosine, q.spearman
                );
                assert!(
                    q.meets(gate),
                    "int8 {kernel} {name} from {dtype:?}: {q:?} misses {gate:?}"
                );
                match firsts.iter().find(|f| f.0 == attention) {
                    Some((_, other, theirs)) => assert!(
                        &got == theirs,
                        "{kernel} and {other} differ on {name} from {dtype:?}"
                    ),
                    None => {
                        // Across attention kinds: another order of attention's sums (or
                        // bf16 products) moves the int8 activations' rounding, and that
                        // moves the vectors as far as the int8 gate allows against the
                        // reference, not further.
                        if let Some((_, other, theirs)) = firsts.first() {
                            let q = Quality::of(&got, theirs);
                            assert!(
                                q.meets(gate),
                                "int8 {kernel} vs {other}, {name} from {dtype:?}: {q:?}"
                            );
                        }
                        firsts.push((attention, kernel, got));
                    }
                }
            }
        }
    }
}

/// Quantization changes the vectors: the int8 model is not silently the float one.
#[test]
fn int8_is_not_the_float_model() {
    let name = FIXTURES[0];
    let r = Reference::load(name);
    let float = Qwen3Embedding::load(&fixture(name), DType::BF16, &Device::Cpu).unwrap();
    let int8 = load(name, DType::BF16, "portable-int8");
    assert_ne!(run(&float, &r), run(&int8, &r));
}

/// The outlier fixture is hard for int8 without smoothing (so the gate above can
/// fail), and its reference is right (the float model matches it within the f32 gate).
#[test]
fn the_outlier_fixture_needs_smoothing() {
    let r = Reference::load(OUTLIER_FIXTURE);
    let want: Vec<&[f32]> = r.cases.iter().map(|c| c.raw.as_slice()).collect();
    let dir = fixture(OUTLIER_FIXTURE);
    let float = Qwen3Embedding::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let names: Vec<&str> = r.cases.iter().map(|c| c.name.as_str()).collect();
    assert_close(
        "outliers f32",
        &run(&float, &r),
        &want,
        &names,
        gate(DType::F32),
    );
    let cfg = Qwen3Config::from_file(&dir.join("config.json")).unwrap();
    let w = Weights::open(&dir, DType::BF16, &Device::Cpu).unwrap();
    let plain = Qwen3Embedding::from_weights_int8_unsmoothed(cfg, &w, "portable-int8").unwrap();
    let q = Quality::of(&run(&plain, &r), &want);
    println!(
        "int8 without smoothing, {OUTLIER_FIXTURE}: worst cosine {:.6}, mean {:.6}, spearman {:.6}",
        q.worst_cosine, q.mean_cosine, q.spearman
    );
    assert!(!q.meets(int8_gate()), "{q:?}");
}

/// What `qembed-rollout verify`'s vector-space gate would see between an int8 colour
/// and a bf16 colour of the same checkpoint: the cosine of their vectors for the same
/// inputs, on every fixture, held to the int8 gate's worst cosine (the rollout's own
/// bound is its configuration's `compat_min_cosine`, 0.999 by default).
#[test]
fn int8_vectors_stand_beside_bf16_ones() {
    for name in FIXTURES {
        let r = Reference::load(name);
        let bf16 = Qwen3Embedding::load(&fixture(name), DType::BF16, &Device::Cpu).unwrap();
        let int8 = load(name, DType::BF16, "portable-int8");
        let q = Quality::of(&run(&int8, &r), &run(&bf16, &r));
        println!(
            "int8 vs bf16 {name}: worst cosine {:.6} ({}), mean {:.6}",
            q.worst_cosine, r.cases[q.worst_case].name, q.mean_cosine
        );
        assert!(q.worst_cosine >= int8_gate().worst_cosine, "{name}: {q:?}");
    }
}
