//! rrank's environment knobs as a user meets them: a bad value, a removed knob or a
//! misspelt `RRANK_*` name stops rrank before it loads anything, with one line and
//! exit code 2; `rrank --help` and `rrank knobs` list every knob.

use std::process::{Command, Output};

use rrun::rank::knobs::TABLE;

fn rrank() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_rrank"))
}

/// rrank with `args` and the knobs `env`, none of the caller's RRANK_* variables.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(rrank());
    c.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RRANK_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// `rrank generate` on the tiny test model on CPU: loads and runs in a moment.
fn generate(env: &[(&str, &str)]) -> Output {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/llama");
    run(
        &[
            "generate",
            "--model",
            data,
            "--prompt-ids",
            "1,2",
            "--max-tokens",
            "1",
            "--device",
            "cpu",
        ],
        env,
    )
}

#[test]
fn a_bad_knob_is_one_line_and_exit_2_before_anything_runs() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "RRANK_ALLREDUCE",
            "p2p",
            "RRANK_ALLREDUCE=\"p2p\" is not valid; accepted: auto|nccl",
        ),
        (
            "RRANK_ALLREDUCE_MAX",
            "4X",
            "RRANK_ALLREDUCE_MAX=\"4X\" is not valid; accepted: SIZE: bytes, or with a K, M or G suffix",
        ),
        (
            "RRANK_PROFILE",
            "yes",
            "RRANK_PROFILE=\"yes\" is not valid; accepted: 0|1",
        ),
        (
            "RRANK_FUSE",
            "0",
            "RRANK_FUSE was removed; fused GEMV inputs are always on where they fit",
        ),
        ("RRANK_GEMV", "1", "RRANK_GEMV was removed; "),
        ("RRANK_CUBLASLT", "0", "RRANK_CUBLASLT was removed; "),
        (
            "RRANK_ALLREDUCE_MAXX",
            "4M",
            "unknown variable RRANK_ALLREDUCE_MAXX (did you mean RRANK_ALLREDUCE_MAX?)",
        ),
    ];
    for &(name, value, want) in cases {
        let o = generate(&[(name, value)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}={value}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{name}={value}: one line, got {err}");
        assert!(
            lines[0].starts_with("rrank: error (rank 0): ") && lines[0].contains(want),
            "{name}={value}: {err}"
        );
        assert!(o.stdout.is_empty(), "{name}={value}: nothing ran");
    }
}

#[test]
fn good_knobs_are_taken() {
    let o = generate(&[
        ("RRANK_ALLREDUCE_MAX", "4M"),
        ("RRANK_ALLREDUCE", "nccl"),
        ("RRANK_ATTENTION", "per-head"),
        ("RRANK_PREFILL_ATTENTION", "cuda-cores"),
        ("RRANK_PROFILE", "0"),
        ("RRANK_API_KEY", "sekret"),
        ("RRANK_GEMV", ""),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn help_and_knobs_list_every_knob() {
    let help = run(&["--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    let knobs = run(&["knobs"], &[("RRANK_ALLREDUCE_MAX", "1M")]);
    assert_eq!(knobs.status.code(), Some(0));
    let knobs = String::from_utf8_lossy(&knobs.stdout);
    for k in TABLE {
        assert!(
            help.contains(k.name),
            "{} missing from rrank --help",
            k.name
        );
        assert!(
            knobs.contains(k.name),
            "{} missing from rrank knobs",
            k.name
        );
    }
    assert!(knobs.contains("now: \"1M\""), "{knobs}");
    // `rrank knobs` lists, then checks: a bad value is the last line and exit 2.
    let bad = run(&["knobs"], &[("RRANK_ALLREDUCE", "p2p")]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("RRANK_ALLREDUCE_MAX"));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RRANK_ALLREDUCE=\"p2p\""));
    // docs/knobs.md is `rrank knobs --markdown`.
    let md = run(&["knobs", "--markdown"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&md.stdout),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/knobs.md")).unwrap()
    );
}
