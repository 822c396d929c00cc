//! rrank's environment knobs: every `RRANK_*` / `RRUN_*` variable the rank side reads,
//! parsed once at start-up ([`init`], first thing in [`crate::rank::run`]) into one
//! typed [`Knobs`] that the rest of the process reads through [`get`]. One table
//! ([`TABLE`]) names each knob with its accepted values, default and meaning; it drives
//! the parsing, `rrank knobs`, the listing at the end of `rrank --help` and
//! docs/knobs.md ([`markdown`]). A bad value, a removed knob or an unknown `RRANK_*`
//! name is a [`KnobError`]: one line naming the variable, and exit code 2.
//!
//! Only `RRANK_*` names are checked for typos: `RRUN_*` names also belong to the
//! launcher (rrun) and to the test scripts, so unknown ones are left alone.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The decode attention kernel (`RRANK_ATTENTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Attention {
    /// The GQA-grouped split-context kernel where the shape allows it, else per-head.
    #[default]
    Auto,
    /// The one-block-per-query-head kernel for every shape.
    PerHead,
}

/// The prefill attention kernel (`RRANK_PREFILL_ATTENTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefillAttention {
    /// Tensor cores for bf16/f16 with head_dim 64 or 128, else the f32-arithmetic kernel.
    #[default]
    Auto,
    /// The f32-arithmetic (CUDA-core) kernel for every shape.
    CudaCores,
}

/// The tensor-parallel all-reduce (`RRANK_ALLREDUCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllReduce {
    /// The one-shot P2P kernel for messages up to `allreduce_max` where every rank of
    /// the group can map every peer, NCCL for the rest.
    #[default]
    Auto,
    /// NCCL for every all-reduce.
    Nccl,
}

/// Default of `RRANK_ALLREDUCE_MAX`: above it NCCL's ring, which reads each byte fewer
/// times, is faster than the one-shot kernel.
pub const DEFAULT_ALLREDUCE_MAX: usize = 4 << 20;

/// Every knob's value (the default where the variable is unset or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// `RRANK_PROFILE=1`: time kernels with CUDA events (eager steps only).
    pub profile: bool,
    /// `RRANK_ATTENTION`.
    pub attention: Attention,
    /// `RRANK_PREFILL_ATTENTION`.
    pub prefill_attention: PrefillAttention,
    /// `RRANK_ALLREDUCE`.
    pub allreduce: AllReduce,
    /// `RRANK_ALLREDUCE_MAX`: the largest message (bytes) of the one-shot all-reduce.
    pub allreduce_max: usize,
    /// `RRUN_KERNEL_CACHE`: the kernel cache folder (None: the XDG/home default).
    pub kernel_cache: Option<PathBuf>,
    /// `RRUN_PYTHON`: the python whose `sys.path` holds pip's CUDA wheels.
    pub python: PathBuf,
    /// `RRANK_CUDA_LIBS_REEXEC=1`: this process is rrank re-executed with the CUDA
    /// libraries' folders on `LD_LIBRARY_PATH` (set by rrank itself).
    pub cuda_libs_reexec: bool,
}

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs {
            profile: false,
            attention: Attention::Auto,
            prefill_attention: PrefillAttention::Auto,
            allreduce: AllReduce::Auto,
            allreduce_max: DEFAULT_ALLREDUCE_MAX,
            kernel_cache: None,
            python: PathBuf::from("python3"),
            cuda_libs_reexec: false,
        }
    }
}

/// Why the environment was refused; each is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KnobError {
    #[error("{name}={value:?} is not valid; accepted: {accepted}")]
    Bad {
        name: &'static str,
        value: String,
        accepted: &'static str,
    },
    #[error("{name} is not valid UTF-8; accepted: {accepted}")]
    NotUnicode {
        name: &'static str,
        accepted: &'static str,
    },
    #[error("{name} was removed; {why} (unset it)")]
    Removed {
        name: &'static str,
        why: &'static str,
    },
    #[error(
        "unknown variable {name}{}; `rrank knobs` lists the RRANK_* variables",
        did_you_mean(*.suggestion)
    )]
    Unknown {
        name: String,
        suggestion: Option<&'static str>,
    },
}

fn did_you_mean(s: Option<&str>) -> String {
    s.map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default()
}

/// What a knob is to rrank.
#[derive(Clone, Copy)]
pub enum Role {
    /// A setting: sets its [`Knobs`] field from a non-empty value, or None if the value
    /// is not accepted.
    Setting(fn(&mut Knobs, &str) -> Option<()>),
    /// Read by the command line parser as a flag's default (listed only).
    Flag(&'static str),
    /// Set by rrank for itself; parsed like a setting.
    Internal(fn(&mut Knobs, &str) -> Option<()>),
    /// No longer read; setting it is an error that says why.
    Removed(&'static str),
}

/// One row of [`TABLE`].
pub struct Knob {
    pub name: &'static str,
    /// The accepted values, as shown to the user.
    pub values: &'static str,
    pub default: &'static str,
    /// What it decides, in one line.
    pub meaning: &'static str,
    pub role: Role,
}

fn zero_one(s: &str) -> Option<bool> {
    match s {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// A size in bytes: digits, optionally followed by K, M or G (KiB multiples, either
/// case, optionally spelt KiB/MiB/GiB or KB/MB/GB).
pub fn parse_size(s: &str) -> Option<usize> {
    let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let (num, unit) = s.split_at(digits);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    num.parse::<usize>().ok()?.checked_mul(1usize << shift)
}

/// Every knob rrank knows, in the order they are listed.
pub const TABLE: &[Knob] = &[
    Knob {
        name: "RRANK_PROFILE",
        values: "0|1",
        default: "0",
        meaning: "1: time every kernel launch, GEMM and collective of eager steps with CUDA events and print a table per GPU when it closes (CUDA graphs are off while it is on)",
        role: Role::Setting(|k, v| {
            k.profile = zero_one(v)?;
            Some(())
        }),
    },
    Knob {
        name: "RRANK_ATTENTION",
        values: "auto|per-head",
        default: "auto",
        meaning: "Decode attention: auto takes the GQA-grouped split-context kernel where the shape allows (head_dim % 8 == 0, <= 256, at most 8 query heads per KV head) and the per-head kernel elsewhere; per-head takes the per-head kernel everywhere",
        role: Role::Setting(|k, v| {
            k.attention = match v {
                "auto" => Attention::Auto,
                "per-head" => Attention::PerHead,
                _ => return None,
            };
            Some(())
        }),
    },
    Knob {
        name: "RRANK_PREFILL_ATTENTION",
        values: "auto|cuda-cores",
        default: "auto",
        meaning: "Prefill attention: auto takes the tensor-core kernel for bf16/f16 with head_dim 64 or 128 and the f32-arithmetic kernel elsewhere; cuda-cores takes the f32-arithmetic kernel everywhere",
        role: Role::Setting(|k, v| {
            k.prefill_attention = match v {
                "auto" => PrefillAttention::Auto,
                "cuda-cores" => PrefillAttention::CudaCores,
                _ => return None,
            };
            Some(())
        }),
    },
    Knob {
        name: "RRANK_ALLREDUCE",
        values: "auto|nccl",
        default: "auto",
        meaning: "Tensor-parallel all-reduce: auto takes the one-shot P2P kernel for messages up to RRANK_ALLREDUCE_MAX when every GPU of the group can map every other, NCCL for the rest; nccl takes NCCL for all",
        role: Role::Setting(|k, v| {
            k.allreduce = match v {
                "auto" => AllReduce::Auto,
                "nccl" => AllReduce::Nccl,
                _ => return None,
            };
            Some(())
        }),
    },
    Knob {
        name: "RRANK_ALLREDUCE_MAX",
        values: "SIZE: bytes, or with a K, M or G suffix (KiB multiples), e.g. 4M",
        default: "4M",
        meaning: "Largest all-reduce message of the one-shot P2P kernel (rounded up to 16 bytes; the group takes its smallest member's); each rank allocates twice this on its GPU",
        role: Role::Setting(|k, v| {
            k.allreduce_max = parse_size(v)?;
            Some(())
        }),
    },
    Knob {
        name: "RRUN_KERNEL_CACHE",
        values: "DIR",
        default: "$XDG_CACHE_HOME/rrun/kernels, else ~/.cache/rrun/kernels",
        meaning: "Where compiled kernel modules (CUBIN, one file per module, architecture and source) are cached",
        role: Role::Setting(|k, v| {
            k.kernel_cache = Some(PathBuf::from(v));
            Some(())
        }),
    },
    Knob {
        name: "RRUN_PYTHON",
        values: "PYTHON: a command or a path",
        default: "python3",
        meaning: "The python whose sys.path is searched for pip's CUDA wheels (nvidia/cu13, nvidia/nccl) when a CUDA library or header is not found otherwise",
        role: Role::Setting(|k, v| {
            k.python = PathBuf::from(v);
            Some(())
        }),
    },
    Knob {
        name: "RRANK_API_KEY",
        values: "KEY",
        default: "unset",
        meaning: "The default of --api-key: require `Authorization: Bearer KEY` on every route but /health, /version and /metrics",
        role: Role::Flag("--api-key"),
    },
    Knob {
        name: "RRANK_CUDA_LIBS_REEXEC",
        values: "1",
        default: "unset",
        meaning: "Internal, set by rrank itself: marks the one re-execution with the CUDA libraries' folders on LD_LIBRARY_PATH, so it is not repeated",
        role: Role::Internal(|k, v| {
            k.cuda_libs_reexec = v == "1";
            k.cuda_libs_reexec.then_some(())
        }),
    },
    Knob {
        name: "RRANK_GEMV",
        values: "(removed)",
        default: "-",
        meaning: "Removed: one-row decode GEMMs always take the GEMV kernel, 2-8 rows whichever the cuBLASLt tuner timed fastest",
        role: Role::Removed(
            "one-row decode GEMMs always take the GEMV kernel, 2-8 rows whichever the cuBLASLt tuner timed fastest",
        ),
    },
    Knob {
        name: "RRANK_CUBLASLT",
        values: "(removed)",
        default: "-",
        meaning: "Removed: GEMMs of at most 64 token rows always take the cuBLASLt tuner's plans",
        role: Role::Removed(
            "GEMMs of at most 64 token rows always take the cuBLASLt tuner's plans",
        ),
    },
    Knob {
        name: "RRANK_FUSE",
        values: "(removed)",
        default: "-",
        meaning: "Removed: fused GEMV inputs are always on where they fit",
        role: Role::Removed("fused GEMV inputs are always on where they fit"),
    },
];

/// Levenshtein distance of two ASCII-ish names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The known name closest to `name`, if it is close enough to be a typo of it.
fn suggest(name: &str) -> Option<&'static str> {
    TABLE
        .iter()
        .map(|k| (distance(name, k.name), k.name))
        .filter(|&(d, _)| d <= 3)
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}

impl Knobs {
    /// The knobs of this process's environment.
    pub fn from_env() -> Result<Knobs, KnobError> {
        Knobs::from_vars(std::env::vars_os())
    }

    /// The knobs of an environment given as (name, value) pairs. Known knobs are
    /// checked in [`TABLE`]'s order, then unknown `RRANK_*` names in sorted order; the
    /// first problem is the error. An empty value counts as unset.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Knobs, KnobError> {
        let vars: Vec<(OsString, OsString)> = vars.into_iter().collect();
        let lookup = |name: &str| -> Option<&OsStr> {
            vars.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_os_str())
                .filter(|v| !v.is_empty())
        };
        let mut k = Knobs::default();
        for knob in TABLE {
            let Some(raw) = lookup(knob.name) else {
                continue;
            };
            let set = match knob.role {
                Role::Setting(set) | Role::Internal(set) => set,
                Role::Flag(_) => continue,
                Role::Removed(why) => {
                    return Err(KnobError::Removed {
                        name: knob.name,
                        why,
                    });
                }
            };
            let value = raw.to_str().ok_or(KnobError::NotUnicode {
                name: knob.name,
                accepted: knob.values,
            })?;
            set(&mut k, value).ok_or_else(|| KnobError::Bad {
                name: knob.name,
                value: value.to_string(),
                accepted: knob.values,
            })?;
        }
        let mut unknown: Vec<String> = vars
            .iter()
            .filter_map(|(n, _)| n.to_str())
            .filter(|n| n.starts_with("RRANK_") && !TABLE.iter().any(|k| k.name == *n))
            .map(str::to_string)
            .collect();
        unknown.sort();
        if let Some(name) = unknown.into_iter().next() {
            let suggestion = suggest(&name);
            return Err(KnobError::Unknown { name, suggestion });
        }
        Ok(k)
    }
}

static KNOBS: OnceLock<Knobs> = OnceLock::new();

/// Reads and checks the environment's knobs once; later calls return the first
/// result's knobs. [`crate::rank::run`] calls it before anything else.
pub fn init() -> Result<&'static Knobs, KnobError> {
    if let Some(k) = KNOBS.get() {
        return Ok(k);
    }
    let k = Knobs::from_env()?;
    Ok(KNOBS.get_or_init(|| k))
}

/// The knobs. In rrank they were checked by [`init`] at start-up; code that runs
/// without it (unit tests) gets the environment's valid knobs, or the defaults.
pub fn get() -> &'static Knobs {
    KNOBS.get_or_init(|| Knobs::from_env().unwrap_or_default())
}

/// Whether the knob's variable is set to a non-empty value in this environment.
fn set_here(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// The knob list as plain text (`rrank knobs` and the end of `rrank --help`); with
/// `current`, each set variable's value too (an API key shows as "set").
pub fn text(current: bool) -> String {
    let mut s = wrap(
        "Environment variables (read once at start-up; a bad value, a removed knob or an \
unknown RRANK_* name stops rrank with one line and exit code 2):",
        "",
    );
    for k in TABLE.iter().filter(|k| !matches!(k.role, Role::Removed(_))) {
        s += &format!("  {}={}  (default: {})\n", k.name, k.values, k.default);
        s += &wrap(k.meaning, "          ");
        if current && let Some(v) = set_here(k.name) {
            let shown = match k.role {
                Role::Flag(_) => "set".to_string(),
                _ => format!("{:?}", v.to_string_lossy()),
            };
            s += &format!("          now: {shown}\n");
        }
    }
    s += "Removed (setting one is an error):\n";
    for k in TABLE.iter().filter(|k| matches!(k.role, Role::Removed(_))) {
        let why = k.meaning.trim_start_matches("Removed: ");
        s += &wrap(&format!("{}: {why}", k.name), "  ");
    }
    s
}

/// `text` in lines of at most 100 columns, each starting with `indent`.
fn wrap(text: &str, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(indent);
    for word in text.split(' ') {
        if line.len() > indent.len() && line.len() + 1 + word.len() > 100 {
            out += &line;
            out.push('\n');
            line = String::from(indent);
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line += word;
    }
    out += &line;
    out.push('\n');
    out
}

/// docs/knobs.md, generated from [`TABLE`] (`rrank knobs --markdown > docs/knobs.md`).
pub fn markdown() -> String {
    let mut s = String::from(
        "# rrank's environment variables\n\n\
<!-- Generated by `rrank knobs --markdown` from src/rank/knobs.rs; a test checks that they agree. -->\n\n\
rrank reads these once at start-up into one typed struct (`src/rank/knobs.rs`). A value it does\n\
not accept, a removed knob, or an `RRANK_*` name it does not know (a typo, with a did-you-mean)\n\
stops it before anything else happens: one line naming the variable, and exit code 2. An empty\n\
value counts as unset. `rrank knobs` prints this list with the values set in the environment.\n\n\
| Variable | Accepted values | Default | Meaning |\n\
|---|---|---|---|\n",
    );
    let cell = |t: &str| t.replace('|', "\\|");
    for k in TABLE.iter().filter(|k| !matches!(k.role, Role::Removed(_))) {
        s += &format!(
            "| `{}` | {} | {} | {} |\n",
            k.name,
            cell(k.values),
            cell(k.default),
            cell(k.meaning)
        );
    }
    s += "\n## Removed\n\nSetting one of these is an error, so that a comparison run that still sets it is never \
silently meaningless.\n\n| Variable | What the code does instead |\n|---|---|\n";
    for k in TABLE.iter().filter(|k| matches!(k.role, Role::Removed(_))) {
        s += &format!(
            "| `{}` | {} |\n",
            k.name,
            cell(k.meaning.trim_start_matches("Removed: "))
        );
    }
    s += "\n## Read elsewhere\n\n\
Not knobs of rrank, but read from the environment too: the torchrun contract (`RANK`, `WORLD_SIZE`,\n\
`LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, `TORCHELASTIC_RESTART_COUNT`,\n\
`TORCHELASTIC_USE_AGENT_STORE`; see `src/rank/dist`),\n\
`CUDA_VISIBLE_DEVICES`, `CUDA_HOME` / `CUDA_PATH` (where the CUDA libraries and headers are looked\n\
for), `LD_LIBRARY_PATH`, and `XDG_CACHE_HOME` / `HOME` (the kernel cache's default folder).\n\
`NCCL_*` settings go to NCCL untouched. `RRUN_*` names other than the ones above belong to the\n\
launcher and the test scripts and are not checked here.\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Knobs, KnobError> {
        Knobs::from_vars(vars.iter().map(|(n, v)| (n.into(), v.into())))
    }

    #[test]
    fn defaults_without_variables_and_for_empty_values() {
        assert_eq!(parse(&[]), Ok(Knobs::default()));
        assert_eq!(
            parse(&[("RRANK_ALLREDUCE_MAX", ""), ("RRANK_PROFILE", "")]),
            Ok(Knobs::default())
        );
        assert_eq!(Knobs::default().allreduce_max, 4 << 20);
        // Other programs' variables are no business of rrank's.
        assert_eq!(
            parse(&[
                ("RRUN_TAIL_LINES", "5"),
                ("RRUN_TEST_PYTHON", "x"),
                ("PATH", "/bin")
            ]),
            Ok(Knobs::default())
        );
    }

    #[test]
    fn good_values_set_their_fields() {
        let k = parse(&[
            ("RRANK_PROFILE", "1"),
            ("RRANK_ATTENTION", "per-head"),
            ("RRANK_PREFILL_ATTENTION", "cuda-cores"),
            ("RRANK_ALLREDUCE", "nccl"),
            ("RRANK_ALLREDUCE_MAX", "65536"),
            ("RRUN_KERNEL_CACHE", "/tmp/k"),
            ("RRUN_PYTHON", "/venv/bin/python"),
            ("RRANK_API_KEY", "sekret"),
            ("RRANK_CUDA_LIBS_REEXEC", "1"),
        ])
        .unwrap();
        assert_eq!(
            k,
            Knobs {
                profile: true,
                attention: Attention::PerHead,
                prefill_attention: PrefillAttention::CudaCores,
                allreduce: AllReduce::Nccl,
                allreduce_max: 65536,
                kernel_cache: Some("/tmp/k".into()),
                python: "/venv/bin/python".into(),
                cuda_libs_reexec: true,
            }
        );
        assert_eq!(
            parse(&[("RRANK_ATTENTION", "auto"), ("RRANK_PROFILE", "0")]),
            Ok(Knobs::default())
        );
    }

    #[test]
    fn sizes_take_k_m_g_suffixes() {
        for (s, n) in [
            ("0", 0),
            ("4096", 4096),
            ("4M", 4 << 20),
            ("4m", 4 << 20),
            ("4MiB", 4 << 20),
            ("512K", 512 << 10),
            ("1G", 1 << 30),
            ("16B", 16),
        ] {
            assert_eq!(parse_size(s), Some(n), "{s}");
        }
        for s in [
            "",
            "M",
            "4X",
            "4 M",
            "-1",
            "1.5M",
            "4MM",
            "99999999999999999999G",
        ] {
            assert_eq!(parse_size(s), None, "{s}");
        }
        assert_eq!(
            parse(&[("RRANK_ALLREDUCE_MAX", "4M")])
                .unwrap()
                .allreduce_max,
            4 << 20
        );
    }

    #[test]
    fn a_bad_value_is_one_line_naming_variable_value_and_choices() {
        let e = parse(&[("RRANK_ALLREDUCE", "p2p")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "RRANK_ALLREDUCE=\"p2p\" is not valid; accepted: auto|nccl"
        );
        let e = parse(&[("RRANK_ALLREDUCE_MAX", "4X")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("RRANK_ALLREDUCE_MAX=\"4X\" is not valid; accepted: SIZE: bytes, or"),
            "{e}"
        );
        for (n, v) in [
            ("RRANK_PROFILE", "yes"),
            ("RRANK_ATTENTION", "grouped"),
            ("RRANK_PREFILL_ATTENTION", "tc"),
            ("RRANK_CUDA_LIBS_REEXEC", "2"),
        ] {
            let e = parse(&[(n, v)]).unwrap_err();
            assert!(
                matches!(e, KnobError::Bad { name, .. } if name == n),
                "{n}: {e}"
            );
        }
        // A newline in the value stays inside the one line.
        let e = parse(&[("RRANK_PROFILE", "1\nx")]).unwrap_err();
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
    }

    #[test]
    fn removed_knobs_are_errors_that_say_what_happens_now() {
        for n in ["RRANK_GEMV", "RRANK_CUBLASLT", "RRANK_FUSE"] {
            let e = parse(&[(n, "0")]).unwrap_err();
            assert!(
                matches!(e, KnobError::Removed { name, .. } if name == n),
                "{e}"
            );
        }
        assert_eq!(
            parse(&[("RRANK_FUSE", "0")]).unwrap_err().to_string(),
            "RRANK_FUSE was removed; fused GEMV inputs are always on where they fit (unset it)"
        );
    }

    #[test]
    fn unknown_rrank_names_are_errors_with_a_suggestion() {
        let e = parse(&[("RRANK_ALLREDUCE_MAXX", "4M")]).unwrap_err();
        assert_eq!(
            e,
            KnobError::Unknown {
                name: "RRANK_ALLREDUCE_MAXX".into(),
                suggestion: Some("RRANK_ALLREDUCE_MAX"),
            }
        );
        assert_eq!(
            e.to_string(),
            "unknown variable RRANK_ALLREDUCE_MAXX (did you mean RRANK_ALLREDUCE_MAX?); `rrank knobs` lists the RRANK_* variables"
        );
        assert_eq!(
            parse(&[("RRANK_PROFIL", "1")]).unwrap_err(),
            KnobError::Unknown {
                name: "RRANK_PROFIL".into(),
                suggestion: Some("RRANK_PROFILE"),
            }
        );
        assert_eq!(
            parse(&[("RRANK_SOMETHING_ELSE_ENTIRELY", "1")]).unwrap_err(),
            KnobError::Unknown {
                name: "RRANK_SOMETHING_ELSE_ENTIRELY".into(),
                suggestion: None,
            }
        );
        // The two names rrank reads outside this table are known.
        assert!(parse(&[("RRANK_API_KEY", "k"), ("RRANK_CUDA_LIBS_REEXEC", "1")]).is_ok());
    }

    #[test]
    fn every_knob_is_listed_in_the_help_text_and_the_docs_page() {
        let text = text(false);
        for k in TABLE {
            assert!(
                text.contains(k.name),
                "{} missing from the help text",
                k.name
            );
        }
        let docs = include_str!("../../docs/knobs.md");
        assert_eq!(
            docs,
            markdown(),
            "docs/knobs.md is out of date: cargo run --bin rrank -- knobs --markdown > docs/knobs.md"
        );
        for k in TABLE {
            assert!(docs.contains(&format!("`{}`", k.name)), "{}", k.name);
        }
    }
}
