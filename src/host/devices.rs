//! Counting what `--nproc-per-node gpu|cpu|auto` refers to, without CUDA libraries:
//! NVIDIA GPUs from /proc/driver/nvidia/gpus (or `nvidia-smi -L`), narrowed by
//! CUDA_VISIBLE_DEVICES the way the CUDA runtime narrows them, and online CPUs.

use std::process::{Command, Stdio};

/// GPUs the driver knows about, before CUDA_VISIBLE_DEVICES.
fn physical_gpu_count() -> usize {
    if let Ok(rd) = std::fs::read_dir("/proc/driver/nvidia/gpus") {
        let n = rd.filter_map(Result::ok).count();
        if n > 0 {
            return n;
        }
    }
    Command::new("nvidia-smi")
        .arg("-L")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU "))
                .count()
        })
        .unwrap_or(0)
}

/// Applies CUDA_VISIBLE_DEVICES to `physical` GPUs: entries are read up to the
/// first invalid one (as the CUDA runtime does); unset means all.
pub fn visible_count(physical: usize, cvd: Option<&str>) -> usize {
    let Some(cvd) = cvd else { return physical };
    let mut n = 0;
    for item in cvd.split(',') {
        let item = item.trim();
        let ok = match item.parse::<i64>() {
            Ok(i) => i >= 0 && (i as usize) < physical,
            // GPU-/MIG- UUIDs: count them; the driver resolves them.
            Err(_) => item.starts_with("GPU-") || item.starts_with("MIG-"),
        };
        if !ok {
            break;
        }
        n += 1;
    }
    n.min(physical)
}

/// NVIDIA GPUs this process may use.
pub fn visible_gpu_count() -> usize {
    let physical = physical_gpu_count();
    if physical == 0 {
        return 0;
    }
    visible_count(
        physical,
        std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
    )
}

/// Online CPUs (Python's `os.cpu_count()`).
pub fn cpu_count() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_visible_devices_narrows() {
        assert_eq!(visible_count(2, None), 2);
        assert_eq!(visible_count(2, Some("")), 0);
        assert_eq!(visible_count(2, Some("1")), 1);
        assert_eq!(visible_count(2, Some("0,1")), 2);
        assert_eq!(visible_count(2, Some("0,5,1")), 1);
        assert_eq!(visible_count(2, Some("-1")), 0);
        assert_eq!(visible_count(8, Some("GPU-abc,GPU-def")), 2);
    }
}
