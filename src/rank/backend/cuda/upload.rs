//! Weight upload at start-up through pinned host buffers: each 64 MiB piece of the
//! memory-mapped checkpoint is copied into one of two page-locked buffers by all of
//! rayon's threads at once (so the page-cache faults and copies run in parallel),
//! then sent with an asynchronous DMA while the next piece fills the other buffer.
//! (A copy straight from the map would go through the driver's own staging buffer
//! on one thread, page faults included.)

use std::ffi::c_void;

use cudarc::driver::{result as drv, sys as drv_sys};
use rayon::prelude::*;

use super::{Gpu, GpuError, Result, run_err};

/// Bytes per piece, and per pinned buffer.
const PIECE: usize = 64 << 20;
/// Bytes each thread copies at a time within a piece.
const SPLIT: usize = 1 << 20;

/// Two pinned buffers and the events that say when their last DMA finished.
pub struct Stager {
    bufs: [*mut u8; 2],
    events: [drv_sys::CUevent; 2],
    next: usize,
    /// Bytes sent, for the start-up report.
    pub bytes: usize,
}

impl Stager {
    /// Allocates the pinned buffers on `gpu`'s context.
    pub fn new(gpu: &Gpu) -> Result<Stager> {
        gpu.ctx
            .bind_to_thread()
            .map_err(run_err("binding the context"))?;
        let mut bufs = [std::ptr::null_mut(); 2];
        let mut events = [std::ptr::null_mut(); 2];
        for (b, e) in bufs.iter_mut().zip(events.iter_mut()) {
            // SAFETY: plain page-locked allocation, freed in Drop.
            *b = unsafe { drv::malloc_host(PIECE, 0) }.map_err(|e| {
                GpuError::Setup(format!("pinning {PIECE} bytes of host memory: {e:?}"))
            })? as *mut u8;
            *e = drv::event::create(drv_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(run_err("creating an event"))?;
        }
        Ok(Stager {
            bufs,
            events,
            next: 0,
            bytes: 0,
        })
    }

    /// Copies `src` to device address `dst`, ordered on `gpu`'s stream. Returns once
    /// the last piece is queued; `src` may then be dropped.
    pub fn upload(&mut self, gpu: &Gpu, dst: u64, src: &[u8]) -> Result<()> {
        for (i, piece) in src.chunks(PIECE).enumerate() {
            let b = self.next;
            self.next ^= 1;
            // SAFETY: an event of this context; waits for the DMA that last read buffer b
            // (an event never recorded counts as done).
            unsafe { drv_sys::cuEventSynchronize(self.events[b]) }
                .result()
                .map_err(run_err("waiting for a weight copy"))?;
            // SAFETY: buffer b holds PIECE bytes and no DMA reads it now.
            let host = unsafe { std::slice::from_raw_parts_mut(self.bufs[b], piece.len()) };
            host.par_chunks_mut(SPLIT)
                .zip(piece.par_chunks(SPLIT))
                .for_each(|(d, s)| d.copy_from_slice(s));
            let at = dst + (i * PIECE) as u64;
            // SAFETY: pinned source of piece.len() bytes, destination sized by the caller;
            // the buffer is not touched again until events[b] completes.
            unsafe {
                drv_sys::cuMemcpyHtoDAsync_v2(
                    at,
                    host.as_ptr() as *const c_void,
                    piece.len(),
                    gpu.stream.cu_stream(),
                )
                .result()
                .map_err(run_err("host to device copy"))?;
                drv::event::record(self.events[b], gpu.stream.cu_stream())
                    .map_err(run_err("recording an event"))?;
            }
            self.bytes += piece.len();
        }
        Ok(())
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        for (&b, &e) in self.bufs.iter().zip(&self.events) {
            // SAFETY: created in new(); the DMA reading b is waited for before b is freed.
            unsafe {
                let _ = drv_sys::cuEventSynchronize(e);
                let _ = drv::event::destroy(e);
                let _ = drv::free_host(b as *mut c_void);
            }
        }
    }
}
