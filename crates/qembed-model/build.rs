//! Sets `cfg(amx)` on targets where the AMX kernels build.
//!
//! With the `cuda` feature: compiles each of the workspace's `kernels/*.cu` to one fat
//! binary in OUT_DIR, where `src/cuda/` embeds them. Without it this does nothing and
//! needs no CUDA.
//!
//! A fat binary holds machine code (SASS) for each GPU generation in `$QEMBED_CUDA_SASS`
//! (default `80,89,90`: A100/A30, L4/L20/L40S, H100/H200), which the driver loads as is,
//! and PTX for `compute_80`, which the driver JIT-compiles for any other GPU of
//! capability 8.0 or later (the JIT only compiles forward, so PTX for the oldest GPU
//! we support is the portable choice). sm_80 is the minimum: the attention kernel uses
//! bf16 WMMA. `CUDA_COMPUTE_CAP` does not apply here; it picks candle's kernels' target.
//!
//! nvcc is `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // `cfg(amx)`: targets the AMX kernels build for (x86-64 Linux with glibc: inline asm
    // for the tiles, `arch_prctl` through libc for the tile state). Whether the CPU has
    // AMX is decided at run time.
    println!("cargo::rustc-check-cfg=cfg(amx)");
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && target("CARGO_CFG_TARGET_OS") == "linux"
        && target("CARGO_CFG_TARGET_ENV") == "gnu"
    {
        println!("cargo::rustc-cfg=amx");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["NVCC", "CUDA_HOME", "QEMBED_CUDA_SASS", "NVCC_CCBIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let kernels = manifest.join("../../kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed={}", kernels.display());

    let sass = sass_targets();
    let nvcc = find_nvcc();

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", kernels.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")))
        .collect();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    let ccbin = std::env::var("NVCC_CCBIN").ok();
    let children: Vec<_> = sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .map(|src| {
            let stem = src
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("utf-8 name");
            let fatbin = out.join(format!("{stem}.fatbin"));
            let mut cmd = Command::new(&nvcc);
            cmd.arg("--fatbin");
            for cap in &sass {
                cmd.arg(format!("-gencode=arch=compute_{cap},code=sm_{cap}"));
            }
            cmd.arg(format!(
                "-gencode=arch=compute_{PTX_CAP},code=compute_{PTX_CAP}"
            ))
            .args(["-O3", "-std=c++17", "-lineinfo"])
            .arg("-I")
            .arg(&kernels)
            .arg("-o")
            .arg(&fatbin)
            .arg(src);
            if let Some(cc) = &ccbin {
                cmd.args(["-ccbin", cc]);
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
            (src.clone(), child)
        })
        .collect();
    for (src, child) in children {
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("nvcc on {}: {e}", src.display()));
        if !output.status.success() {
            panic!("nvcc failed on {} ({})", src.display(), output.status);
        }
    }
}

/// The PTX in every fat binary: the oldest GPU generation the kernels support.
const PTX_CAP: u32 = 80;

/// `$QEMBED_CUDA_SASS` as compute capabilities (`80,89,90`, `sm_` prefixes allowed);
/// each must be at least [`PTX_CAP`]. Empty means PTX only.
fn sass_targets() -> Vec<u32> {
    let list = std::env::var("QEMBED_CUDA_SASS").unwrap_or_else(|_| "80,89,90".into());
    list.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let cap: u32 = c.trim_start_matches("sm_").parse().unwrap_or_else(|_| {
                panic!("QEMBED_CUDA_SASS={list:?}: {c:?} is not a capability such as 90")
            });
            if cap < PTX_CAP {
                panic!(
                    "QEMBED_CUDA_SASS={list:?}: sm_{cap} is older than sm_{PTX_CAP}, the minimum \
                     for qembed's kernels (bf16 tensor cores)"
                );
            }
            cap
        })
        .collect()
}

fn find_nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.is_file() {
            return p;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the `cuda` feature needs nvcc (CUDA 13.0): set CUDA_HOME or put nvcc on PATH \
         (.ci/cuda-check installs the pinned toolkit from PyPI and prints the exports)"
    );
}
