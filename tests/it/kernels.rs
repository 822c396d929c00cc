//! The CUDA backend on a machine without a GPU: every kernel compiles with NVRTC
//! (from the pip wheels that torch installs into the test venv), and asking for a
//! GPU that is not there is one clear line and exit 2.

use std::process::Command;

use crate::util::torch_python;

fn rrank() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_rrank"))
}

#[test]
#[ignore = "needs the test venv's NVRTC wheel (RRUN_TEST_PYTHON); run by scripts/test.sh"]
fn every_kernel_compiles_with_nvrtc() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(rrank())
        .args(["kernels", "--arch", "sm_80,sm_90"])
        .env("RRUN_PYTHON", torch_python())
        .env("RRUN_KERNEL_CACHE", cache.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for module in [
        "elementwise",
        "norm_rope",
        "attention_decode",
        "attention_prefill",
        "gemv",
        "sample",
        "allreduce",
    ] {
        for arch in ["sm_80", "sm_90"] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("{module} {arch}:")))
                .unwrap_or_else(|| panic!("no {module} {arch} in {stdout}"));
            assert!(!line.contains("from the cache"), "compiled fresh: {line}");
        }
    }
    // A second run is served from the disk cache.
    let again = Command::new(rrank())
        .args(["kernels", "--arch", "sm_90"])
        .env("RRUN_PYTHON", torch_python())
        .env("RRUN_KERNEL_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("from the cache"));
}

/// Threads per block each kernel is launched with at most (src/rank/backend/cuda).
fn launch_threads(kernel: &str) -> u64 {
    let base = kernel.rsplit_once('_').map_or(kernel, |(b, _)| b);
    match base {
        // launch_rows: up to one thread per column, at most 1024; sampling: 1024.
        "embed" | "rms_norm" | "rope_kv" | "gather_rows" | "sample" => 1024,
        // per-token attention: 1024 when a step has few blocks.
        "attention" => 1024,
        // the one-shot all-reduce: RR_AR_THREADS.
        "all_reduce" => 512,
        // grouped decode attention: RR_DEC_THREADS.
        b if b.starts_with("attention_decode") => 128,
        // tensor-core prefill attention: two warps.
        b if b.starts_with("attention_prefill_tc") => 64,
        _ => 256,
    }
}

#[test]
#[ignore = "needs the test venv's NVRTC wheel (RRUN_TEST_PYTHON); run by scripts/test.sh"]
fn every_kernel_fits_its_launch_and_spills_nothing() {
    let out = Command::new(rrank())
        .args(["kernels", "--arch", "sm_80,sm_90", "--resources"])
        .env("RRUN_PYTHON", torch_python())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = 0;
    for line in stdout.lines() {
        // "sm_90 attention_bf16: 62 registers, 16512 bytes shared, 0 bytes spilled"
        let (head, rest) = line.split_once(": ").expect(line);
        let kernel = head.split_whitespace().nth(1).expect(line);
        let nums: Vec<u64> = rest
            .split(", ")
            .map(|p| p.split_whitespace().next().unwrap().parse().expect(line))
            .collect();
        let (regs, shared, spilled) = (nums[0], nums[1], nums[2]);
        let threads = launch_threads(kernel);
        assert!(
            regs * threads <= 65536,
            "{line}: {threads} threads need at most {} registers each",
            65536 / threads
        );
        assert!(
            shared <= 48 * 1024,
            "{line}: over 48 KiB of static shared memory"
        );
        assert_eq!(spilled, 0, "{line}");
        seen += 1;
    }
    // Both architectures, every kernel of every module.
    assert!(seen >= 2 * 51, "{stdout}");
}

#[test]
fn no_gpu_is_one_clear_line_and_exit_2() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/llama");
    let out = Command::new(rrank())
        .args([
            "generate",
            "--model",
            data,
            "--prompt-ids",
            "1,2",
            "--device",
            "cuda",
        ])
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("RRUN_PYTHON", "/nonexistent/python")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(0) {
        return; // a machine with a GPU: nothing to check here
    }
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        err.contains("libcuda") || err.contains("no GPU is visible"),
        "{err}"
    );
}

#[test]
fn bf16_on_cpu_is_refused() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/llama");
    let out = Command::new(rrank())
        .args([
            "generate",
            "--model",
            data,
            "--prompt-ids",
            "1,2",
            "--device",
            "cpu",
            "--dtype",
            "bfloat16",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--dtype bfloat16 needs a GPU"), "{err}");
}
