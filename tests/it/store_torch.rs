//! Our blocking client against torch 2.11's own TCPStore server (libuv backend), and
//! torch's client against our server.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rrun::store::{Client, StoreError, StoreServer};

use crate::util::torch_python;

const HOST_SERVER: &str = r#"
import sys, datetime
from torch.distributed import TCPStore
s = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=30))
print(s.port, flush=True)
sys.stdin.read()
print(s.get("from_rust").decode(), flush=True)
"#;

#[test]
#[ignore = "needs torch: scripts/test.sh runs it"]
fn rust_client_against_torch_server() {
    let mut py = Command::new(torch_python())
        .args(["-c", HOST_SERVER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap();

    let mut c = Client::connect("127.0.0.1", port, Duration::from_secs(10), &mut |_| {}).unwrap();
    assert_eq!(c.add_raw(b"init/", 1).unwrap(), 1);
    c.set("k1", b"v1").unwrap();
    assert_eq!(c.get("k1").unwrap(), b"v1");
    assert_eq!(c.add("cnt", 5).unwrap(), 5);
    assert_eq!(c.add("cnt", -2).unwrap(), 3);
    assert_eq!(c.get("cnt").unwrap(), b"3");
    assert!(c.check(&["k1", "cnt"]).unwrap());
    assert!(!c.check(&["nope"]).unwrap());
    assert_eq!(c.compare_set("cs", b"", b"first").unwrap(), b"first");
    assert_eq!(c.compare_set("cs", b"first", b"second").unwrap(), b"second");
    assert_eq!(c.compare_set("cs", b"zzz", b"third").unwrap(), b"second");
    assert_eq!(c.compare_set("missing", b"exp", b"new").unwrap(), b"exp");
    assert!(!c.check(&["missing"]).unwrap());
    c.append("ap", b"ab").unwrap();
    c.append("ap", b"cd").unwrap();
    assert_eq!(c.get("ap").unwrap(), b"abcd");
    c.multi_set(&[("m1", b"x"), ("m2", b"y")]).unwrap();
    assert_eq!(
        c.multi_get(&["m1", "m2"]).unwrap(),
        vec![b"x".to_vec(), b"y".to_vec()]
    );
    assert!(c.delete_key("m1").unwrap());
    assert!(!c.delete_key("m1").unwrap());
    c.queue_push("q", b"item1").unwrap();
    c.queue_push("q", b"item2").unwrap();
    assert_eq!(c.queue_len("q").unwrap(), 2);
    assert_eq!(c.queue_pop("q", true).unwrap(), b"item1");
    assert_eq!(c.queue_pop("q", false).unwrap(), b"item2");
    assert!(matches!(
        c.queue_pop("q", false),
        Err(StoreError::QueueEmpty)
    ));
    let err = c.wait(&["never"], Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, StoreError::Timeout { .. }), "{err}");
    let mut keys = c.list_keys().unwrap();
    keys.sort();
    assert_eq!(keys, ["ap", "cnt", "cs", "k1", "m2"]);
    // init/ (no prefix) counts as a key too.
    assert_eq!(c.num_keys().unwrap(), 6);
    assert!(c.ping(1234).unwrap());
    c.set("from_rust", b"hello torch").unwrap();

    drop(py.stdin.take());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "hello torch",
        "torch's client reads what ours wrote"
    );
    assert!(py.wait().unwrap().success());
}

const BIG_AND_ABANDONED: &str = r#"
import sys, datetime
from torch.distributed import TCPStore
s = TCPStore("127.0.0.1", int(sys.argv[1]), is_master=False, timeout=datetime.timedelta(seconds=30))
vals = [bytes([i]) * (8 << 20) for i in range(8)]
s.multi_set([f"big{i}" for i in range(8)], vals)
print("GOT", s.get("big5") == vals[5], flush=True)
keys = [f"never/{i}" for i in range(5000)]
try:
    s.wait(keys, datetime.timedelta(milliseconds=200))
    print("NO TIMEOUT", flush=True)
except Exception as e:
    print("TIMEOUT", type(e).__name__, flush=True)
print("WAITING", flush=True)
s.wait(keys, datetime.timedelta(seconds=60))
"#;

fn poll(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs torch: scripts/test.sh runs it"]
fn torch_client_against_our_server_big_frame_and_abandoned_waits() {
    let server = StoreServer::start(0).unwrap();
    let mut py = Command::new(torch_python())
        .args(["-c", BIG_AND_ABANDONED, &server.port().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(py.stdout.take().unwrap());
    let mut lines = Vec::new();
    while lines.last().is_none_or(|l| l != "WAITING") {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        lines.push(line.trim().to_string());
    }
    assert_eq!(lines, ["GOT True", "TIMEOUT DistStoreError", "WAITING"]);
    let mut c = Client::connect(
        "127.0.0.1",
        server.port(),
        Duration::from_secs(10),
        &mut |_| {},
    )
    .unwrap();
    for i in 0..8u8 {
        assert!(c.get(&format!("big{i}")).unwrap() == vec![i; 8 << 20]);
    }
    // The timed-out WAIT was canceled; the second is pending, then its client dies.
    poll("torch's second WAIT registered", || {
        server.pending_waits() == 1
    });
    assert_eq!(server.watchers(), 5000, "the canceled WAIT left nothing");
    py.kill().unwrap();
    py.wait().unwrap();
    poll("the dead client's WAIT forgotten", || {
        (server.watchers(), server.pending_waits()) == (0, 0)
    });
}
