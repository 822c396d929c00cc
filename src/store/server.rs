//! The TCPStore server that rrun hosts for its workers (and rrank for its ranks).
//!
//! It owns the listening socket and one background thread running a single-threaded
//! tokio runtime, with one task per connection. A connection must open with VALIDATE
//! and the right magic; a bad frame (unknown command, oversize key or value, too many
//! keys, a non-numeric ADD target) closes that connection only, dropping its WAIT.
//! Slow or idle clients never block others, nor does a client sending a large frame
//! (it is decoded incrementally, and its reads yield to the other connections). The
//! server lives until the handle drops.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, Request};
use super::state::{ApplyError, ConnId, Reply, State};

/// A running store server. Dropping it stops the server.
pub struct StoreServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Binds `[::]:port` (dual stack), falling back to `0.0.0.0:port`, as torch does.
/// Port 0 picks an ephemeral port.
pub fn bind_any(port: u16) -> io::Result<TcpListener> {
    match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(e),
        Err(_) => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)),
    }
}

impl StoreServer {
    /// Binds and starts serving. The error is the bind error (e.g. `AddrInUse`).
    pub fn start(port: u16) -> io::Result<StoreServer> {
        Self::serve(bind_any(port)?)
    }

    /// Serves on an already-bound listener.
    pub fn serve(listener: TcpListener) -> io::Result<StoreServer> {
        raise_fd_limit();
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("rrun-store".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            crate::eline!("rrun: store server failed to start: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = accept_loop(listener, st) => {}
                        _ = stop_rx => {}
                    }
                })
            })?;
        Ok(StoreServer {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Number of keys currently stored (for diagnostics and tests).
    pub fn num_keys(&self) -> usize {
        self.state.lock().unwrap().num_keys()
    }

    /// Number of connections with a pending WAIT (for diagnostics and tests).
    pub fn pending_waits(&self) -> usize {
        self.state.lock().unwrap().pending_waits()
    }

    /// Number of (key, connection) registrations of pending WAITs (for diagnostics
    /// and tests).
    pub fn watchers(&self) -> usize {
        self.state.lock().unwrap().watchers()
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lifts the soft open-files limit to the hard one, so a thousand idle clients
/// cannot exhaust the default 1024 descriptors.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<Mutex<State>>) {
    let mut next: ConnId = 0;
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                next += 1;
                let id = next;
                let st = state.clone();
                tokio::spawn(async move {
                    if let Err(why) = serve_conn(sock, id, &st).await {
                        crate::eline!("rrun: store: closed connection from {peer}: {why}");
                    }
                    st.lock().unwrap().forget(id);
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving the others.
                crate::eline!("rrun: store: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads what is available into `chunk`; returns how many bytes, 0 at EOF. A short
/// read marks the socket drained, which saves the extra `read` → EAGAIN that would
/// otherwise precede every wait for the next request.
async fn read_some(sock: &TcpStream, chunk: &mut [u8]) -> io::Result<usize> {
    loop {
        sock.readable().await?;
        let fd = sock.as_raw_fd();
        let mut got = None;
        let r = sock.try_io(Interest::READABLE, || {
            // SAFETY: fd is the open socket; chunk is writable for its length.
            let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            got = Some(n as usize);
            if n > 0 && (n as usize) < chunk.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match (r, got) {
            (Err(e), _) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            (_, Some(n)) => return Ok(n),
            (_, None) => continue, // spurious readiness
        }
    }
}

/// Writes all of `b`, waiting for writability only when the socket buffer is full.
async fn write_all(sock: &TcpStream, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        match sock.try_write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a connection was closed before its EOF.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Decode(#[from] codec::DecodeError),
    #[error("first command is not VALIDATE with the right magic")]
    NotValidated,
    #[error("error processing client message: {0}")]
    Apply(#[from] ApplyError),
}

/// Serves one connection until EOF (`Ok`) or a protocol violation (`Err(reason)`).
///
/// Bytes go through the connection's incremental [`codec::Decoder`] as they arrive,
/// so a large frame costs each read only the bytes it brought; each read spends
/// tokio's cooperative budget, so a client streaming a large frame yields the thread
/// to the other connections regularly.
async fn serve_conn(sock: TcpStream, id: ConnId, state: &Mutex<State>) -> Result<(), ConnError> {
    let (outbox, mut inbox) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut decoder = codec::Decoder::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut validated = false;
    loop {
        tokio::select! {
            got = read_some(&sock, &mut chunk) => {
                let got = got?;
                if got == 0 {
                    return Ok(());
                }
                out.clear();
                let mut input = &chunk[..got];
                let result = loop {
                    match decoder.feed(&mut input) {
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e.into()),
                        Ok(Some(req)) => {
                            if !validated {
                                if req != Request::Validate(codec::MAGIC) {
                                    break Err(ConnError::NotValidated);
                                }
                                validated = true;
                                continue;
                            }
                            let reply = state.lock().unwrap().apply(id, req, &outbox);
                            // Replies stay in request order: wake-ups queued before
                            // this request was applied go out before its reply.
                            while let Ok(b) = inbox.try_recv() {
                                out.extend_from_slice(&b);
                            }
                            match reply {
                                Err(e) => break Err(e.into()),
                                Ok(Reply::Bytes(b)) => out.extend_from_slice(&b),
                                Ok(Reply::None | Reply::Pending) => {}
                                Ok(Reply::Canceled) => out.push(codec::WAIT_CANCELED),
                            }
                        }
                    }
                };
                if !out.is_empty() {
                    write_all(&sock, &out).await?;
                }
                result?;
                // Readiness waits do not spend the cooperative budget; this does,
                // so a client whose bytes keep coming still yields the thread to
                // the other connections every 128 reads. (Not inside `read_some`:
                // a yield there could drop bytes already read when `select!`
                // picks the other branch.)
                tokio::task::coop::consume_budget().await;
            }
            Some(b) = inbox.recv() => {
                write_all(&sock, &b).await?;
            }
        }
    }
}
