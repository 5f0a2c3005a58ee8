//! Tensor parallelism: how ranks combine their partial results.
//!
//! Each rank holds whole attention heads (and whole kv heads) and a slice of the MLP's
//! intermediate columns; o_proj and down_proj are split by row, so each rank's output of
//! those is a partial sum that one all-reduce completes. On GPUs the all-reduce is
//! NCCL's; [`LocalGroup`] is an in-process one, so the sharding math is proven on CPU.

use std::sync::{Arc, Barrier, Mutex, PoisonError};

use candle_core::Tensor;

use crate::{ModelError, Result};

/// Sums a tensor across all ranks of a group; every rank gets the sum.
pub trait AllReduce: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
}

struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Option<Tensor>>>,
    sum: Mutex<Option<Tensor>>,
}

/// One rank of an in-process group: ranks run on threads of one process and meet at a
/// barrier. Sums are taken in rank order, so results are deterministic.
pub struct LocalGroup {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

impl LocalGroup {
    /// The `size` ranks of a new group, to be moved one to each thread.
    pub fn new(size: usize) -> Vec<LocalGroup> {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![None; size]),
            sum: Mutex::new(None),
        });
        (0..size)
            .map(|rank| LocalGroup {
                rank,
                size,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl AllReduce for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let s = &self.shared;
        s.slots.lock().unwrap_or_else(PoisonError::into_inner)[self.rank] = Some(t.clone());
        if s.barrier.wait().is_leader() {
            let slots = s.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let mut acc: Option<Tensor> = None;
            let mut failed = None;
            for part in slots.iter() {
                match (acc.take(), part) {
                    (_, None) => failed = Some("a rank did not contribute"),
                    (None, Some(p)) => acc = Some(p.clone()),
                    (Some(a), Some(p)) => match a.add(p) {
                        Ok(sum) => acc = Some(sum),
                        Err(_) => failed = Some("ranks contributed tensors of different shapes"),
                    },
                }
            }
            *s.sum.lock().unwrap_or_else(PoisonError::into_inner) =
                if failed.is_some() { None } else { acc };
        }
        s.barrier.wait();
        let sum = s.sum.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // Nobody may start the next round (and overwrite the sum) before all have read it.
        s.barrier.wait();
        sum.ok_or_else(|| ModelError::Input("all-reduce failed: ranks disagreed".into()))
    }
}

/// The slice of a dimension of `total` that `rank` of `size` owns, or why it can't.
pub(crate) fn shard_range(
    what: &str,
    total: usize,
    rank: usize,
    size: usize,
) -> Result<(usize, usize)> {
    if size == 0 || !total.is_multiple_of(size) {
        return Err(ModelError::TensorParallel(format!(
            "tensor parallel size {size} does not divide {what} ({total})"
        )));
    }
    let per = total / size;
    Ok((rank * per, per))
}
