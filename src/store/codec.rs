//! The TCPStore wire format of PyTorch 2.11 (docs/spec/torchrun.md §5): request
//! decoding for the server (incremental, one [`Decoder`] per connection), request
//! encoding for the client, and the limits.
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

/// One primitive field of a frame, after the command byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    U32,
    I64,
    Key,
    Value,
}

/// The fields of a frame: fixed, or a `u64` count (at most [`MAX_KEYS`]) followed
/// by that many repetitions of a group.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Fixed(&'static [Field]),
    Counted(&'static [Field]),
}

fn shape(cmd: u8) -> Result<Shape, DecodeError> {
    use Field::*;
    Ok(match cmd {
        op::VALIDATE | op::PING => Shape::Fixed(&[U32]),
        op::SET | op::APPEND | op::QUEUE_PUSH => Shape::Fixed(&[Key, Value]),
        op::COMPARE_SET => Shape::Fixed(&[Key, Value, Value]),
        op::GET | op::DELETE_KEY | op::QUEUE_POP | op::QUEUE_LEN => Shape::Fixed(&[Key]),
        op::ADD => Shape::Fixed(&[Key, I64]),
        op::CHECK | op::WAIT | op::MULTI_GET => Shape::Counted(&[Key]),
        op::MULTI_SET => Shape::Counted(&[Key, Value]),
        op::GETNUMKEYS | op::CANCEL_WAIT | op::LIST_KEYS => Shape::Fixed(&[]),
        other => return Err(DecodeError::UnknownCommand(other)),
    })
}

/// What the decoder is reading now.
enum Pending {
    /// A little-endian integer of `need` bytes (1, 4 or 8), `got` of them so far.
    Head { what: Head, need: usize, got: usize },
    /// The body of a key or value: `need` bytes in all.
    Body { data: Vec<u8>, need: usize },
}

#[derive(Debug, Clone, Copy)]
enum Head {
    Cmd,
    Count,
    Field(Field),
}

fn head(what: Head, need: usize) -> Pending {
    Pending::Head { what, need, got: 0 }
}

/// A body buffer starts this large and is grown to the announced length only once
/// the client has sent more than this, so announcing a large value and sending
/// nothing holds no more than this.
const BODY_START: usize = 64 * 1024;

/// An incremental request decoder for one connection.
///
/// Bytes are fed as they arrive and each byte is examined once: a partial frame's
/// progress is kept between calls, so a frame of N bytes costs O(N) however it is
/// split, and a body is copied once, straight into the value it becomes. Limits are
/// checked as soon as a length or count is complete, before the body it announces
/// is buffered.
pub struct Decoder {
    pending: Pending,
    head: [u8; 8],
    cmd: u8,
    fields: &'static [Field],
    counted: bool,
    /// Index in `fields` of the field being read.
    next: usize,
    /// Counted frames: repetitions of the group still to finish, once the count is in.
    groups_left: Option<usize>,
    /// The integer fields read so far, in order.
    ints: Vec<u64>,
    /// The key and value fields read so far, in order.
    bytes: Vec<Vec<u8>>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            pending: head(Head::Cmd, 1),
            head: [0; 8],
            cmd: 0,
            fields: &[],
            counted: false,
            next: 0,
            groups_left: None,
            ints: Vec::new(),
            bytes: Vec::new(),
        }
    }
}

impl Decoder {
    /// Consumes bytes from the front of `input` until one frame is complete or the
    /// input runs out. Returns the request when a frame completed (`input` then
    /// holds what follows it), `None` when all of `input` was consumed mid-frame,
    /// and an error when the frame can never become valid (the connection is then
    /// to be closed; the decoder's state is unspecified).
    pub fn feed(&mut self, input: &mut &[u8]) -> Result<Option<Request>, DecodeError> {
        loop {
            match &mut self.pending {
                Pending::Head { what, need, got } => {
                    let n = (*need - *got).min(input.len());
                    self.head[*got..*got + n].copy_from_slice(&input[..n]);
                    *input = &input[n..];
                    *got += n;
                    if *got < *need {
                        return Ok(None);
                    }
                    let what = *what;
                    let v = u64::from_le_bytes(self.head);
                    self.head = [0; 8];
                    match what {
                        Head::Cmd => {
                            self.cmd = v as u8;
                            (self.fields, self.counted) = match shape(self.cmd)? {
                                Shape::Fixed(f) => (f, false),
                                Shape::Counted(f) => (f, true),
                            };
                        }
                        Head::Count => {
                            if v > MAX_KEYS as u64 {
                                return Err(DecodeError::TooManyKeys(v));
                            }
                            let n = v as usize;
                            self.groups_left = Some(n);
                            self.bytes.reserve((n * self.fields.len()).min(1024));
                        }
                        Head::Field(Field::U32 | Field::I64) => {
                            self.ints.push(v);
                            self.next += 1;
                        }
                        Head::Field(f @ (Field::Key | Field::Value)) => {
                            if f == Field::Key && v > MAX_KEY_LEN as u64 {
                                return Err(DecodeError::KeyTooLong(v));
                            }
                            if f == Field::Value && v > MAX_VALUE_LEN as u64 {
                                return Err(DecodeError::ValueTooLong(v));
                            }
                            let need = v as usize;
                            self.pending = Pending::Body {
                                data: Vec::with_capacity(need.min(BODY_START)),
                                need,
                            };
                            continue;
                        }
                    }
                }
                Pending::Body { data, need } => {
                    let n = (*need - data.len()).min(input.len());
                    if data.len() + n > data.capacity() {
                        data.reserve_exact(*need - data.len());
                    }
                    data.extend_from_slice(&input[..n]);
                    *input = &input[n..];
                    if data.len() < *need {
                        return Ok(None);
                    }
                    self.bytes.push(std::mem::take(data));
                    self.next += 1;
                }
            }
            if self.advance() {
                let d = std::mem::take(self);
                return build(d.cmd, d.ints, d.bytes)
                    .map(Some)
                    .ok_or(DecodeError::UnknownCommand(d.cmd));
            }
        }
    }

    /// Sets up the read of the next field; true once the frame is complete.
    fn advance(&mut self) -> bool {
        if self.counted {
            let Some(mut left) = self.groups_left else {
                self.pending = head(Head::Count, 8);
                return false;
            };
            if self.next == self.fields.len() {
                left -= 1;
                self.next = 0;
                self.groups_left = Some(left);
            }
            if left == 0 {
                return true;
            }
        } else if self.next == self.fields.len() {
            return true;
        }
        let f = self.fields[self.next];
        self.pending = head(Head::Field(f), if f == Field::U32 { 4 } else { 8 });
        false
    }
}

/// Builds the request of `cmd` from its integer and byte fields, in the order
/// [`shape`] lays them out (`None` for a command [`shape`] refuses).
fn build(cmd: u8, ints: Vec<u64>, bytes: Vec<Vec<u8>>) -> Option<Request> {
    let int = ints.first().copied().unwrap_or_default();
    let mut b = bytes.into_iter();
    let mut next = || b.next().unwrap_or_default();
    Some(match cmd {
        op::VALIDATE => Request::Validate(int as u32),
        op::SET => Request::Set(next(), next()),
        op::COMPARE_SET => Request::CompareSet {
            key: next(),
            expected: next(),
            desired: next(),
        },
        op::GET => Request::Get(next()),
        op::ADD => Request::Add(next(), int as i64),
        op::CHECK => Request::Check(b.collect()),
        op::WAIT => Request::Wait(b.collect()),
        op::GETNUMKEYS => Request::GetNumKeys,
        op::DELETE_KEY => Request::DeleteKey(next()),
        op::APPEND => Request::Append(next(), next()),
        op::MULTI_GET => Request::MultiGet(b.collect()),
        op::MULTI_SET => {
            let mut kvs = Vec::with_capacity(b.len() / 2);
            while let (Some(k), Some(v)) = (b.next(), b.next()) {
                kvs.push((k, v));
            }
            Request::MultiSet(kvs)
        }
        op::CANCEL_WAIT => Request::CancelWait,
        op::PING => Request::Ping(int as u32),
        op::QUEUE_PUSH => Request::QueuePush(next(), next()),
        op::QUEUE_POP => Request::QueuePop(next()),
        op::QUEUE_LEN => Request::QueueLen(next()),
        op::LIST_KEYS => Request::ListKeys,
        _ => return None,
    })
}

/// Decodes one request from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((request, used)))` when a
/// whole frame was read, and an error when the frame can never become valid.
pub fn decode(buf: &[u8]) -> Result<Option<(Request, usize)>, DecodeError> {
    let mut input = buf;
    let req = Decoder::default().feed(&mut input)?;
    Ok(req.map(|r| (r, buf.len() - input.len())))
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

    #[test]
    fn frames_fed_in_any_pieces_decode_the_same() {
        let reqs = vec![
            Request::Validate(MAGIC),
            Request::MultiSet(vec![
                (b"k1".to_vec(), vec![7; 200_000]),
                (vec![], vec![]),
                (b"k3".to_vec(), b"v".to_vec()),
            ]),
            Request::Add(b"n".to_vec(), -7),
            Request::Wait(vec![]),
            Request::MultiSet(vec![]),
            Request::CompareSet {
                key: b"k".to_vec(),
                expected: vec![1; 70_000],
                desired: vec![],
            },
            Request::Ping(9),
            Request::ListKeys,
            Request::Check(vec![b"x".to_vec(); 300]),
        ];
        let mut all = Vec::new();
        for r in &reqs {
            encode(r, &mut all);
        }
        for piece in [1, 2, 3, 7, 4096, 65_536, 1 << 20, all.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for mut chunk in all.chunks(piece) {
                while let Some(r) = d.feed(&mut chunk).unwrap() {
                    got.push(r);
                }
                assert!(chunk.is_empty());
            }
            assert_eq!(got, reqs, "pieces of {piece}");
        }
    }

    #[test]
    fn limits_are_enforced_mid_stream() {
        let mut d = Decoder::default();
        let mut m = vec![op::SET];
        put_bytes(&mut m, b"k");
        m.extend_from_slice(&((MAX_VALUE_LEN + 1) as u64).to_le_bytes());
        let (a, b) = m.split_at(12);
        assert_eq!(d.feed(&mut &a[..]), Ok(None));
        assert!(matches!(
            d.feed(&mut &b[..]),
            Err(DecodeError::ValueTooLong(_))
        ));
        let mut d = Decoder::default();
        let mut m = vec![op::MULTI_SET];
        m.extend_from_slice(&(MAX_KEYS as u64 + 1).to_le_bytes());
        assert!(matches!(
            d.feed(&mut &m[..]),
            Err(DecodeError::TooManyKeys(_))
        ));
    }
}
