//! Each CUDA kernel against a CPU reference built from candle's CPU ops (feature `cuda`;
//! needs a GPU). Inputs are random, rounded to f16/bf16 once, and the reference runs in
//! f32 on exactly those rounded values, so the tolerances measure the kernels alone.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor, D};
use qembed_model::cuda;

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU (device 0)")
}

/// Random `shape` rounded to `dtype`: (on the GPU in `dtype`, on the CPU in f32).
fn random(shape: &[usize], scale: f64, dtype: DType, gpu: &Device) -> (Tensor, Tensor) {
    let x = (Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap() * scale)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    (x.to_device(gpu).unwrap(), x.to_dtype(DType::F32).unwrap())
}

/// Largest `|got - want| / max(1, |want|)`: absolute error for values up to 1, relative
/// above (f16/bf16 rounding is relative).
fn max_diff(got: &Tensor, want: &Tensor) -> f32 {
    let got = got
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(got.dims(), want.dims());
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    got.iter()
        .zip(&want)
        .map(|(g, w)| {
            let d = (g - w).abs() / w.abs().max(1.0);
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f32::max)
}

fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 1e-2,
        DType::BF16 => 5e-2,
        _ => 1e-4,
    }
}

const DTYPES: [DType; 2] = [DType::F16, DType::BF16];

#[test]
fn rms_norm_matches_candle_cpu() {
    let dev = gpu();
    for dtype in DTYPES.into_iter().chain([DType::F32]) {
        // Hidden-size rows, and per-head rows of a 3-D tensor (the q/k norm shape).
        for shape in [vec![37, 200], vec![5, 3, 32], vec![2, 4096]] {
            let cols = *shape.last().unwrap();
            let (x, x_cpu) = random(&shape, 3.0, dtype, &dev);
            let (w, w_cpu) = random(&[cols], 1.0, dtype, &dev);
            let got = cuda::rms_norm(&x, &w, 1e-6).unwrap();
            assert_eq!(got.dtype(), dtype);
            let want = candle_nn::ops::rms_norm(&x_cpu, &w_cpu, 1e-6).unwrap();
            let diff = max_diff(&got, &want);
            assert!(diff < tolerance(dtype) * 4.0, "{dtype:?} {shape:?}: {diff}");
        }
    }
}

/// cos/sin `[tokens, D/2]` for positions restarting per sequence, as the model builds them.
fn tables(positions: &[u32], d: usize) -> (Tensor, Tensor) {
    let half = d / 2;
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for &p in positions {
        for i in 0..half {
            let f = 1.0 / 1_000_000f32.powf((2 * i) as f32 / d as f32);
            cos.push((p as f32 * f).cos());
            sin.push((p as f32 * f).sin());
        }
    }
    let shape = (positions.len(), half);
    (
        Tensor::from_vec(cos, shape, &Device::Cpu).unwrap(),
        Tensor::from_vec(sin, shape, &Device::Cpu).unwrap(),
    )
}

fn positions(lens: &[usize]) -> Vec<u32> {
    lens.iter().flat_map(|&l| 0..l as u32).collect()
}

fn rope_cpu(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0).unwrap(), cos, sin)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

#[test]
fn rope_matches_candle_cpu() {
    let dev = gpu();
    let pos = positions(&[1, 9, 70]);
    for dtype in DTYPES {
        for d in [16, 64, 128] {
            let (cos, sin) = tables(&pos, d);
            let table =
                cuda::rope_table(&cos.to_device(&dev).unwrap(), &sin.to_device(&dev).unwrap())
                    .unwrap();
            let (x, x_cpu) = random(&[pos.len(), 3, d], 2.0, dtype, &dev);
            let got = cuda::rope(&x, &table).unwrap();
            let want = rope_cpu(&x_cpu, &cos, &sin);
            let diff = max_diff(&got, &want);
            assert!(diff < tolerance(dtype), "{dtype:?} D={d}: {diff}");
        }
    }
}

#[test]
fn qk_norm_rope_matches_candle_cpu() {
    let dev = gpu();
    let pos = positions(&[1, 5, 66]);
    let n = pos.len();
    for dtype in DTYPES {
        for (h, kv, d) in [(4, 2, 128), (3, 1, 16), (2, 2, 32)] {
            let (cos, sin) = tables(&pos, d);
            let table =
                cuda::rope_table(&cos.to_device(&dev).unwrap(), &sin.to_device(&dev).unwrap())
                    .unwrap();
            let (qkv, qkv_cpu) = random(&[n, (h + 2 * kv) * d], 2.0, dtype, &dev);
            let (qn, qn_cpu) = random(&[d], 0.5, dtype, &dev);
            let (kn, kn_cpu) = random(&[d], 0.5, dtype, &dev);
            let got = cuda::qk_norm_rope(&qkv, &qn, &kn, &table, h, kv, 1e-6).unwrap();
            assert_eq!(got.dims(), qkv.dims());

            let q = qkv_cpu
                .narrow(1, 0, h * d)
                .unwrap()
                .reshape((n, h, d))
                .unwrap();
            let k = qkv_cpu
                .narrow(1, h * d, kv * d)
                .unwrap()
                .reshape((n, kv, d))
                .unwrap();
            let v = qkv_cpu.narrow(1, (h + kv) * d, kv * d).unwrap();
            let q = rope_cpu(
                &candle_nn::ops::rms_norm(&q, &qn_cpu, 1e-6).unwrap(),
                &cos,
                &sin,
            );
            let k = rope_cpu(
                &candle_nn::ops::rms_norm(&k, &kn_cpu, 1e-6).unwrap(),
                &cos,
                &sin,
            );
            let want = Tensor::cat(
                &[
                    q.reshape((n, h * d)).unwrap(),
                    k.reshape((n, kv * d)).unwrap(),
                    v,
                ],
                1,
            )
            .unwrap();
            let diff = max_diff(&got, &want);
            assert!(
                diff < tolerance(dtype) * 2.0,
                "{dtype:?} H={h} KV={kv} D={d}: {diff}"
            );
        }
    }
}

#[test]
fn swiglu_matches_candle_cpu() {
    let dev = gpu();
    for dtype in DTYPES.into_iter().chain([DType::F32]) {
        let inter = 300;
        let (x, x_cpu) = random(&[17, 2 * inter], 3.0, dtype, &dev);
        let got = cuda::swiglu(&x).unwrap();
        let gate = x_cpu.narrow(1, 0, inter).unwrap();
        let up = x_cpu.narrow(1, inter, inter).unwrap();
        let want = (gate.silu().unwrap() * up).unwrap();
        let diff = max_diff(&got, &want);
        assert!(diff < tolerance(dtype) * 4.0, "{dtype:?}: {diff}");
    }
}

#[test]
fn gather_rows_is_exact_and_checks_indices() {
    let dev = gpu();
    for dtype in DTYPES {
        let (x, x_cpu) = random(&[11, 300], 1.0, dtype, &dev);
        let idx = [10u32, 0, 4, 4];
        let got = cuda::gather_rows(&x, &idx).unwrap();
        let want = x_cpu
            .index_select(&Tensor::new(&idx, &Device::Cpu).unwrap(), 0)
            .unwrap();
        assert_eq!(max_diff(&got, &want), 0.0);
        assert!(cuda::gather_rows(&x, &[11]).is_err());
    }
}

/// Naive causal softmax(q k^T * scale) v per sequence on the CPU in f32.
/// q `[tokens, H, D]`, k/v `[tokens, KV, D]`; returns `[tokens, H * D]`.
fn attention_cpu(q: &Tensor, k: &Tensor, v: &Tensor, cu: &[usize], scale: f64) -> Tensor {
    let (_, h, d) = q.dims3().unwrap();
    let kv = k.dim(1).unwrap();
    let mut out = Vec::new();
    for w in cu.windows(2) {
        let (s, len) = (w[0], w[1] - w[0]);
        let mut heads = Vec::new();
        for head in 0..h {
            let kvh = head / (h / kv);
            let qs = q
                .narrow(0, s, len)
                .unwrap()
                .narrow(1, head, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            let ks = k
                .narrow(0, s, len)
                .unwrap()
                .narrow(1, kvh, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            let vs = v
                .narrow(0, s, len)
                .unwrap()
                .narrow(1, kvh, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            let scores = (qs.matmul(&ks.t().unwrap()).unwrap() * scale).unwrap();
            let mask: Vec<f32> = (0..len)
                .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (len, len), &Device::Cpu).unwrap();
            let p = candle_nn::ops::softmax(&(scores + mask).unwrap(), D::Minus1).unwrap();
            heads.push(p.matmul(&vs).unwrap()); // [len, D]
        }
        out.push(Tensor::cat(&heads, 1).unwrap()); // [len, H * D]
    }
    let out = Tensor::cat(&out, 0).unwrap();
    assert_eq!(out.dim(1).unwrap(), h * d);
    out
}

fn cu_seqlens(lens: &[usize]) -> Vec<usize> {
    let mut cu = vec![0];
    for l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    cu
}

#[test]
fn varlen_attention_matches_naive_causal_attention() {
    let dev = gpu();
    // Length 1, a tile exactly, tiles plus one, several tiles, and mixed short ones.
    let lens = [1usize, 7, 64, 65, 130, 3];
    let cu = cu_seqlens(&lens);
    let n = *cu.last().unwrap();
    let cu_dev = cuda::CuSeqlens::new(&cu, &dev).unwrap();
    for dtype in DTYPES {
        for (h, kv, d) in [(4, 2, 128), (4, 2, 64), (4, 2, 32), (6, 3, 16), (3, 1, 128)] {
            assert!(cuda::attention_supported(d, dtype, &dev));
            let scale = 1.0 / (d as f64).sqrt();
            let (qkv, qkv_cpu) = random(&[n, (h + 2 * kv) * d], 1.5, dtype, &dev);
            let split = |t: &Tensor| {
                (
                    t.narrow(1, 0, h * d).unwrap().reshape((n, h, d)).unwrap(),
                    t.narrow(1, h * d, kv * d)
                        .unwrap()
                        .reshape((n, kv, d))
                        .unwrap(),
                    t.narrow(1, (h + kv) * d, kv * d)
                        .unwrap()
                        .reshape((n, kv, d))
                        .unwrap(),
                )
            };
            let (q, k, v) = split(&qkv_cpu);
            let want = attention_cpu(&q, &k, &v, &cu, scale);

            let packed = cuda::varlen_attention_packed(&qkv, h, kv, &cu_dev, scale as f32).unwrap();
            assert_eq!(packed.dims(), [n, h * d]);
            let diff = max_diff(&packed, &want);
            assert!(
                diff < tolerance(dtype),
                "{dtype:?} packed H={h} KV={kv} D={d}: {diff}"
            );

            let (q, k, v) = split(&qkv);
            let separate = cuda::varlen_attention(&q, &k, &v, &cu_dev, scale as f32).unwrap();
            let diff = max_diff(&separate, &want);
            assert!(
                diff < tolerance(dtype),
                "{dtype:?} separate H={h} KV={kv} D={d}: {diff}"
            );
        }
    }
}

/// One long sequence (many key tiles, online softmax over all of them).
#[test]
fn varlen_attention_long_sequence() {
    let dev = gpu();
    let (h, kv, d, n) = (2, 1, 128, 1000);
    let cu = [0, n];
    let cu_dev = cuda::CuSeqlens::new(&cu, &dev).unwrap();
    let scale = 1.0 / (d as f64).sqrt();
    let (q, q_cpu) = random(&[n, h, d], 1.0, DType::F16, &dev);
    let (k, k_cpu) = random(&[n, kv, d], 1.0, DType::F16, &dev);
    let (v, v_cpu) = random(&[n, kv, d], 1.0, DType::F16, &dev);
    let got = cuda::varlen_attention(&q, &k, &v, &cu_dev, scale as f32).unwrap();
    let want = attention_cpu(&q_cpu, &k_cpu, &v_cpu, &cu, scale);
    let diff = max_diff(&got, &want);
    assert!(diff < tolerance(DType::F16), "{diff}");
}

#[test]
fn kernels_reject_bad_input_with_errors() {
    let dev = gpu();
    let cu = cuda::CuSeqlens::new(&[0, 3, 5], &dev).unwrap();
    let q = Tensor::zeros((5, 4, 128), DType::F16, &dev).unwrap();
    let k = Tensor::zeros((5, 2, 128), DType::F16, &dev).unwrap();
    // Token count disagrees with cu_seqlens; kv heads that do not divide; f32 attention.
    assert!(cuda::varlen_attention(&q.narrow(0, 0, 4).unwrap(), &k, &k, &cu, 1.0).is_err());
    let k3 = Tensor::zeros((5, 3, 128), DType::F16, &dev).unwrap();
    assert!(cuda::varlen_attention(&q, &k3, &k3, &cu, 1.0).is_err());
    let qf = q.to_dtype(DType::F32).unwrap();
    let kf = k.to_dtype(DType::F32).unwrap();
    assert!(cuda::varlen_attention(&qf, &kf, &kf, &cu, 1.0).is_err());
    assert!(!cuda::attention_supported(96, DType::F16, &dev));
    assert!(cuda::CuSeqlens::new(&[0, 3, 2], &dev).is_err());
    assert!(cuda::CuSeqlens::new(&[1, 3], &dev).is_err());
    // Mismatched weight, odd swiglu width, CPU tensors.
    let x = Tensor::zeros((2, 64), DType::F16, &dev).unwrap();
    let w = Tensor::zeros(32, DType::F16, &dev).unwrap();
    assert!(cuda::rms_norm(&x, &w, 1e-6).is_err());
    assert!(cuda::swiglu(&Tensor::zeros((2, 7), DType::F16, &dev).unwrap()).is_err());
    let cpu = Tensor::zeros((2, 64), DType::F16, &Device::Cpu).unwrap();
    let cpu_w = Tensor::zeros(64, DType::F16, &Device::Cpu).unwrap();
    let err = cuda::rms_norm(&cpu, &cpu_w, 1e-6).unwrap_err().to_string();
    assert!(err.contains("CUDA-only"), "{err}");
}
