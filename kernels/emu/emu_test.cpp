// CPU emulation test of every kernel in kernels/ (no GPU needed): runs each kernel with
// one std::thread per CUDA thread and an emulated WMMA (include/mma.h, which also checks
// the 256-bit pointer alignment and ldm rules real WMMA has), fills shared memory and
// outputs with NaN first, and compares with double-precision references.
// It proves indexing, masking, tiling, the online softmax and the barriers; it cannot
// prove real-hardware behaviour (fragment layouts are opaque there, timing differs).
//   .ci/cuda-check emu
#include "emu.h"
#include "varlen_attention.cu"
#include "rms_norm.cu"
#include "qk_norm_rope.cu"
#include "swiglu.cu"
#include "gather_rows.cu"
#include <cstdio>
#include <cstring>
#include <random>
#include <algorithm>

namespace { alignas(128) unsigned char smem[1 << 18]; }

thread_local uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
static std::unique_ptr<std::barrier<>> g_block;
static std::vector<std::unique_ptr<std::barrier<>>> g_warps;
static std::vector<float> g_xchg;
void emu_block_sync() { g_block->arrive_and_wait(); }
int emu_lane() { return threadIdx.x & 31; }
void emu_warp_sync() { g_warps[threadIdx.x >> 5]->arrive_and_wait(); }
static thread_local std::vector<std::pair<float*, float>> g_pending;
void emu_defer_store(float* p, float v) { g_pending.emplace_back(p, v); }
void emu_flush_stores() {
    for (auto [p, v] : g_pending) *p = v;
    g_pending.clear();
}
float emu_shfl_xor(float v, int m) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    g_xchg[w * 32 + l] = v;
    emu_warp_sync();
    float r = g_xchg[w * 32 + (l ^ m)];
    emu_warp_sync();
    return r;
}
template <class F> void launch(dim3 g, dim3 b, size_t shmem, F f) {
    assert(shmem <= sizeof(smem));
    gridDim = g; blockDim = b;
    int nt = b.x;
    for (unsigned z = 0; z < g.z; ++z) for (unsigned y = 0; y < g.y; ++y) for (unsigned x = 0; x < g.x; ++x) {
        g_block = std::make_unique<std::barrier<>>(nt);
        g_warps.clear();
        for (int w = 0; w < nt / 32; ++w) g_warps.push_back(std::make_unique<std::barrier<>>(32));
        g_xchg.assign(nt, 0.f);
        memset(smem, 0xff, sizeof(smem));  // NaN garbage: catches reads of unwritten shared memory
        std::vector<std::thread> ts;
        for (int t = 0; t < nt; ++t) ts.emplace_back([&, t] { threadIdx = make_uint3(t, 0, 0); blockIdx = make_uint3(x, y, z); f(); emu_flush_stores(); });
        for (auto& t : ts) t.join();
    }
}

static std::mt19937 rng(1234);
static float randn() { static std::normal_distribution<float> d(0.f, 1.f); return d(rng); }
static float to_f32_host(__half v) { return __half2float(v); }
static float to_f32_host(__nv_bfloat16 v) { return __bfloat162float(v); }
static float to_f32_host(float v) { return v; }
template <class T> static float f(T v) { return to_f32_host(v); }
template <class T> static T h(float v);
template <> __half h<__half>(float v) { return __float2half_rn(v); }
template <> __nv_bfloat16 h<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> float h<float>(float v) { return v; }
template <class T> static const char* tname();
template <> const char* tname<__half>() { return "f16"; }
template <> const char* tname<__nv_bfloat16>() { return "bf16"; }
template <> const char* tname<float>() { return "f32"; }
template <class T> static std::vector<T> nan_vec(size_t n) { return std::vector<T>(n, h<T>(NAN)); }

static int failures = 0, tests = 0;
static void report(const char* what, double err, double tol) {
    bool ok = err <= tol;
    ++tests;
    if (!ok) ++failures;
    printf("%-60s max err %.3g (tol %.3g) %s\n", what, err, tol, ok ? "ok" : "FAIL");
}

// Attention on a packed qkv buffer [tokens, (H + 2KV) * D], or separate q/k/v.
template <class T, int D>
void test_attention(const char* name, std::vector<int> lens, int H, int KV, bool packed, double tol,
                    void (*kern)(const T*, const T*, const T*, T*, const int*, int, int, int64_t, int64_t, int64_t, float)) {
    std::vector<int> cu = {0};
    for (int l : lens) cu.push_back(cu.back() + l);
    int tokens = cu.back(), width = (H + 2 * KV) * D;
    std::vector<T> qkv(tokens * width);
    for (auto& x : qkv) x = h<T>(randn() * 1.5f);
    std::vector<T> q, k, v;
    const T *qp, *kp, *vp;
    int64_t q_rs, k_rs, v_rs;
    if (packed) {
        qp = qkv.data(); kp = qkv.data() + H * D; vp = qkv.data() + (H + KV) * D;
        q_rs = k_rs = v_rs = width;
    } else {
        for (int t = 0; t < tokens; ++t) {
            for (int i = 0; i < H * D; ++i) q.push_back(qkv[t * width + i]);
            for (int i = 0; i < KV * D; ++i) k.push_back(qkv[t * width + H * D + i]);
            for (int i = 0; i < KV * D; ++i) v.push_back(qkv[t * width + (H + KV) * D + i]);
        }
        qp = q.data(); kp = k.data(); vp = v.data();
        q_rs = H * D; k_rs = v_rs = KV * D;
    }
    auto out = nan_vec<T>(tokens * H * D);
    int max_len = *std::max_element(lens.begin(), lens.end());
    float scale = 1.f / std::sqrt((float)D);
    launch(dim3((max_len + 63) / 64, H, lens.size()), dim3(128), Smem<D>::BYTES,
           [&] { kern(qp, kp, vp, out.data(), cu.data(), H, KV, q_rs, k_rs, v_rs, scale); });
    double err = 0;
    for (size_t s = 0; s < lens.size(); ++s)
        for (int i = 0; i < lens[s]; ++i)
            for (int hh = 0; hh < H; ++hh) {
                int kvh = hh / (H / KV);
                int ti = cu[s] + i;
                std::vector<double> sc(i + 1);
                double m = -1e300;
                for (int j = 0; j <= i; ++j) {
                    int tj = cu[s] + j;
                    double dot = 0;
                    for (int d = 0; d < D; ++d)
                        dot += (double)f(qkv[ti * width + hh * D + d]) * f(qkv[tj * width + H * D + kvh * D + d]);
                    sc[j] = dot * scale;
                    m = std::max(m, sc[j]);
                }
                double l = 0;
                for (auto& x : sc) { x = std::exp(x - m); l += x; }
                for (int d = 0; d < D; ++d) {
                    double o = 0;
                    for (int j = 0; j <= i; ++j) o += sc[j] * f(qkv[(cu[s] + j) * width + (H + KV) * D + kvh * D + d]);
                    o /= l;
                    double got = f(out[ti * H * D + hh * D + d]);
                    double e = std::isnan(got) ? 1e9 : std::fabs(got - o);
                    err = std::max(err, e);
                }
            }
    char buf[200];
    snprintf(buf, sizeof buf, "%s D=%d H=%d KV=%d %s", name, D, H, KV, packed ? "packed" : "separate");
    report(buf, err, tol);
}

template <class T>
void test_rms_norm(void (*kern)(const T*, const T*, T*, int, int, float), int rows, int cols, double tol) {
    std::vector<T> x(rows * cols), w(cols);
    for (auto& v : x) v = h<T>(randn() * 3);
    for (auto& v : w) v = h<T>(1 + 0.2f * randn());
    auto y = nan_vec<T>(rows * cols);
    launch(dim3((rows + 3) / 4), dim3(128), 0, [&] { kern(x.data(), w.data(), y.data(), rows, cols, 1e-6f); });
    double err = 0;
    for (int r = 0; r < rows; ++r) {
        double ss = 0;
        for (int c = 0; c < cols; ++c) ss += (double)f(x[r * cols + c]) * f(x[r * cols + c]);
        double inv = 1 / std::sqrt(ss / cols + 1e-6);
        for (int c = 0; c < cols; ++c) {
            double want = f(x[r * cols + c]) * inv * f(w[c]);
            double got = f(y[r * cols + c]);
            err = std::max(err, std::isnan(got) ? 1e9 : std::fabs(got - want) / std::max(1.0, std::fabs(want)));
        }
    }
    char buf[100]; snprintf(buf, sizeof buf, "rms_norm %s rows=%d cols=%d", tname<T>(), rows, cols);
    report(buf, err, tol);
}

template <class T>
void test_qk_norm_rope(void (*kern)(const T*, T*, const T*, const T*, const float*, const float*, int, int, int, int, int, int, float),
                       int tokens, int H, int KV, int D, bool norm, double tol) {
    int HT = H + 2 * KV, half = D / 2;
    std::vector<T> x(tokens * HT * D), wq(D), wk(D);
    for (auto& v : x) v = h<T>(randn() * 2);
    for (auto& v : wq) v = h<T>(1 + 0.3f * randn());
    for (auto& v : wk) v = h<T>(1 + 0.3f * randn());
    std::vector<float> cs(tokens * half), sn(tokens * half);
    for (int t = 0; t < tokens; ++t) for (int i = 0; i < half; ++i) {
        float ang = (t % 7) * std::pow(10000.f, -2.f * i / D);
        cs[t * half + i] = std::cos(ang); sn[t * half + i] = std::sin(ang);
    }
    auto y = nan_vec<T>(x.size());
    long rows = (long)tokens * HT;
    launch(dim3((rows + 3) / 4), dim3(128), 0, [&] {
        kern(x.data(), y.data(), wq.data(), wk.data(), cs.data(), sn.data(), tokens, HT, H, H + KV, D, norm ? 1 : 0, 1e-6f);
    });
    double err = 0;
    for (int t = 0; t < tokens; ++t) for (int hh = 0; hh < HT; ++hh) {
        const T* xr = &x[(t * HT + hh) * D];
        const T* yr = &y[(t * HT + hh) * D];
        std::vector<double> n(D), want(D);
        double ss = 0;
        for (int d = 0; d < D; ++d) ss += (double)f(xr[d]) * f(xr[d]);
        double inv = norm ? 1 / std::sqrt(ss / D + 1e-6) : 1;
        const std::vector<T>& w = hh < H ? wq : wk;
        for (int d = 0; d < D; ++d) n[d] = f(xr[d]) * inv * (norm ? f(w[d]) : 1.0);
        if (hh < H + KV) {
            for (int i = 0; i < half; ++i) {
                double c = cs[t * half + i], s = sn[t * half + i];
                want[i] = n[i] * c - n[i + half] * s;
                want[i + half] = n[i + half] * c + n[i] * s;
            }
        } else {
            for (int d = 0; d < D; ++d) want[d] = f(xr[d]);
        }
        for (int d = 0; d < D; ++d) {
            double got = f(yr[d]);
            err = std::max(err, std::isnan(got) ? 1e9 : std::fabs(got - want[d]) / std::max(1.0, std::fabs(want[d])));
        }
    }
    char buf[100]; snprintf(buf, sizeof buf, "qk_norm_rope %s tokens=%d H=%d KV=%d D=%d norm=%d", tname<T>(), tokens, H, KV, D, norm);
    report(buf, err, tol);
}

template <class T>
void test_swiglu(void (*kern)(const T*, T*, int64_t, int64_t), int tokens, int I, double tol) {
    std::vector<T> x(tokens * 2 * I);
    for (auto& v : x) v = h<T>(randn() * 3);
    auto y = nan_vec<T>(tokens * I);
    long n = (long)tokens * I;
    launch(dim3(std::min<long>((n + 255) / 256, 3)), dim3(256), 0, [&] { kern(x.data(), y.data(), tokens, I); });
    double err = 0;
    for (int t = 0; t < tokens; ++t) for (int j = 0; j < I; ++j) {
        double g = f(x[t * 2 * I + j]), u = f(x[t * 2 * I + I + j]);
        double want = g / (1 + std::exp(-g)) * u, got = f(y[t * I + j]);
        err = std::max(err, std::isnan(got) ? 1e9 : std::fabs(got - want) / std::max(1.0, std::fabs(want)));
    }
    char buf[100]; snprintf(buf, sizeof buf, "swiglu %s tokens=%d I=%d (grid-stride)", tname<T>(), tokens, I);
    report(buf, err, tol);
}

template <class T>
void test_gather(void (*kern)(const T*, const uint32_t*, T*, int, int64_t), int rows, int cols) {
    std::vector<T> x(rows * cols);
    for (auto& v : x) v = h<T>(randn());
    std::vector<uint32_t> idx = {3, 0, (uint32_t)rows - 1, 3};
    auto y = nan_vec<T>(idx.size() * cols);
    launch(dim3(1, idx.size()), dim3(256), 0, [&] { kern(x.data(), idx.data(), y.data(), idx.size(), cols); });
    double err = 0;
    for (size_t i = 0; i < idx.size(); ++i) for (int c = 0; c < cols; ++c) {
        double got = f(y[i * cols + c]);
        err = std::max(err, std::isnan(got) ? 1e9 : std::fabs(got - f(x[idx[i] * cols + c])));
    }
    char buf[100]; snprintf(buf, sizeof buf, "gather_rows %s rows=%d cols=%d", tname<T>(), rows, cols);
    report(buf, err, 0);
}

int main() {
    // Dynamic shared memory per head size: src/cuda/attention.rs (smem_bytes) must agree.
    bool smem_ok = Smem<16>::BYTES == 37888 && Smem<32>::BYTES == 46080 &&
                   Smem<64>::BYTES == 62464 && Smem<128>::BYTES == 95232;
    report("attention shared memory = smem_bytes() in src/cuda/attention.rs", smem_ok ? 0 : 1, 0);
    std::vector<int> lens = {1, 5, 64, 65, 130, 17};
    test_attention<__half, 16>("attention f16", lens, 4, 2, true, 3e-3, varlen_attention_f16_d16);
    test_attention<__half, 32>("attention f16", lens, 4, 2, true, 3e-3, varlen_attention_f16_d32);
    test_attention<__half, 32>("attention f16", lens, 4, 2, false, 3e-3, varlen_attention_f16_d32);
    test_attention<__half, 64>("attention f16", {3, 70}, 2, 1, true, 3e-3, varlen_attention_f16_d64);
    test_attention<__half, 128>("attention f16", {1, 129, 64}, 4, 2, true, 3e-3, varlen_attention_f16_d128);
    test_attention<__half, 128>("attention f16 MQA", {40, 2}, 3, 1, false, 3e-3, varlen_attention_f16_d128);
    test_attention<__nv_bfloat16, 32>("attention bf16", lens, 4, 2, true, 2e-2, varlen_attention_bf16_d32);
    test_attention<__nv_bfloat16, 128>("attention bf16", {1, 66}, 2, 2, false, 2e-2, varlen_attention_bf16_d128);
    // Every other entry point the model can launch (src/cuda/*.rs): each dtype, and
    // attention at every head size (16 and 32 are what the fixtures use).
    test_attention<__nv_bfloat16, 16>("attention bf16", lens, 4, 2, true, 2e-2, varlen_attention_bf16_d16);
    test_attention<__nv_bfloat16, 64>("attention bf16", {3, 70}, 2, 1, false, 2e-2, varlen_attention_bf16_d64);
    test_rms_norm<__half>(rms_norm_f16, 7, 100, 2e-3);
    test_rms_norm<__nv_bfloat16>(rms_norm_bf16, 9, 64, 1e-2);
    test_rms_norm<float>(rms_norm_f32, 5, 130, 1e-5);
    test_qk_norm_rope<__half>(qk_norm_rope_f16, 5, 3, 1, 32, true, 2e-3);
    test_qk_norm_rope<__half>(qk_norm_rope_f16, 3, 4, 2, 128, true, 2e-3);
    test_qk_norm_rope<__half>(qk_norm_rope_f16, 3, 2, 1, 16, false, 2e-3);
    test_qk_norm_rope<__nv_bfloat16>(qk_norm_rope_bf16, 4, 2, 1, 16, false, 1e-2);
    test_qk_norm_rope<__nv_bfloat16>(qk_norm_rope_bf16, 4, 4, 2, 32, true, 1e-2);
    test_qk_norm_rope<float>(qk_norm_rope_f32, 3, 2, 1, 16, true, 1e-5);
    test_qk_norm_rope<float>(qk_norm_rope_f32, 2, 4, 2, 64, true, 1e-5);
    test_swiglu<__half>(swiglu_f16, 5, 300, 2e-3);
    test_swiglu<__nv_bfloat16>(swiglu_bf16, 4, 200, 1e-2);
    test_swiglu<float>(swiglu_f32, 3, 257, 1e-5);
    test_gather<__half>(gather_rows_f16, 9, 300);
    test_gather<__nv_bfloat16>(gather_rows_bf16, 7, 130);
    test_gather<float>(gather_rows_f32, 5, 64);
    printf("%d passed, %d failed\n", tests - failures, failures);
    return failures != 0;
}
