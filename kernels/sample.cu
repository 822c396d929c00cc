// Sampling on the GPU (common.cuh is prepended): one block per draw reads its row of
// the gathered logits ([tp][rows][chunk], vocab-parallel parts side by side), applies
// vLLM's penalties, picks greedily or draws with temperature / top-k / top-p / min-p
// using the host's uniform number u (seeded per request and step), and reports the
// log-probabilities of the raw logits. Only token ids and a few floats leave the GPU.

#define RR_MAX_TOP 20

// Mirrors `Draw` in src/rank/backend/cuda/sample.rs.
struct Draw {
    int row;
    int top_k;
    float temperature;
    float top_p;
    float min_p;
    float rep;
    float freq;
    float pres;
    float u;
    int n_top;
    int pen_off;
    int pen_n;
};

// Mirrors `Pen`: one distinct history token; `seen` = in the prompt or the output,
// `count` = occurrences in the output.
struct Pen {
    int token;
    int count;
    int seen;
};

template <typename T>
__device__ __forceinline__ float logit_at(const T *lg, int id, int rows, int chunk, int row) {
    return tof(lg[((i64)(id / chunk) * rows + row) * chunk + id % chunk]);
}

// Keeps the larger of (best, bi) and (ov, oi); the smaller index on ties.
__device__ __forceinline__ void argmax_merge(float &best, int &bi, float ov, int oi) {
    if (ov > best || (ov == best && oi < bi)) {
        best = ov;
        bi = oi;
    }
}

// The warp's (largest value, its smallest index), in every lane.
__device__ __forceinline__ void warp_argmax(float &best, int &bi) {
    for (int o = 16; o > 0; o >>= 1)
        argmax_merge(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
}

// Index of the largest value among w[0..n) with `skip` excluded; the first on ties.
__device__ int block_argmax(const float *w, int n, const int *skip, int nskip, float *shv, int *shi) {
    float best = -RR_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        bool skipped = false;
        for (int s = 0; s < nskip; s++) skipped |= skip[s] == i;
        if (!skipped) argmax_merge(best, bi, w[i], i);
    }
    warp_argmax(best, bi);
    int wp = threadIdx.x >> 5, l = threadIdx.x & 31;
    __syncthreads();
    if (l == 0) {
        shv[wp] = best;
        shi[wp] = bi;
    }
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    best = l < nw ? shv[l] : -RR_INF;
    bi = l < nw ? shi[l] : 0x7fffffff;
    warp_argmax(best, bi);
    return bi == 0x7fffffff ? 0 : bi;
}

// Count of w >= t and mass of exp((w - m) * inv_t) over w >= t.
__device__ float count_at_least(const float *w, int n, float t, float *sh) {
    float c = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) c += w[i] >= t ? 1.f : 0.f;
    return block_sum(c, sh);
}
__device__ float mass_at_least(const float *w, int n, float t, float m, float inv_t, float *sh) {
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += w[i] >= t ? expf((w[i] - m) * inv_t) : 0.f;
    return block_sum(s, sh);
}

template <typename T>
__device__ void sample_impl(const T *lg, int rows, int chunk, int vocab, const Draw *draws,
                            const Pen *pens, float *work, int *out_tok, float *out_lp,
                            int *out_top_id, float *out_top_lp) {
    __shared__ float sh[32];
    __shared__ float shv[32];
    __shared__ int shi[32];
    __shared__ float part[1024];
    __shared__ int top[RR_MAX_TOP];
    __shared__ int pick_thread;
    __shared__ float pick_rest;
    const Draw d = draws[blockIdx.x];
    if (d.temperature <= 0.f && d.pen_n == 0 && d.n_top <= 0) {
        // Greedy without penalties or alternatives: one pass over the row's parts
        // (no division per id) for the argmax and an online log-sum-exp.
        float best = -RR_INF, m = -RR_INF, se = 0.f;
        int bi = 0x7fffffff;
        int parts = (vocab + chunk - 1) / chunk;
        for (int p = 0; p < parts; p++) {
            const T *row = lg + ((i64)p * rows + d.row) * chunk;
            int n = min(chunk, vocab - p * chunk);
            for (int j = threadIdx.x; j < n; j += blockDim.x) {
                float v = tof(row[j]);
                if (v > best) {  // ids ascend per thread: the first wins ties
                    best = v;
                    bi = p * chunk + j;
                }
                if (v > m) {
                    se = se * expf(m - v) + 1.f;
                    m = v;
                } else {
                    se += expf(v - m);
                }
            }
        }
        warp_argmax(best, bi);
        float gm = block_max(m, sh);
        float lse = gm + logf(block_sum(m == -RR_INF ? 0.f : se * expf(m - gm), sh));
        int wp = threadIdx.x >> 5, l = threadIdx.x & 31;
        if (l == 0) {
            shv[wp] = best;
            shi[wp] = bi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int nw = (blockDim.x + 31) >> 5;
            for (int k = 1; k < nw; k++) argmax_merge(best, bi, shv[k], shi[k]);
            out_tok[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
            out_lp[blockIdx.x] = best - lse;
        }
        return;
    }
    float *w = work + (i64)blockIdx.x * vocab;
    float mx = -RR_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = logit_at(lg, i, rows, chunk, d.row);
        w[i] = v;
        mx = fmaxf(mx, v);
    }
    mx = block_max(mx, sh);
    float se = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) se += expf(w[i] - mx);
    float lse = mx + logf(block_sum(se, sh));
    __syncthreads();
    for (int e = threadIdx.x; e < d.pen_n; e += blockDim.x) {
        Pen p = pens[d.pen_off + e];
        float v = w[p.token];
        if (p.seen && d.rep != 1.f) v = v > 0.f ? v / d.rep : v * d.rep;
        if (p.count > 0) v -= d.freq * (float)p.count + d.pres;
        w[p.token] = v;
    }
    __syncthreads();
    int tok;
    if (d.temperature <= 0.f) {
        tok = block_argmax(w, vocab, top, 0, shv, shi);
    } else {
        float m = -RR_INF;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, w[i]);
        m = block_max(m, sh);
        float inv_t = 1.f / d.temperature;
        float thr = -RR_INF;
        if (d.top_k > 0 && d.top_k < vocab) {
            // Largest t with at least k values >= t: the k-th largest value.
            float lo = RR_INF;
            for (int i = threadIdx.x; i < vocab; i += blockDim.x) lo = fminf(lo, w[i]);
            lo = block_min(lo, sh);
            float hi = m;
            if (count_at_least(w, vocab, hi, sh) >= (float)d.top_k) lo = hi;
            for (int it = 0; it < 48 && lo < hi; it++) {
                float mid = 0.5f * (lo + hi);
                if (mid <= lo || mid >= hi) break;
                if (count_at_least(w, vocab, mid, sh) >= (float)d.top_k) lo = mid; else hi = mid;
            }
            thr = lo;
        }
        if (d.top_p < 1.f) {
            // Largest t >= thr whose tokens hold at least top_p of the kept mass.
            float target = d.top_p * mass_at_least(w, vocab, thr, m, inv_t, sh);
            float lo = thr, hi = m;
            if (mass_at_least(w, vocab, hi, m, inv_t, sh) >= target) lo = hi;
            if (lo == -RR_INF) {
                float mn = RR_INF;
                for (int i = threadIdx.x; i < vocab; i += blockDim.x) mn = fminf(mn, w[i]);
                lo = block_min(mn, sh);
            }
            for (int it = 0; it < 48 && lo < hi; it++) {
                float mid = 0.5f * (lo + hi);
                if (mid <= lo || mid >= hi) break;
                if (mass_at_least(w, vocab, mid, m, inv_t, sh) >= target) lo = mid; else hi = mid;
            }
            thr = fmaxf(thr, lo);
        }
        if (d.min_p > 0.f) thr = fmaxf(thr, m + d.temperature * logf(d.min_p));
        thr = fminf(thr, m);
        // Draw: walk the kept tokens in id order; thread j owns ids [j*per, (j+1)*per).
        int per = (vocab + blockDim.x - 1) / blockDim.x;
        int a = threadIdx.x * per, b = min(a + per, vocab);
        float s = 0.f;
        for (int i = a; i < b; i++) s += w[i] >= thr ? expf((w[i] - m) * inv_t) : 0.f;
        part[threadIdx.x] = s;
        __syncthreads();
        if (threadIdx.x == 0) {
            float total = 0.f;
            for (int j = 0; j < (int)blockDim.x; j++) total += part[j];
            float r = d.u * total;
            int j = 0;
            for (; j < (int)blockDim.x - 1; j++) {
                if (r < part[j]) break;
                r -= part[j];
            }
            while (j > 0 && part[j] == 0.f) j--;  // rounding walked past the last kept token
            pick_thread = j;
            pick_rest = r;
        }
        __syncthreads();
        __shared__ int picked;
        if (threadIdx.x == 0) picked = -1;
        __syncthreads();
        if ((int)threadIdx.x == pick_thread) {
            float r = pick_rest;
            int last = -1;
            for (int i = a; i < b; i++) {
                if (w[i] < thr) continue;
                float p = expf((w[i] - m) * inv_t);
                last = i;
                if (r < p) break;
                r -= p;
            }
            picked = last;
        }
        __syncthreads();
        tok = picked >= 0 ? picked : block_argmax(w, vocab, top, 0, shv, shi);
    }
    if (threadIdx.x == 0) {
        out_tok[blockIdx.x] = tok;
        out_lp[blockIdx.x] = logit_at(lg, tok, rows, chunk, d.row) - lse;
    }
    // The most likely raw tokens, most likely first.
    int n_top = min(d.n_top, RR_MAX_TOP);
    if (n_top > 0) {
        __syncthreads();
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) w[i] = logit_at(lg, i, rows, chunk, d.row);
        __syncthreads();
        for (int k = 0; k < n_top; k++) {
            int best = block_argmax(w, vocab, top, k, shv, shi);
            if (threadIdx.x == 0) {
                top[k] = best;
                out_top_id[blockIdx.x * RR_MAX_TOP + k] = best;
                out_top_lp[blockIdx.x * RR_MAX_TOP + k] = w[best] - lse;
            }
            __syncthreads();
        }
    }
}
#define SAMPLE(S, T)                                                                              \
    extern "C" __global__ void sample_##S(const T *lg, int rows, int chunk, int vocab,             \
                                          const Draw *draws, const Pen *pens, float *work,        \
                                          int *out_tok, float *out_lp, int *out_top_id,           \
                                          float *out_top_lp) {                                    \
        sample_impl<T>(lg, rows, chunk, vocab, draws, pens, work, out_tok, out_lp, out_top_id,    \
                       out_top_lp);                                                               \
    }
RR_FOR_TYPES(SAMPLE)
