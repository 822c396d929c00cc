//! Malformed, hostile and heavy traffic against rrun's store server: each bad client
//! is dropped alone; the server stays up and keeps serving everyone else; a large
//! frame does not stall the others; clients that wait and leave leave nothing behind.

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rrun::store::codec::{self, Request};
use rrun::store::{Client, StoreServer};

use crate::util::{closed, free_port, ping, raw, rrun};

fn server() -> (StoreServer, u16) {
    let s = StoreServer::start(0).unwrap();
    let p = s.port();
    (s, p)
}

fn client(port: u16) -> Client {
    Client::connect("127.0.0.1", port, Duration::from_secs(5), &mut |_| {}).unwrap()
}

#[test]
fn bad_magic_unknown_command_oversize_key_are_dropped_alone() {
    let (_s, port) = server();
    let mut good = client(port);
    good.set("k", b"v").unwrap();

    let mut bad_magic = TcpStream::connect(("127.0.0.1", port)).unwrap();
    bad_magic
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    bad_magic
        .write_all(&[0, 1, 2, 3, 4, 13, 1, 0, 0, 0])
        .unwrap();
    assert!(closed(&mut bad_magic), "wrong magic closes the connection");

    let mut no_validate = TcpStream::connect(("127.0.0.1", port)).unwrap();
    no_validate
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    no_validate.write_all(&[13, 7, 0, 0, 0]).unwrap();
    assert!(
        closed(&mut no_validate),
        "a first command other than VALIDATE closes"
    );

    let mut unknown = raw(port);
    unknown.write_all(&[99]).unwrap();
    assert!(closed(&mut unknown), "command byte 99 closes");

    let mut big = raw(port);
    let mut m = vec![1u8];
    m.extend_from_slice(&8193u64.to_le_bytes());
    big.write_all(&m).unwrap();
    assert!(
        closed(&mut big),
        "an 8193-byte key closes before its body arrives"
    );

    let mut ok_key = raw(port);
    let mut m = vec![1u8];
    m.extend_from_slice(&8192u64.to_le_bytes());
    m.extend(std::iter::repeat_n(b'a', 8192));
    m.extend_from_slice(&1u64.to_le_bytes());
    m.push(b'x');
    ok_key.write_all(&m).unwrap();
    assert!(ping(&mut ok_key, 5), "an 8192-byte key is accepted");

    let mut not_number = raw(port);
    good.set("nan", b"abc").unwrap();
    assert_eq!(good.get("nan").unwrap(), b"abc");
    let mut m = vec![4u8];
    m.extend_from_slice(&4u64.to_le_bytes());
    m.extend_from_slice(b"/nan");
    m.extend_from_slice(&1i64.to_le_bytes());
    not_number.write_all(&m).unwrap();
    assert!(
        closed(&mut not_number),
        "ADD on a non-number closes, as torch's server does"
    );

    assert_eq!(good.get("k").unwrap(), b"v");
    assert!(good.ping(77).unwrap());
}

#[test]
fn truncated_frames_and_a_thousand_idle_connections_block_nobody() {
    let (_s, port) = server();
    // Half a SET frame, never finished.
    let mut half = raw(port);
    half.write_all(&[1, 10, 0, 0, 0, 0, 0, 0, 0, b'/', b'a'])
        .unwrap();
    // A frame announcing a huge (allowed) value that never arrives.
    let mut slow = raw(port);
    let mut m = vec![1u8];
    m.extend_from_slice(&2u64.to_le_bytes());
    m.extend_from_slice(b"/s");
    m.extend_from_slice(&(8u64 * 1024 * 1024).to_le_bytes());
    slow.write_all(&m).unwrap();

    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let t = Instant::now();
    let mut good = client(port);
    for i in 0..100 {
        good.set(&format!("k{i}"), b"v").unwrap();
        assert_eq!(good.get(&format!("k{i}")).unwrap(), b"v");
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "good client was slowed: {:?}",
        t.elapsed()
    );
    // The half frame completes later and is applied.
    half.write_all(&[
        b'b', b'c', b'd', b'e', b'f', b'g', b'h', b'i', 1, 0, 0, 0, 0, 0, 0, 0, b'z',
    ])
    .unwrap();
    assert_eq!(good.get("abcdefghi").unwrap(), b"z");
    drop(idle);
    assert!(ping(&mut half, 9));
}

#[test]
fn wait_timeout_cancels_and_a_raced_wakeup_is_ordered() {
    let (_s, port) = server();
    let mut a = client(port);
    let t = Instant::now();
    let err = a.wait(&["never"], Duration::from_millis(200)).unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(err.to_string(), "wait timeout after 200ms, keys: /never");
    // The connection is still usable after the CANCEL_WAIT exchange.
    a.set("x", b"1").unwrap();
    assert_eq!(a.get("x").unwrap(), b"1");

    // Raw: WAIT on a key, have another client set it, then CANCEL_WAIT: the
    // STOP_WAITING (00) must come before WAIT_CANCELED (01).
    let mut r = raw(port);
    let mut m = vec![6u8];
    m.extend_from_slice(&1u64.to_le_bytes());
    m.extend_from_slice(&2u64.to_le_bytes());
    m.extend_from_slice(b"/w");
    r.write_all(&m).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    a.set("w", b"1").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    r.write_all(&[12]).unwrap();
    let mut b = [0u8; 2];
    std::io::Read::read_exact(&mut r, &mut b).unwrap();
    assert_eq!(b, [0, 1]);
}

#[test]
fn port_in_use_is_reported() {
    let (_s, port) = server();
    let err = StoreServer::start(port).err().expect("second bind fails");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[test]
fn a_64_mib_frame_does_not_stall_other_clients() {
    let (_s, port) = server();
    // The largest values the store takes, eight of them: a 64 MiB MULTI_SET frame.
    let values: Vec<Vec<u8>> = (0..8u8)
        .map(|i| {
            let mut v = vec![i; codec::MAX_VALUE_LEN];
            v[..4].copy_from_slice(b"head");
            v
        })
        .collect();
    let kvs = (0..8)
        .map(|i| (format!("/big{i}").into_bytes(), values[i].clone()))
        .collect();
    let mut frame = Vec::new();
    codec::encode(&Request::MultiSet(kvs), &mut frame);
    assert!(frame.len() > 64 << 20);

    let mut pinger = raw(port);
    pinger
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let landed = AtomicBool::new(false);
    let (mut worst, mut pings) = (Duration::ZERO, 0u32);
    let sent = std::thread::scope(|sc| {
        let sender = sc.spawn(|| {
            let mut big = raw(port);
            big.set_read_timeout(Some(Duration::from_secs(120)))
                .unwrap();
            let t = Instant::now();
            big.write_all(&frame).unwrap();
            // The PING's echo follows the MULTI_SET: the frame has been applied.
            let ok = ping(&mut big, 7);
            landed.store(true, Ordering::SeqCst);
            (ok, t.elapsed())
        });
        while !landed.load(Ordering::SeqCst) {
            let t = Instant::now();
            assert!(ping(&mut pinger, pings), "PING {pings} failed");
            worst = worst.max(t.elapsed());
            pings += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        sender.join().unwrap()
    });
    eprintln!(
        "64 MiB MULTI_SET took {:?}; {pings} PINGs meanwhile, slowest {worst:?}",
        sent.1
    );
    assert!(
        sent.0,
        "the big client's PING after its MULTI_SET was echoed"
    );
    assert!(pings >= 2, "PINGs overlapped the transfer ({pings})");
    assert!(
        worst < Duration::from_millis(200),
        "a PING took {worst:?} while another client sent a 64 MiB frame"
    );
    let mut c = client(port);
    for (i, v) in values.iter().enumerate() {
        assert!(
            c.get(&format!("big{i}")).unwrap() == *v,
            "big{i} landed intact"
        );
    }
}

/// One WAIT for `keys` on a fresh connection, confirmed registered by a PING's echo.
fn waiting_client(port: u16, keys: Vec<Vec<u8>>) -> TcpStream {
    let mut s = raw(port);
    let mut m = Vec::new();
    codec::encode(&Request::Wait(keys), &mut m);
    s.write_all(&m).unwrap();
    assert!(ping(&mut s, 5), "the server answered behind the WAIT");
    s
}

fn keys(round: usize, client: usize, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| format!("/missing/{round}/{client}/{k}").into_bytes())
        .collect()
}

#[test]
fn clients_that_wait_and_disconnect_leave_no_watchers() {
    let (s, port) = server();
    for round in 0..3 {
        let conns: Vec<TcpStream> = (0..10)
            .map(|c| waiting_client(port, keys(round, c, 1000)))
            .collect();
        assert_eq!(s.pending_waits(), 10);
        assert_eq!(s.watchers(), 10 * 1000);
        drop(conns);
        let t = Instant::now();
        while (s.watchers(), s.pending_waits()) != (0, 0) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            (s.watchers(), s.pending_waits()),
            (0, 0),
            "round {round}: watchers and waits left after their clients closed"
        );
    }
    assert!(ping(&mut raw(port), 1));
}

/// KiB figures as MiB, one decimal, space-separated.
fn mib(kib: &[u64]) -> String {
    let v: Vec<String> = kib
        .iter()
        .map(|k| format!("{:.1}", *k as f64 / 1024.0))
        .collect();
    v.join(" ")
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// An rrun agent; stopped (SIGTERM, then SIGKILL) when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn agent_rss_stays_flat_while_waiting_clients_come_and_go() {
    let port = free_port();
    let agent = Agent(
        Command::new(rrun())
            .args(["--nnodes", "1", "--nproc-per-node", "1"])
            .args(["--master-addr", "127.0.0.1", "--master-port"])
            .arg(port.to_string())
            .args(["--no-python", "sleep", "300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the agent's store did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = rss_kib(agent.0.id());
    // Rounds of 20 clients, each waiting on 5,000 keys nobody sets, then leaving.
    let (mut waiting, mut rss) = (Vec::new(), Vec::new());
    for round in 0..6 {
        let conns: Vec<TcpStream> = (0..20)
            .map(|c| waiting_client(port, keys(round, c, 5000)))
            .collect();
        waiting.push(rss_kib(agent.0.id()));
        drop(conns);
        // Closing is handled asynchronously; a fresh client's PING after a pause
        // shows the server is past it.
        std::thread::sleep(Duration::from_millis(300));
        assert!(ping(&mut raw(port), 9));
        rss.push(rss_kib(agent.0.id()));
    }
    eprintln!(
        "agent VmRSS, MiB: {} before; per round, while waiting {} / after {}",
        mib(&[before]),
        mib(&waiting),
        mib(&rss)
    );
    // Round 0 warms the allocator up; from there on the RSS must stay flat (a leak of
    // the waits' registrations grows it by tens of MiB a round).
    let growth = rss[rss.len() - 1].saturating_sub(rss[0]);
    assert!(
        growth < 16 * 1024,
        "agent RSS grew {growth} KiB over {} rounds: {} MiB",
        rss.len() - 1,
        mib(&rss)
    );
}
