// SwiGLU: out[t, j] = silu(gate[t, j]) * up[t, j], reading the fused gate_up GEMM output
// [tokens, 2*I] (gate = columns 0..I, up = columns I..2I) and writing [tokens, I].
// Why: one pass instead of candle's narrow + silu + mul (three kernels, two temporaries),
// with f32 math and one rounding.
#include "common.cuh"

template <typename T>
__device__ void swiglu_impl(const T* __restrict__ gate_up, T* __restrict__ out, int64_t tokens,
                            int64_t inter) {
    const int64_t n = tokens * inter;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / inter, j = i - t * inter;
        const T* row = gate_up + t * 2 * inter;
        const float g = to_f32(row[j]);
        const float u = to_f32(row[inter + j]);
        out[i] = from_f32<T>(g / (1.f + __expf(-g)) * u);
    }
}

#define SWIGLU(NAME, T)                                                                      \
    extern "C" __global__ void NAME(const T* gate_up, T* out, int64_t tokens, int64_t inter) { \
        swiglu_impl<T>(gate_up, out, tokens, inter);                                         \
    }

SWIGLU(swiglu_f16, __half)
SWIGLU(swiglu_bf16, __nv_bfloat16)
SWIGLU(swiglu_f32, float)
