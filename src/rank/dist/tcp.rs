//! The CPU ranks' communicator: a full mesh of TCP connections, set up through the
//! TCPStore (each rank publishes `rrank/<attempt>/comm/<rank>` = `ip:port`, connects
//! to every higher rank and accepts every lower one). Messages are a `u64` length and
//! the bytes.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use super::{Comm, RankEnv};
use crate::store::{Client, StoreError};

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

/// Why the mesh could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot listen for peers: {0}")]
    Listen(io::Error),
    #[error("publishing this rank's address: {0}")]
    Publish(StoreError),
    #[error("waiting for rank {rank}'s address: {source}")]
    Lookup { rank: usize, source: StoreError },
    #[error("cannot connect to rank {rank} at {addr}: {source}")]
    Connect {
        rank: usize,
        addr: String,
        source: io::Error,
    },
    #[error("greeting rank {rank}: {source}")]
    Greet { rank: usize, source: io::Error },
    #[error("accepting a peer: {0}")]
    Accept(io::Error),
    #[error("reading a peer's rank: {0}")]
    PeerRank(io::Error),
    #[error("unexpected peer rank {0}")]
    UnexpectedPeer(u64),
}

/// Largest buffer a message's announced length reserves before its bytes arrive.
const PREALLOCATE: usize = 64 << 20;

impl TcpComm {
    /// Builds the mesh. `store` is this rank's store connection.
    pub fn connect(env: &RankEnv, store: &mut Client) -> Result<TcpComm, ConnectError> {
        let ip = advertised_ip(&env.master_addr, env.master_port);
        let listener = TcpListener::bind((
            if ip.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                ip
            },
            0,
        ))
        .map_err(ConnectError::Listen)?;
        let port = listener.local_addr().map_err(ConnectError::Listen)?.port();
        let key = |r: usize| format!("rrank/{}/comm/{r}", env.attempt);
        let shown = match ip {
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            IpAddr::V4(v4) => format!("{v4}:{port}"),
        };
        store
            .set(&key(env.rank), shown.as_bytes())
            .map_err(ConnectError::Publish)?;
        let mut peers: Vec<Option<TcpStream>> = (0..env.world_size).map(|_| None).collect();
        for (r, slot) in peers.iter_mut().enumerate().skip(env.rank + 1) {
            let addr = String::from_utf8_lossy(
                &store
                    .get(&key(r))
                    .map_err(|source| ConnectError::Lookup { rank: r, source })?,
            )
            .into_owned();
            let mut s = match TcpStream::connect(&addr) {
                Ok(s) => s,
                Err(source) => {
                    return Err(ConnectError::Connect {
                        rank: r,
                        addr,
                        source,
                    });
                }
            };
            s.set_nodelay(true).ok();
            s.write_all(&(env.rank as u64).to_le_bytes())
                .map_err(|source| ConnectError::Greet { rank: r, source })?;
            *slot = Some(s);
        }
        listener.set_nonblocking(false).ok();
        for _ in 0..env.rank {
            let (mut s, _) = listener.accept().map_err(ConnectError::Accept)?;
            s.set_nodelay(true).ok();
            s.set_read_timeout(Some(Duration::from_secs(60))).ok();
            let mut id = [0u8; 8];
            s.read_exact(&mut id).map_err(ConnectError::PeerRank)?;
            s.set_read_timeout(None).ok();
            let id = u64::from_le_bytes(id);
            let slot = usize::try_from(id)
                .ok()
                .filter(|&r| r < env.rank)
                .and_then(|r| peers.get_mut(r))
                .filter(|p| p.is_none())
                .ok_or(ConnectError::UnexpectedPeer(id))?;
            *slot = Some(s);
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
        read_message(s, u64::from_le_bytes(n))
            .map_err(|e| io::Error::new(e.kind(), format!("message from rank {from}: {e}")))
    }
}

/// Reads a message of `len` announced bytes; the buffer grows with the bytes that
/// arrive, so a corrupt length is an error rather than an allocation of that size.
fn read_message(s: &mut impl Read, len: u64) -> io::Result<Vec<u8>> {
    let mut b = Vec::with_capacity(usize::try_from(len).unwrap_or(usize::MAX).min(PREALLOCATE));
    s.take(len).read_to_end(&mut b)?;
    if b.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{len} bytes announced, the connection ended after {}",
                b.len()
            ),
        ));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank 1 of two, whose connection to rank 0 is the other end of `peer`.
    fn pair() -> (TcpComm, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mine, _) = l.accept().unwrap();
        let comm = TcpComm {
            rank: 1,
            peers: vec![Some(mine), None],
        };
        (comm, peer)
    }

    #[test]
    fn messages_round_trip() {
        let (mut comm, mut peer) = pair();
        peer.write_all(&3u64.to_le_bytes()).unwrap();
        peer.write_all(b"abc").unwrap();
        assert_eq!(comm.recv(0).unwrap(), b"abc");
        comm.send(0, b"xy").unwrap();
        let mut got = [0u8; 10];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..8], &2u64.to_le_bytes());
        assert_eq!(&got[8..], b"xy");
    }

    #[test]
    fn a_huge_announced_length_is_an_error_not_an_allocation() {
        let (mut comm, mut peer) = pair();
        peer.write_all(&u64::MAX.to_le_bytes()).unwrap();
        peer.write_all(b"abc").unwrap();
        drop(peer);
        let e = comm.recv(0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("message from rank 0"), "{e}");
        assert!(e.to_string().contains("ended after 3"), "{e}");
    }

    #[test]
    fn truncated_frames_are_errors() {
        let (mut comm, mut peer) = pair();
        peer.write_all(&[1, 0, 0]).unwrap();
        drop(peer);
        let e = comm.recv(0).unwrap_err();
        assert!(e.to_string().contains("rank 0 went away"), "{e}");

        let (mut comm, mut peer) = pair();
        peer.write_all(&10u64.to_le_bytes()).unwrap();
        peer.write_all(b"abcd").unwrap();
        drop(peer);
        let e = comm.recv(0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("10 bytes announced"), "{e}");
    }

    #[test]
    fn no_connection_is_an_error() {
        let (mut comm, _peer) = pair();
        assert!(comm.recv(1).is_err());
        assert!(comm.send(5, b"x").is_err());
    }
}
