// Weight-streaming GEMV variants for batch-1 decode, timed the way a decode step runs
// them: L distinct weight matrices (so every byte comes from HBM, not L2) launched
// back to back inside one CUDA graph, per shape of the Llama-3-8B layer at TP 1 and 2.
// Prints µs per call and GB/s for rrank's kernel (kernels/gemv.cu, gemv1) and for
// the candidates below. Build and run on the GPU machine:
//   nvcc -O3 -arch=sm_90 -std=c++17 -include kernels/common.cuh -o /tmp/gemv_bench scripts/gemv_bench.cu && /tmp/gemv_bench
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../kernels/gemv.cu"

#define CK(x)                                                                        \
    do {                                                                             \
        cudaError_t e = (x);                                                         \
        if (e != cudaSuccess) {                                                      \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

// Candidate A: one warp per row, U 16-byte loads per lane in flight, the next batch of
// loads issued before the current one is used (two batches in registers).
template <int U>
__global__ void gemv_pipe(const __nv_bfloat16 *x, const __nv_bfloat16 *w, __nv_bfloat16 *y, int n, int k) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * (blockDim.x >> 5) + warp;
    if (row >= n) return;
    const __nv_bfloat16 *wr = w + (i64)row * k;
    float acc = 0.f;
    const int step = 256 * U;
    for (int c0 = lane * 8; c0 < k; c0 += step) {
        uint4 raw[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + u * 256;
            raw[u] = c < k ? __ldcs(reinterpret_cast<const uint4 *>(wr + c)) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + u * 256;
            if (c >= k) break;
            const __nv_bfloat16 *e = reinterpret_cast<const __nv_bfloat16 *>(&raw[u]);
            uint4 xr = *reinterpret_cast<const uint4 *>(x + c);
            const __nv_bfloat16 *xe = reinterpret_cast<const __nv_bfloat16 *>(&xr);
#pragma unroll
            for (int i = 0; i < 8; i++) acc += tof(e[i]) * tof(xe[i]);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = fromf<__nv_bfloat16>(acc);
}

// Candidate B: x staged in shared memory once per block (k <= 16384), R rows per warp
// interleaved so each lane has R × U loads in flight.
template <int R, int U>
__global__ void gemv_smem(const __nv_bfloat16 *x, const __nv_bfloat16 *w, __nv_bfloat16 *y, int n, int k) {
    extern __shared__ __align__(16) unsigned char sm[];
    __nv_bfloat16 *xs = reinterpret_cast<__nv_bfloat16 *>(sm);
    for (int i = threadIdx.x * 8; i < k; i += blockDim.x * 8)
        *reinterpret_cast<uint4 *>(xs + i) = *reinterpret_cast<const uint4 *>(x + i);
    __syncthreads();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row0 = (blockIdx.x * (blockDim.x >> 5) + warp) * R;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.f;
    for (int c0 = lane * 8; c0 < k; c0 += 256 * U) {
        uint4 raw[R][U];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int u = 0; u < U; u++) {
                int c = c0 + u * 256;
                raw[r][u] = (c < k && row0 + r < n) ? __ldcs(reinterpret_cast<const uint4 *>(w + (i64)(row0 + r) * k + c))
                                                    : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + u * 256;
            if (c >= k) break;
            uint4 xr = *reinterpret_cast<const uint4 *>(xs + c);
            const __nv_bfloat16 *xe = reinterpret_cast<const __nv_bfloat16 *>(&xr);
            float xf[8];
#pragma unroll
            for (int i = 0; i < 8; i++) xf[i] = tof(xe[i]);
#pragma unroll
            for (int r = 0; r < R; r++) {
                const __nv_bfloat16 *e = reinterpret_cast<const __nv_bfloat16 *>(&raw[r][u]);
#pragma unroll
                for (int i = 0; i < 8; i++) acc[r] += tof(e[i]) * xf[i];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && row0 + r < n) y[row0 + r] = fromf<__nv_bfloat16>(s);
    }
}

struct Shape {
    const char *name;
    int n, k;
};

typedef void (*Launch)(const __nv_bfloat16 *, const __nv_bfloat16 *, __nv_bfloat16 *, int, int, cudaStream_t);

template <int ROWS_PER_BLOCK>
void launch_rrank(const __nv_bfloat16 *x, const __nv_bfloat16 *w, __nv_bfloat16 *y, int n, int k, cudaStream_t s) {
    gemv1_bf16<<<(n + 7) / 8, 256, 0, s>>>(x, w, y, 1, n, k);
}
template <int U, int T>
void launch_pipe(const __nv_bfloat16 *x, const __nv_bfloat16 *w, __nv_bfloat16 *y, int n, int k, cudaStream_t s) {
    gemv_pipe<U><<<(n + T / 32 - 1) / (T / 32), T, 0, s>>>(x, w, y, n, k);
}
template <int R, int U, int T>
void launch_smem(const __nv_bfloat16 *x, const __nv_bfloat16 *w, __nv_bfloat16 *y, int n, int k, cudaStream_t s) {
    int rows_per_block = (T / 32) * R;
    gemv_smem<R, U><<<(n + rows_per_block - 1) / rows_per_block, T, k * 2, s>>>(x, w, y, n, k);
}

int main() {
    Shape shapes[] = {{"qkv tp1", 6144, 4096},  {"o tp1", 4096, 4096},     {"gate|up tp1", 28672, 4096},
                      {"down tp1", 4096, 14336}, {"lm_head", 128256, 4096}, {"qkv tp2", 3072, 4096},
                      {"o tp2", 4096, 2048},     {"gate|up tp2", 14336, 4096}, {"down tp2", 4096, 7168}};
    struct V {
        const char *name;
        Launch f;
    } variants[] = {
        {"rrank gemv1", launch_rrank<8>},
        {"pipe U4 T256", launch_pipe<4, 256>},
        {"pipe U8 T256", launch_pipe<8, 256>},
        {"pipe U16 T128", launch_pipe<16, 128>},
        {"pipe U8 T128", launch_pipe<8, 128>},
        {"smem R2 U4 T256", launch_smem<2, 4, 256>},
        {"smem R2 U8 T128", launch_smem<2, 8, 128>},
        {"smem R4 U4 T128", launch_smem<4, 4, 128>},
        {"smem R1 U8 T256", launch_smem<1, 8, 256>},
    };
    const size_t budget = 8ull << 30;  // weights streamed per timing
    __nv_bfloat16 *pool, *x, *y;
    CK(cudaMalloc(&pool, budget));
    CK(cudaMemset(pool, 0x3c, budget));
    CK(cudaMalloc(&x, 32768 * 2));
    CK(cudaMemset(x, 0x3c, 32768 * 2));
    CK(cudaMalloc(&y, 256 << 20));
    cudaFuncSetAttribute(gemv_smem<1, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10);
    cudaFuncSetAttribute(gemv_smem<2, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10);
    cudaFuncSetAttribute(gemv_smem<2, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10);
    cudaFuncSetAttribute(gemv_smem<4, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    printf("%-12s %-18s %9s %8s\n", "shape", "kernel", "us/call", "GB/s");
    for (auto &sh : shapes) {
        size_t bytes = (size_t)sh.n * sh.k * 2;
        int L = (int)(budget / bytes);
        if (L > 64) L = 64;
        for (auto &v : variants) {
            cudaGraph_t g;
            cudaGraphExec_t ge;
            CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
            for (int l = 0; l < L; l++) v.f(x, pool + (size_t)l * sh.n * sh.k, y, sh.n, sh.k, s);
            CK(cudaStreamEndCapture(s, &g));
            CK(cudaGraphInstantiate(&ge, g, 0));
            CK(cudaGraphLaunch(ge, s));
            CK(cudaStreamSynchronize(s));
            float best = 1e30f;
            for (int rep = 0; rep < 5; rep++) {
                CK(cudaEventRecord(a, s));
                CK(cudaGraphLaunch(ge, s));
                CK(cudaEventRecord(b, s));
                CK(cudaEventSynchronize(b));
                float ms;
                CK(cudaEventElapsedTime(&ms, a, b));
                if (ms < best) best = ms;
            }
            double us = best * 1000.0 / L;
            printf("%-12s %-18s %9.2f %8.0f\n", sh.name, v.name, us, bytes / us / 1e3);
            CK(cudaGraphExecDestroy(ge));
            CK(cudaGraphDestroy(g));
        }
    }
    // Correctness of the candidates against rrank's kernel on one random matrix.
    {
        int n = 4096, k = 14336;
        std::vector<__nv_bfloat16> hw((size_t)n * k), hx(k);
        srand(1);
        for (auto &e : hw) e = __float2bfloat16((rand() / (float)RAND_MAX - 0.5f) * 0.1f);
        for (auto &e : hx) e = __float2bfloat16(rand() / (float)RAND_MAX - 0.5f);
        CK(cudaMemcpy(pool, hw.data(), hw.size() * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(x, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
        std::vector<__nv_bfloat16> ref(n), got(n);
        launch_rrank<8>(x, pool, y, n, k, s);
        CK(cudaMemcpyAsync(ref.data(), y, n * 2, cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
        for (auto &v : variants) {
            v.f(x, pool, y, n, k, s);
            CK(cudaMemcpyAsync(got.data(), y, n * 2, cudaMemcpyDeviceToHost, s));
            CK(cudaStreamSynchronize(s));
            float worst = 0;
            for (int i = 0; i < n; i++) {
                float d = fabsf(__bfloat162float(got[i]) - __bfloat162float(ref[i]));
                if (d > worst) worst = d;
            }
            printf("check %-18s max |diff| vs rrank %.4g\n", v.name, worst);
        }
    }
    return 0;
}
