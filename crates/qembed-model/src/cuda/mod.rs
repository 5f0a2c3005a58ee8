//! The CUDA backend's own kernels (feature `cuda`) and the NCCL all-reduce.
//!
//! The kernels live in the workspace's `kernels/*.cu`; `build.rs` compiles each file to a
//! fat binary (SASS for sm_80, sm_89 and sm_90, PTX for compute_80) and they are embedded
//! here, loaded once per GPU on first use: the driver takes the SASS of the GPU's
//! generation, or JIT-compiles the PTX on any other GPU of capability 8.0 or later.
//! Each is wrapped in a candle custom op whose `cuda_fwd` validates shapes, dtypes and layouts and returns a candle error rather than
//! launching on anything it does not expect; the CPU forward is an error (these ops are
//! CUDA-only; the CPU forward pass has its own path).
//!
//! Activations are f16 or bf16 (f32 also works for everything but attention); all math
//! inside the kernels is f32.

mod attention;
mod nccl;
mod ops;
pub mod selftest;

pub use attention::{attention_supported, varlen_attention, varlen_attention_packed, CuSeqlens};
pub use nccl::{nccl_group, NcclGroup};
pub use ops::{gather_rows, qk_norm_rope, rms_norm, rope, rope_table, swiglu};

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaView, DeviceRepr,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, Device, Layout, Result};

/// One `kernels/*.cu` file as nvcc built it (see `build.rs`).
struct Module {
    name: &'static str,
    fatbin: &'static [u8],
}

macro_rules! module {
    ($stem:literal) => {
        Module {
            name: $stem,
            fatbin: include_bytes!(concat!(env!("OUT_DIR"), "/", $stem, ".fatbin")),
        }
    };
}

const RMS_NORM: Module = module!("rms_norm");
const QK_NORM_ROPE: Module = module!("qk_norm_rope");
const SWIGLU: Module = module!("swiglu");
const GATHER_ROWS: Module = module!("gather_rows");
const VARLEN_ATTENTION: Module = module!("varlen_attention");

/// Our modules, loaded once per GPU (its primary context, which every candle device
/// of that ordinal shares). A loaded module holds its context, so it stays valid for the
/// life of the process. Read-mostly: every kernel launch looks its module up, and the
/// ranks of a tensor-parallel group do so from their own threads at once.
fn modules() -> &'static RwLock<Loaded> {
    static MODULES: OnceLock<RwLock<Loaded>> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

/// Loaded modules by (GPU ordinal, module name).
type Loaded = HashMap<(usize, &'static str), Arc<CudaModule>>;

/// The kernel `func` of `module` on `dev`'s GPU, loading the module on first use.
fn load_func(dev: &CudaDevice, module: &Module, func: &str) -> Result<CudaFunction> {
    let ctx = dev.cuda_stream().context().clone();
    let key = (ctx.ordinal(), module.name);
    // A poisoned lock only means another thread panicked while holding it; the map
    // itself is always whole (one insert).
    let found = modules()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    let loaded = match found {
        Some(m) => m,
        None => {
            let mut map = modules().write().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                // Another thread loaded it between the two locks.
                Some(m) => m.clone(),
                None => {
                    let m = ctx
                        .load_module(Ptx::from_binary(module.fatbin.to_vec()))
                        .map_err(|e| {
                            candle_core::Error::Msg(format!(
                                "cannot load qembed's {} kernels on cuda:{}: {e}",
                                module.name, key.0
                            ))
                        })?;
                    map.insert(key, m.clone());
                    m
                }
            }
        }
    };
    loaded.load_function(func).w()
}

/// The name of GPU `ordinal` as the driver gives it (`NVIDIA H100 80GB HBM3`).
pub fn device_name(ordinal: usize) -> Result<String> {
    let ctx = candle_core::cuda_backend::cudarc::driver::CudaContext::new(ordinal).w()?;
    ctx.name().w()
}

/// Free and total bytes of GPU `ordinal`, from the driver (`cuMemGetInfo`: the whole
/// device, so every process's allocations count, as nvidia-smi shows them).
pub fn memory_info(ordinal: usize) -> Result<(usize, usize)> {
    let ctx = candle_core::cuda_backend::cudarc::driver::CudaContext::new(ordinal).w()?;
    ctx.mem_get_info().w()
}

/// Refuses a GPU that our kernels cannot run on (below sm_80: no bf16 tensor cores),
/// naming it and its capability, before any weight is copied to it. A CPU device passes.
pub fn check_device(device: &Device) -> Result<()> {
    let Device::Cuda(dev) = device else {
        return Ok(());
    };
    let ctx = dev.cuda_stream().context().clone();
    let (major, minor) = ctx.compute_capability().w()?;
    if major < 8 {
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        bail!(
            "cuda:{} is {name} (compute capability {major}.{minor}); qembed's CUDA kernels \
             need compute capability 8.0 or later (A100, A10, L4, L20, L40S, H100, H200)",
            ctx.ordinal()
        );
    }
    Ok(())
}

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
