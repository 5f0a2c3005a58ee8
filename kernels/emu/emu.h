// Runs qembed's CUDA kernels on the CPU (see emu_test.cpp): one std::thread per CUDA
// thread, one block at a time, real barriers for __syncthreads/__syncwarp/shuffles.
// Force-included before the kernel sources; host-side f16/bf16 come from CUDA's headers.
#pragma once
#undef NDEBUG  // the WMMA alignment checks are asserts
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_types.h>
#include <cmath>
#include <cstdint>
#include <thread>
#include <barrier>
#include <vector>
#include <memory>
#include <functional>
#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__
#define __restrict__
#ifndef __align__
#define __align__(x) alignas(x)
#endif
void emu_warp_sync();
int emu_lane();
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern dim3 blockDim, gridDim;
void emu_block_sync();
// Makes this lane's deferred WMMA stores visible (see include/mma.h): what a barrier
// does for memory. The raw warp barrier inside the WMMA calls and shuffles does not.
void emu_flush_stores();
inline void __syncthreads() { emu_flush_stores(); emu_block_sync(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_flush_stores(); emu_warp_sync(); }
float emu_shfl_xor(float v, int m);
inline float __shfl_xor_sync(unsigned, float v, int m, int = 32) { return emu_shfl_xor(v, m); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline int min(int a, int b) { return a < b ? a : b; }
