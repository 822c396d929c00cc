//! cuBLASLt for the GEMMs of decode steps (a few token rows against a whole weight
//! matrix, so memory-bound). For these shapes `cublasGemmEx`'s default pick leaves a
//! good part of the memory bandwidth unused on H100 (o_proj, 4096×4096, runs at about
//! half the rate of the large products). Here each shape `(dtype, m, n, k)` gets a plan:
//! the heuristic's candidate algorithms are timed on the real operands the first time
//! the shape runs outside a CUDA-graph capture, and the fastest is kept. Each timed run
//! starts with the L2 cache overwritten: in a decode step every weight matrix comes
//! from device memory, and timing repeats of one matrix that stays in the 50 MB L2
//! picks algorithms that are slower on streamed weights. A shape first met during a
//! capture takes the heuristic's first choice untimed. Any failure makes the caller
//! fall back to `cublasGemmEx` for that shape.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::sys as lt;
use cudarc::driver::{CudaContext, CudaStream, result as drv, sys as drv_sys};

use super::{DType, Product};

/// Candidates asked of the heuristic per shape.
const CANDIDATES: usize = 8;
/// Timed runs per candidate (after one untimed), each after an L2 flush.
const REPS: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dt: u8,
    m: usize,
    n: usize,
    k: usize,
}

struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    /// Layouts of the weight (A), the activations (B) and the output (C = D).
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    c: lt::cublasLtMatrixLayout_t,
    /// Fastest first; `tuned` once timed.
    algos: Vec<lt::cublasLtMatmulAlgo_t>,
    tuned: bool,
    /// The caller's GEMV kernel timed faster than every algorithm.
    use_gemv: bool,
    /// The shape runs through cublasGemmEx instead.
    unusable: bool,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created once in `Plan::new`, destroyed once here.
        unsafe {
            lt::cublasLtMatrixLayoutDestroy(self.a);
            lt::cublasLtMatrixLayoutDestroy(self.b);
            lt::cublasLtMatrixLayoutDestroy(self.c);
            lt::cublasLtMatmulDescDestroy(self.desc);
        }
    }
}

fn ok(s: lt::cublasStatus_t) -> Result<(), lt::cublasStatus_t> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(s)
    }
}

fn data_type(dt: DType) -> lt::cudaDataType {
    match dt {
        DType::F32 => lt::cudaDataType::CUDA_R_32F,
        DType::Bf16 => lt::cudaDataType::CUDA_R_16BF,
        DType::F16 => lt::cudaDataType::CUDA_R_16F,
    }
}

impl Plan {
    /// `y[m, n] = x[m, k] · w[n, k]ᵀ` row-major, seen column-major as
    /// `yᵀ (n×m) = op_T(w: k×n) · xᵀ (k×m)`.
    fn new(dt: DType, m: usize, n: usize, k: usize) -> Result<Plan, lt::cublasStatus_t> {
        let ty = data_type(dt);
        let mut desc = std::ptr::null_mut();
        let (mut a, mut b, mut c) = (
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        // SAFETY: out-pointers to locals; the attribute buffer matches its type.
        unsafe {
            ok(lt::cublasLtMatmulDescCreate(
                &mut desc,
                lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                lt::cudaDataType::CUDA_R_32F,
            ))?;
            let trans = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T;
            let set = lt::cublasLtMatmulDescSetAttribute(
                desc,
                lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans as *const _ as *const c_void,
                std::mem::size_of_val(&trans),
            );
            let la = lt::cublasLtMatrixLayoutCreate(&mut a, ty, k as u64, n as u64, k as i64);
            let lb = lt::cublasLtMatrixLayoutCreate(&mut b, ty, k as u64, m as u64, k as i64);
            let lc = lt::cublasLtMatrixLayoutCreate(&mut c, ty, n as u64, m as u64, n as i64);
            let plan = Plan {
                desc,
                a,
                b,
                c,
                algos: vec![],
                tuned: false,
                use_gemv: false,
                unusable: false,
            };
            ok(set)?;
            ok(la)?;
            ok(lb)?;
            ok(lc)?;
            Ok(plan)
        }
    }
}

/// The cuBLASLt handle and this rank's plans (engine thread only).
pub struct Lt {
    handle: lt::cublasLtHandle_t,
    workspace: u64,
    workspace_bytes: usize,
    /// A buffer larger than the L2 cache, overwritten before each timed run.
    flush: (u64, usize),
    plans: RefCell<HashMap<Key, Plan>>,
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.borrow_mut().clear();
        // SAFETY: created in `new`, destroyed once.
        unsafe { lt::cublasLtDestroy(self.handle) };
    }
}

impl Lt {
    /// A handle sharing cuBLAS's workspace (both run in order on one stream);
    /// `flush` is a device buffer larger than the L2 cache.
    pub fn new(workspace: u64, workspace_bytes: usize, flush: (u64, usize)) -> Option<Lt> {
        let mut handle = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        ok(unsafe { lt::cublasLtCreate(&mut handle) }).ok()?;
        Some(Lt {
            handle,
            workspace,
            workspace_bytes,
            flush,
            plans: RefCell::new(HashMap::new()),
        })
    }

    /// Enqueues the product on `stream` and says which path ran it ("lt", or "gemv"
    /// for the caller's kernel); `None` when cuBLASLt cannot do this shape (the caller
    /// then uses cublasGemmEx). `gemv`, when given, launches the caller's
    /// own kernel for the same product: it is timed with the candidates and used
    /// instead where it is the fastest.
    pub fn gemm(
        &self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        p: &Product,
        gemv: Option<&dyn Fn() -> bool>,
    ) -> Option<&'static str> {
        let key = Key {
            dt: p.dt as u8,
            m: p.m,
            n: p.n,
            k: p.k,
        };
        let mut plans = self.plans.borrow_mut();
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => match Plan::new(p.dt, p.m, p.n, p.k) {
                Ok(mut plan) => {
                    plan.algos = self.candidates(&plan);
                    plan.unusable = plan.algos.is_empty();
                    e.insert(plan)
                }
                Err(_) => return None,
            },
        };
        if plan.unusable {
            return None;
        }
        let capturing = stream
            .capture_status()
            .ok()
            .is_none_or(|s| s != drv_sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE);
        if !plan.tuned && !capturing {
            self.tune(plan, ctx, stream, p, gemv);
        }
        if plan.use_gemv
            && let Some(g) = gemv
            && g()
        {
            return Some("gemv");
        }
        let algo = plan.algos.first()?;
        self.run(plan, algo, stream, p).ok().map(|_| "lt")
    }

    fn candidates(&self, p: &Plan) -> Vec<lt::cublasLtMatmulAlgo_t> {
        let mut pref = std::ptr::null_mut();
        // SAFETY: out-pointers and result arrays sized CANDIDATES; descriptors live.
        unsafe {
            if ok(lt::cublasLtMatmulPreferenceCreate(&mut pref)).is_err() {
                return vec![];
            }
            let bytes = self.workspace_bytes;
            lt::cublasLtMatmulPreferenceSetAttribute(
                pref,
                lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &bytes as *const usize as *const c_void,
                std::mem::size_of::<usize>(),
            );
            let mut res: [lt::cublasLtMatmulHeuristicResult_t; CANDIDATES] = std::mem::zeroed();
            let mut count = 0;
            let st = lt::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                p.desc,
                p.a,
                p.b,
                p.c,
                p.c,
                pref,
                CANDIDATES as i32,
                res.as_mut_ptr(),
                &mut count,
            );
            lt::cublasLtMatmulPreferenceDestroy(pref);
            if ok(st).is_err() {
                return vec![];
            }
            res[..count.max(0) as usize]
                .iter()
                .filter(|r| r.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
                .map(|r| r.algo)
                .collect()
        }
    }

    fn run(
        &self,
        plan: &Plan,
        algo: &lt::cublasLtMatmulAlgo_t,
        stream: &Arc<CudaStream>,
        p: &Product,
    ) -> Result<(), lt::cublasStatus_t> {
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: operands sized by the caller for this plan's shape; the workspace
        // is the Gpu's and outlives the call.
        ok(unsafe {
            lt::cublasLtMatmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                p.w as *const c_void,
                plan.a,
                p.x as *const c_void,
                plan.b,
                &beta as *const f32 as *const c_void,
                p.y as *const c_void,
                plan.c,
                p.y as *mut c_void,
                plan.c,
                algo,
                self.workspace as *mut c_void,
                self.workspace_bytes,
                stream.cu_stream() as lt::cudaStream_t,
            )
        })
    }

    /// Times every candidate on the real operands, each run with a cold L2 (y is
    /// overwritten; the caller writes it again right after), and puts the fastest first.
    fn tune(
        &self,
        plan: &mut Plan,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        p: &Product,
        gemv: Option<&dyn Fn() -> bool>,
    ) {
        plan.tuned = true;
        let timing = Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (Ok(start), Ok(end)) = (ctx.new_event(timing), ctx.new_event(timing)) else {
            return;
        };
        // Milliseconds of REPS cold-L2 runs of `run`, or None if a run failed.
        let time = |run: &dyn Fn() -> bool| -> Option<f32> {
            if !run() {
                return None;
            }
            let mut total = 0f32;
            for _ in 0..REPS {
                // SAFETY: the flush buffer holds `flush.1` bytes and is used by nothing else.
                unsafe { drv::memset_d8_async(self.flush.0, 0, self.flush.1, stream.cu_stream()) }
                    .ok()?;
                start.record(stream).ok()?;
                if !run() {
                    return None;
                }
                end.record(stream).ok()?;
                total += start.elapsed_ms(&end).ok()?;
            }
            Some(total)
        };
        let mut best: Option<(f32, usize)> = None;
        for (i, algo) in plan.algos.iter().enumerate() {
            if let Some(ms) = time(&|| self.run(plan, algo, stream, p).is_ok())
                && best.is_none_or(|(b, _)| ms < b)
            {
                best = Some((ms, i));
            }
        }
        if let Some(g) = gemv
            && let Some(ms) = time(g)
        {
            plan.use_gemv = best.is_none_or(|(b, _)| ms < b);
        }
        if let Some((_, i)) = best {
            plan.algos.swap(0, i);
        }
    }
}
