//! Keeping freed activation memory in the process.
//!
//! Every candle op allocates its output, and a forward pass of a few thousand tokens
//! makes buffers of tens of MiB per layer. glibc serves allocations that large with
//! `mmap` and gives them back on `free`, so each op pays for fresh zeroed pages: a
//! fifth of the CPU time of a bf16 forward pass went to page faults and the kernel
//! clearing pages. Serving them from the heap and never trimming it makes the next
//! forward pass reuse the same memory; the cost is that the process keeps its peak
//! activation memory, which `--max-batch-tokens` bounds.

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
