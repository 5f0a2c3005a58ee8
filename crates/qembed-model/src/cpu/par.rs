//! Sharing one output buffer between rayon tasks that each write their own part.
//!
//! A leaf module: the element-wise ops, attention and the GEMM kernels use it.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A pointer that rayon tasks may share because each writes a disjoint region of the
/// buffer behind it (attention's (sequence, head) tiles, a GEMM's column ranges).
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);

// SAFETY: only used to write disjoint regions of one buffer (attention's (sequence,
// head) tiles, a GEMM's (rows, columns) blocks), as each user documents.
unsafe impl Send for SyncPtr {}
// SAFETY: as for Send: tasks sharing it write disjoint regions and read none.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// Element `i` (a method, so that closures capture the `Send` wrapper, not the
    /// raw field).
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Rows of an f32 result handed to rayon tasks that write every element: no zeroing
/// first (a serial memset of tens of MiB per op), set to its length once they are done.
///
/// # Safety
/// `fill(row, dst)` must write every element of `dst` (each `width` long, the last
/// one `len % width` when that is not 0).
pub(crate) unsafe fn par_rows(
    len: usize,
    width: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(width.max(1))
        .enumerate()
        .for_each(|(row, dst)| fill(row, dst));
    // SAFETY: `fill` wrote every element (the caller's contract).
    unsafe { out.set_len(len) };
    out
}
