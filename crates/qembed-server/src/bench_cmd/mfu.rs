//! Model FLOPs utilisation: the arithmetic a forward pass of a shape needs, and the
//! device's peak to divide it by — a datasheet figure for the GPUs operators deploy
//! on, or, for any other GPU, a large matmul measured on the device itself.

use std::time::Instant;

use anyhow::{Context, Result};
use qembed_model::{DType, Device, Tensor};
use serde::Serialize;

use super::shape::Shape;

/// Floating-point operations of one forward pass over sequences of `lengths` tokens:
/// the linear layers (2 per weight per token) and attention's two products over the
/// causal triangle (each query sees itself and the keys before it). Norms, rotary,
/// SwiGLU and softmax are left out, as MFU conventionally does.
pub fn forward_flops(shape: &Shape, lengths: &[usize]) -> f64 {
    let (h, i) = (shape.hidden_size as f64, shape.intermediate_size as f64);
    let q = (shape.num_attention_heads * shape.head_dim) as f64;
    let kv = (shape.num_key_value_heads * shape.head_dim) as f64;
    let layers = shape.num_hidden_layers as f64;
    let weights_per_layer = h * q + 2.0 * h * kv + q * h + 3.0 * h * i;
    let tokens: f64 = lengths.iter().map(|&l| l as f64).sum();
    let pairs: f64 = lengths
        .iter()
        .map(|&l| (l as f64) * (l as f64 + 1.0) / 2.0)
        .sum();
    layers * (2.0 * weights_per_layer * tokens + 4.0 * q * pairs)
}

/// The peak a run's achieved FLOP/s is divided by, and where the figure comes from.
#[derive(Debug, Clone, Serialize)]
pub struct Peak {
    pub tflops: f64,
    pub source: String,
}

/// Dense tensor-core peaks in TFLOP/s, f16/bf16 inputs with f32 accumulation (NVIDIA
/// datasheets, without the 2:4-sparsity doubling): (model, variant, peak), matched on
/// whole words of the driver's name (`NVIDIA H100 PCIe`, `NVIDIA A100-SXM4-80GB`), so
/// that `A10` is not `A100`'s prefix nor `L4` `L40`'s. Checked in order: a variant
/// before the model's default.
const GPU_PEAKS: [(&str, Option<&str>, f64); 12] = [
    ("H200", Some("NVL"), 835.5),
    ("H200", None, 989.4),
    ("H100", Some("PCIe"), 756.0),
    ("H100", Some("NVL"), 835.0),
    ("H100", None, 989.4),
    ("A100", None, 312.0),
    ("L40S", None, 362.05),
    ("L40", None, 181.05),
    ("L20", None, 119.5),
    ("L4", None, 121.0),
    ("A30", None, 165.0),
    ("A10", None, 125.0),
];

/// The datasheet peak of the GPU named `name`, for a 16-bit dtype.
pub fn table_peak(name: &str, dtype: DType) -> Option<Peak> {
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return None;
    }
    let words: Vec<&str> = name.split([' ', '-']).collect();
    GPU_PEAKS
        .iter()
        .find(|(model, variant, _)| {
            words.contains(model) && variant.is_none_or(|v| words.contains(&v))
        })
        .map(|&(model, variant, tflops)| Peak {
            tflops,
            source: format!(
                "datasheet {model}{} (dense f16/bf16)",
                variant.map(|v| format!(" {v}")).unwrap_or_default()
            ),
        })
}

/// The FLOP/s of an `n`x`n`x`n` matmul in `dtype` on `device`, best of a few after a
/// warm-up: the peak for a GPU the table does not know.
pub fn measured_peak(device: &Device, dtype: DType, n: usize) -> Result<Peak> {
    let a = Tensor::randn(0f32, 1.0, (n, n), device)
        .and_then(|t| t.to_dtype(dtype))
        .context("allocating the matmul operands")?;
    let b = a.t().and_then(|t| t.contiguous())?;
    let run = || -> Result<f64> {
        let started = Instant::now();
        let c = a.matmul(&b)?;
        // Reading one value back waits for the matmul to finish.
        c.get(0)?.get(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(started.elapsed().as_secs_f64())
    };
    run().context("warm-up matmul")?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        best = best.min(run()?);
    }
    Ok(Peak {
        tflops: 2.0 * (n as f64).powi(3) / best / 1e12,
        source: format!("measured {n}x{n}x{n} matmul"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_count_weights_and_the_causal_triangle() {
        let shape: Shape = "tiny".parse().unwrap();
        // tiny: h 64, i 160, 4 heads and 2 kv heads of 32, 3 layers.
        let per_layer_weights =
            64.0 * 128.0 + 2.0 * 64.0 * 64.0 + 128.0 * 64.0 + 3.0 * 64.0 * 160.0;
        let one = forward_flops(&shape, &[1]);
        assert_eq!(one, 3.0 * (2.0 * per_layer_weights + 4.0 * 128.0));
        // Two tokens: twice the weights' work, three query-key pairs.
        let two = forward_flops(&shape, &[2]);
        assert_eq!(two, 3.0 * (4.0 * per_layer_weights + 4.0 * 128.0 * 3.0));
        // Two sequences of one token see no keys of each other.
        assert_eq!(forward_flops(&shape, &[1, 1]), 2.0 * one);
    }

    #[test]
    fn specific_gpu_names_win_over_the_names_they_contain() {
        let peak = |n| table_peak(n, DType::BF16).map(|p| p.tflops);
        assert_eq!(peak("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(peak("NVIDIA H100 80GB HBM3"), Some(989.4));
        assert_eq!(peak("NVIDIA H200"), Some(989.4));
        assert_eq!(peak("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(peak("NVIDIA A10"), Some(125.0));
        assert_eq!(peak("NVIDIA L40S"), Some(362.05));
        assert_eq!(peak("NVIDIA L4"), Some(121.0));
        assert_eq!(peak("NVIDIA L40"), Some(181.05));
        assert_eq!(peak("NVIDIA H200 NVL"), Some(835.5));
        assert_eq!(peak("NVIDIA H100 NVL"), Some(835.0));
        // Names that only contain a known one are not it.
        assert_eq!(peak("NVIDIA RTX A1000"), None);
        assert_eq!(peak("NVIDIA A10G"), None);
        assert_eq!(peak("NVIDIA GeForce RTX 4090"), None);
        assert_eq!(
            table_peak("NVIDIA H100", DType::F32).map(|p| p.tflops),
            None
        );
    }

    #[test]
    fn a_measured_peak_is_positive_on_the_cpu() {
        let p = measured_peak(&Device::Cpu, DType::F32, 64).unwrap();
        assert!(p.tflops > 0.0 && p.tflops.is_finite(), "{p:?}");
    }
}
