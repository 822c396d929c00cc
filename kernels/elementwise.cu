// Elementwise kernels of the forward (common.cuh is prepended): dtype conversion,
// act(gate) · up of the fused gate|up product, bias and residual adds. Grid-stride
// loops over the elements; rounding follows transformers in bf16/f16.

// ---- dtype conversion (weights arrive in the checkpoint's dtype) ----
template <typename S, typename D>
__device__ void convert_impl(const S *in, D *out, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        out[i] = fromf<D>(tof(in[i]));
}
#define CONVERT_TO(SS, ST, DS, DT)                                                  \
    extern "C" __global__ void convert_##SS##_##DS(const ST *in, DT *out, i64 n) {  \
        convert_impl<ST, DT>(in, out, n);                                           \
    }
#define CONVERT_FROM(SS, ST) CONVERT_TO(SS, ST, f32, float) CONVERT_TO(SS, ST, bf16, __nv_bfloat16) CONVERT_TO(SS, ST, f16, __half)
RR_FOR_TYPES(CONVERT_FROM)

// ---- act(gate) * up from the fused [t, 2 * inter] gate|up product ----
template <typename T, int ACT> __device__ void act_mul_impl(const T *gu, T *out, int inter, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 t = i / inter, c = i % inter;
        float g = tof(gu[t * 2 * inter + c]), u = tof(gu[t * 2 * inter + inter + c]);
        out[i] = fromf<T>(rnd<T>(act_fn<ACT>(g)) * u);
    }
}
#define ACT_MUL(S, T)                                                                       \
    extern "C" __global__ void silu_mul_##S(const T *gu, T *out, int inter, i64 n) {        \
        act_mul_impl<T, 0>(gu, out, inter, n);                                              \
    }                                                                                       \
    extern "C" __global__ void gelu_mul_##S(const T *gu, T *out, int inter, i64 n) {        \
        act_mul_impl<T, 1>(gu, out, inter, n);                                              \
    }                                                                                       \
    extern "C" __global__ void gelu_tanh_mul_##S(const T *gu, T *out, int inter, i64 n) {   \
        act_mul_impl<T, 2>(gu, out, inter, n);                                              \
    }
RR_FOR_TYPES(ACT_MUL)

// ---- x[r, c] += b[c] ----
template <typename T> __device__ void add_bias_impl(T *x, const T *b, int cols, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] = fromf<T>(tof(x[i]) + tof(b[i % cols]));
}
#define ADD_BIAS(S, T)                                                                     \
    extern "C" __global__ void add_bias_##S(T *x, const T *b, int cols, i64 n) {           \
        add_bias_impl<T>(x, b, cols, n);                                                   \
    }
RR_FOR_TYPES(ADD_BIAS)

// ---- x += y ----
template <typename T> __device__ void add_impl(T *x, const T *y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] = fromf<T>(tof(x[i]) + tof(y[i]));
}
#define ADD(S, T) \
    extern "C" __global__ void add_##S(T *x, const T *y, i64 n) { add_impl<T>(x, y, n); }
RR_FOR_TYPES(ADD)
