//! Each of our CUDA kernels against a reference built from candle's CPU ops, on ragged
//! shapes (rows that fill no block, sequences of one token and of tiles plus one, head
//! sizes 16 to 128, GQA and MQA): what `qembed check --device cuda` reports on a GPU
//! host and `tests/cuda_kernels.rs` asserts. Inputs are random, rounded to the dtype
//! once, and the reference runs in f32 on exactly those rounded values, so a check's
//! difference measures the kernel alone.

use candle_core::{DType, Device, Result, Tensor, D};

use super::{
    attention_supported, gather_rows, qk_norm_rope, rms_norm, rope, rope_table, swiglu,
    varlen_attention, varlen_attention_packed, CuSeqlens,
};

/// One kernel on one dtype and shape against its reference.
#[derive(Debug, Clone)]
pub struct KernelCheck {
    pub kernel: &'static str,
    pub dtype: DType,
    /// The shape or case, e.g. `H=4 KV=2 D=128 lens 1,7,64,65,130,3`.
    pub case: String,
    /// Largest |got - want| / max(1, |want|) (`f32::INFINITY` for a NaN).
    pub max_diff: f32,
    pub tolerance: f32,
    /// Why the case did not run on this GPU (the model uses another path there).
    pub skipped: Option<String>,
}

impl KernelCheck {
    /// Within tolerance, or skipped.
    pub fn ok(&self) -> bool {
        self.skipped.is_some() || self.max_diff <= self.tolerance
    }
}

/// How many checks [`run`] makes (skipped ones included), so that a caller can tell
/// that none went missing.
pub const CHECKS: usize = 47;

/// Every check on `dev` (a CUDA device), in a fixed order.
pub fn run(dev: &Device) -> Result<Vec<KernelCheck>> {
    let mut out = Vec::new();
    check_rms_norm(dev, &mut out)?;
    check_rope(dev, &mut out)?;
    check_qk_norm_rope(dev, &mut out)?;
    check_swiglu(dev, &mut out)?;
    check_gather_rows(dev, &mut out)?;
    check_attention(dev, &mut out)?;
    check_long_attention(dev, &mut out)?;
    Ok(out)
}

const DTYPES: [DType; 2] = [DType::F16, DType::BF16];

/// Per-element bound of a kernel of `dtype` whose math is f32 inside: the rounding of
/// its 16-bit output (f16 2^-11, bf16 2^-8, with headroom); f32 outputs only differ
/// in the order of summation.
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 1e-2,
        DType::BF16 => 5e-2,
        _ => 1e-4,
    }
}

/// Random `shape` rounded to `dtype`: (on `dev` in `dtype`, on the CPU in f32).
fn random(shape: &[usize], scale: f64, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
    let x = (Tensor::randn(0f32, 1.0, shape, &Device::Cpu)? * scale)?.to_dtype(dtype)?;
    Ok((x.to_device(dev)?, x.to_dtype(DType::F32)?))
}

/// Largest `|got - want| / max(1, |want|)`: absolute error for values up to 1, relative
/// above (16-bit rounding is relative). A NaN counts as infinitely far.
fn max_diff(got: &Tensor, want: &Tensor) -> Result<f32> {
    let got = got.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    if got.dims() != want.dims() {
        candle_core::bail!(
            "kernel output {:?}, reference {:?}",
            got.dims(),
            want.dims()
        );
    }
    let got = got.flatten_all()?.to_vec1::<f32>()?;
    let want = want.flatten_all()?.to_vec1::<f32>()?;
    Ok(got
        .iter()
        .zip(&want)
        .map(|(g, w)| {
            let d = (g - w).abs() / w.abs().max(1.0);
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f32::max))
}

fn push(
    out: &mut Vec<KernelCheck>,
    kernel: &'static str,
    dtype: DType,
    case: String,
    max_diff: f32,
    tolerance: f32,
) {
    out.push(KernelCheck {
        kernel,
        dtype,
        case,
        max_diff,
        tolerance,
        skipped: None,
    });
}

/// A case of the attention kernel this GPU cannot run (too little shared memory per
/// block for the head size: 93 KiB at 128, which every sm_80+ GPU has, so this is for a
/// GPU that reports less), where the model uses candle's attention instead.
fn push_unsupported(out: &mut Vec<KernelCheck>, dtype: DType, case: String, d: usize) {
    out.push(KernelCheck {
        kernel: "varlen_attention",
        dtype,
        case,
        max_diff: 0.0,
        tolerance: 0.0,
        skipped: Some(format!(
            "head size {d} is not supported on this GPU (the model uses candle's attention)"
        )),
    });
}

fn check_rms_norm(dev: &Device, out: &mut Vec<KernelCheck>) -> Result<()> {
    for dtype in DTYPES.into_iter().chain([DType::F32]) {
        // Hidden-size rows, and per-head rows of a 3-D tensor (the q/k norm shape).
        for shape in [vec![37, 200], vec![5, 3, 32], vec![2, 4096]] {
            let cols = shape.last().copied().unwrap_or(1);
            let (x, x_cpu) = random(&shape, 3.0, dtype, dev)?;
            let (w, w_cpu) = random(&[cols], 1.0, dtype, dev)?;
            let got = rms_norm(&x, &w, 1e-6)?;
            if got.dtype() != dtype {
                candle_core::bail!("rms_norm of {dtype:?} returned {:?}", got.dtype());
            }
            let want = candle_nn::ops::rms_norm(&x_cpu, &w_cpu, 1e-6)?;
            let d = max_diff(&got, &want)?;
            push(
                out,
                "rms_norm",
                dtype,
                format!("{shape:?}"),
                d,
                tolerance(dtype) * 4.0,
            );
        }
    }
    Ok(())
}

/// cos/sin `[tokens, D/2]` for positions restarting per sequence, as the model builds
/// them (Qwen3's rope theta, 10^6).
fn tables(positions: &[u32], d: usize) -> Result<(Tensor, Tensor)> {
    let half = d / 2;
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for i in 0..half {
            let f = 1.0 / 1_000_000f32.powf((2 * i) as f32 / d as f32);
            cos.push((p as f32 * f).cos());
            sin.push((p as f32 * f).sin());
        }
    }
    let shape = (positions.len(), half);
    Ok((
        Tensor::from_vec(cos, shape, &Device::Cpu)?,
        Tensor::from_vec(sin, shape, &Device::Cpu)?,
    ))
}

fn positions(lens: &[usize]) -> Vec<u32> {
    lens.iter().flat_map(|&l| 0..l as u32).collect()
}

fn rope_cpu(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?, cos, sin)?.squeeze(0)
}

fn check_rope(dev: &Device, out: &mut Vec<KernelCheck>) -> Result<()> {
    let lens = [1, 9, 70];
    let pos = positions(&lens);
    for dtype in DTYPES {
        for d in [16, 64, 128] {
            let (cos, sin) = tables(&pos, d)?;
            let table = rope_table(&cos.to_device(dev)?, &sin.to_device(dev)?)?;
            let (x, x_cpu) = random(&[pos.len(), 3, d], 2.0, dtype, dev)?;
            let got = rope(&x, &table)?;
            let want = rope_cpu(&x_cpu, &cos, &sin)?;
            let diff = max_diff(&got, &want)?;
            push(
                out,
                "rope",
                dtype,
                format!("D={d} lens {lens:?}"),
                diff,
                tolerance(dtype),
            );
        }
    }
    Ok(())
}

fn check_qk_norm_rope(dev: &Device, out: &mut Vec<KernelCheck>) -> Result<()> {
    let lens = [1, 5, 66];
    let pos = positions(&lens);
    let n = pos.len();
    for dtype in DTYPES {
        for (h, kv, d) in [(4, 2, 128), (3, 1, 16), (2, 2, 32)] {
            let (cos, sin) = tables(&pos, d)?;
            let table = rope_table(&cos.to_device(dev)?, &sin.to_device(dev)?)?;
            let (qkv, qkv_cpu) = random(&[n, (h + 2 * kv) * d], 2.0, dtype, dev)?;
            let (qn, qn_cpu) = random(&[d], 0.5, dtype, dev)?;
            let (kn, kn_cpu) = random(&[d], 0.5, dtype, dev)?;
            let got = qk_norm_rope(&qkv, &qn, &kn, &table, h, kv, 1e-6)?;

            let q = qkv_cpu.narrow(1, 0, h * d)?.reshape((n, h, d))?;
            let k = qkv_cpu.narrow(1, h * d, kv * d)?.reshape((n, kv, d))?;
            let v = qkv_cpu.narrow(1, (h + kv) * d, kv * d)?;
            let q = rope_cpu(&candle_nn::ops::rms_norm(&q, &qn_cpu, 1e-6)?, &cos, &sin)?;
            let k = rope_cpu(&candle_nn::ops::rms_norm(&k, &kn_cpu, 1e-6)?, &cos, &sin)?;
            let want = Tensor::cat(&[q.reshape((n, h * d))?, k.reshape((n, kv * d))?, v], 1)?;
            let diff = max_diff(&got, &want)?;
            let case = format!("H={h} KV={kv} D={d} lens {lens:?}");
            push(
                out,
                "qk_norm_rope",
                dtype,
                case,
                diff,
                tolerance(dtype) * 2.0,
            );
        }
    }
    Ok(())
}

fn check_swiglu(dev: &Device, out: &mut Vec<KernelCheck>) -> Result<()> {
    for dtype in DTYPES.into_iter().chain([DType::F32]) {
        let inter = 300;
        let (x, x_cpu) = random(&[17, 2 * inter], 3.0, dtype, dev)?;
        let got = swiglu(&x)?;
        let gate = x_cpu.narrow(1, 0, inter)?;
        let up = x_cpu.narrow(1, inter, inter)?;
        let want = (gate.silu()? * up)?;
        let diff = max_diff(&got, &want)?;
        let case = format!("17 rows, intermediate {inter}");
        push(out, "swiglu", dtype, case, diff, tolerance(dtype) * 4.0);
    }
    Ok(())
}

/// A copy: exact.
fn check_gather_rows(dev: &Device, out: &mut Vec<KernelCheck>) -> Result<()> {
    for dtype in DTYPES {
        let (x, x_cpu) = random(&[11, 300], 1.0, dtype, dev)?;
        let idx = [10u32, 0, 4, 4];
        let got = gather_rows(&x, &idx)?;
        let want = x_cpu.index_select(&Tensor::new(&idx, &Device::Cpu)?, 0)?;
        let diff = max_diff(&got, &want)?;
        push(
            out,
            "gather_rows",
            dtype,
            format!("rows {idx:?} of 11"),
            diff,
            0.0,
        );
    }
    Ok(())
}

/// Naive causal softmax(q k^T * scale) v per sequence on the CPU in f32.
/// q `[tokens, H, D]`, k/v `[tokens, KV, D]`; returns `[tokens, H * D]`.
fn attention_cpu(q: &Tensor, k: &Tensor, v: &Tensor, cu: &[usize], scale: f64) -> Result<Tensor> {
    let (_, h, _) = q.dims3()?;
    let kv = k.dim(1)?;
    let group = (h / kv.max(1)).max(1);
    let mut out = Vec::with_capacity(cu.len());
    for w in cu.windows(2) {
        let (s, len) = (w[0], w[1] - w[0]);
        let mut heads = Vec::with_capacity(h);
        for head in 0..h {
            let kvh = head / group;
            let qs = q.narrow(0, s, len)?.narrow(1, head, 1)?.squeeze(1)?;
            let ks = k.narrow(0, s, len)?.narrow(1, kvh, 1)?.squeeze(1)?;
            let vs = v.narrow(0, s, len)?.narrow(1, kvh, 1)?.squeeze(1)?;
            let scores = (qs.matmul(&ks.t()?)? * scale)?;
            let mask: Vec<f32> = (0..len)
                .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (len, len), &Device::Cpu)?;
            let p = candle_nn::ops::softmax(&(scores + mask)?, D::Minus1)?;
            heads.push(p.matmul(&vs)?); // [len, D]
        }
        out.push(Tensor::cat(&heads, 1)?); // [len, H * D]
    }
    Tensor::cat(&out, 0)
}

fn cu_seqlens(lens: &[usize]) -> Vec<usize> {
    let mut cu = vec![0];
    for l in lens {
        cu.push(cu.last().copied().unwrap_or(0) + l);
    }
    cu
}

fn check_attention(dev: &Device, out: &mut Vec<KernelCheck>) -> Result<()> {
    // Length 1, a tile exactly, tiles plus one, several tiles, and mixed short ones.
    let lens = [1usize, 7, 64, 65, 130, 3];
    let cu = cu_seqlens(&lens);
    let n = cu.last().copied().unwrap_or(0);
    let cu_dev = CuSeqlens::new(&cu, dev)?;
    for dtype in DTYPES {
        for (h, kv, d) in [(4, 2, 128), (4, 2, 64), (4, 2, 32), (6, 3, 16), (3, 1, 128)] {
            let case = format!("H={h} KV={kv} D={d} lens {lens:?}");
            if !attention_supported(d, dtype, dev) {
                push_unsupported(out, dtype, format!("packed qkv, {case}"), d);
                push_unsupported(out, dtype, format!("separate q, k, v, {case}"), d);
                continue;
            }
            let scale = 1.0 / (d as f64).sqrt();
            let (qkv, qkv_cpu) = random(&[n, (h + 2 * kv) * d], 1.5, dtype, dev)?;
            let split = |t: &Tensor| -> Result<(Tensor, Tensor, Tensor)> {
                Ok((
                    t.narrow(1, 0, h * d)?.reshape((n, h, d))?,
                    t.narrow(1, h * d, kv * d)?.reshape((n, kv, d))?,
                    t.narrow(1, (h + kv) * d, kv * d)?.reshape((n, kv, d))?,
                ))
            };
            let (q, k, v) = split(&qkv_cpu)?;
            let want = attention_cpu(&q, &k, &v, &cu, scale)?;

            let packed = varlen_attention_packed(&qkv, h, kv, &cu_dev, scale as f32)?;
            let diff = max_diff(&packed, &want)?;
            let what = format!("packed qkv, {case}");
            push(out, "varlen_attention", dtype, what, diff, tolerance(dtype));

            let (q, k, v) = split(&qkv)?;
            let separate = varlen_attention(&q, &k, &v, &cu_dev, scale as f32)?;
            let diff = max_diff(&separate, &want)?;
            let what = format!("separate q, k, v, {case}");
            push(out, "varlen_attention", dtype, what, diff, tolerance(dtype));
        }
    }
    Ok(())
}

/// One long sequence: many key tiles, the online softmax over all of them.
fn check_long_attention(dev: &Device, out: &mut Vec<KernelCheck>) -> Result<()> {
    let (h, kv, d, n) = (2, 1, 128, 1000);
    let cu = [0, n];
    let cu_dev = CuSeqlens::new(&cu, dev)?;
    let scale = 1.0 / (d as f64).sqrt();
    let dtype = DType::F16;
    let case = format!("H={h} KV={kv} D={d}, one sequence of {n}");
    if !attention_supported(d, dtype, dev) {
        push_unsupported(out, dtype, case, d);
        return Ok(());
    }
    let (q, q_cpu) = random(&[n, h, d], 1.0, dtype, dev)?;
    let (k, k_cpu) = random(&[n, kv, d], 1.0, dtype, dev)?;
    let (v, v_cpu) = random(&[n, kv, d], 1.0, dtype, dev)?;
    let got = varlen_attention(&q, &k, &v, &cu_dev, scale as f32)?;
    let want = attention_cpu(&q_cpu, &k_cpu, &v_cpu, &cu, scale)?;
    let diff = max_diff(&got, &want)?;
    push(out, "varlen_attention", dtype, case, diff, tolerance(dtype));
    Ok(())
}
