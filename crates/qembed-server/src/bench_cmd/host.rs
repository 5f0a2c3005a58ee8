//! What `qembed bench` reports about the machine it measured: the CPU (model, the
//! SIMD flags the kernels care about), the GPU name, available memory, and the CPU time
//! this process used.

use std::path::Path;

/// SIMD and matrix flags from /proc/cpuinfo that decide which GEMM kernel runs.
const FLAGS: [&str; 11] = [
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "amx_tile",
    "amx_bf16",
    "amx_fp16",
];

/// `"AMD EPYC 7B13 (avx2 fma f16c), 2 threads"`, or what of it /proc/cpuinfo gives.
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags = field("flags").unwrap_or_default();
    let present: Vec<&str> = FLAGS
        .iter()
        .copied()
        .filter(|f| flags.split_whitespace().any(|g| g == *f))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model} ({}), {threads} threads", present.join(" "))
}

/// The NVIDIA GPU models the driver lists, in PCI order (which need not be CUDA's
/// device order), or `None` when it lists none.
pub fn gpu_names() -> Option<String> {
    let dir = Path::new("/proc/driver/nvidia/gpus");
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    let names: Vec<String> = entries
        .iter()
        .filter_map(|e| std::fs::read_to_string(e.path().join("information")).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string()))
        })
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// MemAvailable from /proc/meminfo in bytes, if the kernel reports it.
pub fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&info)
}

fn parse_mem_available(info: &str) -> Option<u64> {
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds this process has used, all threads together. Tokens per CPU-second is
/// what a shared machine still measures fairly; tokens per second is what users see.
pub fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let info = "MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n";
        assert_eq!(parse_mem_available(info), Some(1_024_000));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
    }
}
