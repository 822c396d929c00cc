//! Kernel compilation: the sources in `kernels/` (with `common.cuh` prepended) are
//! compiled by NVRTC at start-up to a CUBIN for the GPU's architecture, and cached
//! on disk under a SHA-256 of source, options, NVRTC version and architecture, one
//! file per module (`$RRUN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/rrun/kernels`, else
//! `~/.cache/rrun/kernels`). Written to a temporary file and renamed, so ranks
//! compiling at once never read half a file.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};

const COMMON: &str = include_str!("../../../../kernels/common.cuh");

/// Every kernel module: (name, source without the prelude). Each compiles to its own
/// CUBIN and has its own entry in the disk cache.
pub const MODULES: [(&str, &str); 7] = [
    (
        "elementwise",
        include_str!("../../../../kernels/elementwise.cu"),
    ),
    (
        "norm_rope",
        include_str!("../../../../kernels/norm_rope.cu"),
    ),
    (
        "attention_decode",
        include_str!("../../../../kernels/attention_decode.cu"),
    ),
    (
        "attention_prefill",
        include_str!("../../../../kernels/attention_prefill.cu"),
    ),
    ("gemv", include_str!("../../../../kernels/gemv.cu")),
    ("sample", include_str!("../../../../kernels/sample.cu")),
    (
        "allreduce",
        include_str!("../../../../kernels/allreduce.cu"),
    ),
];

/// Why a kernel module did not compile.
#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    #[error("nvrtcVersion failed: {0:?}")]
    Version(result::NvrtcError),
    #[error("kernel {module} contains a NUL byte")]
    Nul { module: String },
    #[error("NVRTC could not create program {module}: {code:?}")]
    Create {
        module: String,
        code: result::NvrtcError,
    },
    #[error("kernel module {module} did not compile ({code:?}) with {options}:\n{log}")]
    Compile {
        module: String,
        code: result::NvrtcError,
        options: String,
        log: String,
    },
    #[error("{call} for {module}: {code:?}")]
    Cubin {
        call: &'static str,
        module: String,
        code: result::NvrtcError,
    },
    #[error(transparent)]
    Include(#[from] super::libs::LibError),
}

/// The full source NVRTC compiles for a module.
pub fn full_source(src: &str) -> String {
    format!("{COMMON}\n{src}")
}

/// NVRTC's version as (major, minor).
pub fn version() -> Result<(i32, i32), NvrtcError> {
    let (mut a, mut b) = (0, 0);
    // SAFETY: two valid out-pointers.
    unsafe { sys::nvrtcVersion(&mut a, &mut b) }
        .result()
        .map_err(NvrtcError::Version)?;
    Ok((a, b))
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = &crate::rank::knobs::get().kernel_cache {
        return Some(d.clone());
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("rrun/kernels"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rrun/kernels"))
}

fn options(arch: &str, include: &Path) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".into(),
        "-lineinfo".into(),
        format!("--include-path={}", include.display()),
    ]
}

/// A compiled module image.
pub struct Image {
    pub cubin: Vec<u8>,
    pub cached: bool,
}

/// Compiles `src` (full source) for `arch` (e.g. `sm_90`), using the disk cache.
pub fn compile(name: &str, src: &str, arch: &str, include: &Path) -> Result<Image, NvrtcError> {
    let opts = options(arch, include);
    let (ma, mi) = version()?;
    let mut h = Sha256::new();
    // The headers' own text would be better still; the include folder's path and
    // NVRTC's version identify them well enough for a cache.
    for part in [src, &opts.join("\n"), &format!("{ma}.{mi}"), arch] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let dir = cache_dir();
    let file = dir
        .as_ref()
        .map(|d| d.join(format!("{name}-{arch}-{key}.cubin")));
    if let Some(f) = &file
        && let Ok(cubin) = std::fs::read(f)
        && !cubin.is_empty()
    {
        return Ok(Image {
            cubin,
            cached: true,
        });
    }
    let cubin = compile_uncached(name, src, &opts)?;
    if let (Some(d), Some(f)) = (&dir, &file)
        && std::fs::create_dir_all(d).is_ok()
    {
        let tmp = d.join(format!(".{}.{}", key, std::process::id()));
        if std::fs::write(&tmp, &cubin).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        }
    }
    Ok(Image {
        cubin,
        cached: false,
    })
}

fn compile_uncached(name: &str, src: &str, opts: &[String]) -> Result<Vec<u8>, NvrtcError> {
    compile_with_log(name, src, opts).map(|(cubin, _)| cubin)
}

/// The CUBIN and the program log of a compile (ptxas's report with `--ptxas-options=-v`).
fn compile_with_log(
    name: &str,
    src: &str,
    opts: &[String],
) -> Result<(Vec<u8>, String), NvrtcError> {
    let module = || name.to_string();
    let csrc = CString::new(src).map_err(|_| NvrtcError::Nul { module: module() })?;
    let cname = CString::new(name).expect("module names have no NUL");
    let prog = result::create_program(&csrc, Some(&cname)).map_err(|code| NvrtcError::Create {
        module: module(),
        code,
    })?;
    // SAFETY: `prog` is a live program until destroy_program below.
    unsafe {
        let compiled = result::compile_program(prog, opts);
        let log = result::get_program_log(prog)
            .map(|l| {
                let b: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                String::from_utf8_lossy(&b).into_owned()
            })
            .unwrap_or_default();
        let r = match compiled {
            Err(code) => Err(NvrtcError::Compile {
                module: module(),
                code,
                options: opts.join(" "),
                log,
            }),
            Ok(()) => {
                let mut size = 0usize;
                match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                    Err(code) => Err(NvrtcError::Cubin {
                        call: "nvrtcGetCUBINSize",
                        module: module(),
                        code,
                    }),
                    Ok(()) => {
                        let mut buf = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _)
                            .result()
                            .map(|_| (buf, log))
                            .map_err(|code| NvrtcError::Cubin {
                                call: "nvrtcGetCUBIN",
                                module: module(),
                                code,
                            })
                    }
                }
            }
        };
        let _ = result::destroy_program(prog);
        r
    }
}

/// Compiles every module for `arch` (what CI runs, with no GPU): (name, bytes, cached).
pub fn compile_all(arch: &str) -> Result<Vec<(String, usize, bool)>, NvrtcError> {
    let include = super::libs::include_dir()?;
    MODULES
        .iter()
        .map(|(name, src)| {
            compile(name, &full_source(src), arch, &include)
                .map(|img| (name.to_string(), img.cubin.len(), img.cached))
        })
        .collect()
}

/// Registers, shared memory and spills of every kernel for `arch`, from ptxas's report
/// (`rrank kernels --resources`): one line per kernel, e.g.
/// `attention_bf16: 62 registers, 33152 bytes shared, 0 bytes spilled`.
pub fn resources(arch: &str) -> Result<Vec<String>, NvrtcError> {
    let include = super::libs::include_dir()?;
    let mut opts = options(arch, &include);
    opts.push("--ptxas-options=-v".into());
    let mut out = vec![];
    for (name, src) in MODULES {
        let (_, log) = compile_with_log(name, &full_source(src), &opts)?;
        out.extend(parse_ptxas(&log));
    }
    Ok(out)
}

/// Turns ptxas's `-v` report into one line per kernel.
fn parse_ptxas(log: &str) -> Vec<String> {
    let mut out = vec![];
    let mut kernel = String::new();
    let mut spill = String::from("0");
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            kernel = rest.split('\'').next().unwrap_or("").to_string();
        } else if let Some(before) = line.split(" bytes spill stores").next()
            && line.contains(" bytes spill stores")
        {
            spill = before.rsplit(',').next().unwrap_or("?").trim().to_string();
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let regs = rest.split(" registers").next().unwrap_or("?");
            let smem = line
                .split(", ")
                .find(|p| p.ends_with(" bytes smem"))
                .map(|p| p.trim_end_matches(" bytes smem"))
                .unwrap_or("0");
            out.push(format!(
                "{kernel}: {regs} registers, {smem} bytes shared, {spill} bytes spilled"
            ));
            spill = String::from("0");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_report_becomes_one_line_per_kernel() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'attention_bf16' for 'sm_90'\n\
ptxas info    : Function properties for attention_bf16\n\
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Used 72 registers, used 1 barriers, 33152 bytes smem, 464 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'add_f32' for 'sm_90'\n\
ptxas info    : Function properties for add_f32\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 10 registers, 376 bytes cmem[0]\n";
        assert_eq!(
            parse_ptxas(log),
            [
                "attention_bf16: 72 registers, 33152 bytes shared, 4 bytes spilled",
                "add_f32: 10 registers, 0 bytes shared, 0 bytes spilled"
            ]
        );
    }
}
