//! The tensor-parallel all-reduce on GPUs: NCCL (through cudarc's bindings), one rank per
//! GPU, the ranks on threads of one process.
//!
//! The sum is enqueued on the stream of the tensor's own candle device, so it is ordered
//! with the kernels before and after it whichever `Device` value the rank's model was
//! loaded on (only the GPU has to match). A candle device from `Device::new_cuda` uses
//! the per-thread default stream; NCCL in blocking mode (ours) resolves that to the
//! calling thread's stream, which is the rank thread running the model.
//! `Device::new_cuda_with_stream` gives each rank an ordinary stream instead.

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::cuda_backend::cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::CudaStorageSlice as S;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Device, DeviceLocation, Storage, Tensor};
use cudarc::nccl::{result, sys, Id, NcclType};

use crate::tp::AllReduce;
use crate::{ModelError, Result};

/// An NCCL error with its result code (cudarc's `NcclError` prints only its name and
/// does not implement `std::error::Error`).
fn nccl_err(what: &str, e: result::NcclError) -> ModelError {
    ModelError::TensorParallel(format!("{what}: NCCL {:?}", e.0))
}

fn driver_err(what: &str, e: impl std::fmt::Debug) -> ModelError {
    ModelError::TensorParallel(format!("{what}: {e:?}"))
}

/// NCCL's communicator handle, aborted on drop.
struct RawComm(sys::ncclComm_t);

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap; `NcclGroup` only reaches it through a Mutex.
unsafe impl Send for RawComm {}

impl Drop for RawComm {
    fn drop(&mut self) {
        if self.0.is_null() {
            return; // aborted already
        }
        // SAFETY: the handle came from a successful ncclCommInitRank and is dropped once.
        // Abort rather than destroy: destroy waits for peers that may already be gone.
        let _ = unsafe { result::comm_abort(self.0) };
    }
}

/// One rank of an NCCL group. Build the ranks of this process with [`nccl_group`] or
/// [`NcclGroup::for_gpus`], or each rank on its own thread with [`NcclGroup::from_rank`]
/// and one shared [`Id`].
pub struct NcclGroup {
    comm: Mutex<RawComm>,
    /// The GPU's primary context (the one candle's devices on that GPU use).
    ctx: Arc<CudaContext>,
    rank: usize,
    world_size: usize,
}

/// The `size` ranks of a new group over GPUs `first .. first + size`, as the model's
/// [`AllReduce`] handles, in rank order: rank `r` must run on GPU `first + r`.
pub fn nccl_group(first: usize, size: usize) -> Result<Vec<Arc<dyn AllReduce>>> {
    Ok(NcclGroup::for_gpus(first, size)?
        .into_iter()
        .map(|g| Arc::new(g) as Arc<dyn AllReduce>)
        .collect())
}

impl NcclGroup {
    /// A new group id; share it (it is `Copy`) with every rank of the group.
    pub fn unique_id() -> Result<Id> {
        Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))
    }

    /// Joins rank `rank` of a `world_size` group on `device`'s GPU. Blocks until all
    /// ranks have joined, so the ranks must call it concurrently, one thread each.
    pub fn from_rank(device: &Device, rank: usize, world_size: usize, id: Id) -> Result<Self> {
        let ctx = device.as_cuda_device()?.cuda_stream().context().clone();
        Self::join(ctx, rank, world_size, id)
    }

    /// All ranks of a group over GPUs `first .. first + size`, rank `r` on GPU
    /// `first + r`; the communicators are set up concurrently, one thread per rank.
    pub fn for_gpus(first: usize, size: usize) -> Result<Vec<NcclGroup>> {
        if size == 0 {
            return Err(ModelError::TensorParallel(
                "a group needs at least one GPU".into(),
            ));
        }
        // Contexts first, so that a missing GPU fails here rather than leaving the other
        // ranks waiting in ncclCommInitRank.
        let contexts = (first..first + size)
            .map(|gpu| {
                CudaContext::new(gpu).map_err(|e| driver_err(&format!("cannot open GPU {gpu}"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let id = Self::unique_id()?;
        let joined: Vec<Result<NcclGroup>> = std::thread::scope(|s| {
            let handles: Vec<_> = contexts
                .into_iter()
                .enumerate()
                .map(|(rank, ctx)| s.spawn(move || Self::join(ctx, rank, size, id)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ModelError::TensorParallel(
                            "NCCL init thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        joined.into_iter().collect()
    }

    fn join(ctx: Arc<CudaContext>, rank: usize, world_size: usize, id: Id) -> Result<Self> {
        let (Ok(rank_i), Ok(size_i)) = (i32::try_from(rank), i32::try_from(world_size)) else {
            return Err(ModelError::TensorParallel(format!(
                "rank {rank} of {world_size}"
            )));
        };
        if rank >= world_size {
            return Err(ModelError::TensorParallel(format!(
                "rank {rank} of a group of {world_size}"
            )));
        }
        // ncclCommInitRank binds the communicator to the current device.
        ctx.bind_to_thread()
            .map_err(|e| driver_err("binding the CUDA context", e))?;
        let unique = sys::ncclUniqueId {
            internal: *id.internal(),
        };
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; the id came from ncclGetUniqueId.
        unsafe { result::comm_init_rank(&mut comm, size_i, unique, rank_i) }.map_err(|e| {
            nccl_err(
                &format!(
                    "ncclCommInitRank (rank {rank} of {world_size}, GPU {})",
                    ctx.ordinal()
                ),
                e,
            )
        })?;
        Ok(Self {
            comm: Mutex::new(RawComm(comm)),
            ctx,
            rank,
            world_size,
        })
    }

    /// The GPU (ordinal) this rank runs on.
    pub fn gpu(&self) -> usize {
        self.ctx.ordinal()
    }
}

/// `src` summed over the ranks into a new buffer, on `stream` (the tensor's).
fn sum<T: NcclType + DeviceRepr>(
    comm: &RawComm,
    dev: &CudaDevice,
    stream: &CudaStream,
    src: &CudaView<T>,
) -> Result<CudaSlice<T>> {
    let n = src.len();
    // SAFETY: NCCL writes every element of the receive buffer.
    let mut dst = unsafe { dev.alloc::<T>(n) }?;
    {
        let (sp, _read) = src.device_ptr(stream);
        let (dp, _write) = dst.device_ptr_mut(stream);
        // SAFETY: both buffers hold `n` elements of `T` on this GPU, the communicator is
        // live and not in use elsewhere (we hold its lock), and `stream` belongs to the
        // GPU the communicator was created on (checked by the caller).
        unsafe {
            result::all_reduce(
                sp as *const std::ffi::c_void,
                dp as *mut std::ffi::c_void,
                n,
                T::as_nccl_type(),
                sys::ncclRedOp_t::ncclSum,
                comm.0,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| nccl_err("ncclAllReduce", e))?;
    }
    Ok(dst)
}

impl AllReduce for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    /// Aborts the communicator, so that this rank's pending collectives end (with an
    /// error) instead of waiting on a peer that failed.
    fn abort(&self) {
        let mut comm = self.comm.lock().unwrap_or_else(PoisonError::into_inner);
        if !comm.0.is_null() {
            // SAFETY: a live handle from ncclCommInitRank, aborted once and then cleared.
            let _ = unsafe { result::comm_abort(comm.0) };
            comm.0 = std::ptr::null_mut();
        }
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    /// Sum over the ranks into a new tensor on this rank's GPU (f16, bf16 or f32).
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let gpu = self.ctx.ordinal();
        if t.device().location() != (DeviceLocation::Cuda { gpu_id: gpu }) {
            return Err(ModelError::TensorParallel(format!(
                "rank {} runs on GPU {gpu}, the tensor is on {:?}",
                self.rank,
                t.device().location()
            )));
        }
        if t.elem_count() == 0 {
            return Ok(t.clone());
        }
        let t = t.contiguous()?;
        let dev = t.device().as_cuda_device()?;
        let stream = dev.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| driver_err("binding the CUDA context", e))?;
        let comm = self.comm.lock().unwrap_or_else(PoisonError::into_inner);
        if comm.0.is_null() {
            return Err(ModelError::TensorParallel(
                "all-reduce aborted: another rank failed".into(),
            ));
        }
        let out = {
            let (storage, layout) = t.storage_and_layout();
            let Storage::Cuda(s) = &*storage else {
                return Err(ModelError::TensorParallel("tensor is not on a GPU".into()));
            };
            let Some((o1, o2)) = layout.contiguous_offsets() else {
                return Err(ModelError::TensorParallel(
                    "tensor is not contiguous".into(),
                ));
            };
            let slice = match &s.slice {
                S::F16(x) => S::F16(sum(&comm, dev, &stream, &x.slice(o1..o2))?),
                S::BF16(x) => S::BF16(sum(&comm, dev, &stream, &x.slice(o1..o2))?),
                S::F32(x) => S::F32(sum(&comm, dev, &stream, &x.slice(o1..o2))?),
                _ => {
                    return Err(ModelError::TensorParallel(format!(
                        "all-reduce of {:?} (f16, bf16 or f32 only)",
                        t.dtype()
                    )))
                }
            };
            CudaStorage {
                slice,
                device: dev.clone(),
            }
        };
        Ok(Tensor::from_storage(
            Storage::Cuda(out),
            t.shape().clone(),
            BackpropOp::none(),
            false,
        ))
    }
}
