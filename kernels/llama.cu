// The Llama forward's kernels (common.cuh is prepended). GEMMs are cuBLAS; these are
// the rest: dtype conversion, embedding, RMSNorm with a fused residual add, RoPE
// fused with the paged K/V write, paged attention for packed prefill and decode tokens alike,
// SiLU·mul, bias, residual add and row gathering. Rounding points follow
// transformers' Llama in bf16/f16 so both round the same intermediate values.

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

// ---- paged attention: one block per (listed token, query head) — decode tokens, and every
// token when the tiled prefill kernel below does not apply; its warps (at most 32) take
// runs of RR_ATT_U consecutive keys of the token's sequence up to its own position
// (causal), read through the block table, so each lane has RR_ATT_U keys' loads in
// flight; each warp keeps an online softmax and warp 0 merges them in a fixed order.
// Works for prefill chunks (with cached prefixes) and decode tokens in one launch.
// head_dim <= 256; lane l holds dims l, l+32, ...
#define RR_ATT_U 4
#define RR_ATT_WARPS 32
template <typename T>
__device__ void attention_impl(const T *qkv, const T *kc, const T *vc, T *out, const int *toks,
                               const int *tok_pos, const int *tok_tab, const int *blocks,
                               int heads, int kvh_local,
                               int hd, int stride, int q_start, int group, int kv_start, int bs,
                               float scale, int window) {
    __shared__ float sm_m[RR_ATT_WARPS], sm_l[RR_ATT_WARPS];
    __shared__ float sm_acc[RR_ATT_WARPS][256];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    i64 t = toks[blockIdx.x];
    int h = blockIdx.y;
    int pos = tok_pos[t];
    const int *tab = blocks + tok_tab[t];
    int kvh = (q_start + h) / group - kv_start;
    const T *q = qkv + t * stride + (i64)h * hd;
    float qv[8], acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int d = lane + 32 * i;
        qv[i] = d < hd ? tof(q[d]) : 0.f;
        acc[i] = 0.f;
    }
    float m = -RR_INF, l = 0.f;
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    i64 row = (i64)kvh_local * hd;
    for (int base = first + warp * RR_ATT_U; base <= pos; base += nw * RR_ATT_U) {
        const T *kp[RR_ATT_U], *vp[RR_ATT_U];
        float s[RR_ATT_U];
#pragma unroll
        for (int u = 0; u < RR_ATT_U; u++) {
            int j = min(base + u, pos);
            i64 slot = (i64)tab[j / bs] * bs + j % bs;
            kp[u] = kc + slot * row + (i64)kvh * hd;
            vp[u] = vc + slot * row + (i64)kvh * hd;
            s[u] = 0.f;
        }
#pragma unroll
        for (int u = 0; u < RR_ATT_U; u++) {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int d = lane + 32 * i;
                if (d < hd) s[u] += qv[i] * tof(kp[u][d]);
            }
        }
        float mn = m;
#pragma unroll
        for (int u = 0; u < RR_ATT_U; u++) {
            s[u] = base + u <= pos ? warp_sum(s[u]) * scale : -RR_INF;
            mn = fmaxf(mn, s[u]);
        }
        float corr = expf(m - mn);
        l *= corr;
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i] *= corr;
#pragma unroll
        for (int u = 0; u < RR_ATT_U; u++) {
            float p = expf(s[u] - mn);
            l += p;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int d = lane + 32 * i;
                if (d < hd) acc[i] += p * tof(vp[u][d]);
            }
        }
        m = mn;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int d = lane + 32 * i;
        if (d < hd) sm_acc[warp][d] = acc[i];
    }
    __syncthreads();
    if (warp != 0) return;
    float mx = -RR_INF;
    for (int w = 0; w < nw; w++) mx = fmaxf(mx, sm_m[w]);
    float den = 0.f, o[8];
#pragma unroll
    for (int i = 0; i < 8; i++) o[i] = 0.f;
    for (int w = 0; w < nw; w++) {
        if (sm_m[w] == -RR_INF) continue;
        float c = expf(sm_m[w] - mx);
        den += sm_l[w] * c;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int d = lane + 32 * i;
            if (d < hd) o[i] += sm_acc[w][d] * c;
        }
    }
    T *dst = out + t * (i64)heads * hd + (i64)h * hd;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int d = lane + 32 * i;
        if (d < hd) dst[d] = fromf<T>(o[i] / den);
    }
}
#define ATTENTION(S, T)                                                                          \
    extern "C" __global__ __launch_bounds__(1024) void attention_##S(                          \
        const T *qkv, const T *kc, const T *vc, T *out, const int *toks, const int *tok_pos,     \
        const int *tok_tab, const int *blocks, int heads, int kvh_local, int hd, int stride,     \
        int q_start, int group, int kv_start, int bs, float scale, int window) {                 \
        attention_impl<T>(qkv, kc, vc, out, toks, tok_pos, tok_tab, blocks, heads, kvh_local,   \
                          hd, stride, q_start, group, kv_start, bs, scale, window);              \
    }
RR_FOR_TYPES(ATTENTION)

// ---- decode attention, GQA-grouped and split over the context (flash-decoding): grid
// (tokens listed in `toks`, local KV heads, Z splits), RR_DEC_THREADS threads. Block
// (i, g, z) serves every local query head that shares KV head g (at most GM of them), over
// the z-th of Z equal parts of token toks[i]'s keys (causal, sliding-window aware), so each
// K/V row is read once per group instead of once per query head. Lanes work in teams of
// `tg` (hd <= 8 * tg, a power of two <= 32): a team takes RR_DEC_U keys at a time (4, or 2
// when GM = 8 to save registers), each lane
// 8 dims of each (16-byte loads), and keeps an online softmax per query head; the block's
// teams merge in shared memory. With Z == 1 the block writes the output; otherwise it
// writes (max, sum, unnormalised output) to `part[(i, head, z)]` and attention_merge
// combines the splits. hd % 8 == 0, <= 256.
#define RR_DEC_THREADS 128
template <typename T, int GM, int RR_DEC_U = GM >= 8 ? 2 : 4>
__device__ void attention_decode_impl(const T *qkv, const T *kc, const T *vc, T *out,
                                      float *part, const int *toks, const int *tok_pos,
                                      const int *tok_tab, const int *blocks, int heads,
                                      int kvh_local, int hd, int stride, int q_start, int group,
                                      int kv_start, int bs, float scale, int window, int tg) {
    __shared__ float sm_ml[RR_DEC_THREADS][GM][2];
    __shared__ __align__(16) float sm_acc[RR_DEC_THREADS * 8 * GM];
    int i = blockIdx.x, g = blockIdx.y, z = blockIdx.z, nz = gridDim.z;
    i64 t = toks[i];
    int pos = tok_pos[t];
    const int *tab = blocks + tok_tab[t];
    // The local query heads of KV head g.
    int kvg = kv_start + g;
    int h0 = max(0, kvg * group - q_start), h1 = min(heads, (kvg + 1) * group - q_start);
    int gc = min(h1 - h0, GM);
    if (gc <= 0) return;
    // Teams of a warp take consecutive runs of keys and loop together (the shuffles
    // need every lane of the warp), past k1 with their scores masked.
    int nt = blockDim.x / tg, team = threadIdx.x / tg, d0 = (threadIdx.x % tg) * 8;
    int tpw = 32 / tg, wt = (threadIdx.x & 31) / tg;
    int warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    bool act = d0 < hd;
    float q[GM][8], acc[GM][8], m[GM], l[GM];
#pragma unroll
    for (int gi = 0; gi < GM; gi++) {
        if (gi < gc && act) {
            load8(qkv + t * stride + (i64)(h0 + gi) * hd + d0, q[gi]);
#pragma unroll
            for (int e = 0; e < 8; e++) q[gi][e] *= scale;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) q[gi][e] = 0.f;
        }
#pragma unroll
        for (int e = 0; e < 8; e++) acc[gi][e] = 0.f;
        m[gi] = -RR_INF;
        l[gi] = 0.f;
    }
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    int per = (pos + 1 - first + nz - 1) / nz;
    int k0 = first + z * per, k1 = min(pos + 1, k0 + per);
    i64 row = (i64)kvh_local * hd, off = (i64)g * hd + d0;
    for (int wb = k0 + warp * tpw * RR_DEC_U; wb < k1; wb += nw * tpw * RR_DEC_U) {
        int base = wb + wt * RR_DEC_U;
        Raw8<T> kr[RR_DEC_U], vr[RR_DEC_U];
#pragma unroll
        for (int u = 0; u < RR_DEC_U; u++) {
            int j = min(base + u, k1 - 1);
            i64 slot = (i64)tab[j / bs] * bs + j % bs;
            if (act) {
                kr[u] = ld8(kc + slot * row + off);
                vr[u] = ld8(vc + slot * row + off);
            }
        }
        float s[RR_DEC_U][GM];
#pragma unroll
        for (int u = 0; u < RR_DEC_U; u++) {
            float kf[8];
            unpack8_if(act, kr[u], kf);
#pragma unroll
            for (int gi = 0; gi < GM; gi++) {
                float a = 0.f;
#pragma unroll
                for (int e = 0; e < 8; e++) a += q[gi][e] * kf[e];
                for (int o = tg >> 1; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
                s[u][gi] = base + u < k1 ? a : -RR_INF;
            }
        }
#pragma unroll
        for (int gi = 0; gi < GM; gi++) {
            float mn = m[gi];
#pragma unroll
            for (int u = 0; u < RR_DEC_U; u++) mn = fmaxf(mn, s[u][gi]);
            // A team past k1 from the start has seen no key yet: nothing to rescale.
            float c = mn == -RR_INF ? 1.f : expf(m[gi] - mn);
            l[gi] *= c;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[gi][e] *= c;
            m[gi] = mn;
        }
#pragma unroll
        for (int u = 0; u < RR_DEC_U; u++) {
            float vf[8];
            unpack8_if(act, vr[u], vf);
#pragma unroll
            for (int gi = 0; gi < GM; gi++) {
                float p = s[u][gi] == -RR_INF ? 0.f : expf(s[u][gi] - m[gi]);
                l[gi] += p;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[gi][e] += p * vf[e];
            }
        }
    }
    // Merge the teams: (max, sum) per team and head, then the output dims.
    if (threadIdx.x % tg == 0) {
#pragma unroll
        for (int gi = 0; gi < GM; gi++) {
            sm_ml[team][gi][0] = m[gi];
            sm_ml[team][gi][1] = l[gi];
        }
    }
    if (act) {
#pragma unroll
        for (int gi = 0; gi < GM; gi++)
#pragma unroll
            for (int e = 0; e < 8; e++) sm_acc[(team * GM + gi) * tg * 8 + d0 + e] = acc[gi][e];
    }
    __syncthreads();
    for (int x = threadIdx.x; x < gc * hd; x += blockDim.x) {
        int gi = x / hd, d = x % hd;
        float mx = -RR_INF;
        for (int w = 0; w < nt; w++) mx = fmaxf(mx, sm_ml[w][gi][0]);
        float den = 0.f, o = 0.f;
        if (mx != -RR_INF) {
            for (int w = 0; w < nt; w++) {
                float mw = sm_ml[w][gi][0];
                if (mw == -RR_INF) continue;
                float c = expf(mw - mx);
                den += sm_ml[w][gi][1] * c;
                o += sm_acc[(w * GM + gi) * tg * 8 + d] * c;
            }
        }
        int h = h0 + gi;
        if (nz == 1) {
            out[t * (i64)heads * hd + (i64)h * hd + d] = fromf<T>(den > 0.f ? o / den : 0.f);
        } else {
            float *pp = part + (((i64)i * heads + h) * nz + z) * (hd + 2);
            pp[2 + d] = o;
            if (d == 0) {
                pp[0] = mx;
                pp[1] = den;
            }
        }
    }
}
// The four instantiations differ only in GM (query heads per block).
#define RR_DEC_PARAMS(T)                                                                         \
    const T *qkv, const T *kc, const T *vc, T *out, float *part, const int *toks,                \
        const int *tok_pos, const int *tok_tab, const int *blocks, int heads, int kvh_local,     \
        int hd, int stride, int q_start, int group, int kv_start, int bs, float scale,          \
        int window, int tg
#define RR_DEC_ARGS                                                                              \
    qkv, kc, vc, out, part, toks, tok_pos, tok_tab, blocks, heads, kvh_local, hd, stride,        \
        q_start, group, kv_start, bs, scale, window, tg
#define ATTENTION_DECODE(S, T)                                                                   \
    extern "C" __global__ __launch_bounds__(RR_DEC_THREADS) void attention_decode1_##S(RR_DEC_PARAMS(T)) { attention_decode_impl<T, 1>(RR_DEC_ARGS); } \
    extern "C" __global__ __launch_bounds__(RR_DEC_THREADS) void attention_decode2_##S(RR_DEC_PARAMS(T)) { attention_decode_impl<T, 2>(RR_DEC_ARGS); } \
    extern "C" __global__ __launch_bounds__(RR_DEC_THREADS) void attention_decode4_##S(RR_DEC_PARAMS(T)) { attention_decode_impl<T, 4>(RR_DEC_ARGS); } \
    extern "C" __global__ __launch_bounds__(RR_DEC_THREADS) void attention_decode8_##S(RR_DEC_PARAMS(T)) { attention_decode_impl<T, 8>(RR_DEC_ARGS); }
RR_FOR_TYPES(ATTENTION_DECODE)

// ---- combines attention_decode's Z splits: one block per (listed token, local query
// head), thread d sums dim d over the splits with their softmax weights.
template <typename T>
__device__ void attention_merge_impl(const float *part, const int *toks, T *out, int heads,
                                     int hd, int nz) {
    int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    if (d >= hd) return;
    i64 t = toks[i];
    const float *pp = part + ((i64)i * heads + h) * nz * (hd + 2);
    float mx = -RR_INF;
    for (int z = 0; z < nz; z++) mx = fmaxf(mx, pp[z * (hd + 2)]);
    float den = 0.f, o = 0.f;
    for (int z = 0; z < nz; z++) {
        const float *q = pp + z * (hd + 2);
        if (q[0] == -RR_INF) continue;
        float c = expf(q[0] - mx);
        den += q[1] * c;
        o += q[2 + d] * c;
    }
    out[t * (i64)heads * hd + (i64)h * hd + d] = fromf<T>(den > 0.f ? o / den : 0.f);
}
#define ATTENTION_MERGE(S, T)                                                                    \
    extern "C" __global__ void attention_merge_##S(const float *part, const int *toks, T *out,  \
                                                   int heads, int hd, int nz) {                  \
        attention_merge_impl<T>(part, toks, out, heads, hd, nz);                                \
    }
RR_FOR_TYPES(ATTENTION_MERGE)

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
#define RR_FOR_16BIT(M) M(bf16, __nv_bfloat16) M(f16, __half)
RR_FOR_16BIT(ATTENTION_PREFILL_TC)

// ---- The MLP activation (config.json's hidden_act), torch's formulas in f32:
//   ACT 0 SiLU, 1 GELU (erf), 2 GELU (tanh approximation, kBeta = sqrt(2/pi)).
template <int ACT> __device__ __forceinline__ float act_fn(float g) {
    if (ACT == 1) return g * 0.5f * (1.f + erff(g * 0.70710678118654752f));
    if (ACT == 2) return 0.5f * g * (1.f + tanhf(0.79788456080286536f * (g + 0.044715f * g * g * g)));
    return g / (1.f + expf(-g));
}

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

// ---- y[m, n] = x[m, k] · w[n, k]ᵀ for the few token rows of a decode step (m <= MAXM):
// one warp per output row streams the weight row once (evict-first loads: the candidate of
// scripts/gemv_bench.cu that used them ran 7-17% faster on the 8B's down and q|k|v shapes
// on H100), four 16-byte loads in flight per lane (kept as raw words until used), and dots it with every token row (which stay in
// L1/L2). Compiled for MAXM = 1, 2, 4 and 8 so the register count follows m (one kernel
// for m <= 8 needed 107 registers, which left two 256-thread blocks per SM). Needs k % 8 == 0 and 16-byte aligned rows.
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
