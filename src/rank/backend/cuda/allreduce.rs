//! The custom one-shot all-reduce for small messages among the tensor-parallel ranks
//! of one machine (kernels/allreduce.cu): each rank exports one device buffer with
//! CUDA IPC, the ranks swap the handles through the job's store and map each other's
//! buffers, and a single kernel per all-reduce copies, signals, waits and sums over
//! NVLink. Decode steps' all-reduces (16 KB a token on the 8B) take ~11 µs through
//! NCCL; this path is faster than that, and `RRANK_ALLREDUCE=nccl` turns it off.
//!
//! Setup is all-or-nothing: every member publishes whether it could map every peer
//! (same host, peer access between the GPUs, `cuIpcOpenMemHandle` succeeded), and the
//! group uses the custom path only if all could, so the ranks never disagree on which
//! path a collective takes. Keys: `rrank/<attempt>/ar/<group>/{handle,ok}/<member>`.

use cudarc::driver::{result as drv, sys as drv_sys};

use super::{Args, DType, DevBuf, Gpu, GpuError, Result};
use crate::store::Client;

/// Blocks and threads of the kernel (kernels/allreduce.cu's RR_AR_BLOCKS/THREADS).
const BLOCKS: u32 = 64;
const THREADS: u32 = 512;
/// Most ranks in a group (RR_AR_MAX_RANKS).
pub const MAX_RANKS: usize = 8;
/// Bytes before the data slots: flags, epochs, the table of mapped bases.
const HEADER: usize = 8192;
const BASES_AT: usize = 6144;

/// A group's mapped buffers, ready to reduce messages of up to `max_bytes`.
pub struct CustomAllReduce {
    own: DevBuf,
    /// Held so that the peers' buffers stay mapped as long as the group is used.
    _maps: PeerMaps,
    rank: usize,
    size: usize,
    /// The group's limit (the smallest any member asked for); also the size of each of
    /// the two data slots in every member's buffer.
    pub max_bytes: usize,
}

/// The peers' buffers as mapped here (0 for this rank and for a peer not mapped),
/// closed on drop.
struct PeerMaps(Vec<u64>);

impl Drop for PeerMaps {
    fn drop(&mut self) {
        for &p in self.0.iter().filter(|&&p| p != 0) {
            // SAFETY: mapped by cuIpcOpenMemHandle and closed once.
            let _ = unsafe { drv_sys::cuIpcCloseMemHandle(p) };
        }
    }
}

/// A member's reason for keeping the group on NCCL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rank {rank}: {reason}")]
struct Refusal {
    rank: usize,
    reason: String,
}

/// The group's decision from every member's verdict (`ok <max bytes>`, or why not), in
/// rank order: the smallest limit when all are ok, else the first member's reason.
fn agree(verdicts: &[(usize, String)]) -> std::result::Result<usize, Refusal> {
    let mut max = usize::MAX;
    for (r, v) in verdicts {
        match v.strip_prefix("ok ").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => max = max.min(n),
            None => {
                return Err(Refusal {
                    rank: *r,
                    reason: v.clone(),
                });
            }
        }
    }
    Ok(max)
}

/// Why this rank cannot map peer `rank`'s buffer.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("rank {0}'s handle is garbled")]
    Garbled(usize),
    #[error("rank {rank} is on {theirs}, not {ours}")]
    OtherHost {
        rank: usize,
        theirs: String,
        ours: String,
    },
    #[error("rank {0} has no buffer to share")]
    NoBuffer(usize),
    #[error("rank {0}'s GPU is not visible to this rank")]
    NotVisible(usize),
    #[error("no peer access to rank {0}'s GPU")]
    NoPeerAccess(usize),
    #[error("cuIpcOpenMemHandle for rank {rank}: {code:?}")]
    Open {
        rank: usize,
        code: drv_sys::CUresult,
    },
}

/// The hex form of `b`.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What this rank publishes: `host uuid handle`.
fn announcement(host: &str, uuid: &[u8], handle: &[u8]) -> String {
    format!("{host} {} {}", hex(uuid), hex(handle))
}

fn parse_announcement(s: &str) -> Option<(String, Vec<u8>, Vec<u8>)> {
    let mut it = s.split(' ');
    let (host, uuid, handle) = (it.next()?, unhex(it.next()?)?, unhex(it.next()?)?);
    (it.next().is_none() && handle.len() == 64).then(|| (host.to_string(), uuid, handle))
}

/// The device of this process whose UUID is `uuid`.
fn device_with_uuid(uuid: &[u8]) -> Option<drv_sys::CUdevice> {
    let count = drv::device::get_count().ok()?;
    (0..count).find_map(|i| {
        let d = drv::device::get(i).ok()?;
        let u = drv::device::get_uuid(d).ok()?;
        let bytes: Vec<u8> = u.bytes.iter().map(|&b| b as u8).collect();
        (bytes == uuid).then_some(d)
    })
}

fn store_err(what: String) -> impl Fn(crate::store::client::StoreError) -> GpuError {
    move |e| GpuError::Run(format!("{what}: {e}"))
}

/// This rank's IPC handle for `own` (zeros and the reason if it cannot be exported).
fn export(own: &DevBuf) -> (Vec<u8>, Option<String>) {
    let mut handle = std::mem::MaybeUninit::<drv_sys::CUipcMemHandle>::uninit();
    // SAFETY: `own` is a cuMemAlloc allocation of this context.
    match unsafe { drv_sys::cuIpcGetMemHandle(handle.as_mut_ptr(), own.ptr) } {
        drv_sys::CUresult::CUDA_SUCCESS => {
            // SAFETY: initialised by the successful call.
            let h = unsafe { handle.assume_init() };
            (h.reserved.iter().map(|&c| c as u8).collect(), None)
        }
        e => (vec![0; 64], Some(format!("cuIpcGetMemHandle: {e:?}"))),
    }
}

/// Maps peer `p`'s buffer from its announcement; the address, or why not.
fn map_peer(
    p: usize,
    text: &str,
    host: &str,
    me: drv_sys::CUdevice,
) -> std::result::Result<u64, PeerError> {
    let (phost, puuid, phandle) = parse_announcement(text).ok_or(PeerError::Garbled(p))?;
    if phost != host {
        return Err(PeerError::OtherHost {
            rank: p,
            theirs: phost,
            ours: host.to_string(),
        });
    }
    if phandle.iter().all(|&b| b == 0) {
        return Err(PeerError::NoBuffer(p));
    }
    let dev = device_with_uuid(&puuid).ok_or(PeerError::NotVisible(p))?;
    let mut can = 0;
    // SAFETY: two valid device handles.
    unsafe { drv_sys::cuDeviceCanAccessPeer(&mut can, me, dev) };
    if can == 0 {
        return Err(PeerError::NoPeerAccess(p));
    }
    let mut h = drv_sys::CUipcMemHandle { reserved: [0; 64] };
    for (d, s) in h.reserved.iter_mut().zip(&phandle) {
        *d = *s as core::ffi::c_char;
    }
    let mut ptr = 0;
    // SAFETY: a handle exported by a live peer process on this host.
    let r = unsafe {
        drv_sys::cuIpcOpenMemHandle_v2(
            &mut ptr,
            h,
            drv_sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32,
        )
    };
    if r != drv_sys::CUresult::CUDA_SUCCESS {
        return Err(PeerError::Open { rank: p, code: r });
    }
    Ok(ptr)
}

impl CustomAllReduce {
    /// Sets up group `name` (member `rank` of `size`); `Ok(None)` (with the reason
    /// logged by rank 0) where the custom path cannot serve every member. Every member
    /// takes part in the exchange even when its own setting turns the path off, so
    /// settings that differ between ranks end in NCCL for all of them, never in a wait.
    pub fn setup(
        gpu: &Gpu,
        store: &mut Client,
        attempt: u32,
        name: &str,
        rank: usize,
        size: usize,
    ) -> Result<Option<CustomAllReduce>> {
        if !(2..=MAX_RANKS).contains(&size) {
            return Ok(None);
        }
        let knobs = crate::rank::knobs::get();
        let max_bytes = knobs.allreduce_max.next_multiple_of(16);
        let (own, mine, mut why) = if knobs.allreduce == crate::rank::knobs::AllReduce::Nccl {
            (None, vec![0; 64], Some("RRANK_ALLREDUCE=nccl".to_string()))
        } else {
            let own = gpu.alloc(HEADER + 2 * max_bytes)?;
            gpu.sync()?;
            let (mine, why) = export(&own);
            (Some(own), mine, why)
        };
        let uuid: Vec<u8> = gpu
            .ctx
            .uuid()
            .map_err(|e| GpuError::Run(format!("GPU uuid: {e:?}")))?
            .bytes
            .iter()
            .map(|&b| b as u8)
            .collect();
        let host = crate::host::net::hostname();
        let key = |what: &str, r: usize| format!("rrank/{attempt}/ar/{name}/{what}/{r}");
        store
            .set(
                &key("handle", rank),
                announcement(&host, &uuid, &mine).as_bytes(),
            )
            .map_err(store_err(format!("publishing {}", key("handle", rank))))?;
        let mut peers = PeerMaps(vec![0; size]);
        let me = gpu.ctx.cu_device();
        for p in (0..size).filter(|&p| p != rank) {
            let k = key("handle", p);
            let got = store
                .get(&k)
                .map_err(store_err(format!("waiting for {k}")))?;
            if why.is_none() {
                match map_peer(p, &String::from_utf8_lossy(&got), &host, me) {
                    Ok(ptr) => peers.0[p] = ptr,
                    Err(e) => why = Some(e.to_string()),
                }
            }
        }
        let verdict = why.unwrap_or_else(|| format!("ok {max_bytes}"));
        store
            .set(&key("ok", rank), verdict.as_bytes())
            .map_err(store_err(format!("publishing {}", key("ok", rank))))?;
        let mut verdicts = vec![];
        for p in 0..size {
            let v = if p == rank {
                verdict.clone()
            } else {
                let k = key("ok", p);
                let v = store
                    .get(&k)
                    .map_err(store_err(format!("waiting for {k}")))?;
                String::from_utf8_lossy(&v).into_owned()
            };
            verdicts.push((p, v));
        }
        // (A rank without a buffer never says ok, so `own` is there when all agree.)
        let (max_bytes, own) = match (agree(&verdicts), own) {
            (Ok(max), Some(own)) => (max, own),
            (decision, _) => {
                if rank == 0 {
                    let r = decision.err().map(|e| e.to_string()).unwrap_or_default();
                    crate::eline!(
                        "rrank: tensor-parallel all-reduce through NCCL only (the custom P2P path is off: {r})"
                    );
                }
                return Ok(None);
            }
        };
        let mut bases = [0u64; MAX_RANKS];
        for (p, b) in bases.iter_mut().enumerate().take(size) {
            *b = if p == rank { own.ptr } else { peers.0[p] };
        }
        gpu.upload(own.ptr + BASES_AT as u64, &bases)?;
        gpu.sync()?;
        if rank == 0 {
            crate::eline!(
                "rrank: tensor-parallel all-reduce: custom one-shot over P2P for messages up to {} KiB among {size} GPUs, NCCL above",
                max_bytes >> 10
            );
        }
        Ok(Some(CustomAllReduce {
            own,
            _maps: peers,
            rank,
            size,
            max_bytes,
        }))
    }

    /// Whether a message of `count` elements of `dt` at `buf` takes this path.
    pub fn fits(&self, buf: u64, count: usize, dt: DType) -> bool {
        let bytes = count * dt.size();
        bytes <= self.max_bytes && bytes.is_multiple_of(16) && buf.is_multiple_of(16)
    }

    /// Sums `count` elements at `buf` over the group, in place, on `gpu`'s stream.
    pub fn run(&self, gpu: &Gpu, buf: u64, count: usize, dt: DType) -> Result<()> {
        gpu.launch(
            &format!("all_reduce_{}", dt.suffix()),
            (BLOCKS, 1, 1),
            THREADS,
            Args::new()
                .ptr(buf)
                .ptr(self.own.ptr)
                .i64(count as i64)
                .i64(self.max_bytes as i64)
                .i32(self.rank as i32)
                .i32(self.size as i32),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_garbage_is_refused() {
        let handle: Vec<u8> = (0..64).collect();
        let a = announcement("node-1", &[0xab, 0x01], &handle);
        assert_eq!(
            parse_announcement(&a),
            Some(("node-1".into(), vec![0xab, 0x01], handle))
        );
        assert_eq!(parse_announcement("node-1 abx 00"), None);
        assert_eq!(parse_announcement("node-1 ab 0011"), None, "a short handle");
        assert_eq!(parse_announcement(&format!("{a} extra")), None);
    }

    #[test]
    fn the_group_takes_the_smallest_limit_or_the_first_refusal() {
        let v = |xs: &[&str]| -> Vec<(usize, String)> {
            xs.iter()
                .enumerate()
                .map(|(r, s)| (r, s.to_string()))
                .collect()
        };
        assert_eq!(agree(&v(&["ok 4194304", "ok 1048576"])), Ok(1048576));
        let refusal = |xs: &[&str]| agree(&v(xs)).map_err(|e| e.to_string());
        assert_eq!(
            refusal(&[
                "ok 4194304",
                "RRANK_ALLREDUCE=nccl",
                "no peer access to rank 0's GPU"
            ]),
            Err("rank 1: RRANK_ALLREDUCE=nccl".into())
        );
        assert_eq!(
            refusal(&["ok", "ok 16"]),
            Err("rank 0: ok".into()),
            "a verdict without a limit"
        );
    }
}
