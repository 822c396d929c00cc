//! The CUDA backend: one GPU per rank (LOCAL_RANK among the visible GPUs), one
//! non-default stream, kernels from `kernels/` compiled by NVRTC ([`nvrtc`]),
//! GEMMs through cuBLAS (f32 accumulate), NCCL communicators whose ids travel
//! through the store ([`nccl`]) and a P2P one-shot all-reduce for small messages
//! ([`allreduce`]), the sharded model with its paged KV cache in
//! device memory ([`model`]) and sampling on the GPU ([`sample`]).
//!
//! Libraries are loaded at run time by cudarc; [`libs`] checks for them first so a
//! missing one is a clear error, never cudarc's panic. Device memory is handled as
//! raw pointers ([`DevBuf`]) passed to kernels by value, which keeps offsets into
//! fused weights and workspaces simple.

pub mod allreduce;
pub mod libs;
pub mod lt;
pub mod model;
pub mod nccl;
pub mod nvrtc;
pub mod profile;
pub mod sample;
pub mod upload;

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{CudaContext, CudaStream, result as drv, sys as drv_sys};

use crate::rank::model::config::Activation;

/// What went wrong on the GPU side.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// A refusal before anything ran: libraries, GPU count, memory (exit code 2).
    #[error("{0}")]
    Setup(String),
    /// A failure while running (exit code 1).
    #[error("{0}")]
    Run(String),
}

pub type Result<T> = std::result::Result<T, GpuError>;

fn run_err(what: &str) -> impl Fn(drv::DriverError) -> GpuError + '_ {
    move |e| GpuError::Run(format!("{what}: {e:?}"))
}

/// Element type on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    Bf16,
    F16,
}

impl DType {
    /// Parses a safetensors dtype or a `--dtype` value.
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "F32" | "float32" | "float" => Some(DType::F32),
            "BF16" | "bfloat16" => Some(DType::Bf16),
            "F16" | "float16" | "half" => Some(DType::F16),
            _ => None,
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            _ => 2,
        }
    }
    /// Kernel name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::Bf16 => "bfloat16",
            DType::F16 => "float16",
        }
    }
    fn blas(self) -> blas_sys::cudaDataType {
        match self {
            DType::F32 => blas_sys::cudaDataType::CUDA_R_32F,
            DType::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
            DType::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        }
    }
}

/// A device allocation, freed on drop.
#[derive(Debug)]
pub struct DevBuf {
    pub ptr: u64,
    pub bytes: usize,
}

impl DevBuf {
    /// Address of element `i` of size `es`.
    pub fn at(&self, i: usize, es: usize) -> u64 {
        self.ptr + (i * es) as u64
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: allocated by malloc_sync and freed once.
            let _ = unsafe { drv::free_sync(self.ptr) };
        }
    }
}

/// Kernel arguments: each value in an 8-byte slot (pointers, i64, or i32/f32 in the
/// low bytes, which is how a 4-byte parameter is read on little-endian x86-64).
#[derive(Default)]
pub struct Args {
    slots: Vec<u64>,
}

impl Args {
    pub fn new() -> Args {
        Args {
            slots: Vec::with_capacity(24),
        }
    }
    pub fn ptr(mut self, p: u64) -> Args {
        self.slots.push(p);
        self
    }
    pub fn i32(mut self, v: i32) -> Args {
        self.slots.push(v as u32 as u64);
        self
    }
    pub fn i64(mut self, v: i64) -> Args {
        self.slots.push(v as u64);
        self
    }
    pub fn f32(mut self, v: f32) -> Args {
        self.slots.push(v.to_bits() as u64);
        self
    }
}

/// GEMMs of at most this many token rows go through tuned cuBLASLt plans ([`lt`]).
const LT_MAX_M: usize = 64;

/// Bytes overwritten to empty the L2 cache (50 MB on H100; 128 MiB covers larger ones).
const L2_FLUSH: usize = 128 << 20;

/// Bytes of cuBLAS's workspace (NVIDIA recommends 32 MiB on Hopper).
const BLAS_WORKSPACE: usize = 32 << 20;

/// One product `y[m, n] = x[m, k] · w[n, k]ᵀ` (row-major, the weight as HF stores
/// it), as the GEMM paths pass it around.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub dt: DType,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x: u64,
    pub w: u64,
    pub y: u64,
}

/// What a fused batch-1 GEMV makes its input from ([`Gpu::gemv_fused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fused {
    /// RMSNorm of the residual stream (after adding the last delta).
    Norm,
    /// act(gate) · up of the fused gate|up row.
    Mlp(Activation),
}

/// Shared memory a fused GEMV may take for its input row without opting in to more.
const FUSED_SMEM_MAX: usize = 48 << 10;

/// One rank's GPU: context, stream, cuBLAS handle and loaded kernels.
pub struct Gpu {
    pub ordinal: usize,
    pub name: String,
    pub total_mem: usize,
    /// Streaming multiprocessors (sizes the decode attention's context splits).
    pub sms: usize,
    blas: blas_sys::cublasHandle_t,
    funcs: HashMap<String, drv_sys::CUfunction>,
    /// cuBLAS's workspace (set once, so GEMMs can be captured in CUDA graphs).
    blas_workspace: DevBuf,
    /// cuBLASLt plans for decode-sized GEMMs (None where cuBLASLt did not start:
    /// cublasGemmEx only).
    lt: Option<lt::Lt>,
    /// What the cuBLASLt tuner overwrites to empty the L2 cache between timed runs.
    lt_flush: DevBuf,
    /// Kernel timing with `RRANK_PROFILE=1`.
    pub profile: Option<profile::Profile>,
    pub stream: Arc<CudaStream>,
    pub ctx: Arc<CudaContext>,
}

impl Gpu {
    /// Opens GPU `local_rank` of the visible ones after checking the libraries and
    /// that `local_world` ranks fit on this machine's GPUs; compiles (or loads from
    /// the cache) every kernel module for its architecture.
    pub fn open(local_rank: usize, local_world: usize) -> Result<Gpu> {
        libs::ensure(&[
            libs::Lib::Driver,
            libs::Lib::Nvrtc,
            libs::Lib::Cublas,
            libs::Lib::CublasLt,
        ])
        .map_err(|e| GpuError::Setup(e.to_string()))?;
        drv::init()
            .map_err(|e| GpuError::Setup(format!("the CUDA driver did not start: {e:?}")))?;
        let count = drv::device::get_count()
            .map_err(|e| GpuError::Setup(format!("cannot count GPUs: {e:?}")))?
            as usize;
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into());
        if count == 0 {
            return Err(GpuError::Setup(format!(
                "no GPU is visible (CUDA_VISIBLE_DEVICES={visible}); use --device cpu or check the driver with nvidia-smi"
            )));
        }
        if local_world > count {
            return Err(GpuError::Setup(format!(
                "{local_world} ranks on this machine (LOCAL_WORLD_SIZE) but only {count} GPU(s) visible (CUDA_VISIBLE_DEVICES={visible}); one rank per GPU: use --nproc-per-node {count} or fewer"
            )));
        }
        if local_rank >= count {
            return Err(GpuError::Setup(format!(
                "LOCAL_RANK {local_rank} has no GPU: {count} visible (CUDA_VISIBLE_DEVICES={visible})"
            )));
        }
        let ctx = CudaContext::new(local_rank)
            .map_err(|e| GpuError::Setup(format!("cannot open GPU {local_rank}: {e:?}")))?;
        // SAFETY: before any allocation; this engine uses one stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(run_err("cannot create a stream"))?;
        let name = ctx.name().unwrap_or_else(|_| "GPU".into());
        let total_mem = ctx.total_mem().map_err(run_err("total memory"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(run_err("compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let sms = ctx
            .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(run_err("multiprocessor count"))? as usize;
        let include = libs::include_dir().map_err(|e| GpuError::Setup(e.to_string()))?;
        let mut funcs = HashMap::new();
        for (mname, src) in nvrtc::MODULES {
            let img = nvrtc::compile(mname, &nvrtc::full_source(src), &arch, &include)
                .map_err(|e| GpuError::Setup(e.to_string()))?;
            // SAFETY: a CUBIN image produced by NVRTC for this GPU's architecture.
            let module = unsafe { drv::module::load_data(img.cubin.as_ptr() as *const c_void) }
                .map_err(run_err("loading a kernel module"))?;
            for f in kernel_names(src) {
                let c = CString::new(f.as_str()).expect("kernel names have no NUL");
                // SAFETY: module is loaded and stays loaded for the process.
                let func = unsafe { drv::module::get_function(module, c) }
                    .map_err(|e| GpuError::Run(format!("kernel {f} missing: {e:?}")))?;
                funcs.insert(f, func);
            }
        }
        let blas = blas::create_handle()
            .map_err(|e| GpuError::Setup(format!("cuBLAS did not start: {e:?}")))?;
        // SAFETY: a fresh handle and this context's stream.
        unsafe { blas::set_stream(blas, stream.cu_stream() as blas_sys::cudaStream_t) }
            .map_err(|e| GpuError::Run(format!("cublasSetStream: {e:?}")))?;
        let mut gpu = Gpu {
            ordinal: local_rank,
            name,
            total_mem,
            sms,
            blas,
            funcs,
            blas_workspace: DevBuf { ptr: 0, bytes: 0 },
            lt: None,
            lt_flush: DevBuf { ptr: 0, bytes: 0 },
            profile: profile::Profile::from_knobs(&ctx),
            stream,
            ctx,
        };
        // cuBLAS gets its workspace up front: it may not allocate while a CUDA graph
        // is being captured.
        gpu.blas_workspace = gpu.alloc(BLAS_WORKSPACE)?;
        // SAFETY: the workspace lives as long as the handle (field of the same Gpu).
        let st = unsafe {
            blas_sys::cublasSetWorkspace_v2(
                blas,
                gpu.blas_workspace.ptr as *mut c_void,
                BLAS_WORKSPACE,
            )
        };
        if st != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(GpuError::Run(format!("cublasSetWorkspace: {st:?}")));
        }
        gpu.lt_flush = gpu.alloc(L2_FLUSH)?;
        gpu.lt = lt::Lt::new(
            gpu.blas_workspace.ptr,
            BLAS_WORKSPACE,
            (gpu.lt_flush.ptr, L2_FLUSH),
        );
        Ok(gpu)
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(run_err("cuMemGetInfo"))
    }

    /// Allocates `bytes` (zeroed).
    pub fn alloc(&self, bytes: usize) -> Result<DevBuf> {
        if bytes == 0 {
            return Ok(DevBuf { ptr: 0, bytes: 0 });
        }
        self.ctx
            .bind_to_thread()
            .map_err(run_err("binding the context"))?;
        // SAFETY: plain device allocation; freed by DevBuf's drop.
        let ptr = unsafe { drv::malloc_sync(bytes) }.map_err(|e| {
            let (free, total) = self.mem_info().unwrap_or((0, 0));
            GpuError::Setup(format!(
                "out of GPU memory allocating {:.2} GiB on GPU {} ({:.2} GiB free of {:.2} GiB): {e:?}",
                gib(bytes),
                self.ordinal,
                gib(free),
                gib(total)
            ))
        })?;
        // SAFETY: `ptr` holds `bytes` bytes. On this rank's stream: the legacy stream
        // does not order with a non-blocking one.
        unsafe { drv::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }
            .map_err(run_err("memset"))?;
        Ok(DevBuf { ptr, bytes })
    }

    /// Copies host bytes to device address `dst`, ordered on this rank's stream. The
    /// host memory is pageable, so the driver stages it before returning and `src`
    /// may be dropped at once. (A plain synchronous copy would go through the legacy
    /// stream, which the non-blocking stream does not wait for: kernels could read
    /// the buffer before the data lands.)
    pub fn upload<T>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: the caller sized `dst` for `src`.
        unsafe { drv::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(run_err("host to device copy"))
    }

    /// Copies device bytes at `src` into `dst` (after the stream's work is done).
    pub fn download<T>(&self, dst: &mut [T], src: u64) -> Result<()> {
        self.sync()?;
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: the caller sized `dst` for the bytes at `src`.
        unsafe { drv::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(run_err("device to host copy"))?;
        self.sync()
    }

    /// Waits for the stream.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(run_err("stream synchronize"))?;
        if let Some(p) = &self.profile {
            p.collect();
        }
        Ok(())
    }

    /// Runs `f` (work enqueued on the stream); with `RRANK_PROFILE=1` timed under
    /// the label `label` gives its result.
    pub fn timed<R>(&self, f: impl FnOnce() -> R, label: impl FnOnce(&R) -> String) -> R {
        match &self.profile {
            Some(p) => p.time(&self.stream, f, label),
            None => f(),
        }
    }

    /// Launches kernel `name` on the stream.
    pub fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, args: Args) -> Result<()> {
        self.timed(
            || self.launch_now(name, grid, block, 0, args),
            |_| name.to_string(),
        )
    }

    fn launch_now(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        args: Args,
    ) -> Result<()> {
        let f = *self
            .funcs
            .get(name)
            .ok_or_else(|| GpuError::Run(format!("no kernel named {name}")))?;
        let mut slots = args.slots;
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: the argument list matches the kernel's signature (checked by the
        // GPU tests); pointers are live device allocations.
        unsafe {
            drv::launch_kernel(
                f,
                grid,
                (block, 1, 1),
                shared,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| GpuError::Run(format!("launching {name}: {e:?}")))
    }

    /// A grid-stride elementwise launch over `n` elements.
    pub fn launch_1d(&self, name: &str, n: usize, args: Args) -> Result<()> {
        let blocks = n.div_ceil(256).clamp(1, 65535) as u32;
        self.launch(name, (blocks, 1, 1), 256, args)
    }

    /// The GEMV kernel compiled for the smallest row count of 1, 2, 4, 8 that holds `m`.
    fn gemv(&self, p: &Product) -> Result<()> {
        let rows = [1, 2, 4, 8].into_iter().find(|&r| r >= p.m).unwrap_or(8);
        self.launch(
            &format!("gemv{rows}_{}", p.dt.suffix()),
            (p.n.div_ceil(8) as u32, 1, 1),
            256,
            Args::new()
                .ptr(p.x)
                .ptr(p.w)
                .ptr(p.y)
                .i32(p.m as i32)
                .i32(p.n as i32)
                .i32(p.k as i32),
        )
    }

    /// Whether batch-1 products may take the GEMV kernels with a fused input
    /// ([`Gpu::gemv_fused`]): 16-bit weights and rows of `k` elements (a multiple of 8)
    /// that fit the kernel's shared memory.
    pub fn gemv_fusable(&self, dt: DType, k: usize) -> bool {
        dt != DType::F32 && k.is_multiple_of(8) && k * dt.size() <= FUSED_SMEM_MAX
    }

    /// `out[n] = input · w[n, k]ᵀ` for one token row whose input the kernel makes
    /// itself (kernels/gemv.cu's gemv_pro_impl): [`Fused::Norm`] `rms_norm(x [+ y]) · nw`
    /// (with `y`, `x + y` is also written to `xo`), or [`Fused::Mlp`] `act(gate) · up`
    /// of the gate|up row `x`. Pointers 16-byte aligned; see [`Gpu::gemv_fusable`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_fused(
        &self,
        kind: Fused,
        dt: DType,
        n: usize,
        k: usize,
        (x, y, xo, nw): (u64, u64, u64, u64),
        w: u64,
        out: u64,
        eps: f32,
    ) -> Result<()> {
        let stem = match kind {
            Fused::Norm => "gemv_norm",
            Fused::Mlp(Activation::Silu) => "gemv_silu",
            Fused::Mlp(Activation::Gelu) => "gemv_gelu",
            Fused::Mlp(Activation::GeluTanh) => "gemv_gelu_tanh",
        };
        let name = format!("{stem}_{}", dt.suffix());
        let args = Args::new()
            .ptr(x)
            .ptr(y)
            .ptr(xo)
            .ptr(nw)
            .ptr(w)
            .ptr(out)
            .i32(n as i32)
            .i32(k as i32)
            .f32(eps);
        self.timed(
            || {
                self.launch_now(
                    &name,
                    (n.div_ceil(8) as u32, 1, 1),
                    256,
                    (k * dt.size()) as u32,
                    args,
                )
            },
            |_| profile::gemm_label(stem, 1, n, k),
        )
    }

    /// `y[m, n] = x[m, k] · w[n, k]ᵀ` (row-major, the weight as stored by HF), f32 accumulate.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        dt: DType,
        m: usize,
        n: usize,
        k: usize,
        x: u64,
        w: u64,
        y: u64,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let p = Product {
            dt,
            m,
            n,
            k,
            x,
            w,
            y,
        };
        self.timed(
            || self.gemm_now(&p),
            |r| profile::gemm_label(r.as_ref().map_or("failed", |p| p), m, n, k),
        )
        .map(|_| ())
    }

    /// [`Gpu::gemm`] on the path the shape and the tuner pick; returns that path.
    fn gemm_now(&self, p: &Product) -> Result<&'static str> {
        let &Product {
            dt,
            m,
            n,
            k,
            x,
            w,
            y,
        } = p;
        // Decode steps (a few token rows, 16-bit weights) may take the weight-streaming
        // GEMV kernel: always for one row (batch-1 decode: on H100, GEMV for every
        // product decodes the 8B shape faster in CUDA graphs than the tuner's picks,
        // 151.0 against 146.8 tok/s), and for 2-8 rows where the cuBLASLt tuner timed it
        // faster than every cuBLASLt candidate for the shape.
        let gemv_ok =
            m <= 8 && dt != DType::F32 && k.is_multiple_of(8) && (x | w | y).is_multiple_of(16);
        let gemv = || self.gemv(p).is_ok();
        if gemv_ok && m == 1 {
            return self.gemv(p).map(|_| "gemv");
        }
        if m <= LT_MAX_M
            && dt != DType::F32
            && let Some(lt) = &self.lt
        {
            let candidate: Option<&dyn Fn() -> bool> = gemv_ok.then_some(&gemv);
            if let Some(path) = lt.gemm(&self.ctx, &self.stream, p, candidate) {
                return Ok(path);
            }
        }
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: buffers sized by the caller; column-major view: yᵀ = w · xᵀ.
        unsafe {
            blas::gemm_ex(
                self.blas,
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                dt.blas(),
                k as i32,
                x as *const c_void,
                dt.blas(),
                k as i32,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                dt.blas(),
                n as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| GpuError::Run(format!("cuBLAS GEMM {m}x{n}x{k}: {e:?}")))?;
        Ok("blas")
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            let _ = self.stream.synchronize();
            let report = p.report();
            crate::eline!(
                "rrank: kernel profile of GPU {} (RRANK_PROFILE=1, eager steps):\n{}",
                self.ordinal,
                report.trim_end()
            );
        }
        // SAFETY: the handle was created in open and is destroyed once.
        let _ = unsafe { blas::destroy_handle(self.blas) };
    }
}

/// Names of the `extern "C" __global__` kernels a module defines, from the
/// instantiation macros: `#define X(S, T) ... void name_##S(` instantiated by
/// `RR_FOR_TYPES(X)` (f32, bf16, f16) or `RR_FOR_16BIT(X)` (bf16, f16).
pub fn kernel_names(src: &str) -> Vec<String> {
    let mut stems: Vec<(String, String)> = vec![];
    let mut define = String::new();
    for line in src.lines() {
        let line = line.trim_start();
        if let Some(d) = line.strip_prefix("#define ") {
            define = d.split('(').next().unwrap_or("").trim().to_string();
        }
        // `__global__ void name(` or `__global__ __launch_bounds__(N) void name(`
        let Some(rest) = line
            .split("__global__ ")
            .nth(1)
            .and_then(|a| a.split("void ").nth(1))
        else {
            continue;
        };
        if let Some(base) = rest.split('(').next() {
            stems.push((define.clone(), base.trim().to_string()));
        }
    }
    // Macros instantiated for the 16-bit types only.
    let only16: Vec<&str> = src
        .lines()
        .filter_map(|l| l.trim().strip_prefix("RR_FOR_16BIT("))
        .filter_map(|l| l.strip_suffix(')'))
        .collect();
    let types = |define: &str| -> &'static [&'static str] {
        if only16.contains(&define) {
            &["bf16", "f16"]
        } else {
            &["f32", "bf16", "f16"]
        }
    };
    let mut out = vec![];
    for (define, base) in stems {
        if let Some(stem) = base.strip_suffix("##_##DS") {
            // convert_##SS##_##DS
            let stem = stem.trim_end_matches("##SS");
            for s in ["f32", "bf16", "f16"] {
                for d in ["f32", "bf16", "f16"] {
                    out.push(format!("{stem}{s}_{d}"));
                }
            }
        } else if let Some(stem) = base.strip_suffix("##S") {
            for s in types(&define) {
                out.push(format!("{stem}{s}"));
            }
        }
    }
    out
}

/// Bytes as GiB.
pub fn gib(b: usize) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels of module `name` (nvrtc::MODULES).
    fn module(name: &str) -> Vec<String> {
        let (_, src) = nvrtc::MODULES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no module {name}"));
        kernel_names(src)
    }

    fn has(kernels: &[String], k: &str) -> bool {
        kernels.iter().any(|x| x == k)
    }

    #[test]
    fn every_kernel_is_found_in_the_sources() {
        let elementwise = module("elementwise");
        assert!(has(&elementwise, "convert_bf16_f32"), "{elementwise:?}");
        for k in [
            "silu_mul_f32",
            "gelu_mul_bf16",
            "gelu_tanh_mul_f16",
            "add_bias_f16",
            "add_bf16",
        ] {
            assert!(has(&elementwise, k), "{k}: {elementwise:?}");
        }
        // convert (9), act_mul × 3 activations, add_bias and add, × 3 types.
        assert_eq!(elementwise.len(), 9 + 5 * 3, "{elementwise:?}");

        let rows = module("norm_rope");
        for k in [
            "embed_f32",
            "rms_norm_bf16",
            "rope_kv_bf16",
            "gather_rows_f16",
        ] {
            assert!(has(&rows, k), "{k}: {rows:?}");
        }
        assert_eq!(rows.len(), 4 * 3, "{rows:?}");

        let decode = module("attention_decode");
        for k in [
            "attention_f16",
            "attention_decode4_bf16",
            "attention_merge_f32",
        ] {
            assert!(has(&decode, k), "{k}: {decode:?}");
        }
        // attention and attention_merge × 3 types, attention_decode × 4 sizes × 3.
        assert_eq!(decode.len(), 2 * 3 + 4 * 3, "{decode:?}");

        let prefill = module("attention_prefill");
        assert!(has(&prefill, "attention_prefill_bf16"), "{prefill:?}");
        assert!(has(&prefill, "attention_prefill_tc128_bf16"));
        assert!(!has(&prefill, "attention_prefill_tc128_f32"));
        // attention_prefill × 3 types, attention_prefill_tc × 2 head sizes × 2 16-bit types.
        assert_eq!(prefill.len(), 3 + 2 * 2, "{prefill:?}");

        let gemv = module("gemv");
        assert!(has(&gemv, "gemv1_bf16"), "{gemv:?}");
        assert!(has(&gemv, "gemv_silu_f16"));
        assert!(has(&gemv, "gemv_gelu_tanh_bf16"));
        assert!(!has(&gemv, "gemv_norm_f32"));
        // gemv × 4 sizes × 3 types, gemv_norm/gemv_silu/gemv_gelu/gemv_gelu_tanh × 2.
        assert_eq!(gemv.len(), 4 * 3 + 4 * 2, "{gemv:?}");

        // The forward's kernels all told: as many as one module of them held.
        assert_eq!(
            elementwise.len() + rows.len() + decode.len() + prefill.len() + gemv.len(),
            9 + 3 * 12 + 2 * 3 * 4 + 2 * 2 + 4 * 2
        );
        assert_eq!(
            module("sample"),
            ["sample_f32", "sample_bf16", "sample_f16"]
        );
        assert_eq!(
            module("allreduce"),
            ["all_reduce_f32", "all_reduce_bf16", "all_reduce_f16"]
        );
        // No kernel name is defined by two modules (the driver looks each up by name).
        let mut all: Vec<String> = nvrtc::MODULES
            .iter()
            .flat_map(|(_, src)| kernel_names(src))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
