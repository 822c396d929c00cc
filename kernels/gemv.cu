// Decode GEMV kernels (common.cuh is prepended): y = x · wᵀ for the few token rows of a
// decode step, and the batch-1 GEMVs that make their input (RMSNorm, act · up) in a
// prologue. cuBLAS(Lt) does every other product.

// ---- y[m, n] = x[m, k] · w[n, k]ᵀ for the few token rows of a decode step (m <= MAXM):
// one warp per output row streams the weight row once (evict-first loads: 7-17% faster than
// plain ones on the 8B's down and q|k|v shapes on H100, per scripts/gemv_bench.cu), four
// 16-byte loads in flight per lane (kept as raw words until used), and dots it with every
// token row (which stay in L1/L2). Compiled for MAXM = 1, 2, 4 and 8 so the register count
// follows m (a single kernel for m <= 8 takes 107 registers, which leaves room for only two
// 256-thread blocks per SM). Needs k % 8 == 0 and 16-byte aligned rows.
// Four 16-byte weight loads per lane from column c0 of the row (zero past k or unless ok).
template <typename T>
__device__ __forceinline__ void gemv_load4(const T *wr, int c0, int k, bool ok, Raw8<T> (&wraw)[4]) {
#pragma unroll
    for (int u = 0; u < 4; u++) {
        int c = c0 + u * 256;
        wraw[u] = ld8_stream(wr + c, ok && c < k);
    }
}

// One warp's dot products of weight row wr with the m (<= MAXM) input rows at x (row r at
// x + r * k; x may be in shared memory), the first four loads of each lane already in wraw.
template <typename T, int MAXM>
__device__ __forceinline__ void gemv_dot(const T *wr, Raw8<T> (&wraw)[4], const T *x, int m, int k,
                                         float (&acc)[MAXM]) {
    const int lane = threadIdx.x & 31;
    for (int c0 = lane * 8;;) {
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int c = c0 + u * 256;
            if (c >= k) break;
            float wf[8];
            unpack8(wraw[u], wf);
#pragma unroll
            for (int r = 0; r < MAXM; r++) {
                if (r < m) {
                    float xf[8];
                    load8(x + (i64)r * k + c, xf);
#pragma unroll
                    for (int i = 0; i < 8; i++) acc[r] += wf[i] * xf[i];
                }
            }
        }
        c0 += 256 * 4;
        if (c0 >= k) break;
        gemv_load4(wr, c0, k, true, wraw);
    }
}

template <typename T, int MAXM>
__device__ void gemv_impl(const T *x, const T *w, T *y, int m, int n, int k) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * (blockDim.x >> 5) + warp;
    if (row >= n) return;
    const T *wr = w + (i64)row * k;
    float acc[MAXM];
#pragma unroll
    for (int r = 0; r < MAXM; r++) acc[r] = 0.f;
    Raw8<T> wraw[4];
    gemv_load4(wr, lane * 8, k, true, wraw);
    gemv_dot<T, MAXM>(wr, wraw, x, m, k, acc);
#pragma unroll
    for (int r = 0; r < MAXM; r++) {
        if (r < m) {
            float s = warp_sum(acc[r]);
            if (lane == 0) y[(i64)r * n + row] = fromf<T>(s);
        }
    }
}
#define GEMV(S, T)                                                                             \
    extern "C" __global__ void gemv1_##S(const T *x, const T *w, T *y, int m, int n, int k) {  \
        gemv_impl<T, 1>(x, w, y, m, n, k);                                                     \
    }                                                                                          \
    extern "C" __global__ void gemv2_##S(const T *x, const T *w, T *y, int m, int n, int k) {  \
        gemv_impl<T, 2>(x, w, y, m, n, k);                                                     \
    }                                                                                          \
    extern "C" __global__ void gemv4_##S(const T *x, const T *w, T *y, int m, int n, int k) {  \
        gemv_impl<T, 4>(x, w, y, m, n, k);                                                     \
    }                                                                                          \
    extern "C" __global__ void gemv8_##S(const T *x, const T *w, T *y, int m, int n, int k) {  \
        gemv_impl<T, 8>(x, w, y, m, n, k);                                                     \
    }
RR_FOR_TYPES(GEMV)

// ---- Batch-1 GEMV whose input row is made in the kernel's prologue, which saves a
// launch (and its ramp) per use on the decode path of one token:
//   PRO 1: input = rms_norm(x [+ y]) · nw, rounded as rms_norm rounds; with y, block 0
//          also writes x + y to xo (the residual stream moves to xo, so no block reads
//          what another writes);
//   PRO 2, 3, 4: input = act(gate) · up from the fused row x = [gate (k) | up (k)] with
//          act_fn<PRO - 2> (SiLU, GELU, tanh GELU), rounded as act_mul rounds.
// The input is built in shared memory (k elements of T) while each warp's first four
// weight loads are already in flight; then the loop is gemv_impl's for one row.
template <typename T, int PRO>
__device__ void gemv_pro_impl(const T *x, const T *y, T *xo, const T *nw, const T *w, T *out, int n, int k,
                              float eps) {
    extern __shared__ __align__(16) unsigned char rr_dyn[];
    T *xs = reinterpret_cast<T *>(rr_dyn);
    __shared__ float red[32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + warp;
    const bool live = row < n;
    const T *wr = w + (i64)(live ? row : 0) * k;
    Raw8<T> wraw[4];
    gemv_load4(wr, lane * 8, k, live, wraw);
    if (PRO == 1) {
        float ss = 0.f;
        for (int c = threadIdx.x * 8; c < k; c += blockDim.x * 8) {
            float a[8];
            load8(x + c, a);
            if (y) {
                float b[8];
                load8(y + c, b);
#pragma unroll
                for (int i = 0; i < 8; i++) a[i] = rnd<T>(a[i] + b[i]);
                if (blockIdx.x == 0) store8(xo + c, a);
            }
            store8(xs + c, a);
#pragma unroll
            for (int i = 0; i < 8; i++) ss += a[i] * a[i];
        }
        ss = block_sum(ss, red);
        const float r = rsqrtf(ss / (float)k + eps);
        for (int c = threadIdx.x * 8; c < k; c += blockDim.x * 8) {
            float a[8], g[8];
            load8(xs + c, a);
            load8(nw + c, g);
#pragma unroll
            for (int i = 0; i < 8; i++) a[i] = g[i] * rnd<T>(a[i] * r);
            store8(xs + c, a);
        }
    } else {
        for (int c = threadIdx.x * 8; c < k; c += blockDim.x * 8) {
            float g[8], u[8];
            load8(x + c, g);
            load8(x + k + c, u);
#pragma unroll
            for (int i = 0; i < 8; i++) g[i] = rnd<T>(act_fn<PRO == 1 ? 0 : PRO - 2>(g[i])) * u[i];
            store8(xs + c, g);
        }
    }
    __syncthreads();
    if (!live) return;
    float acc[1] = {0.f};
    gemv_dot<T, 1>(wr, wraw, xs, 1, k, acc);
    const float sum = warp_sum(acc[0]);
    if (lane == 0) out[row] = fromf<T>(sum);
}
#define GEMV_PRO(S, T)                                                                                  \
    extern "C" __global__ void gemv_norm_##S(const T *x, const T *y, T *xo, const T *nw, const T *w, T *out, \
                                             int n, int k, float eps) {                                 \
        gemv_pro_impl<T, 1>(x, y, xo, nw, w, out, n, k, eps);                                           \
    }                                                                                                   \
    extern "C" __global__ void gemv_silu_##S(const T *x, const T *y, T *xo, const T *nw, const T *w, T *out, \
                                             int n, int k, float eps) {                                 \
        gemv_pro_impl<T, 2>(x, y, xo, nw, w, out, n, k, eps);                                           \
    }                                                                                                   \
    extern "C" __global__ void gemv_gelu_##S(const T *x, const T *y, T *xo, const T *nw, const T *w, T *out, \
                                             int n, int k, float eps) {                                 \
        gemv_pro_impl<T, 3>(x, y, xo, nw, w, out, n, k, eps);                                           \
    }                                                                                                   \
    extern "C" __global__ void gemv_gelu_tanh_##S(const T *x, const T *y, T *xo, const T *nw, const T *w,    \
                                                  T *out, int n, int k, float eps) {                    \
        gemv_pro_impl<T, 4>(x, y, xo, nw, w, out, n, k, eps);                                           \
    }
RR_FOR_16BIT(GEMV_PRO)
