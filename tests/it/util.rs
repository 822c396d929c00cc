//! Shared helpers: the built binaries, a raw socket speaking the wire format, a
//! free port, and the test venv's python.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

pub fn rrun() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rrun"))
}

/// The python that has torch 2.11 (set by scripts/test.sh).
pub fn torch_python() -> String {
    std::env::var("RRUN_TEST_PYTHON")
        .expect("RRUN_TEST_PYTHON must name a python with torch==2.11.0; run scripts/test.sh")
}

/// A raw connection to a store, already VALIDATEd.
pub fn raw(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x00, 0xce, 0xf7, 0x85, 0x3c]).unwrap();
    s
}

/// PING over `s`; true when echoed.
pub fn ping(s: &mut TcpStream, n: u32) -> bool {
    let mut m = vec![13u8];
    m.extend_from_slice(&n.to_le_bytes());
    if s.write_all(&m).is_err() {
        return false;
    }
    let mut b = [0u8; 4];
    s.read_exact(&mut b).is_ok() && u32::from_le_bytes(b) == n
}

/// True when the peer closed the connection (EOF or reset) within the read timeout.
pub fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_)) && !matches!(s.read(&mut b), Ok(1))
}

/// A port free now, in 10000..32767, below Linux's ephemeral range: a port from bind(0)
/// can be taken by any outgoing connection before the launcher under test binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    (0..2000)
        .map(|_| 10_000 + (RandomState::new().hash_one(()) % 22_768) as u16)
        .find(|&p| TcpListener::bind(("0.0.0.0", p)).is_ok())
        .expect("a free port in 10000..32767")
}
