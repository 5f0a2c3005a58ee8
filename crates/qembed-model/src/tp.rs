//! Tensor parallelism: how ranks combine their partial results.
//!
//! Each rank holds whole attention heads (and whole kv heads) and a slice of the MLP's
//! intermediate columns; o_proj and down_proj are split by row, so each rank's output of
//! those is a partial sum that one all-reduce completes. On GPUs the all-reduce is
//! NCCL's; [`LocalGroup`] is an in-process one, so the sharding math is proven on CPU.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use candle_core::Tensor;

use crate::{ModelError, Result};

/// Sums a tensor across all ranks of a group; every rank gets the sum.
pub trait AllReduce: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Gives up on the group: ranks waiting in (or later entering) an all-reduce get an
    /// error instead of waiting for a peer that failed. Permanent.
    fn abort(&self) {}
}

/// One all-reduce round of an in-process group, guarded by a mutex.
struct Round {
    /// Bumped when a round's sum is ready; waiters watch it change.
    generation: u64,
    arrived: usize,
    slots: Vec<Option<Tensor>>,
    sum: Option<std::result::Result<Tensor, String>>,
    /// Ranks that still have to read the finished round's sum; a new round waits for 0.
    leaving: usize,
    aborted: bool,
}

/// One rank of an in-process group: ranks run on threads of one process and meet in a
/// mutex/condvar rendezvous. Sums are taken in rank order, so results are deterministic.
/// Unlike a plain barrier it can be aborted, so a rank that fails does not leave its
/// peers waiting for ever.
pub struct LocalGroup {
    rank: usize,
    size: usize,
    shared: Arc<(Mutex<Round>, Condvar)>,
}

impl LocalGroup {
    /// The `size` ranks of a new group, to be moved one to each thread.
    pub fn new(size: usize) -> Vec<LocalGroup> {
        let size = size.max(1);
        let shared = Arc::new((
            Mutex::new(Round {
                generation: 0,
                arrived: 0,
                slots: vec![None; size],
                sum: None,
                leaving: 0,
                aborted: false,
            }),
            Condvar::new(),
        ));
        (0..size)
            .map(|rank| LocalGroup {
                rank,
                size,
                shared: shared.clone(),
            })
            .collect()
    }
}

fn aborted() -> ModelError {
    ModelError::TensorParallel("all-reduce aborted: another rank failed".into())
}

/// The ranks' tensors summed in rank order, or why not.
fn sum_slots(slots: &mut [Option<Tensor>]) -> std::result::Result<Tensor, String> {
    let mut acc: Option<Tensor> = None;
    for part in slots.iter_mut().map(Option::take) {
        let part = part.ok_or("a rank did not contribute")?;
        acc = Some(match acc {
            None => part,
            Some(a) => a
                .add(&part)
                .map_err(|_| "ranks contributed tensors of different shapes")?,
        });
    }
    acc.ok_or_else(|| "empty group".to_string())
}

impl AllReduce for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let (lock, cv) = &*self.shared;
        let mut r = lock.lock().unwrap_or_else(PoisonError::into_inner);
        // The previous round's sum is still being read: wait before overwriting it.
        while r.leaving > 0 && !r.aborted {
            r = cv.wait(r).unwrap_or_else(PoisonError::into_inner);
        }
        if r.aborted {
            return Err(aborted());
        }
        r.slots[self.rank] = Some(t.clone());
        r.arrived += 1;
        if r.arrived == self.size {
            let sum = sum_slots(&mut r.slots);
            r.sum = Some(sum);
            r.arrived = 0;
            r.leaving = self.size;
            r.generation += 1;
            cv.notify_all();
        } else {
            let generation = r.generation;
            while r.generation == generation && !r.aborted {
                r = cv.wait(r).unwrap_or_else(PoisonError::into_inner);
            }
            if r.aborted {
                return Err(aborted());
            }
        }
        let sum = r.sum.clone();
        r.leaving -= 1;
        if r.leaving == 0 {
            r.sum = None;
            cv.notify_all();
        }
        match sum {
            Some(Ok(t)) => Ok(t),
            Some(Err(why)) => Err(ModelError::TensorParallel(format!(
                "all-reduce failed: {why}"
            ))),
            None => Err(ModelError::TensorParallel("all-reduce lost its sum".into())),
        }
    }

    fn abort(&self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(PoisonError::into_inner).aborted = true;
        cv.notify_all();
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

#[cfg(test)]
mod rendezvous_tests {
    use super::{AllReduce, LocalGroup};
    use candle_core::{Device, Tensor};

    /// Many rounds back to back: each rank gets every round's own sum, never a sum
    /// from a neighbouring round.
    #[test]
    fn rounds_stay_in_step() {
        let handles: Vec<_> = LocalGroup::new(3)
            .into_iter()
            .map(|g| {
                std::thread::spawn(move || {
                    (0..200)
                        .map(|round| {
                            let t = Tensor::new(&[(round * 10 + g.rank()) as f32], &Device::Cpu)
                                .unwrap();
                            g.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap()[0]
                        })
                        .collect::<Vec<f32>>()
                })
            })
            .collect();
        for h in handles {
            let sums = h.join().unwrap();
            for (round, s) in sums.iter().enumerate() {
                assert_eq!(*s, (round * 30 + 3) as f32);
            }
        }
    }

    /// A rank that fails aborts the group: a peer waiting at the all-reduce gets an
    /// error instead of waiting for ever, and so does any later call.
    #[test]
    fn abort_releases_waiting_ranks() {
        let mut group = LocalGroup::new(2);
        let failing = group.pop().unwrap();
        let waiting = group.pop().unwrap();
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let t2 = t.clone();
        let h = std::thread::spawn(move || waiting.all_reduce_sum(&t2).is_err());
        std::thread::sleep(std::time::Duration::from_millis(50));
        failing.abort();
        assert!(h.join().unwrap());
        assert!(failing.all_reduce_sum(&t).is_err());
    }
}
