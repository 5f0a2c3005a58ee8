// Emulated nvcuda::wmma for kernels/emu (CPU): a fragment is the whole 16x16 matrix in
// every lane. Loads and stores synchronise as CUDA documents them and no more: each
// waits until every lane of the warp has arrived, then does its work, and returns with
// no barrier after it. A store is split over the lanes (lane l owns the elements i
// with i % 32 == l) and its writes become visible only at the lane's next __syncwarp
// or __syncthreads (or its exit): fragment layouts are opaque, so a correct kernel
// never reads stored data before such a barrier, and one that does reads stale data
// here, every time, instead of racing on the GPU.
#pragma once
#include <cassert>
#include <cstdint>
void emu_warp_sync();
void emu_defer_store(float* p, float v);
int emu_lane();
namespace nvcuda { namespace wmma {
struct row_major {}; struct col_major {};
struct matrix_a {}; struct matrix_b {}; struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class L = void> struct fragment { T x[256]; };
template <class Use, class T, class L, class V> inline void fill_fragment(fragment<Use,16,16,16,T,L>& f, V v) {
    for (int i = 0; i < 256; ++i) f.x[i] = (T)v;
}
inline void check_ptr(const void* p, unsigned ldm, int elem) {
    assert(((uintptr_t)p % 32) == 0 && "wmma pointer must be 256-bit aligned");
    assert((ldm * elem) % 16 == 0 && "wmma ldm must be a multiple of 16 bytes");
    (void)p; (void)ldm; (void)elem;
}
template <class Use, class T> inline void load_matrix_sync(fragment<Use,16,16,16,T,row_major>& f, const T* p, unsigned ldm) {
    check_ptr(p, ldm, sizeof(T)); emu_warp_sync();
    for (int r = 0; r < 16; ++r) for (int c = 0; c < 16; ++c) f.x[r*16+c] = p[r*ldm + c];
}
template <class Use, class T> inline void load_matrix_sync(fragment<Use,16,16,16,T,col_major>& f, const T* p, unsigned ldm) {
    check_ptr(p, ldm, sizeof(T)); emu_warp_sync();
    for (int r = 0; r < 16; ++r) for (int c = 0; c < 16; ++c) f.x[r*16+c] = p[c*ldm + r];
}
inline void load_matrix_sync(fragment<accumulator,16,16,16,float>& f, const float* p, unsigned ldm, layout_t l) {
    check_ptr(p, ldm, 4); assert(l == mem_row_major); emu_warp_sync();
    for (int r = 0; r < 16; ++r) for (int c = 0; c < 16; ++c) f.x[r*16+c] = p[r*ldm + c];
}
inline void store_matrix_sync(float* p, const fragment<accumulator,16,16,16,float>& f, unsigned ldm, layout_t l) {
    check_ptr(p, ldm, 4); assert(l == mem_row_major); emu_warp_sync();
    for (int i = emu_lane(); i < 256; i += 32) emu_defer_store(p + (i / 16) * ldm + i % 16, f.x[i]);
}
template <class T> inline void mma_sync(fragment<accumulator,16,16,16,float>& d,
    const fragment<matrix_a,16,16,16,T,row_major>& a, const fragment<matrix_b,16,16,16,T,col_major>& b,
    const fragment<accumulator,16,16,16,float>& c) {
    float out[256];
    for (int m = 0; m < 16; ++m) for (int n = 0; n < 16; ++n) {
        float s = c.x[m*16+n];
        for (int k = 0; k < 16; ++k) s += (float)a.x[m*16+k] * (float)b.x[k*16+n];
        out[m*16+n] = s;
    }
    for (int i = 0; i < 256; ++i) d.x[i] = out[i];
}
template <class T> inline void mma_sync(fragment<accumulator,16,16,16,float>& d,
    const fragment<matrix_a,16,16,16,T,row_major>& a, const fragment<matrix_b,16,16,16,T,row_major>& b,
    const fragment<accumulator,16,16,16,float>& c) {
    float out[256];
    for (int m = 0; m < 16; ++m) for (int n = 0; n < 16; ++n) {
        float s = c.x[m*16+n];
        for (int k = 0; k < 16; ++k) s += (float)a.x[m*16+k] * (float)b.x[k*16+n];
        out[m*16+n] = s;
    }
    for (int i = 0; i < 256; ++i) d.x[i] = out[i];
}
}}
