//! The store's data and its semantics: the key-value map, the queues, and the
//! registry of pending WAITs (docs/spec/torchrun.md §5.4, libuv backend).
//!
//! No I/O happens here. Each request is applied under one lock and produces the
//! bytes of its reply; a WAIT that cannot be answered yet is registered, and the
//! `00` that ends it is later pushed into that connection's outgoing channel by
//! whichever write satisfied it. Pushing under the lock keeps every connection's
//! replies in request order (a STOP_WAITING always precedes a CANCEL_WAIT reply).
//!
//! A WAIT's registrations live exactly as long as the WAIT: satisfying it, canceling
//! it, or its connection closing removes every one of them, so clients that wait
//! and go away leave nothing behind.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::codec::{self, Request};

/// Identifies one client connection.
pub type ConnId = u64;

/// Where a connection's asynchronous replies go (the `00` that ends a WAIT).
pub type Outbox = UnboundedSender<Vec<u8>>;

struct Waiter {
    /// Registrations not yet satisfied; the WAIT ends when this reaches 0.
    remaining: usize,
    outbox: Outbox,
    /// The keys this WAIT is registered under in `watchers` (the same allocations
    /// as the map's keys).
    watching: Vec<Arc<[u8]>>,
}

/// Everything a store server holds. Nothing expires.
#[derive(Default)]
pub struct State {
    kv: HashMap<Vec<u8>, Vec<u8>>,
    queues: HashMap<Vec<u8>, VecDeque<Vec<u8>>>,
    /// Connections waiting on each key, oldest first (a connection is listed once
    /// per time its WAIT names the key). Every entry belongs to a pending WAIT in
    /// `waiters`.
    watchers: HashMap<Arc<[u8]>, VecDeque<ConnId>>,
    /// The one outstanding WAIT of each connection.
    waiters: HashMap<ConnId, Waiter>,
}

/// A request the server refuses; the connection is closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// ADD on a value `std::stoll` cannot read (torch's exception text).
    #[error("stoll")]
    NotAnInteger,
}

/// Result of applying a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Requests without a response (SET, APPEND, MULTI_SET, QUEUE_PUSH, VALIDATE).
    None,
    /// Bytes to send now.
    Bytes(Vec<u8>),
    /// A WAIT was registered; its `00` will arrive through the outbox.
    Pending,
    /// CANCEL_WAIT: send the connection's queued asynchronous replies first, then `01`.
    Canceled,
}

impl State {
    fn present(&self, key: &[u8]) -> bool {
        self.kv.contains_key(key) || self.queues.get(key).is_some_and(|q| !q.is_empty())
    }

    /// Wakes waiters of `key`: all of them, or only the oldest.
    fn notify(&mut self, key: &[u8], only_one: bool) {
        let Some(list) = self.watchers.get_mut(key) else {
            return;
        };
        while let Some(conn) = list.pop_front() {
            let Some(w) = self.waiters.get_mut(&conn) else {
                continue; // not expected: entries leave with their WAIT
            };
            w.remaining -= 1;
            if w.remaining == 0 {
                let w = self.waiters.remove(&conn).unwrap();
                let _ = w.outbox.send(vec![codec::STOP_WAITING]);
            }
            if only_one {
                break;
            }
        }
        if list.is_empty() {
            self.watchers.remove(key);
        }
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.notify(&key, false);
        self.kv.insert(key, value);
    }

    /// Drops whatever WAIT the connection had registered, with all its
    /// registrations (CANCEL_WAIT, or the connection closed).
    pub fn forget(&mut self, conn: ConnId) {
        let Some(w) = self.waiters.remove(&conn) else {
            return;
        };
        for key in w.watching {
            if let Some(list) = self.watchers.get_mut(&key) {
                list.retain(|&c| c != conn);
                if list.is_empty() {
                    self.watchers.remove(&key);
                }
            }
        }
    }

    /// Number of keys in the KV map (GETNUMKEYS).
    pub fn num_keys(&self) -> usize {
        self.kv.len()
    }

    /// Number of connections with a pending WAIT.
    pub fn pending_waits(&self) -> usize {
        self.waiters.len()
    }

    /// Number of (key, connection) registrations of pending WAITs.
    pub fn watchers(&self) -> usize {
        self.watchers.values().map(VecDeque::len).sum()
    }

    /// Applies one request from `conn`. An `Err` means the connection must be closed
    /// (torch's server throws on a non-numeric ADD target and drops the client).
    pub fn apply(
        &mut self,
        conn: ConnId,
        req: Request,
        outbox: &Outbox,
    ) -> Result<Reply, ApplyError> {
        let bytes = |b: &[u8]| {
            let mut out = Vec::with_capacity(8 + b.len());
            codec::put_bytes(&mut out, b);
            Reply::Bytes(out)
        };
        let int = |v: i64| Reply::Bytes(v.to_le_bytes().to_vec());
        Ok(match req {
            Request::Validate(_) => Reply::None,
            Request::Set(k, v) => {
                self.set(k, v);
                Reply::None
            }
            Request::CompareSet {
                key,
                expected,
                desired,
            } => match self.kv.get(&key) {
                None if expected.is_empty() => {
                    self.set(key, desired.clone());
                    bytes(&desired)
                }
                None => bytes(&expected),
                Some(cur) if *cur == expected => {
                    self.set(key, desired.clone());
                    bytes(&desired)
                }
                Some(cur) => {
                    let cur = cur.clone();
                    self.notify(&key, false);
                    bytes(&cur)
                }
            },
            Request::Get(k) => bytes(self.kv.get(&k).map_or(&[][..], |v| v)),
            Request::Add(k, delta) => {
                let new = match self.kv.get(&k) {
                    Some(cur) => parse_stoll(cur)
                        .ok_or(ApplyError::NotAnInteger)?
                        .wrapping_add(delta),
                    None => delta,
                };
                self.set(k, new.to_string().into_bytes());
                int(new)
            }
            Request::Check(keys) => {
                let ready = keys.iter().all(|k| self.present(k));
                Reply::Bytes(vec![if ready {
                    codec::READY
                } else {
                    codec::NOT_READY
                }])
            }
            Request::Wait(keys) => {
                let missing: Vec<Vec<u8>> = keys.into_iter().filter(|k| !self.present(k)).collect();
                if missing.is_empty() {
                    Reply::Bytes(vec![codec::STOP_WAITING])
                } else {
                    // A connection has one WAIT at a time; a second replaces the first.
                    self.forget(conn);
                    let mut watching = Vec::with_capacity(missing.len());
                    for k in missing {
                        let key = match self.watchers.get_key_value(&k[..]) {
                            Some((key, _)) => key.clone(),
                            None => Arc::from(k),
                        };
                        self.watchers
                            .entry(key.clone())
                            .or_insert_with(|| VecDeque::with_capacity(1))
                            .push_back(conn);
                        watching.push(key);
                    }
                    self.waiters.insert(
                        conn,
                        Waiter {
                            remaining: watching.len(),
                            outbox: outbox.clone(),
                            watching,
                        },
                    );
                    Reply::Pending
                }
            }
            Request::GetNumKeys => int(self.kv.len() as i64),
            Request::DeleteKey(k) => int(self.kv.remove(&k).is_some() as i64),
            Request::Append(k, v) => {
                let mut cur = self.kv.remove(&k).unwrap_or_default();
                cur.extend_from_slice(&v);
                self.set(k, cur);
                Reply::None
            }
            Request::MultiGet(keys) => {
                let mut out = Vec::new();
                for k in &keys {
                    codec::put_bytes(&mut out, self.kv.get(k).map_or(&[][..], |v| v));
                }
                Reply::Bytes(out)
            }
            Request::MultiSet(kvs) => {
                for (k, v) in kvs {
                    self.set(k, v);
                }
                Reply::None
            }
            Request::CancelWait => {
                self.forget(conn);
                Reply::Canceled
            }
            Request::Ping(n) => Reply::Bytes(n.to_le_bytes().to_vec()),
            Request::QueuePush(k, v) => {
                self.queues.entry(k.clone()).or_default().push_back(v);
                self.notify(&k, true);
                Reply::None
            }
            Request::QueuePop(k) => {
                let q = self.queues.get_mut(&k);
                let len = q.as_ref().map_or(0, |q| q.len());
                let mut out = (len as i64).to_le_bytes().to_vec();
                if let Some(item) = q.and_then(|q| q.pop_front()) {
                    codec::put_bytes(&mut out, &item);
                }
                Reply::Bytes(out)
            }
            Request::QueueLen(k) => int(self.queues.get(&k).map_or(0, |q| q.len()) as i64),
            Request::ListKeys => {
                let mut out = (self.kv.len() as i64).to_le_bytes().to_vec();
                for k in self.kv.keys() {
                    codec::put_bytes(&mut out, k);
                }
                Reply::Bytes(out)
            }
        })
    }
}

/// `std::stoll` on the stored bytes: leading whitespace and a sign allowed, trailing
/// junk ignored, at least one digit required.
fn parse_stoll(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    let s = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digits: &str = &rest[..rest.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() {
        return None;
    }
    let v: i64 = format!("{}{digits}", if neg { "-" } else { "" })
        .parse()
        .ok()?;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::unbounded_channel;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn val(r: Reply) -> Vec<u8> {
        match r {
            Reply::Bytes(v) => v[8..].to_vec(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn compare_set_quirks() {
        let (tx, _rx) = unbounded_channel();
        let mut s = State::default();
        let cs = |e: &str, d: &str| Request::CompareSet {
            key: b("k"),
            expected: b(e),
            desired: b(d),
        };
        assert_eq!(val(s.apply(1, cs("", "first"), &tx).unwrap()), b("first"));
        assert_eq!(
            val(s.apply(1, cs("first", "second"), &tx).unwrap()),
            b("second")
        );
        assert_eq!(
            val(s.apply(1, cs("zzz", "third"), &tx).unwrap()),
            b("second")
        );
        let missing = Request::CompareSet {
            key: b("m"),
            expected: b("exp"),
            desired: b("new"),
        };
        assert_eq!(val(s.apply(1, missing, &tx).unwrap()), b("exp"));
        assert_eq!(
            s.num_keys(),
            1,
            "a missing key with a non-empty expected is not created"
        );
    }

    #[test]
    fn add_parses_like_stoll() {
        assert_eq!(parse_stoll(b" 12abc"), Some(12));
        assert_eq!(parse_stoll(b"-3"), Some(-3));
        assert_eq!(parse_stoll(b"abc"), None);
        let (tx, _rx) = unbounded_channel();
        let mut s = State::default();
        s.apply(1, Request::Set(b("n"), b("abc")), &tx).unwrap();
        assert_eq!(
            s.apply(1, Request::Add(b("n"), 1), &tx),
            Err(ApplyError::NotAnInteger)
        );
    }

    #[test]
    fn wait_needs_every_key_and_queue_push_wakes_one() {
        let (tx1, mut rx1) = unbounded_channel();
        let (tx2, mut rx2) = unbounded_channel();
        let mut s = State::default();
        let w = Request::Wait(vec![b("a"), b("b")]);
        assert_eq!(s.apply(1, w, &tx1).unwrap(), Reply::Pending);
        s.apply(3, Request::Set(b("a"), b("1")), &tx1).unwrap();
        assert!(rx1.try_recv().is_err(), "one of two keys is not enough");
        s.apply(3, Request::DeleteKey(b("a")), &tx1).unwrap();
        s.apply(3, Request::Set(b("b"), b("1")), &tx1).unwrap();
        assert_eq!(rx1.try_recv().unwrap(), vec![0]);

        s.apply(1, Request::Wait(vec![b("q")]), &tx1).unwrap();
        s.apply(2, Request::Wait(vec![b("q")]), &tx2).unwrap();
        s.apply(3, Request::QueuePush(b("q"), b("x")), &tx1)
            .unwrap();
        assert_eq!(rx1.try_recv().unwrap(), vec![0]);
        assert!(rx2.try_recv().is_err(), "QUEUE_PUSH wakes only one waiter");
        assert_eq!(
            s.apply(2, Request::CancelWait, &tx2).unwrap(),
            Reply::Canceled
        );
        assert_eq!(s.pending_waits(), 0);
    }

    #[test]
    fn waits_that_end_any_way_leave_no_registrations() {
        let mut s = State::default();
        let mut rxs = Vec::new();
        for round in 0..4 {
            for c in 0..20u64 {
                let (tx, rx) = unbounded_channel();
                rxs.push(rx);
                let keys = (0..500).map(|k| b(&format!("{round}/{c}/{k}"))).collect();
                let conn = round * 100 + c;
                assert_eq!(
                    s.apply(conn, Request::Wait(keys), &tx).unwrap(),
                    Reply::Pending
                );
            }
            assert_eq!(s.watchers(), 20 * 500);
            // Half disconnect, a quarter cancel, a quarter are satisfied.
            for c in 0..20u64 {
                let conn = round * 100 + c;
                match c % 4 {
                    0 | 1 => s.forget(conn),
                    2 => assert_eq!(
                        s.apply(conn, Request::CancelWait, &tx_of(&mut rxs))
                            .unwrap(),
                        Reply::Canceled
                    ),
                    _ => {
                        let kvs = (0..500)
                            .map(|k| (b(&format!("{round}/{c}/{k}")), b("v")))
                            .collect();
                        s.apply(999, Request::MultiSet(kvs), &tx_of(&mut rxs))
                            .unwrap();
                    }
                }
            }
            assert_eq!((s.watchers(), s.pending_waits()), (0, 0), "round {round}");
            assert!(s.watchers.is_empty(), "no empty per-key lists are kept");
        }
    }

    fn tx_of(rxs: &mut Vec<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>) -> Outbox {
        let (tx, rx) = unbounded_channel();
        rxs.push(rx);
        tx
    }

    #[test]
    fn a_wait_after_a_canceled_one_on_the_same_key_is_not_woken_early() {
        let (tx, mut rx) = unbounded_channel();
        let mut s = State::default();
        s.apply(1, Request::Wait(vec![b("a")]), &tx).unwrap();
        s.apply(1, Request::CancelWait, &tx).unwrap();
        s.apply(1, Request::Wait(vec![b("a"), b("b")]), &tx)
            .unwrap();
        s.apply(2, Request::Set(b("a"), b("1")), &tx).unwrap();
        assert!(rx.try_recv().is_err(), "b is still missing");
        s.apply(2, Request::Set(b("b"), b("1")), &tx).unwrap();
        assert_eq!(rx.try_recv().unwrap(), vec![0]);
        assert_eq!((s.watchers(), s.pending_waits()), (0, 0));
    }
}
