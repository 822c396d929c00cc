// Shared helpers of rrank's kernels. The Rust side prepends this file to every
// kernel source before NVRTC compiles it (NVRTC has no file system of its own).
// Element types: float (f32), __nv_bfloat16 (bf16), __half (f16); arithmetic is
// f32, and rnd<T>() rounds a value to T where transformers rounds it too.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef long long i64;
#define RR_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float tof(float x) { return x; }
__device__ __forceinline__ float tof(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float tof(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T fromf(float x);
template <> __device__ __forceinline__ float fromf<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 fromf<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half fromf<__half>(float x) { return __float2half_rn(x); }

template <typename T> __device__ __forceinline__ float rnd(float x) { return tof(fromf<T>(x)); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide reductions; every thread of the block must call them (uniform control
// flow) and every thread gets the result. `sh` holds 32 floats.
#define RR_BLOCK_REDUCE(NAME, OP, INIT)                                              \
    __device__ float NAME(float v, float *sh) {                                      \
        for (int o = 16; o > 0; o >>= 1) v = OP(v, __shfl_xor_sync(0xffffffffu, v, o)); \
        int w = threadIdx.x >> 5, l = threadIdx.x & 31;                              \
        __syncthreads();                                                             \
        if (l == 0) sh[w] = v;                                                       \
        __syncthreads();                                                             \
        int nw = (blockDim.x + 31) >> 5;                                             \
        v = (l < nw) ? sh[l] : (INIT);                                               \
        for (int o = 16; o > 0; o >>= 1) v = OP(v, __shfl_xor_sync(0xffffffffu, v, o)); \
        return v;                                                                    \
    }
__device__ __forceinline__ float rr_add(float a, float b) { return a + b; }
RR_BLOCK_REDUCE(block_sum, rr_add, 0.f)
RR_BLOCK_REDUCE(block_max, fmaxf, -RR_INF)
RR_BLOCK_REDUCE(block_min, fminf, RR_INF)

// 8 consecutive elements as raw 16-byte words (one for 16-bit types, two for f32), and
// unpacked to floats; the weights stay raw until used, which keeps registers down.
template <typename T> struct Raw8 {
    uint4 v[sizeof(T) == 2 ? 1 : 2];
};
template <typename T> __device__ __forceinline__ Raw8<T> ld8(const T *p) {
    Raw8<T> r;
#pragma unroll
    for (int i = 0; i < (int)(sizeof(r.v) / sizeof(uint4)); i++) r.v[i] = reinterpret_cast<const uint4 *>(p)[i];
    return r;
}
// ld8 for data read once (weights streamed by the GEMV): evict-first, so it does not
// push reused data (activations, K/V) out of the caches; zero where `ok` is false.
template <typename T> __device__ __forceinline__ Raw8<T> ld8_stream(const T *p, bool ok) {
    Raw8<T> r;
#pragma unroll
    for (int i = 0; i < (int)(sizeof(r.v) / sizeof(uint4)); i++)
        r.v[i] = ok ? __ldcs(reinterpret_cast<const uint4 *>(p) + i) : make_uint4(0, 0, 0, 0);
    return r;
}
template <typename T> __device__ __forceinline__ void unpack8(const Raw8<T> &r, float *f) {
    const T *e = reinterpret_cast<const T *>(r.v);
#pragma unroll
    for (int i = 0; i < 8; i++) f[i] = tof(e[i]);
}
template <typename T> __device__ __forceinline__ void load8(const T *p, float *f) { unpack8(ld8(p), f); }
// unpack8 where `ok`, else eight zeros.
template <typename T> __device__ __forceinline__ void unpack8_if(bool ok, const Raw8<T> &r, float *f) {
    if (ok) {
        unpack8(r, f);
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) f[i] = 0.f;
    }
}
// Rounds 8 floats to T and writes them as 16-byte words (p 16-byte aligned).
template <typename T> __device__ __forceinline__ void store8(T *p, const float *f) {
    Raw8<T> r;
    T *e = reinterpret_cast<T *>(r.v);
#pragma unroll
    for (int i = 0; i < 8; i++) e[i] = fromf<T>(f[i]);
#pragma unroll
    for (int i = 0; i < (int)(sizeof(r.v) / sizeof(uint4)); i++) reinterpret_cast<uint4 *>(p)[i] = r.v[i];
}

// Instantiates `extern "C"` wrappers NAME_f32 / NAME_bf16 / NAME_f16 of a template
// kernel body `NAME##_impl<T>` whose parameters are given by the macro's arguments.
#define RR_FOR_TYPES(M) M(f32, float) M(bf16, __nv_bfloat16) M(f16, __half)
// The same for the 16-bit types only (bf16, f16).
#define RR_FOR_16BIT(M) M(bf16, __nv_bfloat16) M(f16, __half)

// ---- The MLP activation (config.json's hidden_act), torch's formulas in f32:
//   ACT 0 SiLU, 1 GELU (erf), 2 GELU (tanh approximation, kBeta = sqrt(2/pi)).
template <int ACT> __device__ __forceinline__ float act_fn(float g) {
    if (ACT == 1) return g * 0.5f * (1.f + erff(g * 0.70710678118654752f));
    if (ACT == 2) return 0.5f * g * (1.f + tanhf(0.79788456080286536f * (g + 0.044715f * g * g * g)));
    return g / (1.f + expf(-g));
}
