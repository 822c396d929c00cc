//! Where worker output goes (docs/spec/torchrun.md §3.9): the log tree
//! `<root>/<run_id>_<rand8>/attempt_<k>/<lr>/{stdout.log,stderr.log,error.json}`,
//! redirects straight into files, and tee — a pipe per stream read by a thread that
//! writes the file and, line-atomically with the `[default0]:` prefix, the console.
//!
//! Reading pipes instead of tailing files keeps each line whole and in order, and
//! works for any local rank, not only 0–9.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::config::{Config, STD_ERR, STD_OUT};
use crate::console;

/// Python's `tempfile` alphabet and length for the random part of names.
fn rand8() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_";
    let b = uuid::Uuid::new_v4().into_bytes();
    b.iter()
        .take(8)
        .map(|x| CHARS[*x as usize % CHARS.len()] as char)
        .collect()
}

/// `tempfile.mkdtemp(prefix=…, dir=…)`.
fn mkdtemp(dir: &Path, prefix: &str) -> io::Result<PathBuf> {
    for _ in 0..100 {
        let p = dir.join(format!("{prefix}{}", rand8()));
        match fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name",
    ))
}

fn tmp_dir() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Why a log directory could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log_dir: {0} is a file; give --log-dir a directory")]
    IsAFile(String),
    #[error("cannot create --log-dir {dir}: {source}")]
    LogDir { dir: String, source: io::Error },
    #[error("cannot create a log directory in {}: {source}", .parent.display())]
    RunDir { parent: PathBuf, source: io::Error },
    #[error("cannot create {}: {source}", .dir.display())]
    Attempt { dir: PathBuf, source: io::Error },
}

/// The run's log directory, created once and reused by every attempt.
pub struct LogRoot {
    /// None when the log dir is /dev/null (no files at all).
    run_dir: Option<PathBuf>,
}

impl LogRoot {
    /// Creates `<root>/<run_id>_<rand8>`; the root is `--log-dir` or a fresh
    /// `/tmp/torchelastic_<rand8>`, as torchrun does.
    pub fn create(cfg: &Config) -> Result<LogRoot, LogError> {
        let root = match cfg.log_dir.as_deref() {
            Some("/dev/null") => return Ok(LogRoot { run_dir: None }),
            Some(d) if !d.is_empty() => {
                let p = PathBuf::from(d);
                if p.is_file() {
                    return Err(LogError::IsAFile(d.to_string()));
                }
                fs::create_dir_all(&p).map_err(|source| LogError::LogDir {
                    dir: d.to_string(),
                    source,
                })?;
                p
            }
            _ => {
                let parent = tmp_dir();
                mkdtemp(&parent, "torchelastic_")
                    .map_err(|source| LogError::RunDir { parent, source })?
            }
        };
        let run_dir =
            mkdtemp(&root, &format!("{}_", cfg.run_id)).map_err(|source| LogError::RunDir {
                parent: root.clone(),
                source,
            })?;
        Ok(LogRoot {
            run_dir: Some(run_dir),
        })
    }

    /// Makes `attempt_<k>/` (emptied first) and `attempt_<k>/<lr>/` for each rank.
    pub fn attempt(&self, restart_count: u32, nproc: usize) -> Result<Option<PathBuf>, LogError> {
        let Some(run) = &self.run_dir else {
            return Ok(None);
        };
        let dir = run.join(format!("attempt_{restart_count}"));
        let _ = fs::remove_dir_all(&dir);
        for lr in 0..nproc {
            fs::create_dir_all(dir.join(lr.to_string())).map_err(|source| LogError::Attempt {
                dir: dir.clone(),
                source,
            })?;
        }
        Ok(Some(dir))
    }
}

/// Where one stream of one worker goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// rrun's own stdout/stderr, unprefixed.
    Inherit,
    /// Discarded (--local-ranks-filter).
    Null,
    /// A file only (-r).
    File(PathBuf),
    /// A file and rrun's console, prefixed line by line (-t).
    Tee(PathBuf),
}

/// Stream routing of one worker.
#[derive(Debug, Clone)]
pub struct Streams {
    pub stdout: Sink,
    pub stderr: Sink,
    /// `[default0]:` or the expanded TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE.
    pub header: String,
}

/// Expands `${role_name}`, `${rank}`, `${local_rank}` (and `$name`) like `Template.safe_substitute`.
pub fn expand_template(t: &str, role: &str, rank: usize, lr: usize) -> String {
    let mut s = t.to_string();
    for (k, v) in [
        ("role_name", role.to_string()),
        ("local_rank", lr.to_string()),
        ("rank", rank.to_string()),
    ] {
        s = s.replace(&format!("${{{k}}}"), &v);
        s = s.replace(&format!("${k}"), &v);
    }
    s
}

/// Routes both streams of local rank `lr` (torch's `DefaultLogsSpecs.reify`).
pub fn streams_for(cfg: &Config, attempt: Option<&Path>, lr: usize, rank: usize) -> Streams {
    let header = match std::env::var("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE") {
        Ok(t) if !t.is_empty() => expand_template(&t, &cfg.role, rank, lr),
        _ => format!("[{}{}]:", cfg.role, lr),
    };
    let shown = cfg
        .local_ranks_filter
        .as_ref()
        .is_none_or(|f| f.contains(&lr));
    let tee = cfg.tee.for_rank(lr);
    let redirect = cfg.redirects.for_rank(lr) | tee;
    let route = |bit, name: &str| -> Sink {
        match attempt {
            Some(dir) if redirect & bit != 0 => {
                let file = dir.join(lr.to_string()).join(name);
                if tee & bit != 0 && shown {
                    Sink::Tee(file)
                } else {
                    Sink::File(file)
                }
            }
            _ if !shown => Sink::Null,
            _ => Sink::Inherit,
        }
    };
    Streams {
        stdout: route(STD_OUT, "stdout.log"),
        stderr: route(STD_ERR, "stderr.log"),
        header,
    }
}

/// Turns a sink into the child's `Stdio`.
pub fn stdio(s: &Sink) -> io::Result<Stdio> {
    Ok(match s {
        Sink::Inherit => Stdio::inherit(),
        Sink::Null => Stdio::null(),
        Sink::File(p) => Stdio::from(File::create(p)?),
        Sink::Tee(_) => Stdio::piped(),
    })
}

/// The filtered-duplicate file of an attempt (`filtered_stdout.log`), shared by ranks.
#[derive(Clone)]
pub struct Duplicates {
    pub filters: Vec<String>,
    pub file: Arc<Mutex<Option<File>>>,
}

impl Duplicates {
    pub fn new(filters: &[String], attempt: Option<&Path>, name: &str) -> Duplicates {
        let file = match attempt {
            Some(dir) if !filters.is_empty() => OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .ok(),
            _ => None,
        };
        Duplicates {
            filters: filters.to_vec(),
            file: Arc::new(Mutex::new(file)),
        }
    }
}

/// Either end of a child's output pipe.
pub enum Pipe {
    Out(ChildStdout),
    Err(ChildStderr),
}

/// Starts the thread that copies a tee'd pipe into its file and onto the console.
pub fn start_tee(
    pipe: Pipe,
    file: &Path,
    header: String,
    dups: Duplicates,
) -> io::Result<JoinHandle<()>> {
    let mut log = File::create(file)?;
    let (reader, to_stdout): (Box<dyn io::Read + Send>, bool) = match pipe {
        Pipe::Out(p) => (Box::new(p), true),
        Pipe::Err(p) => (Box::new(p), false),
    };
    std::thread::Builder::new()
        .name("rrun-tee".into())
        .spawn(move || {
            let mut r = BufReader::new(reader);
            let mut line = Vec::with_capacity(256);
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let _ = log.write_all(&line);
                let mut out = Vec::with_capacity(header.len() + line.len() + 1);
                out.extend_from_slice(header.as_bytes());
                out.extend_from_slice(&line);
                if !line.ends_with(b"\n") {
                    out.push(b'\n');
                }
                // One write per line under the stream lock: lines of ranks never interleave.
                if to_stdout {
                    console::stdout_bytes(&out)
                } else {
                    console::stderr_bytes(&out)
                }
                if !dups.filters.is_empty() {
                    let text = String::from_utf8_lossy(&line);
                    if dups.filters.iter().any(|f| text.contains(f.as_str()))
                        && let Some(f) = dups.file.lock().unwrap().as_mut()
                    {
                        let _ = f.write_all(&out);
                    }
                }
            }
            let _ = log.flush();
        })
}

/// The last `n` lines of a captured stream file.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(text) = fs::read(path) else {
        return vec![];
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand() {
        assert_eq!(
            expand_template("[${role_name}|r${rank}|l${local_rank}]:", "default", 3, 1),
            "[default|r3|l1]:"
        );
        assert_eq!(
            expand_template("$rank-${unknown}", "d", 2, 0),
            "2-${unknown}"
        );
    }

    fn config(args: &[&str]) -> Config {
        use clap::Parser;
        let mut argv = vec!["rrun"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--no-python", "true"]);
        Config::from_cli(crate::launch::cli::Cli::try_parse_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn log_dir_errors_name_the_directory() {
        let file = std::env::temp_dir().join(format!("rrun-logs-test-{}", rand8()));
        fs::write(&file, b"x").unwrap();
        let shown = file.display().to_string();
        let e = LogRoot::create(&config(&["--log-dir", &shown]))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!("log_dir: {shown} is a file; give --log-dir a directory")
        );
        let below = format!("{shown}/sub");
        let e = LogRoot::create(&config(&["--log-dir", &below]))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot create --log-dir {below}: ")),
            "{e}"
        );
        fs::remove_file(&file).unwrap();
        let root = LogRoot::create(&config(&["--log-dir", "/dev/null"])).unwrap();
        assert_eq!(root.attempt(0, 2).unwrap(), None);
    }

    #[test]
    fn rand_names_use_tempfile_alphabet() {
        let r = rand8();
        assert_eq!(r.len(), 8);
        assert!(
            r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
    }
}
