// Fused RMSNorm over the last dim: y = x * rsqrt(mean(x^2) + eps) * w.
// Why: candle's CUDA rms_norm is fine but this one rounds once (f32 math from f16/bf16
// loads to the final store) and shares its row-per-warp layout with qk_norm_rope.cu.
// Used for the input/post-attention norms and the final norm. One warp per row; rows
// are independent, so any number of rows and any row length work.
#include "common.cuh"

template <typename T>
__device__ void rms_norm_impl(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                              int rows, int cols, float eps) {
    const int warps = blockDim.x >> 5;
    const int row = blockIdx.x * warps + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T* xr = x + (int64_t)row * cols;
    T* yr = y + (int64_t)row * cols;
    float ss = 0.f;
    for (int c = lane; c < cols; c += 32) {
        const float v = to_f32(xr[c]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    const float r = rsqrtf(ss / (float)cols + eps);
    for (int c = lane; c < cols; c += 32) yr[c] = from_f32<T>(to_f32(xr[c]) * r * to_f32(w[c]));
}

#define RMS_NORM(NAME, T)                                                                    \
    extern "C" __global__ void NAME(const T* x, const T* w, T* y, int rows, int cols,        \
                                    float eps) {                                             \
        rms_norm_impl<T>(x, w, y, rows, cols, eps);                                          \
    }

RMS_NORM(rms_norm_f16, __half)
RMS_NORM(rms_norm_bf16, __nv_bfloat16)
RMS_NORM(rms_norm_f32, float)
