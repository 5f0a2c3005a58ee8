//! Keeping freed activation memory in the process.
//!
//! Every candle op allocates its output, and a forward pass of a few thousand tokens
//! makes buffers of tens of MiB per layer. glibc serves allocations that large with
//! `mmap` and gives them back on `free`, so each op pays for fresh zeroed pages: a
//! fifth of the CPU time of a bf16 forward pass went to page faults and the kernel
//! clearing pages. Serving them from the heap and never trimming it makes the next
//! forward pass reuse the same memory; the cost is that the process keeps its peak
//! activation memory, which `--max-batch-tokens` bounds, until
//! [`release_freed_memory`] hands free memory back (the server does so once it has been
//! idle for a moment after a burst, so a burst's memory does not stay held for good).

/// Makes glibc keep large freed blocks for reuse. Process-wide: binaries call it once
/// at start-up, before any thread allocates. A no-op off glibc.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc tunables; called before worker threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Returns the free memory of every malloc arena to the OS (glibc's `malloc_trim`).
/// Takes milliseconds; the next forward pass pays the page faults again, so callers do
/// it when idle, not between batches. A no-op off glibc.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free; it is thread-safe
    // (it takes each arena's lock) and no pointer of ours refers to free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
