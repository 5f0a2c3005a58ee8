//! The CUDA backend's own kernels (feature `cuda`) and the NCCL all-reduce.
//!
//! The kernels live in the workspace's `kernels/*.cu`; `build.rs` compiles them to PTX
//! with nvcc and they are embedded here, loaded once per device on first use (the driver
//! JIT-compiles PTX for the GPU it finds). Each is wrapped in a candle custom op whose
//! `cuda_fwd` validates shapes, dtypes and layouts and returns a candle error rather than
//! launching on anything it does not expect; the CPU forward is an error (these ops are
//! CUDA-only; the CPU forward pass has its own path).
//!
//! Activations are f16 or bf16 (f32 also works for everything but attention); all math
//! inside the kernels is f32.

mod attention;
mod nccl;
mod ops;

pub use attention::{attention_supported, varlen_attention, varlen_attention_packed, CuSeqlens};
pub use nccl::{nccl_group, NcclGroup};
pub use ops::{gather_rows, qk_norm_rope, rms_norm, rope, rope_table, swiglu};

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::CudaDType;
use candle_core::{bail, Layout, Result};

const RMS_NORM_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rms_norm.ptx"));
const QK_NORM_ROPE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/qk_norm_rope.ptx"));
const SWIGLU_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/swiglu.ptx"));
const GATHER_ROWS_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gather_rows.ptx"));
const VARLEN_ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/varlen_attention.ptx"));

/// An element type our kernels are instantiated for; `NAME` is the suffix of the
/// kernel's `extern "C"` name (`rms_norm_f16`, ...).
trait Elem: DeviceRepr + CudaDType + 'static {
    const NAME: &'static str;
}

impl Elem for half::f16 {
    const NAME: &'static str = "f16";
}

impl Elem for half::bf16 {
    const NAME: &'static str = "bf16";
}

impl Elem for f32 {
    const NAME: &'static str = "f32";
}

/// The part of `slice` that a contiguous `layout` covers, or an error naming `what`.
fn contiguous_view<'a, T>(
    slice: &'a CudaSlice<T>,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) if end <= slice.len() => Ok(slice.slice(start..end)),
        Some(_) => bail!("{op}: {what} layout runs past its storage"),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

/// `v` as a kernel's `int` argument.
fn as_i32(v: usize, op: &str, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{op}: {what} {v} exceeds i32")))
}

/// Blocks of `per_block` items covering `n` items, as a grid dimension.
fn blocks_for(n: usize, per_block: usize, op: &str) -> Result<u32> {
    let b = n.div_ceil(per_block).max(1);
    u32::try_from(b)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: {n} items need too many blocks")))
}

fn cuda_only(op: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{op} is a CUDA-only kernel; on CPU the model uses candle's ops"
    ))
}
