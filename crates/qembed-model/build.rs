//! Sets `cfg(amx)` on targets where the AMX kernels build.
//!
//! With the `cuda` feature: compiles the workspace's `kernels/*.cu` to PTX in OUT_DIR,
//! where `src/cuda/` embeds them. Without it this does nothing and needs no CUDA.
//!
//! nvcc is `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on PATH. The PTX targets
//! `compute_$CUDA_COMPUTE_CAP` (default 90, H100/H200); the driver JIT-compiles it for the
//! GPU it runs on, so it also loads on any later GPU. sm_80 is the minimum (bf16 WMMA).

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
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP", "NVCC_CCBIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let kernels = manifest.join("../../kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed={}", kernels.display());

    let cap: u32 = match std::env::var("CUDA_COMPUTE_CAP") {
        Ok(v) => v
            .trim()
            .trim_start_matches("sm_")
            .trim_end_matches('a')
            .parse()
            .unwrap_or_else(|_| panic!("CUDA_COMPUTE_CAP={v:?} is not a number such as 90")),
        Err(_) => 90,
    };
    if cap < 80 {
        panic!("CUDA_COMPUTE_CAP={cap}: qembed's kernels need sm_80 or newer (bf16 tensor cores)");
    }
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
            let ptx = out.join(format!("{stem}.ptx"));
            let mut cmd = Command::new(&nvcc);
            cmd.arg("--ptx")
                .arg(format!("-arch=compute_{cap}"))
                .args(["-O3", "-std=c++17", "-lineinfo"])
                .arg("-I")
                .arg(&kernels)
                .arg("-o")
                .arg(&ptx)
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
