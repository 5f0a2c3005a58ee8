// Last-token pooling: out[i, :] = x[idx[i], :] for the index of each sequence's last token.
// Why: reads num_seqs rows of the packed [tokens, hidden] activations and nothing else;
// the caller has already checked every index against the number of rows.
#include "common.cuh"

template <typename T>
__device__ void gather_rows_impl(const T* __restrict__ x, const uint32_t* __restrict__ idx,
                                 T* __restrict__ out, int n, int64_t cols) {
    const int i = blockIdx.y;
    if (i >= n) return;
    const T* src = x + (int64_t)idx[i] * cols;
    T* dst = out + (int64_t)i * cols;
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
         c += (int64_t)gridDim.x * blockDim.x)
        dst[c] = src[c];
}

#define GATHER(NAME, T)                                                                      \
    extern "C" __global__ void NAME(const T* x, const uint32_t* idx, T* out, int n,          \
                                    int64_t cols) {                                          \
        gather_rows_impl<T>(x, idx, out, n, cols);                                           \
    }

GATHER(gather_rows_f16, __half)
GATHER(gather_rows_bf16, __nv_bfloat16)
GATHER(gather_rows_f32, float)
