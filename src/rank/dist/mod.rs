//! Where this rank sits and how it talks to the others: the env contract
//! (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; a
//! single rank when unset), the TP × PP placement, and the [`Comm`] trait with its
//! TCP implementation for CPU ranks (NCCL implements it on GPUs).
//!
//! Global rank = pp_rank · tp + tp_rank, so each pipeline stage is a contiguous
//! block of ranks (vLLM's layout).

pub mod tcp;

use std::io;

/// The launcher's env contract.
#[derive(Debug, Clone)]
pub struct RankEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchelastic's restart count (keys of a new attempt must not meet old ones).
    pub attempt: u32,
    /// A launcher hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`).
    pub agent_store: bool,
}

impl RankEnv {
    /// Reads the contract; with none of it set, one rank alone.
    pub fn from_env() -> Result<RankEnv, String> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(RankEnv {
                rank: 0,
                world_size: 1,
                local_rank: 0,
                local_world_size: 1,
                master_addr: "127.0.0.1".into(),
                master_port: 0,
                attempt: 0,
                agent_store: false,
            });
        };
        let num = |k: &str, v: Option<String>| -> Result<usize, String> {
            let v = v.ok_or_else(|| format!("{k} is not set but WORLD_SIZE is; start rrank with rrun/torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"))?;
            v.parse().map_err(|_| format!("{k}={v:?} is not a number"))
        };
        let world_size = num("WORLD_SIZE", Some(world))?;
        let rank = num("RANK", get("RANK"))?;
        if rank >= world_size {
            return Err(format!("RANK={rank} is not below WORLD_SIZE={world_size}"));
        }
        let master_port = num("MASTER_PORT", get("MASTER_PORT"))?;
        Ok(RankEnv {
            rank,
            world_size,
            local_rank: get("LOCAL_RANK")
                .and_then(|v| v.parse().ok())
                .unwrap_or(rank),
            local_world_size: get("LOCAL_WORLD_SIZE")
                .and_then(|v| v.parse().ok())
                .unwrap_or(world_size),
            master_addr: get("MASTER_ADDR").ok_or(
                "MASTER_ADDR is not set but WORLD_SIZE is; start rrank with rrun/torchrun",
            )?,
            master_port: u16::try_from(master_port)
                .map_err(|_| format!("MASTER_PORT={master_port} is not a port"))?,
            attempt: get("TORCHELASTIC_RESTART_COUNT")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            agent_store: get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
        })
    }
}

/// This rank's coordinates in the TP × PP grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub tp: usize,
    pub pp: usize,
    pub rank: usize,
}

impl Placement {
    pub fn tp_rank(&self) -> usize {
        self.rank % self.tp
    }
    pub fn pp_rank(&self) -> usize {
        self.rank / self.tp
    }
    /// The ranks of this rank's TP group, in TP order.
    pub fn tp_group(&self) -> Vec<usize> {
        let base = self.pp_rank() * self.tp;
        (base..base + self.tp).collect()
    }
    pub fn first_stage(&self) -> bool {
        self.pp_rank() == 0
    }
    pub fn last_stage(&self) -> bool {
        self.pp_rank() + 1 == self.pp
    }
    /// The same TP rank in the next / previous stage.
    pub fn next_stage(&self) -> usize {
        self.rank + self.tp
    }
    pub fn prev_stage(&self) -> usize {
        self.rank - self.tp
    }
    /// The rank that samples: TP rank 0 of the last stage.
    pub fn sampler(&self) -> usize {
        (self.pp - 1) * self.tp
    }
}

fn f32s_to_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn bytes_to_f32s(b: &[u8], out: &mut [f32]) -> io::Result<()> {
    if b.len() != out.len() * 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected {} floats, got {} bytes", out.len(), b.len()),
        ));
    }
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
        *o = f32::from_le_bytes(c.try_into().unwrap());
    }
    Ok(())
}

/// Point-to-point messages between ranks, and the collectives built on them.
/// Collectives reduce in group order on the group's first rank, so every rank
/// ends with bit-identical results.
pub trait Comm {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    fn send(&mut self, to: usize, data: &[u8]) -> io::Result<()>;
    fn recv(&mut self, from: usize) -> io::Result<Vec<u8>>;

    /// Sums `data` over `group` (every member calls it with the same group).
    fn all_reduce_sum(&mut self, group: &[usize], data: &mut [f32]) -> io::Result<()> {
        if group.len() <= 1 {
            return Ok(());
        }
        let leader = group[0];
        if self.rank() == leader {
            let mut part = vec![0f32; data.len()];
            for &r in &group[1..] {
                bytes_to_f32s(&self.recv(r)?, &mut part)?;
                for (d, p) in data.iter_mut().zip(&part) {
                    *d += *p;
                }
            }
            let b = f32s_to_bytes(data);
            for &r in &group[1..] {
                self.send(r, &b)?;
            }
        } else {
            self.send(leader, &f32s_to_bytes(data))?;
            bytes_to_f32s(&self.recv(leader)?, data)?;
        }
        Ok(())
    }

    /// Concatenates every member's `local` in group order (members may differ in length).
    fn all_gather(&mut self, group: &[usize], local: &[f32]) -> io::Result<Vec<Vec<f32>>> {
        if group.len() <= 1 {
            return Ok(vec![local.to_vec()]);
        }
        let leader = group[0];
        let parts: Vec<Vec<u8>> = if self.rank() == leader {
            let mut parts = vec![f32s_to_bytes(local)];
            for &r in &group[1..] {
                parts.push(self.recv(r)?);
            }
            let mut all = Vec::new();
            for p in &parts {
                all.extend_from_slice(&(p.len() as u64).to_le_bytes());
                all.extend_from_slice(p);
            }
            for &r in &group[1..] {
                self.send(r, &all)?;
            }
            parts
        } else {
            self.send(leader, &f32s_to_bytes(local))?;
            let all = self.recv(leader)?;
            let mut parts = Vec::new();
            let mut at = 0;
            while at + 8 <= all.len() {
                let n = u64::from_le_bytes(all[at..at + 8].try_into().unwrap()) as usize;
                parts.push(all[at + 8..at + 8 + n].to_vec());
                at += 8 + n;
            }
            parts
        };
        parts
            .iter()
            .map(|p| {
                let mut v = vec![0f32; p.len() / 4];
                bytes_to_f32s(p, &mut v).map(|_| v)
            })
            .collect()
    }

    /// `root` sends `data` to every other member of `group`; returns it everywhere.
    fn broadcast(&mut self, group: &[usize], root: usize, data: Vec<u8>) -> io::Result<Vec<u8>> {
        if self.rank() == root {
            for &r in group.iter().filter(|&&r| r != root) {
                self.send(r, &data)?;
            }
            Ok(data)
        } else {
            self.recv(root)
        }
    }

    /// Sends f32s to one rank.
    fn send_f32(&mut self, to: usize, data: &[f32]) -> io::Result<()> {
        self.send(to, &f32s_to_bytes(data))
    }

    /// Receives f32s from one rank into `out` (the length must match).
    fn recv_f32(&mut self, from: usize, out: &mut [f32]) -> io::Result<()> {
        let b = self.recv(from)?;
        bytes_to_f32s(&b, out)
    }

    /// Everyone in `group` reaches this point before anyone leaves it.
    fn barrier(&mut self, group: &[usize]) -> io::Result<()> {
        let mut x = [0f32];
        self.all_reduce_sum(group, &mut x)
    }
}

/// The communicator of a single rank: no peers.
pub struct Solo;

impl Comm for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn send(&mut self, to: usize, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other(format!("single rank has no peer {to}")))
    }
    fn recv(&mut self, from: usize) -> io::Result<Vec<u8>> {
        Err(io::Error::other(format!("single rank has no peer {from}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_grid() {
        let p = Placement {
            tp: 2,
            pp: 2,
            rank: 3,
        };
        assert_eq!((p.tp_rank(), p.pp_rank()), (1, 1));
        assert_eq!(p.tp_group(), vec![2, 3]);
        assert!(p.last_stage() && !p.first_stage());
        assert_eq!((p.prev_stage(), p.sampler()), (1, 2));
    }
}
