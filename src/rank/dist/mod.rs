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

/// Why the env contract cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(
        "{0} is not set but WORLD_SIZE is; start rrank with rrun/torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
    )]
    Missing(&'static str),
    #[error("MASTER_ADDR is not set but WORLD_SIZE is; start rrank with rrun/torchrun")]
    NoMasterAddr,
    #[error("{key}={value:?} is not a number")]
    NotANumber { key: &'static str, value: String },
    #[error("RANK={rank} is not below WORLD_SIZE={world_size}")]
    RankTooLarge { rank: usize, world_size: usize },
    #[error("MASTER_PORT={0} is not a port")]
    NotAPort(usize),
}

impl RankEnv {
    /// Reads the contract; with none of it set, one rank alone.
    pub fn from_env() -> Result<RankEnv, EnvError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the contract from `var` (the process environment in [`RankEnv::from_env`]).
    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<RankEnv, EnvError> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
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
        let num = |key: &'static str, v: Option<String>| -> Result<usize, EnvError> {
            let value = v.ok_or(EnvError::Missing(key))?;
            value
                .parse()
                .map_err(|_| EnvError::NotANumber { key, value })
        };
        let world_size = num("WORLD_SIZE", Some(world))?;
        let rank = num("RANK", get("RANK"))?;
        if rank >= world_size {
            return Err(EnvError::RankTooLarge { rank, world_size });
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
            master_addr: get("MASTER_ADDR").ok_or(EnvError::NoMasterAddr)?,
            master_port: u16::try_from(master_port).map_err(|_| EnvError::NotAPort(master_port))?,
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

fn invalid_data(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

/// Fills `out` from little-endian f32 bytes; the lengths must match exactly.
fn bytes_to_f32s(b: &[u8], out: &mut [f32]) -> io::Result<()> {
    if b.len() != out.len() * 4 {
        return Err(invalid_data(format!(
            "expected {} floats, got {} bytes",
            out.len(),
            b.len()
        )));
    }
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(())
}

/// Little-endian f32 bytes of any whole number of floats.
fn f32s_from_bytes(b: &[u8]) -> io::Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(invalid_data(format!(
            "{} bytes are not a whole number of floats",
            b.len()
        )));
    }
    let mut v = vec![0f32; b.len() / 4];
    bytes_to_f32s(b, &mut v)?;
    Ok(v)
}

/// The leader's all-gather message: each part as `[len u64][bytes]`, in group order.
fn join_parts(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut all = Vec::with_capacity(parts.iter().map(|p| 8 + p.len()).sum());
    for p in parts {
        all.extend_from_slice(&(p.len() as u64).to_le_bytes());
        all.extend_from_slice(p);
    }
    all
}

/// Splits [`join_parts`]'s message back into exactly `count` parts; a short,
/// truncated or overlong message is `InvalidData`.
fn split_parts(all: &[u8], count: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut parts = Vec::with_capacity(count);
    let mut rest = all;
    for i in 0..count {
        let Some((len, tail)) = rest.split_first_chunk::<8>() else {
            return Err(invalid_data(format!(
                "all-gather message of {} bytes is truncated in the length of part {i} of {count}",
                all.len()
            )));
        };
        let len = u64::from_le_bytes(*len);
        let Some(part) = usize::try_from(len).ok().and_then(|n| tail.get(..n)) else {
            return Err(invalid_data(format!(
                "all-gather message of {} bytes is truncated in part {i} of {count} ({len} bytes announced, {} left)",
                all.len(),
                tail.len()
            )));
        };
        parts.push(part.to_vec());
        rest = &tail[part.len()..];
    }
    if !rest.is_empty() {
        return Err(invalid_data(format!(
            "all-gather message has {} bytes after its {count} parts",
            rest.len()
        )));
    }
    Ok(parts)
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
            let all = join_parts(&parts);
            for &r in &group[1..] {
                self.send(r, &all)?;
            }
            parts
        } else {
            self.send(leader, &f32s_to_bytes(local))?;
            split_parts(&self.recv(leader)?, group.len())?
        };
        parts.iter().map(|p| f32s_from_bytes(p)).collect()
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

    /// A rank whose peers' messages are scripted; what it sends is kept.
    struct Scripted {
        rank: usize,
        world: usize,
        inbox: Vec<(usize, Vec<u8>)>,
        sent: Vec<(usize, Vec<u8>)>,
    }

    impl Scripted {
        fn new(rank: usize, world: usize, inbox: Vec<(usize, Vec<u8>)>) -> Scripted {
            Scripted {
                rank,
                world,
                inbox,
                sent: vec![],
            }
        }
    }

    impl Comm for Scripted {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world(&self) -> usize {
            self.world
        }
        fn send(&mut self, to: usize, data: &[u8]) -> io::Result<()> {
            self.sent.push((to, data.to_vec()));
            Ok(())
        }
        fn recv(&mut self, from: usize) -> io::Result<Vec<u8>> {
            let i = self
                .inbox
                .iter()
                .position(|(r, _)| *r == from)
                .ok_or_else(|| io::Error::other(format!("nothing scripted from {from}")))?;
            Ok(self.inbox.remove(i).1)
        }
    }

    fn gather_as_follower(msg: Vec<u8>) -> io::Result<Vec<Vec<f32>>> {
        Scripted::new(1, 2, vec![(0, msg)]).all_gather(&[0, 1], &[1.0])
    }

    fn assert_invalid(r: io::Result<impl std::fmt::Debug>, says: &str) {
        let e = r.expect_err("a malformed message must be an error");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }

    #[test]
    fn all_gather_follower_reads_the_leaders_parts() {
        let all = join_parts(&[f32s_to_bytes(&[0.5, 2.0]), f32s_to_bytes(&[1.0])]);
        assert_eq!(
            gather_as_follower(all).unwrap(),
            vec![vec![0.5, 2.0], vec![1.0]]
        );
    }

    #[test]
    fn all_gather_follower_rejects_a_truncated_part() {
        let mut all = join_parts(&[f32s_to_bytes(&[0.5, 2.0]), f32s_to_bytes(&[1.0])]);
        all.truncate(all.len() - 2);
        assert_invalid(gather_as_follower(all), "truncated in part 1 of 2");
    }

    #[test]
    fn all_gather_follower_rejects_a_truncated_length() {
        let mut all = join_parts(&[f32s_to_bytes(&[0.5]), f32s_to_bytes(&[1.0])]);
        all.truncate(12 + 5);
        assert_invalid(
            gather_as_follower(all),
            "truncated in the length of part 1 of 2",
        );
        assert_invalid(gather_as_follower(vec![]), "length of part 0 of 2");
    }

    #[test]
    fn all_gather_follower_rejects_an_impossible_length() {
        let mut all = u64::MAX.to_le_bytes().to_vec();
        all.extend_from_slice(&[0; 8]);
        assert_invalid(gather_as_follower(all), "truncated in part 0 of 2");
    }

    #[test]
    fn all_gather_follower_rejects_extra_parts_and_bytes() {
        let three = join_parts(&[vec![0; 4], vec![0; 4], vec![0; 4]]);
        assert_invalid(gather_as_follower(three), "after its 2 parts");
    }

    #[test]
    fn odd_float_bytes_are_errors() {
        let all = join_parts(&[vec![0; 4], vec![0; 3]]);
        assert_invalid(
            gather_as_follower(all),
            "3 bytes are not a whole number of floats",
        );
        let mut leader = Scripted::new(0, 2, vec![(1, vec![0; 5])]);
        assert_invalid(leader.all_gather(&[0, 1], &[1.0]), "not a whole number");
        let mut x = [0f32; 2];
        assert_invalid(
            Scripted::new(1, 2, vec![(0, vec![0; 7])]).recv_f32(0, &mut x),
            "expected 2 floats, got 7 bytes",
        );
        assert_invalid(
            Scripted::new(0, 2, vec![(1, vec![0; 9])]).all_reduce_sum(&[0, 1], &mut x),
            "expected 2 floats, got 9 bytes",
        );
        assert_invalid(
            Scripted::new(1, 2, vec![(0, vec![0; 3])]).all_reduce_sum(&[0, 1], &mut x),
            "expected 2 floats, got 3 bytes",
        );
    }

    #[test]
    fn all_gather_leader_sends_every_part() {
        let mut leader = Scripted::new(0, 2, vec![(1, f32s_to_bytes(&[3.0]))]);
        let got = leader.all_gather(&[0, 1], &[1.0, 2.0]).unwrap();
        assert_eq!(got, vec![vec![1.0, 2.0], vec![3.0]]);
        let (to, msg) = &leader.sent[0];
        assert_eq!(*to, 1);
        assert_eq!(
            split_parts(msg, 2).unwrap(),
            vec![f32s_to_bytes(&[1.0, 2.0]), f32s_to_bytes(&[3.0])]
        );
    }

    fn env_of(vars: &[(&str, &str)]) -> Result<RankEnv, EnvError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RankEnv::from_lookup(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn env_contract_errors_say_what_is_wrong() {
        assert_eq!(env_of(&[]).unwrap().world_size, 1);
        let full = [
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "29500"),
        ];
        let e = env_of(&full).unwrap();
        assert_eq!((e.rank, e.local_rank, e.master_port), (1, 1, 29500));
        let msg = |vars: &[(&str, &str)]| env_of(vars).unwrap_err().to_string();
        assert!(msg(&full[..1]).starts_with("RANK is not set but WORLD_SIZE is"));
        assert_eq!(
            msg(&[("WORLD_SIZE", "x")]),
            "WORLD_SIZE=\"x\" is not a number"
        );
        assert_eq!(
            msg(&[("WORLD_SIZE", "2"), ("RANK", "2")]),
            "RANK=2 is not below WORLD_SIZE=2"
        );
        assert!(msg(&full[..2]).starts_with("MASTER_PORT is not set"));
        assert!(msg(&[full[0], full[1], full[3]]).starts_with("MASTER_ADDR is not set"));
        assert_eq!(
            msg(&[full[0], full[1], full[2], ("MASTER_PORT", "70000")]),
            "MASTER_PORT=70000 is not a port"
        );
    }
}
