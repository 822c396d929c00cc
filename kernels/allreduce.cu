// One-shot all-reduce among the tensor-parallel GPUs of one machine, over memory the
// ranks mapped from each other (CUDA IPC; reads travel over NVLink or PCIe P2P).
//
// Every rank owns one buffer (src/rank/backend/cuda/allreduce.rs lays it out):
//   [0, 4096)        flags: u32 [RR_AR_BLOCKS][8]; flags[b][p] is written by rank p's block b
//   [4096, 6144)     this rank's epoch per block (u32 [RR_AR_BLOCKS]), never read by peers
//   [6144, 6208)     the base address of every rank's buffer as this rank maps it (u64 [8])
//   [8192, ...)      two data slots of `slot_bytes` each
//
// Block b of every rank takes the same slice of the message: it copies its slice of
// `y` into its slot (epoch & 1), raises its flag in every peer's buffer (release, system
// scope), waits for every peer's flag of this epoch (acquire), then sums the slice of
// all ranks in rank order (so every rank gets the same bits) into `y`. Two slots make
// one barrier enough: a rank writes a slot again two epochs later, and it can only get
// there after every peer has entered the epoch in between, which on each peer's stream
// follows the end of its reads of that slot. The epoch lives on the GPU, so the launch
// has fixed arguments and can be captured in a CUDA graph. A peer that never arrives
// (it died) traps the kernel after RR_AR_TIMEOUT_NS instead of spinning forever.
#define RR_AR_BLOCKS 64
#define RR_AR_THREADS 512  // launched with this many threads (allreduce.rs)
#define RR_AR_MAX_RANKS 8
#define RR_AR_TIMEOUT_NS 120000000000ull

__device__ __forceinline__ void rr_st_release_sys(unsigned *p, unsigned v) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned rr_ld_acquire_sys(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ unsigned long long rr_now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

template <typename T>
__device__ void all_reduce_impl(T *y, unsigned char *own, i64 n, i64 slot_bytes, int rank, int size) {
    const int b = blockIdx.x, tid = threadIdx.x;
    unsigned *flags = reinterpret_cast<unsigned *>(own);
    unsigned *epochs = reinterpret_cast<unsigned *>(own + 4096);
    const unsigned long long *bases = reinterpret_cast<const unsigned long long *>(own + 6144);
    const unsigned e = epochs[b] + 1;
    const i64 slot = 8192 + (i64)(e & 1) * slot_bytes;
    // The slice of 16-byte words this block reduces.
    const i64 words = n * (i64)sizeof(T) / 16;
    const i64 per = (words + gridDim.x - 1) / gridDim.x;
    const i64 lo = (i64)b * per, hi = min(words, lo + per);
    uint4 *mine = reinterpret_cast<uint4 *>(own + slot);
    uint4 *yw = reinterpret_cast<uint4 *>(y);
    for (i64 i = lo + tid; i < hi; i += blockDim.x) mine[i] = yw[i];
    __syncthreads();
    if (tid < size && tid != rank) {
        unsigned *peer_flags = reinterpret_cast<unsigned *>(bases[tid]);
        rr_st_release_sys(peer_flags + b * RR_AR_MAX_RANKS + rank, e);
    }
    if (tid < size && tid != rank) {
        const unsigned *f = flags + b * RR_AR_MAX_RANKS + tid;
        unsigned long long t0 = rr_now_ns();
        while ((int)(rr_ld_acquire_sys(f) - e) < 0) {
            if (rr_now_ns() - t0 > RR_AR_TIMEOUT_NS) __trap();
        }
    }
    __syncthreads();
    constexpr int PER = 16 / sizeof(T);
    for (i64 i = lo + tid; i < hi; i += blockDim.x) {
        float acc[PER];
#pragma unroll
        for (int j = 0; j < PER; j++) acc[j] = 0.f;
        for (int p = 0; p < size; p++) {
            uint4 w = p == rank ? mine[i] : __ldcg(reinterpret_cast<const uint4 *>(bases[p] + slot) + i);
            const T *v = reinterpret_cast<const T *>(&w);
#pragma unroll
            for (int j = 0; j < PER; j++) acc[j] += tof(v[j]);
        }
        uint4 out;
        T *o = reinterpret_cast<T *>(&out);
#pragma unroll
        for (int j = 0; j < PER; j++) o[j] = fromf<T>(acc[j]);
        yw[i] = out;
    }
    __syncthreads();
    if (tid == 0) epochs[b] = e;
}
#define ALL_REDUCE(S, T)                                                                           \
    extern "C" __global__ void all_reduce_##S(T *y, unsigned char *own, i64 n, i64 slot_bytes, int rank, \
                                              int size) {                                          \
        all_reduce_impl<T>(y, own, n, slot_bytes, rank, size);                                     \
    }
RR_FOR_TYPES(ALL_REDUCE)
