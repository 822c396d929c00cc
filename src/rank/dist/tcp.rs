//! The CPU ranks' communicator: a full mesh of TCP connections, set up through the
//! TCPStore (each rank publishes `rrank/<attempt>/comm/<rank>` = `ip:port`, connects
//! to every higher rank and accepts every lower one). Messages are a `u64` length and
//! the bytes.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use super::{Comm, RankEnv};
use crate::store::Client;

/// TCP mesh between all ranks of the job.
pub struct TcpComm {
    rank: usize,
    peers: Vec<Option<TcpStream>>,
}

/// The address other ranks reach this host by: the local end of a route to the master.
fn advertised_ip(master: &str, port: u16) -> IpAddr {
    let target = format!("{master}:{port}");
    let probe = || -> io::Result<IpAddr> {
        let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&target)?
            .next()
            .ok_or_else(|| io::Error::other("no address"))?;
        let bind = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let s = UdpSocket::bind(bind)?;
        s.connect(addr)?;
        Ok(s.local_addr()?.ip())
    };
    probe().unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

impl TcpComm {
    /// Builds the mesh. `store` is this rank's store connection.
    pub fn connect(env: &RankEnv, store: &mut Client) -> Result<TcpComm, String> {
        let ip = advertised_ip(&env.master_addr, env.master_port);
        let listener = TcpListener::bind((
            if ip.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                ip
            },
            0,
        ))
        .map_err(|e| format!("cannot listen for peers: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let key = |r: usize| format!("rrank/{}/comm/{r}", env.attempt);
        let shown = match ip {
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            IpAddr::V4(v4) => format!("{v4}:{port}"),
        };
        store
            .set(&key(env.rank), shown.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut peers: Vec<Option<TcpStream>> = (0..env.world_size).map(|_| None).collect();
        for (r, slot) in peers.iter_mut().enumerate().skip(env.rank + 1) {
            let addr = String::from_utf8_lossy(
                &store
                    .get(&key(r))
                    .map_err(|e| format!("waiting for rank {r}'s address: {e}"))?,
            )
            .into_owned();
            let mut s = TcpStream::connect(&addr)
                .map_err(|e| format!("cannot connect to rank {r} at {addr}: {e}"))?;
            s.set_nodelay(true).ok();
            s.write_all(&(env.rank as u64).to_le_bytes())
                .map_err(|e| e.to_string())?;
            *slot = Some(s);
        }
        listener.set_nonblocking(false).ok();
        for _ in 0..env.rank {
            let (mut s, _) = listener
                .accept()
                .map_err(|e| format!("accepting a peer: {e}"))?;
            s.set_nodelay(true).ok();
            s.set_read_timeout(Some(Duration::from_secs(60))).ok();
            let mut id = [0u8; 8];
            s.read_exact(&mut id)
                .map_err(|e| format!("reading a peer's rank: {e}"))?;
            s.set_read_timeout(None).ok();
            let r = u64::from_le_bytes(id) as usize;
            if r >= env.rank || peers[r].is_some() {
                return Err(format!("unexpected peer rank {r}"));
            }
            peers[r] = Some(s);
        }
        Ok(TcpComm {
            rank: env.rank,
            peers,
        })
    }

    fn peer(&mut self, r: usize) -> io::Result<&mut TcpStream> {
        self.peers
            .get_mut(r)
            .and_then(Option::as_mut)
            .ok_or_else(|| io::Error::other(format!("no connection to rank {r}")))
    }
}

impl Comm for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.peers.len()
    }
    fn send(&mut self, to: usize, data: &[u8]) -> io::Result<()> {
        let s = self.peer(to)?;
        s.write_all(&(data.len() as u64).to_le_bytes())?;
        s.write_all(data)
    }
    fn recv(&mut self, from: usize) -> io::Result<Vec<u8>> {
        let s = self.peer(from)?;
        let mut n = [0u8; 8];
        s.read_exact(&mut n)
            .map_err(|e| io::Error::new(e.kind(), format!("rank {from} went away: {e}")))?;
        let mut b = vec![0u8; u64::from_le_bytes(n) as usize];
        s.read_exact(&mut b)?;
        Ok(b)
    }
}
