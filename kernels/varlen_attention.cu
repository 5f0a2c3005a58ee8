// Padding-free causal attention with grouped-query heads over a packed batch, flash-
// attention style.
// Why: the candle path materialises a [heads, rows, keys] score matrix per sequence and
// runs a loop of small kernels per sequence; this kernel runs every sequence of the batch
// in one launch, never writes scores to global memory (online softmax over key tiles,
// f32 running max / sum / output) and does both matrix products on tensor cores (WMMA
// 16x16x16 f16/bf16 fragments, f32 accumulators).
//
// Inputs: q [tokens, H, D], k/v [tokens, KV, D] (head stride D, element stride 1, row
// strides q_rs/k_rs/v_rs in elements, so q, k and v may be column ranges of one packed
// qkv buffer); cu_seqlens int32 [num_seqs + 1]; output o [tokens, H * D] contiguous.
// Query head h reads kv head h / (H / KV). Token i of a sequence attends to tokens 0..=i
// of the same sequence only. scale is applied to q.k (1/sqrt(D) for Qwen3).
//
// Tiling: one block = 64 query rows of one head of one sequence, 4 warps x 16 rows.
// grid = (ceil(max_seqlen / 64), H, num_seqs); blocks past their sequence's end exit.
// Key/value tiles of 64 rows stream through shared memory up to the diagonal, K and V
// in turn through one buffer. Per warp and tile: S = Q K^T (WMMA) -> f32 scratch ->
// lanes apply scale, causal mask and the online softmax (2 lanes per row) and write P
// (f16/bf16); then, once every warp is done with K, V replaces it -> O += P V (WMMA on an
// f32 accumulator kept in shared memory, rescaled per row by the lanes first).
// Shared memory (dynamic): Q and one K/V tile 2 * 64 * (D + 8) * 2 B, S 64 * 68 * 4 B,
// P 64 * 72 * 2 B, O 64 * (D + 4) * 4 B, each rounded up to 128 B: 93 KiB at D = 128,
// inside the 99 KiB a block may have on sm_86/sm_89 (A10, L4, L20, L40S) as well as on
// sm_80/sm_90, so the kernel runs on every GPU the binary targets (with separate K and V
// tiles it needed 110 KiB, and those GPUs fell back to candle's attention). The host
// raises the function's dynamic shared memory limit (src/cuda/attention.rs computes the
// same Smem<D>::BYTES: keep the two in step). D is a template parameter: 16, 32, 64 or
// 128. Needs sm_80+ (bf16 WMMA).
#include "common.cuh"
#include <mma.h>

using namespace nvcuda;

namespace {

constexpr int BM = 64;        // query rows per block
constexpr int BN = 64;        // keys per tile
constexpr int WARPS = 4;      // BM / 16
constexpr int THREADS = WARPS * 32;
constexpr int LDS = BN + 4;   // f32 scores
constexpr int LDP = BN + 8;   // f16/bf16 probabilities

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

template <int D> struct Smem {
    static constexpr int LDT = D + 8;  // f16/bf16 q/k/v tiles (row pitch, elements)
    static constexpr int LDO = D + 4;  // f32 output accumulator
    static constexpr int Q = 0;
    static constexpr int KV = Q + round_up(BM * LDT * 2, 128);  // K, then V, per tile
    static constexpr int S = KV + round_up(BN * LDT * 2, 128);
    static constexpr int P = S + round_up(BM * LDS * 4, 128);
    static constexpr int O = P + round_up(BM * LDP * 2, 128);
    static constexpr int BYTES = O + round_up(BM * LDO * 4, 128);
};

// Copies rows [row0, row0 + BM) of one head into a shared tile (pitch LDT); rows at or
// past `valid` are zero-filled, so masked keys multiply zeros, never stale memory.
template <typename T, int D>
__device__ __forceinline__ void load_tile(T* __restrict__ dst, const T* __restrict__ base,
                                          int64_t row_stride, int row0, int valid) {
    constexpr int LDT = Smem<D>::LDT;
    const bool vec = ((reinterpret_cast<uintptr_t>(base) & 15) == 0) && (row_stride % 8 == 0);
    if (vec) {
        constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
        for (int i = threadIdx.x; i < BM * CHUNKS; i += THREADS) {
            const int r = i / CHUNKS, c = (i % CHUNKS) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (row0 + r < valid)
                v = *reinterpret_cast<const uint4*>(base + (int64_t)(row0 + r) * row_stride + c);
            *reinterpret_cast<uint4*>(dst + r * LDT + c) = v;
        }
    } else {
        for (int i = threadIdx.x; i < BM * D; i += THREADS) {
            const int r = i / D, c = i % D;
            dst[r * LDT + c] = row0 + r < valid ? base[(int64_t)(row0 + r) * row_stride + c]
                                                : from_f32<T>(0.f);
        }
    }
}

template <typename T, int D>
__device__ void varlen_attention_impl(const T* __restrict__ q, const T* __restrict__ k,
                                      const T* __restrict__ v, T* __restrict__ o,
                                      const int* __restrict__ cu_seqlens, int heads,
                                      int kv_heads, int64_t q_rs, int64_t k_rs, int64_t v_rs,
                                      float scale) {
    static_assert(D % 16 == 0 && D >= 16 && D <= 128, "head_dim must be 16, 32, 64 or 128");
    static_assert(BM == BN, "the diagonal tile logic assumes square tiles");
    static_assert(Smem<D>::BYTES <= 99 * 1024,
                  "shared memory over the 99 KiB per block of sm_86/sm_89 (A10, L4, L20, L40S)");
    using L = Smem<D>;
    extern __shared__ __align__(128) unsigned char smem[];
    T* qs = reinterpret_cast<T*>(smem + L::Q);
    T* kvs = reinterpret_cast<T*>(smem + L::KV);

    const int seq = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BM;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    if (q0 >= len) return;  // uniform for the whole block, before any barrier
    const int kvh = h / (heads / kv_heads);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float* sw = reinterpret_cast<float*>(smem + L::S) + warp * 16 * LDS;
    T* pw = reinterpret_cast<T*>(smem + L::P) + warp * 16 * LDP;
    float* ow = reinterpret_cast<float*>(smem + L::O) + warp * 16 * L::LDO;

    // Lane ownership for the element-wise work: row `r` of the warp's 16, half `hf` of
    // the columns (keys for S/P, head dims for O). The two lanes of a row are lane ^ 1.
    const int r = lane >> 1, hf = lane & 1;
    const int qi = q0 + warp * 16 + r;  // this lane's query position in the sequence

    load_tile<T, D>(qs, q + (int64_t)start * q_rs + (int64_t)h * D, q_rs, q0, len);
    for (int c = hf * (D / 2); c < (hf + 1) * (D / 2); ++c) ow[r * L::LDO + c] = 0.f;
    float m = -INFINITY;  // running max of the scaled scores, log2 domain
    float l = 0.f;        // running sum of probabilities
    const float sl2 = scale * 1.4426950408889634f;

    const T* kb = k + (int64_t)start * k_rs + (int64_t)kvh * D;
    const T* vb = v + (int64_t)start * v_rs + (int64_t)kvh * D;
    const int kv_end = min(len, q0 + BM);  // causal: no key past the block's last row
    for (int n0 = 0; n0 < kv_end; n0 += BN) {
        __syncthreads();  // everyone is done with the previous V tile (and Q is loaded)
        load_tile<T, D>(kvs, kb, k_rs, n0, len);
        __syncthreads();

        // S = Q_w K^T: 16 x BN scores for this warp's rows.
#pragma unroll
        for (int j = 0; j < BN / 16; ++j) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.f);
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
                wmma::load_matrix_sync(a, qs + (warp * 16) * L::LDT + kk * 16, L::LDT);
                wmma::load_matrix_sync(b, kvs + (j * 16) * L::LDT + kk * 16, L::LDT);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(sw + j * 16, acc, LDS, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax over this tile for row r, columns hf*32 .. hf*32+31.
        float tile_max = -INFINITY;
        float s[BN / 2];
#pragma unroll
        for (int c = 0; c < BN / 2; ++c) {
            const int kj = n0 + hf * (BN / 2) + c;
            const float x = sw[r * LDS + hf * (BN / 2) + c] * sl2;
            s[c] = (kj <= qi && kj < len) ? x : -INFINITY;
            tile_max = fmaxf(tile_max, s[c]);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);
        const float base = m_new == -INFINITY ? 0.f : m_new;  // a fully masked row stays 0
        const float alpha = exp2f(m - base);                   // 0 on the first tile
        float sum = 0.f;
#pragma unroll
        for (int c = 0; c < BN / 2; ++c) {
            const float p = exp2f(s[c] - base);
            sum += p;
            pw[r * LDP + hf * (BN / 2) + c] = from_f32<T>(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * alpha + sum;
        m = m_new;
        for (int c = hf * (D / 2); c < (hf + 1) * (D / 2); ++c) ow[r * L::LDO + c] *= alpha;
        __syncthreads();  // every warp is done with K (and its own P and O): V replaces K
        load_tile<T, D>(kvs, vb, v_rs, n0, len);
        __syncthreads();

        // O_w += P V: 16 x D, accumulated through shared memory in f32.
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf[BN / 16];
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) wmma::load_matrix_sync(pf[kk], pw + kk * 16, LDP);
#pragma unroll
        for (int d0 = 0; d0 < D; d0 += 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, ow + d0, L::LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
                wmma::load_matrix_sync(b, kvs + (kk * 16) * L::LDT + d0, L::LDT);
                wmma::mma_sync(acc, pf[kk], b, acc);
            }
            wmma::store_matrix_sync(ow + d0, acc, L::LDO, wmma::mem_row_major);
        }
        __syncwarp();
    }

    if (qi < len) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        T* out = o + (int64_t)(start + qi) * heads * D + (int64_t)h * D;
        for (int c = hf * (D / 2); c < (hf + 1) * (D / 2); ++c)
            out[c] = from_f32<T>(ow[r * L::LDO + c] * inv);
    }
}

}  // namespace

#define VARLEN_ATTENTION(NAME, T, D)                                                         \
    extern "C" __global__ void __launch_bounds__(THREADS)                                    \
        NAME(const T* q, const T* k, const T* v, T* o, const int* cu_seqlens, int heads,     \
             int kv_heads, int64_t q_rs, int64_t k_rs, int64_t v_rs, float scale) {          \
        varlen_attention_impl<T, D>(q, k, v, o, cu_seqlens, heads, kv_heads, q_rs, k_rs,     \
                                    v_rs, scale);                                            \
    }

VARLEN_ATTENTION(varlen_attention_f16_d16, __half, 16)
VARLEN_ATTENTION(varlen_attention_f16_d32, __half, 32)
VARLEN_ATTENTION(varlen_attention_f16_d64, __half, 64)
VARLEN_ATTENTION(varlen_attention_f16_d128, __half, 128)
VARLEN_ATTENTION(varlen_attention_bf16_d16, __nv_bfloat16, 16)
VARLEN_ATTENTION(varlen_attention_bf16_d32, __nv_bfloat16, 32)
VARLEN_ATTENTION(varlen_attention_bf16_d64, __nv_bfloat16, 64)
VARLEN_ATTENTION(varlen_attention_bf16_d128, __nv_bfloat16, 128)
