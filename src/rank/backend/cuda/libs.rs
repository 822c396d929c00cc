//! Finding the CUDA libraries before cudarc does. cudarc dlopens fixed names
//! (`libcuda.so.1`, `libnvrtc.so.13`, `libcublas.so.13`, `libcublasLt.so.13`,
//! `libnccl.so`) and panics when one is missing, so every GPU run checks here first.
//! What is missing but present in a known folder (`$CUDA_HOME/lib64`,
//! `/usr/local/cuda/lib64`, pip's `nvidia/cu13/lib` and `nvidia/nccl/lib`) is made
//! loadable by prepending that folder to `LD_LIBRARY_PATH` and re-executing rrank
//! once (the loader reads the variable only at start-up). pip's NCCL ships only
//! `libnccl.so.2`, so a private folder with a `libnccl.so` link to it is made.
//! The rest of the environment is passed on untouched (NCCL_* settings included).

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// Why a CUDA library or the headers cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LibError {
    #[error(
        "no CUDA include folder with cuda_bf16.h for NVRTC (looked in {tried}); set CUDA_HOME or `pip install nvidia-cuda-runtime`"
    )]
    NoHeaders { tried: String },
    #[error("cannot load {stem} (tried {names} on the loader's path and in {looked}); {how}")]
    Missing {
        stem: &'static str,
        names: String,
        looked: String,
        how: &'static str,
    },
    #[error(
        "{libs} still cannot be loaded after adding {added} to LD_LIBRARY_PATH; check that the files are readable and built for this machine"
    )]
    StillMissing { libs: String, added: String },
    #[error("cannot find rrank's own path: {0}")]
    OwnPath(std::io::Error),
    #[error("cannot re-execute rrank with the CUDA library path: {0}")]
    Reexec(std::io::Error),
}

/// A library cudarc will load, by the names it tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    Driver,
    Nvrtc,
    Cublas,
    CublasLt,
    Nccl,
}

impl Lib {
    fn names(self) -> &'static [&'static str] {
        match self {
            Lib::Driver => &["libcuda.so", "libcuda.so.1"],
            Lib::Nvrtc => &["libnvrtc.so", "libnvrtc.so.13"],
            Lib::Cublas => &["libcublas.so", "libcublas.so.13"],
            Lib::CublasLt => &["libcublasLt.so", "libcublasLt.so.13"],
            Lib::Nccl => &["libnccl.so"],
        }
    }

    fn stem(self) -> &'static str {
        match self {
            Lib::Driver => "libcuda",
            Lib::Nvrtc => "libnvrtc",
            Lib::Cublas => "libcublas",
            Lib::CublasLt => "libcublasLt",
            Lib::Nccl => "libnccl",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Lib::Driver => {
                "the NVIDIA driver library (libcuda.so.1); install the NVIDIA driver or run on a GPU machine"
            }
            Lib::Nvrtc => {
                "NVRTC 13 (libnvrtc.so.13); install the CUDA 13 toolkit or `pip install nvidia-cuda-nvrtc`"
            }
            Lib::Cublas | Lib::CublasLt => {
                "cuBLAS 13 (libcublas.so.13, libcublasLt.so.13); install the CUDA 13 toolkit or `pip install nvidia-cublas`"
            }
            Lib::Nccl => {
                "NCCL (libnccl.so); install libnccl2 / libnccl-dev or `pip install nvidia-nccl-cu13`"
            }
        }
    }
}

fn loadable(name: &str) -> bool {
    let c = CString::new(name).expect("no NUL in library names");
    // SAFETY: dlopen/dlclose with a valid C string; the handle is closed at once.
    unsafe {
        let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if h.is_null() {
            return false;
        }
        libc::dlclose(h);
    }
    true
}

/// Whether cudarc would find `lib` now.
pub fn available(lib: Lib) -> bool {
    lib.names().iter().any(|n| loadable(n))
}

/// Python's `sys.path` (of `$RRUN_PYTHON`, else `python3`), for pip's CUDA wheels.
pub fn python_paths() -> Vec<PathBuf> {
    let out = std::process::Command::new(&crate::rank::knobs::get().python)
        .args([
            "-c",
            "import sys; print('\\n'.join(p for p in sys.path if p))",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect(),
        _ => vec![],
    }
}

fn cuda_homes() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|k| std::env::var_os(k).map(PathBuf::from))
        .collect();
    v.push("/usr/local/cuda".into());
    v
}

/// Folders that may hold CUDA libraries, most specific first.
fn lib_dirs(py: &[PathBuf]) -> Vec<PathBuf> {
    let mut v = vec![];
    for h in cuda_homes() {
        v.push(h.join("lib64"));
        v.push(h.join("targets/x86_64-linux/lib"));
    }
    for p in py {
        v.push(p.join("nvidia/cu13/lib"));
    }
    v
}

/// A CUDA include folder holding `cuda_bf16.h`, for NVRTC.
pub fn include_dir() -> Result<PathBuf, LibError> {
    let has = |d: &PathBuf| d.join("cuda_bf16.h").is_file();
    let homes: Vec<PathBuf> = cuda_homes()
        .into_iter()
        .map(|h| h.join("include"))
        .collect();
    if let Some(d) = homes.iter().find(|d| has(d)) {
        return Ok(d.clone());
    }
    // Only now ask Python where pip's wheels are (a process start).
    let pip: Vec<PathBuf> = python_paths()
        .iter()
        .map(|p| p.join("nvidia/cu13/include"))
        .collect();
    if let Some(d) = pip.iter().find(|d| has(d)) {
        return Ok(d.clone());
    }
    let tried: Vec<String> = homes
        .iter()
        .chain(&pip)
        .map(|d| d.display().to_string())
        .collect();
    Err(LibError::NoHeaders {
        tried: tried.join(", "),
    })
}

fn nccl_shim(py: &[PathBuf]) -> Option<PathBuf> {
    let lib = py
        .iter()
        .map(|p| p.join("nvidia/nccl/lib/libnccl.so.2"))
        .find(|p| p.is_file())?;
    let dir = std::env::temp_dir().join(format!("rrun-nccl-shim-{}", unsafe { libc::getuid() }));
    std::fs::create_dir_all(&dir).ok()?;
    let link = dir.join("libnccl.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link).ok()?;
    Some(dir)
}

/// Set for the re-executed process (`knobs::get().cuda_libs_reexec`), which must not
/// re-execute again.
const REEXEC_GUARD: &str = "RRANK_CUDA_LIBS_REEXEC";

/// Makes `need` loadable: returns Ok when cudarc will find them all, re-executes
/// this process with a longer `LD_LIBRARY_PATH` when that fixes it, or says which
/// library is missing, where it was looked for and how to get it.
pub fn ensure(need: &[Lib]) -> Result<(), LibError> {
    let missing: Vec<Lib> = need.iter().copied().filter(|l| !available(*l)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let py = python_paths();
    let dirs = lib_dirs(&py);
    let mut add: Vec<PathBuf> = vec![];
    let mut unfound = vec![];
    for lib in &missing {
        let found = if *lib == Lib::Nccl {
            dirs.iter()
                .find(|d| d.join("libnccl.so").is_file())
                .cloned()
                .or_else(|| nccl_shim(&py))
        } else {
            dirs.iter()
                .find(|d| lib.names().iter().any(|n| d.join(n).is_file()))
                .cloned()
        };
        match found {
            Some(d) if *lib != Lib::Driver => {
                if !add.contains(&d) {
                    add.push(d)
                }
            }
            _ => unfound.push(*lib),
        }
    }
    if let Some(lib) = unfound.first() {
        let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(LibError::Missing {
            stem: lib.stem(),
            names: lib.names().join(", "),
            looked: looked.join(", "),
            how: lib.what(),
        });
    }
    if crate::rank::knobs::get().cuda_libs_reexec {
        return Err(LibError::StillMissing {
            libs: missing
                .iter()
                .map(|l| l.names()[l.names().len() - 1])
                .collect::<Vec<_>>()
                .join(", "),
            added: add
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        });
    }
    let mut path: Vec<String> = add.iter().map(|d| d.display().to_string()).collect();
    if let Ok(old) = std::env::var("LD_LIBRARY_PATH")
        && !old.is_empty()
    {
        path.push(old);
    }
    let exe = std::env::current_exe().map_err(LibError::OwnPath)?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_LIBRARY_PATH", path.join(":"))
        .env(REEXEC_GUARD, "1")
        .exec();
    Err(LibError::Reexec(err))
}
