// Paged attention for decode tokens (common.cuh is prepended): the per-head kernel
// (any shape, prefill chunks included), the GQA-grouped split-context kernel and the
// merge of its splits.

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
