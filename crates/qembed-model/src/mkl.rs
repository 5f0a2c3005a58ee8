//! Linear layers on CPU through Intel MKL, loaded at run time (feature `mkl`).
//!
//! candle's CPU matmul reaches ~165 GFLOP/s in f32 and converts bf16 to f32 on the way,
//! while MKL's `cblas_gemm_bf16bf16f32` runs bf16 on AVX512-BF16 / AMX where the CPU has
//! them. MKL is opened with dlopen on first use (`QEMBED_MKL` names the library, default
//! `libmkl_rt.so.3` on the loader's path, e.g. from the PyPI `mkl` wheel); when it is
//! absent every linear layer falls back to candle's matmul, so a binary built with the
//! feature still runs anywhere.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

type Sgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);
type GemmBf16 = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const u16,
    i32,
    *const u16,
    i32,
    f32,
    *mut f32,
    i32,
);

struct Mkl {
    _lib: libloading::Library,
    sgemm: Sgemm,
    gemm_bf16: GemmBf16,
}

impl Mkl {
    /// `out = x @ w.T` for row-major bf16 `x` (m×k) and `w` (n×k), f32 out (m×n).
    fn gemm_bf16(
        &self,
        x: &[half::bf16],
        w: &[half::bf16],
        (m, n, k): (i32, i32, i32),
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let len = |a: i32, b: i32| a as usize * b as usize;
        if x.len() < len(m, k) || w.len() < len(n, k) || out.len() < len(m, n) {
            candle_core::bail!("mkl linear: buffers smaller than the shapes");
        }
        // SAFETY: the buffers hold at least m*k, n*k and m*n elements (checked above);
        // half::bf16 is a transparent u16, MKL's MKL_BF16.
        unsafe {
            (self.gemm_bf16)(
                ROW_MAJOR,
                NO_TRANS,
                TRANS,
                m,
                n,
                k,
                1.0,
                x.as_ptr().cast(),
                k,
                w.as_ptr().cast(),
                k,
                0.0,
                out.as_mut_ptr(),
                n,
            )
        };
        Ok(())
    }
}

fn mkl() -> Option<&'static Mkl> {
    static MKL: OnceLock<Option<Mkl>> = OnceLock::new();
    MKL.get_or_init(|| {
        let path = std::env::var("QEMBED_MKL").unwrap_or_else(|_| "libmkl_rt.so.3".into());
        // SAFETY: loading MKL runs its initialisers, which have no preconditions; the
        // symbols are looked up with the signatures MKL's cblas.h declares.
        let loaded = unsafe {
            libloading::Library::new(&path).and_then(|lib| {
                let sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0")?;
                let gemm_bf16 = *lib.get::<GemmBf16>(b"cblas_gemm_bf16bf16f32\0")?;
                Ok(Mkl {
                    _lib: lib,
                    sgemm,
                    gemm_bf16,
                })
            })
        };
        loaded.ok()
    })
    .as_ref()
}

/// Whether linear layers will go through MKL (for logs and /info).
pub fn available() -> bool {
    mkl().is_some()
}

/// `x @ w.T` through MKL for 2-D CPU tensors: f32 x f32, bf16 x bf16, or f32
/// activations with bf16 weights (cast to bf16 for the GEMM, f32 out); `None` where MKL
/// does not apply.
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let dtypes_ok = matches!(
        (x.dtype(), w.dtype()),
        (DType::F32, DType::F32) | (DType::BF16, DType::BF16) | (DType::F32, DType::BF16)
    );
    let applies =
        x.device().is_cpu() && x.rank() == 2 && w.rank() == 2 && dtypes_ok && mkl().is_some();
    if !applies {
        return Ok(None);
    }
    let x = x.contiguous()?;
    x.apply_op2_no_bwd(&w.contiguous()?, &MklLinear).map(Some)
}

struct MklLinear;

fn slice<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("mkl linear: input not contiguous"),
    }
}

impl CustomOp2 for MklLinear {
    fn name(&self) -> &'static str {
        "mkl-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some(mkl) = mkl() else {
            candle_core::bail!("mkl linear: MKL not loaded")
        };
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("mkl linear: shapes {:?} x {:?}^T", l1.shape(), l2.shape());
        }
        let dim = |v: usize| {
            i32::try_from(v)
                .map_err(|_| candle_core::Error::Msg("dimension too large for MKL".into()))
        };
        let (mi, ni, ki) = (dim(m)?, dim(n)?, dim(k)?);
        let mut out = vec![0f32; m * n];
        match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                let (x, w) = (slice(x, l1)?, slice(w, l2)?);
                // SAFETY: x is m*k, w is n*k, out is m*n, all row-major and contiguous.
                unsafe {
                    (mkl.sgemm)(
                        ROW_MAJOR,
                        NO_TRANS,
                        TRANS,
                        mi,
                        ni,
                        ki,
                        1.0,
                        x.as_ptr(),
                        ki,
                        w.as_ptr(),
                        ki,
                        0.0,
                        out.as_mut_ptr(),
                        ni,
                    )
                };
                Ok((CpuStorage::F32(out), Shape::from((m, n))))
            }
            (CpuStorage::F32(x), CpuStorage::BF16(w)) => {
                let x: Vec<half::bf16> = slice(x, l1)?
                    .iter()
                    .map(|v| half::bf16::from_f32(*v))
                    .collect();
                mkl.gemm_bf16(&x, slice(w, l2)?, (mi, ni, ki), &mut out)?;
                Ok((CpuStorage::F32(out), Shape::from((m, n))))
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => {
                mkl.gemm_bf16(slice(x, l1)?, slice(w, l2)?, (mi, ni, ki), &mut out)?;
                let out: Vec<half::bf16> = out.into_iter().map(half::bf16::from_f32).collect();
                Ok((CpuStorage::BF16(out), Shape::from((m, n))))
            }
            _ => candle_core::bail!("mkl linear: only f32, bf16, and f32 x bf16"),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// With `QEMBED_REQUIRE_MKL=1` (set where MKL is installed) MKL must load and agree
    /// with candle's matmul; elsewhere the fallback path is what runs.
    #[test]
    fn mkl_linear_matches_candle() {
        let required = std::env::var_os("QEMBED_REQUIRE_MKL").is_some();
        assert!(
            !required || super::available(),
            "MKL required but not loadable"
        );
        let x = Tensor::randn(0f32, 1.0, (37, 64), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (48, 64), &Device::Cpu).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        match super::linear(&x, &w).unwrap() {
            Some(got) => {
                let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-3);
            }
            None => assert!(!required),
        }
        // f32 activations with bf16 weights (the CPU bf16 layout): f32 out, bf16 accuracy.
        let wb = w.to_dtype(candle_core::DType::BF16).unwrap();
        if let Some(got) = super::linear(&x, &wb).unwrap() {
            assert_eq!(got.dtype(), candle_core::DType::F32);
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 0.5);
        } else {
            assert!(!required);
        }
    }
}
