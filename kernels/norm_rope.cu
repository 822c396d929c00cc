// Row kernels of the forward (common.cuh is prepended), one block per token row:
// embedding of this rank's vocab slice, RMSNorm with a fused residual add, RoPE fused
// with the paged K/V write, and row gathering. Rounding points follow transformers'
// Llama in bf16/f16 so both round the same intermediate values.

// ---- embedding: rows of this rank's vocab slice, zeros elsewhere (then all-reduce) ----
template <typename T>
__device__ void embed_impl(const int *ids, const T *table, T *out, int hidden, int v0, int v1) {
    i64 t = blockIdx.x;
    int id = ids[t];
    bool mine = id >= v0 && id < v1;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        out[t * hidden + i] = mine ? table[(i64)(id - v0) * hidden + i] : fromf<T>(0.f);
}
#define EMBED(S, T)                                                                              \
    extern "C" __global__ void embed_##S(const int *ids, const T *table, T *out, int hidden, int v0, \
                                         int v1) {                                               \
        embed_impl<T>(ids, table, out, hidden, v0, v1);                                          \
    }
RR_FOR_TYPES(EMBED)

// ---- RMSNorm, one block per row; with `y`, first x = x + y (the residual add). Each
// thread keeps its (at most RR_NORM_PER) values and weights in registers between the
// two passes; wider rows take the plain loop.
#define RR_NORM_PER 8
template <typename T>
__device__ void rms_norm_impl(T *x, const T *y, const T *w, T *out, int hidden, float eps) {
    __shared__ float sh[32];
    i64 row = blockIdx.x;
    T *xr = x + row * hidden;
    const T *yr = y ? y + row * hidden : nullptr;
    T *orow = out + row * hidden;
    if (hidden <= RR_NORM_PER * (int)blockDim.x) {
        float v[RR_NORM_PER], wv[RR_NORM_PER];
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < RR_NORM_PER; k++) {
            int i = threadIdx.x + k * blockDim.x;
            v[k] = 0.f;
            wv[k] = 0.f;
            if (i < hidden) {
                float a = tof(xr[i]);
                if (yr) {
                    a = rnd<T>(a + tof(yr[i]));
                    xr[i] = fromf<T>(a);
                }
                v[k] = a;
                wv[k] = tof(w[i]);
                ss += a * a;
            }
        }
        ss = block_sum(ss, sh);
        float r = rsqrtf(ss / (float)hidden + eps);
#pragma unroll
        for (int k = 0; k < RR_NORM_PER; k++) {
            int i = threadIdx.x + k * blockDim.x;
            if (i < hidden) orow[i] = fromf<T>(wv[k] * rnd<T>(v[k] * r));
        }
        return;
    }
    float ss = 0.f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = tof(xr[i]);
        if (yr) {
            v = rnd<T>(v + tof(yr[i]));
            xr[i] = fromf<T>(v);
        }
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    float r = rsqrtf(ss / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        orow[i] = fromf<T>(tof(w[i]) * rnd<T>(tof(xr[i]) * r));
}
#define RMS_NORM(S, T)                                                                         \
    extern "C" __global__ void rms_norm_##S(T *x, const T *y, const T *w, T *out, int hidden,   \
                                            float eps) {                                       \
        rms_norm_impl<T>(x, y, w, out, hidden, eps);                                           \
    }
RR_FOR_TYPES(RMS_NORM)

// ---- RoPE and the K/V write in one pass per token: q heads rotated in place (attention
// reads them from the row), k heads rotated straight into the cache slot, v copied.
// Row layout [q (heads·hd) | k (kvh·hd) | v (kvh·hd)]; cache layout [slots, kvh, hd].
// A slot of −1 (a CUDA-graph padding token) writes nothing to the cache.
template <typename T>
__device__ void rope_kv_impl(T *qkv, T *kc, T *vc, const int *pos, const int *slots,
                             const float *inv_freq, int heads, int kvh, int hd, int stride) {
    i64 t = blockIdx.x;
    float p = (float)pos[t];
    i64 slot = slots[t];
    int half = hd / 2, nkv = kvh * hd;
    T *row = qkv + t * stride;
    for (int j = threadIdx.x; j < (heads + kvh) * half; j += blockDim.x) {
        int h = j / half, i = j % half;
        float f = p * inv_freq[i];
        float c = rnd<T>(cosf(f)), s = rnd<T>(sinf(f));
        T *xh = row + (i64)h * hd;
        float a = tof(xh[i]), b = tof(xh[i + half]);
        T o1 = fromf<T>(rnd<T>(a * c) + rnd<T>(-b * s));
        T o2 = fromf<T>(rnd<T>(b * c) + rnd<T>(a * s));
        if (h < heads) {
            xh[i] = o1;
            xh[i + half] = o2;
        } else if (slot >= 0) {
            T *kd = kc + slot * nkv + (i64)(h - heads) * hd;
            kd[i] = o1;
            kd[i + half] = o2;
        }
    }
    if (slot >= 0) {
        const T *v = row + (i64)(heads + kvh) * hd;
        for (int i = threadIdx.x; i < nkv; i += blockDim.x) vc[slot * nkv + i] = v[i];
    }
}
#define ROPE_KV(S, T)                                                                          \
    extern "C" __global__ void rope_kv_##S(T *qkv, T *kc, T *vc, const int *pos,                \
                                           const int *slots, const float *inv_freq, int heads,  \
                                           int kvh, int hd, int stride) {                       \
        rope_kv_impl<T>(qkv, kc, vc, pos, slots, inv_freq, heads, kvh, hd, stride);             \
    }
RR_FOR_TYPES(ROPE_KV)

// ---- out[r] = x[rows[r]] ----
template <typename T> __device__ void gather_rows_impl(const T *x, const int *rows, T *out, int cols) {
    i64 r = blockIdx.x;
    i64 src = rows[r];
    for (int i = threadIdx.x; i < cols; i += blockDim.x) out[r * cols + i] = x[src * cols + i];
}
#define GATHER_ROWS(S, T)                                                                      \
    extern "C" __global__ void gather_rows_##S(const T *x, const int *rows, T *out, int cols) { \
        gather_rows_impl<T>(x, rows, out, cols);                                               \
    }
RR_FOR_TYPES(GATHER_ROWS)
