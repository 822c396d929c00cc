//! NCCL communicators for the ranks' GPUs. The first rank of each group makes the
//! 128-byte `ncclUniqueId` and publishes it in the job's store; the others wait for
//! the key and join. Keys (under the store's usual `/` prefix):
//!
//! - `rrank/<attempt>/nccl/world` — every rank (pipeline send/recv between stages);
//! - `rrank/<attempt>/nccl/tp<stage>` — the ranks of one pipeline stage (the
//!   all-reduces and the logits all-gather); with one stage the world comm serves.
//!
//! `<attempt>` is torchelastic's restart count, so a restarted job never joins the
//! ids of an earlier attempt. Every rank creates its communicators in the same order.

use std::ffi::c_void;

use cudarc::nccl::{result, sys};

use super::{DType, Gpu, GpuError, Result};
use crate::store::Client;

fn dt(d: DType) -> sys::ncclDataType_t {
    match d {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::Bf16 => sys::ncclDataType_t::ncclBfloat16,
        DType::F16 => sys::ncclDataType_t::ncclFloat16,
    }
}

fn nccl_err(what: &str) -> impl Fn(result::NcclError) -> GpuError + '_ {
    move |e| GpuError::Run(format!("NCCL {what}: {e:?}"))
}

/// One communicator; used from the engine thread only.
pub struct Nccl {
    comm: sys::ncclComm_t,
    /// The rank's one stream; every collective is enqueued on it.
    stream: sys::cudaStream_t,
    pub size: usize,
}

impl Nccl {
    /// Joins group `name` as member `rank` of `size` (member 0 publishes the id).
    pub fn join(
        gpu: &Gpu,
        store: &mut Client,
        attempt: u32,
        name: &str,
        rank: usize,
        size: usize,
    ) -> Result<Nccl> {
        let key = format!("rrank/{attempt}/nccl/{name}");
        let id = if rank == 0 {
            let id = result::get_uniqueid().map_err(nccl_err("ncclGetUniqueId"))?;
            let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
            store
                .set(&key, &bytes)
                .map_err(|e| GpuError::Run(format!("publishing the NCCL id {key}: {e}")))?;
            id
        } else {
            let bytes = store
                .get(&key)
                .map_err(|e| GpuError::Run(format!("waiting for the NCCL id {key}: {e}")))?;
            if bytes.len() != 128 {
                return Err(GpuError::Run(format!(
                    "the NCCL id under {key} has {} bytes, not 128",
                    bytes.len()
                )));
            }
            let mut id = sys::ncclUniqueId { internal: [0; 128] };
            for (d, s) in id.internal.iter_mut().zip(bytes) {
                *d = s as core::ffi::c_char;
            }
            id
        };
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: a valid id shared by all `size` members; blocks until all join.
        unsafe { result::comm_init_rank(comm.as_mut_ptr(), size as i32, id, rank as i32) }
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(Nccl {
            // SAFETY: initialised by the successful call above.
            comm: unsafe { comm.assume_init() },
            stream: gpu.stream.cu_stream() as sys::cudaStream_t,
            size,
        })
    }

    /// NCCL's version as a number (22809 for 2.28.9).
    pub fn version() -> Option<i32> {
        result::get_nccl_version().ok()
    }

    /// In-place sum over the group.
    pub fn all_reduce_sum(&self, buf: u64, count: usize, d: DType) -> Result<()> {
        if self.size == 1 || count == 0 {
            return Ok(());
        }
        // SAFETY: `buf` holds `count` elements of `d` on this rank's GPU.
        unsafe {
            result::all_reduce(
                buf as *const c_void,
                buf as *mut c_void,
                count,
                dt(d),
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream,
            )
        }
        .map(|_| ())
        .map_err(nccl_err("all-reduce"))
    }

    /// `recv[r * count ..]` = member r's `send[.. count]`.
    pub fn all_gather(&self, send: u64, recv: u64, count: usize, d: DType) -> Result<()> {
        // SAFETY: buffers sized count and count * size.
        unsafe {
            result::all_gather(
                send as *const c_void,
                recv as *mut c_void,
                count,
                dt(d),
                self.comm,
                self.stream,
            )
        }
        .map(|_| ())
        .map_err(nccl_err("all-gather"))
    }

    /// Sends `count` elements to member `peer`.
    pub fn send(&self, buf: u64, count: usize, d: DType, peer: usize) -> Result<()> {
        // SAFETY: `buf` holds `count` elements.
        unsafe {
            result::send(
                buf as *const c_void,
                count,
                dt(d),
                peer as i32,
                self.comm,
                self.stream,
            )
        }
        .map(|_| ())
        .map_err(nccl_err("send"))
    }

    /// Receives `count` elements from member `peer`.
    pub fn recv(&self, buf: u64, count: usize, d: DType, peer: usize) -> Result<()> {
        // SAFETY: `buf` has room for `count` elements.
        unsafe {
            result::recv(
                buf as *mut c_void,
                count,
                dt(d),
                peer as i32,
                self.comm,
                self.stream,
            )
        }
        .map(|_| ())
        .map_err(nccl_err("recv"))
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator was initialised and is released once; abort never
        // waits for peers that may already be gone.
        let _ = unsafe { result::comm_abort(self.comm) };
    }
}
