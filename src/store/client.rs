//! A blocking TCPStore client with torch's semantics (docs/spec/torchrun.md §5.2,
//! §5.5): connect with exponential backoff, VALIDATE + PING, a `/` prefix on every
//! user key, GET as WAIT then GET, and CANCEL_WAIT when a wait times out.
//!
//! Used by rrun agents (rendezvous, rank assignment, exit barrier) and by rrank
//! ranks. It works against torch's own server as well as ours.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::codec::{self, Request};

/// What can go wrong talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not reach the store at {addr} within {waited:?}: {last}")]
    Unreachable {
        addr: String,
        waited: Duration,
        last: String,
    },
    #[error("wait timeout after {ms}ms, keys: {keys}")]
    Timeout { ms: u128, keys: String },
    #[error("queue is empty")]
    QueueEmpty,
    #[error("store protocol error: {0}")]
    Protocol(String),
    #[error("store connection failed: {0}")]
    Io(#[from] io::Error),
}

/// A connected client. Keys given to its methods get torch's `/` prefix.
pub struct Client {
    sock: TcpStream,
    /// Default timeout of blocking operations (torch: 300 s).
    timeout: Duration,
}

/// Torch's default store timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

fn prefixed(key: &str) -> Vec<u8> {
    format!("/{key}").into_bytes()
}

impl Client {
    /// Connects to `host:port`, retrying with backoff (50 ms, ×1.5, capped at 5 s,
    /// jittered) until `timeout`. `progress` is called about every 5 s of waiting
    /// with the elapsed time, so callers can say what they wait for.
    pub fn connect(
        host: &str,
        port: u16,
        timeout: Duration,
        progress: &mut dyn FnMut(Duration),
    ) -> Result<Client, StoreError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        let mut next_report = Duration::from_secs(5);
        let shown = format!("{host}:{port}");
        loop {
            let err = match Self::try_connect(host, port, timeout) {
                Ok(c) => return Ok(c),
                Err(e) => e,
            };
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(StoreError::Unreachable {
                    addr: shown,
                    waited,
                    last: err.to_string(),
                });
            }
            if waited >= next_report {
                progress(waited);
                next_report = waited + Duration::from_secs(5);
            }
            let jitter = 0.75 + 0.5 * (jitter_unit());
            let sleep = delay.mul_f64(jitter).min(timeout.saturating_sub(waited));
            std::thread::sleep(sleep);
            delay = (delay.mul_f64(1.5)).min(Duration::from_secs(5));
        }
    }

    fn try_connect(host: &str, port: u16, timeout: Duration) -> io::Result<Client> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                Ok(sock) => {
                    sock.set_nodelay(true)?;
                    let mut c = Client { sock, timeout };
                    c.handshake()?;
                    return Ok(c);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn handshake(&mut self) -> io::Result<()> {
        let nonce = std::process::id();
        let mut out = Vec::new();
        codec::encode(&Request::Validate(codec::MAGIC), &mut out);
        codec::encode(&Request::Ping(nonce), &mut out);
        self.sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        self.sock.write_all(&out)?;
        let got = self.read_u32()?;
        self.sock.set_read_timeout(None)?;
        if got != nonce {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "Ping failed, invalid value returned from server. Expected: {nonce}, Got: {got}"
                ),
            ));
        }
        Ok(())
    }

    /// Changes the default timeout of blocking operations.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    fn send(&mut self, req: &Request) -> Result<(), StoreError> {
        let mut out = Vec::new();
        codec::encode(req, &mut out);
        self.sock.write_all(&out)?;
        Ok(())
    }

    fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.sock.read_exact(&mut b)?;
        Ok(b)
    }
    fn read_u8(&mut self) -> io::Result<u8> {
        Ok(self.read_exact(1)?[0])
    }
    fn read_u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.read_exact(4)?.try_into().unwrap()))
    }
    fn read_i64(&mut self) -> io::Result<i64> {
        Ok(i64::from_le_bytes(self.read_exact(8)?.try_into().unwrap()))
    }
    fn read_bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.read_i64()? as usize;
        if n > codec::MAX_VALUE_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "oversize value"));
        }
        self.read_exact(n)
    }

    /// SET (no reply).
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.send(&Request::Set(prefixed(key), value.to_vec()))
    }

    /// WAIT for the key with the default timeout, then GET it.
    pub fn get(&mut self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.wait(&[key], self.timeout)?;
        self.send(&Request::Get(prefixed(key)))?;
        Ok(self.read_bytes()?)
    }

    /// ADD `delta` to the key; returns the new value.
    pub fn add(&mut self, key: &str, delta: i64) -> Result<i64, StoreError> {
        self.add_raw(&prefixed(key), delta)
    }

    /// ADD on a raw key (no `/` prefix), as used for `init/`.
    pub fn add_raw(&mut self, key: &[u8], delta: i64) -> Result<i64, StoreError> {
        self.send(&Request::Add(key.to_vec(), delta))?;
        Ok(self.read_i64()?)
    }

    /// GET on a raw key without waiting (empty if missing, on a libuv server).
    pub fn get_raw_now(&mut self, key: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.send(&Request::Get(key.to_vec()))?;
        Ok(self.read_bytes()?)
    }

    /// CHECK: true when every key exists.
    pub fn check(&mut self, keys: &[&str]) -> Result<bool, StoreError> {
        self.send(&Request::Check(keys.iter().map(|k| prefixed(k)).collect()))?;
        Ok(self.read_u8()? == codec::READY)
    }

    /// WAIT until every key exists, or `timeout` passes (then CANCEL_WAIT and `Timeout`).
    pub fn wait(&mut self, keys: &[&str], timeout: Duration) -> Result<(), StoreError> {
        let raw: Vec<Vec<u8>> = keys.iter().map(|k| prefixed(k)).collect();
        self.wait_raw(raw, timeout)
    }

    fn wait_raw(&mut self, keys: Vec<Vec<u8>>, timeout: Duration) -> Result<(), StoreError> {
        let shown = keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        self.send(&Request::Wait(keys))?;
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let r = self.read_u8();
        self.sock.set_read_timeout(None)?;
        match r {
            Ok(codec::STOP_WAITING) => Ok(()),
            Ok(b) => Err(StoreError::Protocol(format!("unexpected WAIT reply {b}"))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.send(&Request::CancelWait)?;
                let mut b = self.read_u8()?;
                if b == codec::STOP_WAITING {
                    b = self.read_u8()?; // the wake-up raced the cancel
                }
                if b != codec::WAIT_CANCELED {
                    return Err(StoreError::Protocol(format!(
                        "unexpected CANCEL_WAIT reply {b}"
                    )));
                }
                Err(StoreError::Timeout {
                    ms: timeout.as_millis(),
                    keys: shown,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// COMPARE_SET; returns what the server returned (see the spec's quirks).
    pub fn compare_set(
        &mut self,
        key: &str,
        expected: &[u8],
        desired: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.send(&Request::CompareSet {
            key: prefixed(key),
            expected: expected.to_vec(),
            desired: desired.to_vec(),
        })?;
        Ok(self.read_bytes()?)
    }

    /// DELETE_KEY; true when a key was removed.
    pub fn delete_key(&mut self, key: &str) -> Result<bool, StoreError> {
        self.send(&Request::DeleteKey(prefixed(key)))?;
        Ok(self.read_i64()? == 1)
    }

    /// GETNUMKEYS.
    pub fn num_keys(&mut self) -> Result<i64, StoreError> {
        self.send(&Request::GetNumKeys)?;
        Ok(self.read_i64()?)
    }

    /// APPEND (no reply).
    pub fn append(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.send(&Request::Append(prefixed(key), value.to_vec()))
    }

    /// WAIT for all keys, then MULTI_GET them.
    pub fn multi_get(&mut self, keys: &[&str]) -> Result<Vec<Vec<u8>>, StoreError> {
        let raw: Vec<Vec<u8>> = keys.iter().map(|k| prefixed(k)).collect();
        self.wait_raw(raw.clone(), self.timeout)?;
        self.send(&Request::MultiGet(raw))?;
        (0..keys.len())
            .map(|_| self.read_bytes().map_err(Into::into))
            .collect()
    }

    /// MULTI_SET (no reply).
    pub fn multi_set(&mut self, kvs: &[(&str, &[u8])]) -> Result<(), StoreError> {
        self.send(&Request::MultiSet(
            kvs.iter().map(|(k, v)| (prefixed(k), v.to_vec())).collect(),
        ))
    }

    /// QUEUE_PUSH (no reply).
    pub fn queue_push(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.send(&Request::QueuePush(prefixed(key), value.to_vec()))
    }

    /// QUEUE_POP; with `block`, WAITs for an item first (default timeout).
    pub fn queue_pop(&mut self, key: &str, block: bool) -> Result<Vec<u8>, StoreError> {
        if block {
            self.wait(&[key], self.timeout)?;
        }
        self.send(&Request::QueuePop(prefixed(key)))?;
        if self.read_i64()? == 0 {
            return Err(StoreError::QueueEmpty);
        }
        Ok(self.read_bytes()?)
    }

    /// QUEUE_LEN.
    pub fn queue_len(&mut self, key: &str) -> Result<i64, StoreError> {
        self.send(&Request::QueueLen(prefixed(key)))?;
        Ok(self.read_i64()?)
    }

    /// LIST_KEYS: user keys (those starting with `/`, prefix stripped), as torch's client returns.
    pub fn list_keys(&mut self) -> Result<Vec<String>, StoreError> {
        self.send(&Request::ListKeys)?;
        let n = self.read_i64()?;
        let mut keys = Vec::new();
        for _ in 0..n {
            let k = self.read_bytes()?;
            if let Some(rest) = k.strip_prefix(b"/") {
                keys.push(String::from_utf8_lossy(rest).into_owned());
            }
        }
        Ok(keys)
    }

    /// PING; true when the echo matches.
    pub fn ping(&mut self, nonce: u32) -> Result<bool, StoreError> {
        self.send(&Request::Ping(nonce))?;
        Ok(self.read_u32()? == nonce)
    }
}

/// A number in [0, 1) that differs between calls and processes (backoff jitter).
fn jitter_unit() -> f64 {
    let b = uuid::Uuid::new_v4();
    (b.as_u128() as u32 as f64) / (u32::MAX as f64 + 1.0)
}
