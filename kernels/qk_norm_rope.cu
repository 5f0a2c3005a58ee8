// Per-head RMSNorm (Qwen3's q_norm / k_norm) fused with rotary embedding, on the packed
// output of the fused qkv GEMM.
// Why: Qwen3 normalises every q and k head over head_dim and then rotates it; done apart
// that is narrow + copy + norm + rope for q and again for k. Here one warp reads one
// head of one token once, normalises it in registers and writes it rotated.
//
// Layout: x and y are [tokens, heads_total, D] contiguous (row = one head of one token).
// Heads 0..n_q use weight wq, heads n_q..n_rot use wk; both are normalised (when
// use_norm != 0) and rotated. Heads n_rot..heads_total (v) are copied unchanged.
// Rotary: rotate-half (NeoX / Hugging Face) convention,
//   y[i]       = x[i] * cos[t, i] - x[i + D/2] * sin[t, i]
//   y[i + D/2] = x[i + D/2] * cos[t, i] + x[i] * sin[t, i]      for i < D/2,
// with f32 tables cos/sin [tokens, D/2] holding each token's own position's angles
// (positions restart at 0 in every sequence of the packed batch; the host builds them).
// D must be even; any D works (lanes stride over the half).
#include "common.cuh"

template <typename T>
__device__ void qk_norm_rope_impl(const T* __restrict__ x, T* __restrict__ y,
                                  const T* __restrict__ wq, const T* __restrict__ wk,
                                  const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                  int tokens, int heads_total, int n_q, int n_rot, int d,
                                  int use_norm, float eps) {
    const int warps = blockDim.x >> 5;
    const int64_t row = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= (int64_t)tokens * heads_total) return;
    const int64_t t = row / heads_total;
    const int h = (int)(row - t * heads_total);
    const T* xr = x + row * d;
    T* yr = y + row * d;
    if (h >= n_rot) {
        for (int c = lane; c < d; c += 32) yr[c] = xr[c];
        return;
    }
    const int half = d >> 1;
    float r = 1.f;
    if (use_norm) {
        float ss = 0.f;
        for (int c = lane; c < d; c += 32) {
            const float v = to_f32(xr[c]);
            ss += v * v;
        }
        ss = warp_sum(ss);
        r = rsqrtf(ss / (float)d + eps);
    }
    const T* w = h < n_q ? wq : wk;
    const float* cr = cos_t + t * half;
    const float* sr = sin_t + t * half;
    for (int i = lane; i < half; i += 32) {
        float a = to_f32(xr[i]) * r;
        float b = to_f32(xr[i + half]) * r;
        if (use_norm) {
            a *= to_f32(w[i]);
            b *= to_f32(w[i + half]);
        }
        const float c = cr[i], s = sr[i];
        yr[i] = from_f32<T>(a * c - b * s);
        yr[i + half] = from_f32<T>(b * c + a * s);
    }
}

#define QK_NORM_ROPE(NAME, T)                                                                \
    extern "C" __global__ void NAME(const T* x, T* y, const T* wq, const T* wk,              \
                                    const float* cos_t, const float* sin_t, int tokens,      \
                                    int heads_total, int n_q, int n_rot, int d, int use_norm, \
                                    float eps) {                                             \
        qk_norm_rope_impl<T>(x, y, wq, wk, cos_t, sin_t, tokens, heads_total, n_q, n_rot, d, \
                             use_norm, eps);                                                 \
    }

QK_NORM_ROPE(qk_norm_rope_f16, __half)
QK_NORM_ROPE(qk_norm_rope_bf16, __nv_bfloat16)
QK_NORM_ROPE(qk_norm_rope_f32, float)
