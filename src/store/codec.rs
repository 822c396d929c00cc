//! The TCPStore wire format of PyTorch 2.11 (shared/spec/torchrun.md §5): request
//! decoding for the server, request encoding for the client, and the limits.
//!
//! It owns bytes only: no sockets, no state. Integers are little-endian (native on
//! x86-64 and ARM64, which is what torch writes); strings and values are a `u64`
//! length followed by raw bytes. Responses carry no type byte, so their encoding
//! lives with whoever knows which request they answer.

use std::fmt;

/// The VALIDATE magic (`00 ce f7 85 3c` on the wire).
pub const MAGIC: u32 = 0x3C85_F7CE;
/// Longest key the server accepts.
pub const MAX_KEY_LEN: usize = 8192;
/// Longest value the server accepts (8 MiB).
pub const MAX_VALUE_LEN: usize = 8 * 1024 * 1024;
/// Most keys in one CHECK / WAIT / MULTI_GET / MULTI_SET.
pub const MAX_KEYS: usize = 131_072;

/// `QueryType` byte values of torch 2.11.
pub mod op {
    pub const VALIDATE: u8 = 0;
    pub const SET: u8 = 1;
    pub const COMPARE_SET: u8 = 2;
    pub const GET: u8 = 3;
    pub const ADD: u8 = 4;
    pub const CHECK: u8 = 5;
    pub const WAIT: u8 = 6;
    pub const GETNUMKEYS: u8 = 7;
    pub const DELETE_KEY: u8 = 8;
    pub const APPEND: u8 = 9;
    pub const MULTI_GET: u8 = 10;
    pub const MULTI_SET: u8 = 11;
    pub const CANCEL_WAIT: u8 = 12;
    pub const PING: u8 = 13;
    pub const QUEUE_PUSH: u8 = 14;
    pub const QUEUE_POP: u8 = 15;
    pub const QUEUE_LEN: u8 = 16;
    pub const LIST_KEYS: u8 = 17;
}

/// CHECK reply: every key exists.
pub const READY: u8 = 0;
/// CHECK reply: some key is missing.
pub const NOT_READY: u8 = 1;
/// WAIT reply: all keys exist.
pub const STOP_WAITING: u8 = 0;
/// CANCEL_WAIT reply.
pub const WAIT_CANCELED: u8 = 1;

/// One decoded client request. Keys and values are raw bytes, exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Validate(u32),
    Set(Vec<u8>, Vec<u8>),
    CompareSet {
        key: Vec<u8>,
        expected: Vec<u8>,
        desired: Vec<u8>,
    },
    Get(Vec<u8>),
    Add(Vec<u8>, i64),
    Check(Vec<Vec<u8>>),
    Wait(Vec<Vec<u8>>),
    GetNumKeys,
    DeleteKey(Vec<u8>),
    Append(Vec<u8>, Vec<u8>),
    MultiGet(Vec<Vec<u8>>),
    MultiSet(Vec<(Vec<u8>, Vec<u8>)>),
    CancelWait,
    Ping(u32),
    QueuePush(Vec<u8>, Vec<u8>),
    QueuePop(Vec<u8>),
    QueueLen(Vec<u8>),
    ListKeys,
}

/// Why a frame was rejected. The server closes the connection on any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    UnknownCommand(u8),
    KeyTooLong(u64),
    ValueTooLong(u64),
    TooManyKeys(u64),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownCommand(b) => write!(f, "unknown command byte {b}"),
            DecodeError::KeyTooLong(n) => {
                write!(f, "invalid string size. size: {n}, max: {MAX_KEY_LEN}")
            }
            DecodeError::ValueTooLong(n) => {
                write!(f, "invalid value size. size: {n}, max: {MAX_VALUE_LEN}")
            }
            DecodeError::TooManyKeys(n) => {
                write!(f, "too many keys. count: {n}, max: {MAX_KEYS}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reading stopped: either the frame is not complete yet, or it is invalid.
enum Stop {
    Incomplete,
    Bad(DecodeError),
}

impl From<DecodeError> for Stop {
    fn from(e: DecodeError) -> Self {
        Stop::Bad(e)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        if self.buf.len() - self.pos < n {
            return Err(Stop::Incomplete);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Stop> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Stop> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, Stop> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, Stop> {
        Ok(self.u64()? as i64)
    }
    /// A length-prefixed field; the length is checked before the body is awaited,
    /// so an oversize frame is refused without buffering it.
    fn sized(&mut self, max: usize, err: fn(u64) -> DecodeError) -> Result<Vec<u8>, Stop> {
        let n = self.u64()?;
        if n > max as u64 {
            return Err(Stop::Bad(err(n)));
        }
        Ok(self.take(n as usize)?.to_vec())
    }
    fn key(&mut self) -> Result<Vec<u8>, Stop> {
        self.sized(MAX_KEY_LEN, DecodeError::KeyTooLong)
    }
    fn value(&mut self) -> Result<Vec<u8>, Stop> {
        self.sized(MAX_VALUE_LEN, DecodeError::ValueTooLong)
    }
    fn count(&mut self) -> Result<usize, Stop> {
        let n = self.u64()?;
        if n > MAX_KEYS as u64 {
            return Err(Stop::Bad(DecodeError::TooManyKeys(n)));
        }
        Ok(n as usize)
    }
    fn keys(&mut self) -> Result<Vec<Vec<u8>>, Stop> {
        let n = self.count()?;
        let mut keys = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            keys.push(self.key()?);
        }
        Ok(keys)
    }
}

/// Decodes one request from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((request, used)))` when a
/// whole frame was read, and an error when the frame can never become valid.
pub fn decode(buf: &[u8]) -> Result<Option<(Request, usize)>, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    match decode_inner(&mut r) {
        Ok(req) => Ok(Some((req, r.pos))),
        Err(Stop::Incomplete) => Ok(None),
        Err(Stop::Bad(e)) => Err(e),
    }
}

fn decode_inner(r: &mut Reader<'_>) -> Result<Request, Stop> {
    let cmd = r.u8()?;
    Ok(match cmd {
        op::VALIDATE => Request::Validate(r.u32()?),
        op::SET => Request::Set(r.key()?, r.value()?),
        op::COMPARE_SET => Request::CompareSet {
            key: r.key()?,
            expected: r.value()?,
            desired: r.value()?,
        },
        op::GET => Request::Get(r.key()?),
        op::ADD => Request::Add(r.key()?, r.i64()?),
        op::CHECK => Request::Check(r.keys()?),
        op::WAIT => Request::Wait(r.keys()?),
        op::GETNUMKEYS => Request::GetNumKeys,
        op::DELETE_KEY => Request::DeleteKey(r.key()?),
        op::APPEND => Request::Append(r.key()?, r.value()?),
        op::MULTI_GET => Request::MultiGet(r.keys()?),
        op::MULTI_SET => {
            let n = r.count()?;
            let mut kvs = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                kvs.push((r.key()?, r.value()?));
            }
            Request::MultiSet(kvs)
        }
        op::CANCEL_WAIT => Request::CancelWait,
        op::PING => Request::Ping(r.u32()?),
        op::QUEUE_PUSH => Request::QueuePush(r.key()?, r.value()?),
        op::QUEUE_POP => Request::QueuePop(r.key()?),
        op::QUEUE_LEN => Request::QueueLen(r.key()?),
        op::LIST_KEYS => Request::ListKeys,
        other => return Err(DecodeError::UnknownCommand(other).into()),
    })
}

/// Appends a `u64` length and the bytes (the encoding of both strings and values).
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends a little-endian `i64`.
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_keys(out: &mut Vec<u8>, keys: &[Vec<u8>]) {
    out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for k in keys {
        put_bytes(out, k);
    }
}

/// Encodes a request exactly as torch's C++ client does.
pub fn encode(req: &Request, out: &mut Vec<u8>) {
    match req {
        Request::Validate(m) => {
            out.push(op::VALIDATE);
            out.extend_from_slice(&m.to_le_bytes());
        }
        Request::Set(k, v) => {
            out.push(op::SET);
            put_bytes(out, k);
            put_bytes(out, v);
        }
        Request::CompareSet {
            key,
            expected,
            desired,
        } => {
            out.push(op::COMPARE_SET);
            put_bytes(out, key);
            put_bytes(out, expected);
            put_bytes(out, desired);
        }
        Request::Get(k) => {
            out.push(op::GET);
            put_bytes(out, k);
        }
        Request::Add(k, d) => {
            out.push(op::ADD);
            put_bytes(out, k);
            put_i64(out, *d);
        }
        Request::Check(ks) => {
            out.push(op::CHECK);
            put_keys(out, ks);
        }
        Request::Wait(ks) => {
            out.push(op::WAIT);
            put_keys(out, ks);
        }
        Request::GetNumKeys => out.push(op::GETNUMKEYS),
        Request::DeleteKey(k) => {
            out.push(op::DELETE_KEY);
            put_bytes(out, k);
        }
        Request::Append(k, v) => {
            out.push(op::APPEND);
            put_bytes(out, k);
            put_bytes(out, v);
        }
        Request::MultiGet(ks) => {
            out.push(op::MULTI_GET);
            put_keys(out, ks);
        }
        Request::MultiSet(kvs) => {
            out.push(op::MULTI_SET);
            out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
            for (k, v) in kvs {
                put_bytes(out, k);
                put_bytes(out, v);
            }
        }
        Request::CancelWait => out.push(op::CANCEL_WAIT),
        Request::Ping(n) => {
            out.push(op::PING);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Request::QueuePush(k, v) => {
            out.push(op::QUEUE_PUSH);
            put_bytes(out, k);
            put_bytes(out, v);
        }
        Request::QueuePop(k) => {
            out.push(op::QUEUE_POP);
            put_bytes(out, k);
        }
        Request::QueueLen(k) => {
            out.push(op::QUEUE_LEN);
            put_bytes(out, k);
        }
        Request::ListKeys => out.push(op::LIST_KEYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn matches_captured_torch_bytes() {
        // Rows of the spec's §5.7, captured from a real 2.11 client.
        let set = Request::Set(b"/k1".to_vec(), b"v1".to_vec());
        let mut out = Vec::new();
        encode(&set, &mut out);
        assert_eq!(out, hex("01 0300000000000000 2f6b31 0200000000000000 7631"));
        assert_eq!(decode(&out).unwrap(), Some((set, out.len())));

        let add = hex("04 0400000000000000 2f636e74 feffffffffffffff");
        assert_eq!(
            decode(&add).unwrap().unwrap().0,
            Request::Add(b"/cnt".to_vec(), -2)
        );
        let hello = hex("00 cef7853c 0d 90020000");
        let (v, n) = decode(&hello).unwrap().unwrap();
        assert_eq!(v, Request::Validate(MAGIC));
        assert_eq!(decode(&hello[n..]).unwrap().unwrap().0, Request::Ping(656));
    }

    #[test]
    fn every_request_round_trips_and_every_prefix_is_incomplete() {
        let reqs = vec![
            Request::Validate(MAGIC),
            Request::Set(b"a".to_vec(), b"b".to_vec()),
            Request::CompareSet {
                key: b"k".to_vec(),
                expected: vec![],
                desired: b"d".to_vec(),
            },
            Request::Get(b"g".to_vec()),
            Request::Add(b"n".to_vec(), 7),
            Request::Check(vec![b"x".to_vec(), b"y".to_vec()]),
            Request::Wait(vec![b"w".to_vec()]),
            Request::GetNumKeys,
            Request::DeleteKey(b"d".to_vec()),
            Request::Append(b"a".to_vec(), b"z".to_vec()),
            Request::MultiGet(vec![b"1".to_vec(), b"2".to_vec()]),
            Request::MultiSet(vec![(b"1".to_vec(), b"x".to_vec())]),
            Request::CancelWait,
            Request::Ping(42),
            Request::QueuePush(b"q".to_vec(), b"i".to_vec()),
            Request::QueuePop(b"q".to_vec()),
            Request::QueueLen(b"q".to_vec()),
            Request::ListKeys,
        ];
        for r in reqs {
            let mut out = Vec::new();
            encode(&r, &mut out);
            for cut in 0..out.len() {
                assert_eq!(decode(&out[..cut]).unwrap(), None, "{r:?} cut at {cut}");
            }
            assert_eq!(decode(&out).unwrap(), Some((r, out.len())));
        }
    }

    #[test]
    fn limits_are_enforced_before_the_body_arrives() {
        let mut k = vec![op::GET];
        k.extend_from_slice(&8193u64.to_le_bytes());
        assert_eq!(decode(&k), Err(DecodeError::KeyTooLong(8193)));
        let mut ok = vec![op::GET];
        put_bytes(&mut ok, &vec![b'a'; 8192]);
        assert!(decode(&ok).unwrap().is_some());
        let mut v = vec![op::SET];
        put_bytes(&mut v, b"k");
        v.extend_from_slice(&((MAX_VALUE_LEN + 1) as u64).to_le_bytes());
        assert!(matches!(decode(&v), Err(DecodeError::ValueTooLong(_))));
        let mut w = vec![op::WAIT];
        w.extend_from_slice(&(u64::MAX).to_le_bytes());
        assert!(matches!(decode(&w), Err(DecodeError::TooManyKeys(_))));
        assert_eq!(decode(&[99]), Err(DecodeError::UnknownCommand(99)));
    }
}
