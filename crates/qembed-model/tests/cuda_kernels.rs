//! Each CUDA kernel against a CPU reference built from candle's CPU ops (feature `cuda`;
//! needs a GPU): the checks of `qembed_model::cuda::selftest`, which `qembed check
//! --device cuda` also runs, and the kernels' refusals of bad input.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use qembed_model::cuda;

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU (device 0)")
}

/// Every kernel on its ragged shapes and both 16-bit dtypes (`cuda::selftest`, the
/// checks `qembed check --device cuda` reports) within its tolerance.
#[test]
fn every_kernel_matches_its_cpu_reference() {
    let checks = cuda::selftest::run(&gpu()).unwrap();
    assert_eq!(checks.len(), cuda::selftest::CHECKS);
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok())
        .map(|c| {
            format!(
                "{} {:?} {}: {} > {}",
                c.kernel, c.dtype, c.case, c.max_diff, c.tolerance
            )
        })
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    for kernel in [
        "rms_norm",
        "rope",
        "qk_norm_rope",
        "swiglu",
        "gather_rows",
        "varlen_attention",
    ] {
        assert!(
            checks.iter().any(|c| c.kernel == kernel),
            "{kernel} not checked"
        );
    }
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
    let x11 = Tensor::zeros((11, 300), DType::F16, &dev).unwrap();
    assert!(cuda::gather_rows(&x11, &[11]).is_err());
    let x = Tensor::zeros((2, 64), DType::F16, &dev).unwrap();
    let w = Tensor::zeros(32, DType::F16, &dev).unwrap();
    assert!(cuda::rms_norm(&x, &w, 1e-6).is_err());
    assert!(cuda::swiglu(&Tensor::zeros((2, 7), DType::F16, &dev).unwrap()).is_err());
    let cpu = Tensor::zeros((2, 64), DType::F16, &Device::Cpu).unwrap();
    let cpu_w = Tensor::zeros(64, DType::F16, &Device::Cpu).unwrap();
    let err = cuda::rms_norm(&cpu, &cpu_w, 1e-6).unwrap_err().to_string();
    assert!(err.contains("CUDA-only"), "{err}");
}
