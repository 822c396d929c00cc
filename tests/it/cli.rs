//! rrun's command line as a user meets it: usage errors, one-line errors with
//! numbers and fixes, PET_* fallbacks, exit codes. No torch needed (`--no-python`).

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::util::{free_port, rrun};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(rrun());
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn usage_errors_exit_2() {
    let o = run(&["--nproc-per-node", "2"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("TRAINING_SCRIPT"), "{}", stderr(&o));
    assert_eq!(run(&["--no-such-flag", "x.py"], &[]).status.code(), Some(2));
    assert_eq!(
        run(&["--master-port", "notaport", "x.py"], &[])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["--help"], &[]).status.code(), Some(0));
}

#[test]
fn bad_values_give_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--nnodes", "1:2:3", "--no-python", "true"],
            "not in \"MIN:MAX\" format",
        ),
        (
            &["--nnodes", "3:1", "--no-python", "true"],
            "need 0 < MIN <= MAX (got min 3, max 1)",
        ),
        (
            &["--nproc-per-node", "foo", "--no-python", "true"],
            "Unsupported nproc_per_node value: foo",
        ),
        (
            &["--nproc-per-node", "0", "--no-python", "true"],
            "need at least 1 worker",
        ),
        (
            &["missing_script.py"],
            "training script \"missing_script.py\" not found",
        ),
        (
            &["--no-python", "no-such-program-xyz"],
            "program \"no-such-program-xyz\" not found",
        ),
        (&["-m", "--no-python", "x"], "Don't use both"),
        (
            &["--max-restarts", "-1", "--no-python", "true"],
            "--max-restarts -1",
        ),
        (
            &["--redirects", "7", "--no-python", "true"],
            "--redirects \"7\"",
        ),
        (
            &["--local-ranks-filter", "a", "--no-python", "true"],
            "comma-separated list of integers",
        ),
    ];
    for (args, want) in cases {
        let o = run(args, &[]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(
            e.starts_with("rrun: error: ") && e.contains(want),
            "{args:?}: {e}"
        );
        assert_eq!(
            e.trim_end().lines().count(),
            1,
            "{args:?}: one line, got {e}"
        );
    }
}

#[test]
fn port_in_use_names_the_port_and_holder() {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let o = run(&["--master-port", &port, "--no-python", "true"], &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        e.contains(&format!("master port {port} is already in use")),
        "{e}"
    );
    assert!(
        e.contains(&format!("held by pid {}", std::process::id())),
        "{e}"
    );
    assert!(e.contains("--standalone"), "{e}");
}

#[test]
fn unreachable_master_times_out_with_the_address() {
    let port = free_port().to_string();
    let t = Instant::now();
    let o = run(
        &[
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-port",
            &port,
            "--rdzv-conf",
            "timeout=2",
            "--no-python",
            "true",
        ],
        &[],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        e.contains(&format!(
            "could not reach the node-0 store at 127.0.0.1:{port} after 2 s"
        )),
        "{e}"
    );
}

#[test]
fn node_zero_reports_progress_then_times_out() {
    let port = free_port().to_string();
    let o = run(
        &[
            "--nnodes",
            "2",
            "--master-port",
            &port,
            "--rdzv-conf",
            "timeout=6",
            "--no-python",
            "true",
        ],
        &[],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!(
            "waiting for nodes: 1/2 joined at 127.0.0.1:{port}, 5 s"
        )),
        "{e}"
    );
    assert!(
        e.contains("Timed out after 6 seconds waiting for clients. 1/2 clients joined."),
        "{e}"
    );
}

#[test]
fn static_rdzv_endpoint_is_the_workers_master() {
    // torchrun's static rendezvous hosts the store at --rdzv-endpoint and gives workers
    // its host and port, whatever --master-port says.
    let endpoint = format!("127.0.0.1:{}", free_port());
    let o = run(
        &[
            "--rdzv_id=101",
            &format!("--rdzv_endpoint={endpoint}"),
            "--master-port",
            "1",
            "--no-python",
            "sh",
            "-c",
            "echo master=$MASTER_ADDR:$MASTER_PORT",
        ],
        &[],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("master={endpoint}")
    );
    assert!(
        e.contains("] --master-port 1 not used: with --rdzv-endpoint"),
        "{e}"
    );
    let o = run(
        &["--rdzv-endpoint", "localhost", "--no-python", "true"],
        &[],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("rrun: error: --rdzv-endpoint \"localhost\": port is missing in endpoint"),
        "{e}"
    );
}

#[test]
fn pet_env_fallbacks_and_flags_winning() {
    let port = free_port().to_string();
    let o = run(
        &["--no-python", "sh", "-c", "echo rank=$RANK ws=$WORLD_SIZE"],
        &[
            ("PET_NPROC_PER_NODE", "3"),
            ("PET_MASTER_PORT", &port),
            ("PET_TEE", "1"),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for r in 0..3 {
        assert!(
            out.contains(&format!("[default{r}]:rank={r} ws=3")),
            "{out}"
        );
    }
    let o = run(
        &[
            "--nproc-per-node",
            "1",
            "--no-python",
            "sh",
            "-c",
            "echo ws=$WORLD_SIZE",
        ],
        &[("PET_NPROC_PER_NODE", "3"), ("PET_MASTER_PORT", &port)],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("ws=1"));
}

#[test]
fn tee_prefixes_rank_maps_above_nine_and_filters() {
    let port = free_port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        &[
            "--nproc-per-node",
            "12",
            "--master-port",
            &port,
            "--log-dir",
            dir.path().to_str().unwrap(),
            "-t",
            "11:1,3:3",
            "-r",
            "0:1",
            "--local-ranks-filter",
            "3,11,5",
            "--no-python",
            "sh",
            "-c",
            "echo out$LOCAL_RANK; echo err$LOCAL_RANK >&2",
        ],
        &[("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", "")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let err = stderr(&o);
    assert!(
        out.contains("[default11]:out11\n") && out.contains("[default3]:out3\n"),
        "{out}"
    );
    assert!(
        err.contains("[default3]:err3\n") && err.contains("err11\n") && err.contains("err5\n"),
        "{err}"
    );
    assert!(
        !out.contains("out0") && !out.contains("out7") && !err.contains("err7"),
        "filtered ranks hidden: {out} {err}"
    );
    assert!(
        out.contains("out5\n") && !out.contains("[default5]"),
        "untee'd rank 5 is inherited, unprefixed"
    );
    // Files: <dir>/none_<rand>/attempt_0/<lr>/stdout.log
    let run_dir = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        run_dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("none_")
    );
    let a = run_dir.join("attempt_0");
    assert_eq!(
        std::fs::read_to_string(a.join("0/stdout.log")).unwrap(),
        "out0\n",
        "rank 0 redirected to file"
    );
    assert_eq!(
        std::fs::read_to_string(a.join("11/stdout.log")).unwrap(),
        "out11\n"
    );
    assert_eq!(
        std::fs::read_to_string(a.join("3/stderr.log")).unwrap(),
        "err3\n"
    );
    assert!(!a.join("7/stdout.log").exists());
    assert!(a.join("7").is_dir());
}

#[test]
fn prefix_template_and_duplicate_filters() {
    let port = free_port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        &[
            "--nproc-per-node",
            "2",
            "--master-port",
            &port,
            "--log-dir",
            dir.path().to_str().unwrap(),
            "-t",
            "3",
            "--duplicate-stdout-filters",
            "keep,,me",
            "--no-python",
            "sh",
            "-c",
            "echo 'keep,me'; echo drop",
        ],
        &[(
            "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE",
            "[${role_name}|r${rank}|l${local_rank}]: ",
        )],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("[default|r1|l1]: keep,me\n"), "{out}");
    let run_dir = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let f = std::fs::read_to_string(run_dir.join("attempt_0/filtered_stdout.log")).unwrap();
    assert_eq!(f.lines().count(), 2, "{f}");
    assert!(!f.contains("drop"));
}
