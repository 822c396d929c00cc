// Paged attention for prefill tiles (common.cuh is prepended): the f32-arithmetic
// kernel for any head size up to 128, and the tensor-core one for bf16/f16 with
// head_dim 64 or 128.

// ---- paged attention for prefill tiles: one block of 256 threads per (tile, query head),
// a tile being up to RR_TQ consecutive tokens of one sequence (tile = {first token of the
// step, tokens, position of the first, offset of the sequence's block table in `blocks`}).
// The tile's queries stay in shared memory while RR_TK keys at a time stream through it,
// so each key is read once per tile instead of once per token. Thread (r, g): query row
// r = tid / 8 (an online softmax per row, kept alike by its 8 threads), scores against
// keys g and g + 8, output dims 4g + 32i .. +3 (float4 shared-memory reads without bank
// conflicts). Causal and sliding-window masks per element. head_dim % 4 == 0, <= 128.
#define RR_TQ 32
#define RR_TK 16
#define RR_HDMAX 128
#define RR_QSTRIDE (RR_HDMAX + 4)
template <typename T>
__device__ void attention_prefill_impl(const T *qkv, const T *kc, const T *vc, T *out,
                                       const int *tiles, const int *blocks, int heads,
                                       int kvh_local, int hd, int stride, int q_start, int group,
                                       int kv_start, int bs, float scale, int window) {
    __shared__ __align__(16) float sq[RR_TQ][RR_QSTRIDE];
    __shared__ __align__(16) float sk[RR_TK][RR_QSTRIDE];
    __shared__ __align__(16) float sv[RR_TK][RR_HDMAX];
    __shared__ float sp[RR_TQ][RR_TK + 1];
    const int *tile = tiles + 4 * blockIdx.x;
    int t0 = tile[0], nq = tile[1], pos0 = tile[2];
    const int *tab = blocks + tile[3];
    int h = blockIdx.y;
    int kvh = (q_start + h) / group - kv_start;
    int tid = threadIdx.x, r = tid >> 3, g = tid & 7;
    for (int i = tid; i < RR_TQ * RR_HDMAX; i += blockDim.x) {
        int qi = i / RR_HDMAX, d = i % RR_HDMAX;
        sq[qi][d] = qi < nq && d < hd ? tof(qkv[(i64)(t0 + qi) * stride + (i64)h * hd + d]) * scale : 0.f;
    }
    float m = -RR_INF, l = 0.f;
    float4 o[RR_HDMAX / 32];
#pragma unroll
    for (int i = 0; i < RR_HDMAX / 32; i++) o[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    int qpos = pos0 + r;
    int last = pos0 + nq - 1;
    int first = window > 0 ? max(0, pos0 + 1 - window) : 0;
    first -= first % RR_TK;
    i64 row = (i64)kvh_local * hd;
    for (int k0 = first; k0 <= last; k0 += RR_TK) {
        __syncthreads();
        for (int i = tid; i < RR_TK * RR_HDMAX; i += blockDim.x) {
            int kj = i / RR_HDMAX, d = i % RR_HDMAX, j = k0 + kj;
            float kv = 0.f, vv = 0.f;
            if (j <= last && d < hd) {
                i64 slot = (i64)tab[j / bs] * bs + j % bs;
                kv = tof(kc[slot * row + (i64)kvh * hd + d]);
                vv = tof(vc[slot * row + (i64)kvh * hd + d]);
            }
            sk[kj][d] = kv;
            sv[kj][d] = vv;
        }
        __syncthreads();
        float s[2] = {0.f, 0.f};
        for (int d = 0; d < hd; d += 4) {
            float4 q4 = *reinterpret_cast<const float4 *>(&sq[r][d]);
#pragma unroll
            for (int c = 0; c < 2; c++) {
                float4 k4 = *reinterpret_cast<const float4 *>(&sk[g + 8 * c][d]);
                s[c] += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
            }
        }
#pragma unroll
        for (int c = 0; c < 2; c++) {
            int j = k0 + g + 8 * c;
            bool keep = r < nq && j <= qpos && (window <= 0 || j > qpos - window);
            if (!keep) s[c] = -RR_INF;
        }
        float mx = fmaxf(s[0], s[1]);
        for (int off = 4; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        float mn = fmaxf(m, mx);
        float corr = mn == -RR_INF ? 1.f : expf(m - mn);
        float p0 = s[0] == -RR_INF ? 0.f : expf(s[0] - mn);
        float p1 = s[1] == -RR_INF ? 0.f : expf(s[1] - mn);
        float ps = p0 + p1;
        for (int off = 4; off > 0; off >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
        l = l * corr + ps;
        m = mn;
        sp[r][g] = p0;
        sp[r][g + 8] = p1;
        __syncwarp();
#pragma unroll
        for (int i = 0; i < RR_HDMAX / 32; i++) {
            int d = 4 * g + 32 * i;
            if (d < hd) {
                float4 a = o[i];
                a.x *= corr;
                a.y *= corr;
                a.z *= corr;
                a.w *= corr;
#pragma unroll
                for (int kj = 0; kj < RR_TK; kj++) {
                    float p = sp[r][kj];
                    float4 v4 = *reinterpret_cast<const float4 *>(&sv[kj][d]);
                    a.x += p * v4.x;
                    a.y += p * v4.y;
                    a.z += p * v4.z;
                    a.w += p * v4.w;
                }
                o[i] = a;
            }
        }
    }
    if (r >= nq) return;
    T *dst = out + (i64)(t0 + r) * heads * hd + (i64)h * hd;
    float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int i = 0; i < RR_HDMAX / 32; i++) {
        int d = 4 * g + 32 * i;
        if (d < hd) {
            dst[d] = fromf<T>(o[i].x * inv);
            dst[d + 1] = fromf<T>(o[i].y * inv);
            dst[d + 2] = fromf<T>(o[i].z * inv);
            dst[d + 3] = fromf<T>(o[i].w * inv);
        }
    }
}
// The parameters of both prefill attention kernels (the tensor-core one ignores hd: its
// template fixes it).
#define RR_PREFILL_PARAMS(T)                                                                     \
    const T *qkv, const T *kc, const T *vc, T *out, const int *tiles, const int *blocks,         \
        int heads, int kvh_local, int hd, int stride, int q_start, int group, int kv_start,      \
        int bs, float scale, int window
#define ATTENTION_PREFILL(S, T)                                                                  \
    extern "C" __global__ void attention_prefill_##S(RR_PREFILL_PARAMS(T)) {                    \
        attention_prefill_impl<T>(qkv, kc, vc, out, tiles, blocks, heads, kvh_local, hd,        \
                                  stride, q_start, group, kv_start, bs, scale, window);          \
    }
RR_FOR_TYPES(ATTENTION_PREFILL)

// ---- prefill attention on tensor cores (bf16/f16, head_dim 64 or 128): the same tiles
// and grid as attention_prefill, 64 threads. Warp w owns query rows 16w..16w+15 of the
// tile; RR_TC_KC keys at a time go to shared memory (V transposed), S = Q·Kᵀ and O += P·V
// run as mma.m16n8k16 with f32 accumulators, and the online softmax stays in the
// accumulator registers (lane: rows g = lane/4 and g + 8, columns 2·(lane%4) + {0, 1} of
// each 8-wide n-tile). P is rounded to the element type for P·V, as flash attention does.
#define RR_TC_KC 32
__device__ __forceinline__ unsigned pack2(float lo, float hi, __nv_bfloat16 *) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}
__device__ __forceinline__ unsigned pack2(float lo, float hi, __half *) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}
__device__ __forceinline__ void mma16816(float *c, const unsigned *a, unsigned b0, unsigned b1,
                                         __nv_bfloat16 *) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}
__device__ __forceinline__ void mma16816(float *c, const unsigned *a, unsigned b0, unsigned b1,
                                         __half *) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}
template <typename T, int HD>
__device__ void attention_prefill_tc_impl(const T *qkv, const T *kc, const T *vc, T *out,
                                          const int *tiles, const int *blocks, int heads,
                                          int kvh_local, int stride, int q_start, int group,
                                          int kv_start, int bs, float scale, int window) {
    constexpr int KC = RR_TC_KC, P = HD + 8, PV = KC + 8, KS = HD / 16, NT = HD / 8;
    __shared__ __align__(16) T sq[RR_TQ][P];
    __shared__ __align__(16) T sk[KC][P];
    __shared__ __align__(16) T svt[HD][PV];
    const int *tile = tiles + 4 * blockIdx.x;
    int t0 = tile[0], nq = tile[1], pos0 = tile[2];
    const int *tab = blocks + tile[3];
    int h = blockIdx.y;
    int kvh = (q_start + h) / group - kv_start;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
    T *tag = nullptr;
    for (int c = tid; c < RR_TQ * (HD / 8); c += blockDim.x) {
        int qi = c % RR_TQ, d8 = (c / RR_TQ) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (qi < nq) v = *reinterpret_cast<const uint4 *>(qkv + (i64)(t0 + qi) * stride + (i64)h * HD + d8);
        *reinterpret_cast<uint4 *>(&sq[qi][d8]) = v;
    }
    __syncthreads();
    int r0 = warp * 16 + g;
    unsigned qa[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
        qa[ks][0] = *reinterpret_cast<const unsigned *>(&sq[r0][ks * 16 + tig * 2]);
        qa[ks][1] = *reinterpret_cast<const unsigned *>(&sq[r0 + 8][ks * 16 + tig * 2]);
        qa[ks][2] = *reinterpret_cast<const unsigned *>(&sq[r0][ks * 16 + 8 + tig * 2]);
        qa[ks][3] = *reinterpret_cast<const unsigned *>(&sq[r0 + 8][ks * 16 + 8 + tig * 2]);
    }
    float o[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float mr[2] = {-RR_INF, -RR_INF}, lr[2] = {0.f, 0.f};
    int qp[2] = {pos0 + r0, pos0 + r0 + 8};
    bool rv[2] = {r0 < nq, r0 + 8 < nq};
    int last = pos0 + nq - 1;
    int first = window > 0 ? max(0, pos0 + 1 - window) : 0;
    first -= first % KC;
    i64 row = (i64)kvh_local * HD;
    for (int k0 = first; k0 <= last; k0 += KC) {
        __syncthreads();
        for (int c = tid; c < KC * (HD / 8); c += blockDim.x) {
            int kj = c % KC, d8 = (c / KC) * 8, j = k0 + kj;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
            if (j <= last) {
                i64 slot = (i64)tab[j / bs] * bs + j % bs;
                kv = *reinterpret_cast<const uint4 *>(kc + slot * row + (i64)kvh * HD + d8);
                vv = *reinterpret_cast<const uint4 *>(vc + slot * row + (i64)kvh * HD + d8);
            }
            *reinterpret_cast<uint4 *>(&sk[kj][d8]) = kv;
            const T *ve = reinterpret_cast<const T *>(&vv);
#pragma unroll
            for (int e = 0; e < 8; e++) svt[d8 + e][kj] = ve[e];
        }
        __syncthreads();
        float sc[KC / 8][4];
#pragma unroll
        for (int n = 0; n < KC / 8; n++) {
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                unsigned b0 = *reinterpret_cast<const unsigned *>(&sk[n * 8 + g][ks * 16 + tig * 2]);
                unsigned b1 = *reinterpret_cast<const unsigned *>(&sk[n * 8 + g][ks * 16 + 8 + tig * 2]);
                mma16816(sc[n], qa[ks], b0, b1, tag);
            }
        }
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            float mx = -RR_INF;
#pragma unroll
            for (int n = 0; n < KC / 8; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int j = k0 + n * 8 + tig * 2 + e;
                    bool keep = rv[rr] && j <= qp[rr] && (window <= 0 || j > qp[rr] - window);
                    float v = keep ? sc[n][2 * rr + e] * scale : -RR_INF;
                    sc[n][2 * rr + e] = v;
                    mx = fmaxf(mx, v);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float mn = fmaxf(mr[rr], mx);
            float corr = mn == -RR_INF ? 1.f : expf(mr[rr] - mn);
            mr[rr] = mn;
            float ps = 0.f;
#pragma unroll
            for (int n = 0; n < KC / 8; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float v = sc[n][2 * rr + e];
                    float p = v == -RR_INF ? 0.f : expf(v - mn);
                    sc[n][2 * rr + e] = p;
                    ps += p;
                }
            lr[rr] = lr[rr] * corr + ps;
#pragma unroll
            for (int n = 0; n < NT; n++) {
                o[n][2 * rr] *= corr;
                o[n][2 * rr + 1] *= corr;
            }
        }
#pragma unroll
        for (int kk = 0; kk < KC / 16; kk++) {
            unsigned pa[4] = {pack2(sc[2 * kk][0], sc[2 * kk][1], tag), pack2(sc[2 * kk][2], sc[2 * kk][3], tag),
                              pack2(sc[2 * kk + 1][0], sc[2 * kk + 1][1], tag),
                              pack2(sc[2 * kk + 1][2], sc[2 * kk + 1][3], tag)};
#pragma unroll
            for (int n = 0; n < NT; n++) {
                unsigned b0 = *reinterpret_cast<const unsigned *>(&svt[n * 8 + g][kk * 16 + tig * 2]);
                unsigned b1 = *reinterpret_cast<const unsigned *>(&svt[n * 8 + g][kk * 16 + 8 + tig * 2]);
                mma16816(o[n], pa, b0, b1, tag);
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        float l = lr[rr];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        if (!rv[rr]) continue;
        float inv = l > 0.f ? 1.f / l : 0.f;
        T *dst = out + (i64)(t0 + r0 + 8 * rr) * heads * HD + (i64)h * HD;
#pragma unroll
        for (int n = 0; n < NT; n++)
            *reinterpret_cast<unsigned *>(dst + n * 8 + tig * 2) =
                pack2(o[n][2 * rr] * inv, o[n][2 * rr + 1] * inv, tag);
    }
}
#define ATTENTION_PREFILL_TC(S, T)                                                               \
    extern "C" __global__ __launch_bounds__(64) void attention_prefill_tc64_##S(RR_PREFILL_PARAMS(T)) {      \
        attention_prefill_tc_impl<T, 64>(qkv, kc, vc, out, tiles, blocks, heads, kvh_local, stride, q_start, \
                                         group, kv_start, bs, scale, window);                                  \
    }                                                                                                          \
    extern "C" __global__ __launch_bounds__(64) void attention_prefill_tc128_##S(RR_PREFILL_PARAMS(T)) {     \
        attention_prefill_tc_impl<T, 128>(qkv, kc, vc, out, tiles, blocks, heads, kvh_local, stride, q_start, \
                                          group, kv_start, bs, scale, window);                                  \
    }

RR_FOR_16BIT(ATTENTION_PREFILL_TC)
