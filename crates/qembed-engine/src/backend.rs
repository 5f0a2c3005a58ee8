//! Where the model runs: one device, or a tensor-parallel group of ranks.
//!
//! A tensor-parallel rank holds a slice of every layer and meets the other ranks at
//! each all-reduce, so all ranks must run the same forward pass at the same time. Each
//! rank therefore lives on its own thread with its own model, and a forward pass is
//! handed to all of them at once; every rank ends with the full result and rank 0's is
//! returned.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use qembed_model::{
    AllReduce, DType, Device, ModelError, PackedBatch, Quantize, Qwen3Config, Qwen3Embedding,
};

use crate::{EngineError, Result};

/// A device as users spell it: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (cpu, cuda, cuda:N)")),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The device of tensor-parallel rank `rank`: GPUs are taken consecutively from
    /// the one named; on CPU all ranks share the cores.
    pub fn device(self, rank: usize) -> Result<Device> {
        self.open(rank, false)
    }

    /// The device of a rank of a tensor-parallel group: on CUDA with a stream of its
    /// own, so that NCCL's collectives and the rank's kernels are ordered on one
    /// explicit stream rather than the per-thread default stream.
    fn rank_device(self, rank: usize) -> Result<Device> {
        self.open(rank, true)
    }

    fn open(self, rank: usize, own_stream: bool) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda(first) => {
                let gpu = first + rank;
                let device = if own_stream {
                    Device::new_cuda_with_stream(gpu)
                } else {
                    Device::new_cuda(gpu)
                };
                let device = device.map_err(|e| {
                    EngineError::Setting(format!("cannot open GPU cuda:{gpu}: {e}"))
                })?;
                qembed_model::cuda::check_device(&device)
                    .map_err(|e| EngineError::Setting(e.to_string()))?;
                Ok(device)
            }
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(_) => {
                let _ = (rank, own_stream);
                Err(EngineError::Setting(
                    "this binary was built without CUDA support; rebuild with `--features cuda`"
                        .into(),
                ))
            }
        }
    }

    pub fn is_cpu(self) -> bool {
        self == Self::Cpu
    }

    /// The name of the GPU this names (`NVIDIA H100 80GB HBM3`), from the driver; `None`
    /// on the CPU or when the driver does not say.
    pub fn gpu_name(self) -> Option<String> {
        match self {
            Self::Cpu => None,
            #[cfg(feature = "cuda")]
            Self::Cuda(gpu) => qembed_model::cuda::device_name(gpu).ok(),
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(_) => None,
        }
    }

    /// Used and total memory of each GPU `ranks` ranks from here run on, from the
    /// driver; empty on the CPU. A GPU the driver does not answer for is left out.
    pub fn gpu_memory(self, ranks: usize) -> Vec<GpuMemory> {
        match self {
            Self::Cpu => Vec::new(),
            #[cfg(feature = "cuda")]
            Self::Cuda(first) => (first..first + ranks)
                .filter_map(|gpu| {
                    let (free, total) = qembed_model::cuda::memory_info(gpu).ok()?;
                    Some(GpuMemory {
                        device: format!("cuda:{gpu}"),
                        used_bytes: total.saturating_sub(free) as u64,
                        total_bytes: total as u64,
                    })
                })
                .collect(),
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(_) => {
                let _ = ranks;
                Vec::new()
            }
        }
    }
}

/// One GPU's memory as the driver reports it ([`DeviceSpec::gpu_memory`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuMemory {
    /// `cuda:N`.
    pub device: String,
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// The model, on one device or split over a tensor-parallel group.
pub enum Backend {
    Single(Qwen3Embedding),
    TensorParallel(RankGroup),
}

impl Backend {
    /// Loads the checkpoint at `dir` onto `device`, as `tp` ranks when `tp > 1`.
    pub fn load(dir: &Path, device: DeviceSpec, dtype: DType, tp: usize) -> Result<Self> {
        Self::load_quantized(dir, device, dtype, Quantize::None, tp)
    }

    /// [`load`](Self::load) with the linear layers' weights held as `quantize` says.
    pub fn load_quantized(
        dir: &Path,
        device: DeviceSpec,
        dtype: DType,
        quantize: Quantize,
        tp: usize,
    ) -> Result<Self> {
        match tp {
            0 => Err(EngineError::Setting(
                "tensor parallel size must be at least 1".into(),
            )),
            1 => Ok(Self::Single(Qwen3Embedding::load_quantized(
                dir,
                dtype,
                &device.device(0)?,
                quantize,
                None,
            )?)),
            n => Ok(Self::TensorParallel(RankGroup::load(
                dir, device, dtype, quantize, n,
            )?)),
        }
    }

    pub fn config(&self) -> &Qwen3Config {
        match self {
            Self::Single(m) => m.config(),
            Self::TensorParallel(g) => &g.cfg,
        }
    }

    /// The dtype of the linear layers (what `--dtype` resolved to).
    pub fn dtype(&self) -> DType {
        match self {
            Self::Single(m) => m.dtype(),
            Self::TensorParallel(g) => g.dtype,
        }
    }

    /// The form the linear layers' weights are held in (what `--quantize` said).
    pub fn quantize(&self) -> Quantize {
        match self {
            Self::Single(m) => m.quantize(),
            Self::TensorParallel(g) => g.quantize,
        }
    }

    /// The CPU GEMM kernel chosen at load (`avx2`, `amx`, `portable`, ...), for logs
    /// and `/info`; `None` off the CPU.
    pub fn cpu_kernel(&self) -> Option<&'static str> {
        match self {
            Self::Single(m) => m.cpu_kernel(),
            Self::TensorParallel(g) => g.cpu_kernel,
        }
    }

    pub fn tensor_parallel(&self) -> usize {
        match self {
            Self::Single(_) => 1,
            Self::TensorParallel(g) => g.ranks.len(),
        }
    }

    /// False once a tensor-parallel group has failed (a rank errored or panicked in
    /// a forward pass): it refuses all work from then on, and `/health` says so, so
    /// that the orchestrator restarts the process.
    pub fn is_healthy(&self) -> bool {
        match self {
            Self::Single(_) => true,
            Self::TensorParallel(g) => !g.failed.load(Ordering::SeqCst),
        }
    }

    /// Pooled, un-normalised vectors of each sequence of the batch, in order.
    pub fn embed(&self, batch: &PackedBatch) -> Result<Vec<Vec<f32>>> {
        match self {
            Self::Single(m) => Ok(m.embed(batch)?),
            Self::TensorParallel(g) => g.embed(batch),
        }
    }
}

type Reply = mpsc::Sender<qembed_model::Result<Vec<Vec<f32>>>>;

struct Rank {
    jobs: Option<mpsc::Sender<(Arc<PackedBatch>, Reply)>>,
    thread: Option<JoinHandle<()>>,
}

/// Tensor-parallel ranks, one thread and one model shard each.
pub struct RankGroup {
    ranks: Vec<Rank>,
    /// Every rank's all-reduce handle, to abort them all when one rank fails.
    comms: Vec<Arc<dyn AllReduce>>,
    /// One forward pass at a time: ranks take jobs in channel order, and two callers
    /// interleaving their sends would pair different batches in an all-reduce.
    serial: Mutex<()>,
    /// Set when a forward pass failed on any rank: the ranks' all-reduce rounds may
    /// no longer be in step, so the group refuses work rather than risk mixing batches.
    failed: AtomicBool,
    cfg: Qwen3Config,
    dtype: DType,
    quantize: Quantize,
    /// The CPU GEMM kernel the ranks' linear layers run on (`None` off the CPU).
    cpu_kernel: Option<&'static str>,
}

impl RankGroup {
    fn load(
        dir: &Path,
        device: DeviceSpec,
        dtype: DType,
        quantize: Quantize,
        size: usize,
    ) -> Result<Self> {
        let comms = communicators(device, size)?;
        let mut ranks = Vec::with_capacity(size);
        let mut loaded = Vec::with_capacity(size);
        for (rank, comm) in comms.iter().cloned().enumerate() {
            let (job_tx, job_rx) = mpsc::channel::<(Arc<PackedBatch>, Reply)>();
            let (ready_tx, ready_rx) = mpsc::channel();
            let dir = dir.to_path_buf();
            let thread = std::thread::Builder::new()
                .name(format!("qembed-rank-{rank}"))
                .spawn(move || {
                    let model = device.rank_device(rank).and_then(|d| {
                        Ok(Qwen3Embedding::load_quantized(
                            &dir,
                            dtype,
                            &d,
                            quantize,
                            Some(comm.clone()),
                        )?)
                    });
                    let model = match model {
                        Ok(m) => {
                            let _ =
                                ready_tx.send(Ok((m.config().clone(), m.dtype(), m.cpu_kernel())));
                            m
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    for (batch, reply) in job_rx {
                        let out = catch_unwind(AssertUnwindSafe(|| model.embed(&batch)))
                            .unwrap_or_else(|_| {
                                Err(ModelError::TensorParallel(format!(
                                    "rank {rank} panicked in a forward pass"
                                )))
                            });
                        if out.is_err() {
                            // Peers may be waiting for this rank at an all-reduce.
                            comm.abort();
                        }
                        let _ = reply.send(out);
                    }
                })
                .map_err(|e| EngineError::Setting(format!("cannot start rank thread: {e}")))?;
            ranks.push(Rank {
                jobs: Some(job_tx),
                thread: Some(thread),
            });
            loaded.push(ready_rx);
        }
        // Collect every rank's outcome before judging: a rank that failed to load (a
        // size that does not divide the heads, a missing GPU) fails all of them.
        let mut first = None;
        for rx in loaded {
            let outcome = rx.recv().map_err(|_| {
                EngineError::Setting("a tensor-parallel rank exited while loading".into())
            });
            match (outcome, &first) {
                (Ok(Ok(meta)), None) => first = Some(Ok(meta)),
                (Ok(Ok(_)), Some(_)) => {}
                (Ok(Err(e)), _) => return Err(e),
                (Err(e), _) => return Err(e),
            }
        }
        let (cfg, dtype, cpu_kernel) =
            first.unwrap_or_else(|| Err(EngineError::Setting("no ranks".into())))?;
        Ok(Self {
            ranks,
            comms,
            serial: Mutex::new(()),
            failed: AtomicBool::new(false),
            cfg,
            dtype,
            quantize,
            cpu_kernel,
        })
    }

    fn embed(&self, batch: &PackedBatch) -> Result<Vec<Vec<f32>>> {
        // Checked here once: a batch that one rank refuses and others accept would leave
        // the others waiting at an all-reduce.
        if batch.is_empty() {
            return Err(ModelError::Input("empty batch".into()).into());
        }
        batch.validate(&self.cfg)?;
        let _serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        if self.failed.load(Ordering::SeqCst) {
            return Err(group_failed("an earlier forward pass failed on a rank"));
        }
        let batch = Arc::new(batch.clone());
        let replies: Vec<_> = self
            .ranks
            .iter()
            .map(|rank| {
                let (tx, rx) = mpsc::channel();
                let sent = rank
                    .jobs
                    .as_ref()
                    .is_some_and(|jobs| jobs.send((batch.clone(), tx)).is_ok());
                sent.then_some(rx)
            })
            .collect();
        // Every rank answers (a failing one aborts the all-reduce for the others), so
        // wait for all of them before judging.
        let mut results = Vec::with_capacity(replies.len());
        for rx in replies {
            results.push(match rx.map(|rx| rx.recv()) {
                Some(Ok(out)) => out.map_err(EngineError::from),
                _ => Err(group_failed("a rank has exited")),
            });
        }
        if let Some(pos) = results.iter().position(|r| r.is_err()) {
            self.failed.store(true, Ordering::SeqCst);
            for c in &self.comms {
                c.abort();
            }
            return results.swap_remove(pos);
        }
        results.swap_remove(0)
    }
}

fn group_failed(why: &str) -> EngineError {
    EngineError::Model(ModelError::TensorParallel(format!(
        "tensor-parallel group out of service ({why}); restart the server"
    )))
}

impl Drop for RankGroup {
    fn drop(&mut self) {
        for rank in &mut self.ranks {
            rank.jobs.take();
        }
        for rank in &mut self.ranks {
            if let Some(t) = rank.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// One all-reduce handle per rank: in-process on CPU, NCCL across GPUs.
fn communicators(device: DeviceSpec, size: usize) -> Result<Vec<Arc<dyn AllReduce>>> {
    match device {
        DeviceSpec::Cpu => Ok(qembed_model::LocalGroup::new(size)
            .into_iter()
            .map(|c| Arc::new(c) as Arc<dyn AllReduce>)
            .collect()),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(first) => {
            qembed_model::cuda::nccl_group(first, size).map_err(EngineError::from)
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err(EngineError::Setting(
            "this binary was built without CUDA support; rebuild with `--features cuda`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceSpec;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("CUDA:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }
}
