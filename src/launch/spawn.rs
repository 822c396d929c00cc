//! Starting one worker process: its argv and environment, its own session and
//! process group (as torchrun), and a parent-death signal so that no worker outlives
//! its agent — not even after `kill -9 rrun`, which torchrun leaves orphans behind.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use super::logs::{self, Duplicates, Pipe, Sink, Streams};

/// What to start for one local rank.
pub struct WorkerSpec<'a> {
    pub local_rank: usize,
    pub global_rank: usize,
    pub argv: &'a [String],
    pub env: Vec<(String, String)>,
    pub streams: Streams,
    /// Path of TORCHELASTIC_ERROR_FILE ("" when log dirs are off).
    pub error_file: String,
    pub stdout_dups: Duplicates,
    pub stderr_dups: Duplicates,
}

/// A running (or finished) worker.
pub struct Worker {
    pub local_rank: usize,
    pub global_rank: usize,
    pub pid: u32,
    pub child: Child,
    /// Exit code in torch's convention: negative signal number for a signal death.
    pub exit: Option<i32>,
    /// When rrun noticed the exit (wall clock, for the report's `time`).
    pub exited_at: Option<SystemTime>,
    /// When rrun noticed the exit (monotonic: orders failures).
    pub observed_at: Option<Instant>,
    /// The closing signal rrun sent this worker while it still ran, if any.
    pub closing_signal: Option<i32>,
    pub error_file: String,
    /// File holding the captured stderr, if any.
    pub stderr_file: Option<PathBuf>,
    tee_threads: Vec<JoinHandle<()>>,
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => -s,
        _ => -1,
    }
}

impl Worker {
    /// Starts the worker. Spawning must happen on the agent's main thread: the
    /// parent-death signal fires when the *thread* that forked exits.
    pub fn spawn(spec: WorkerSpec<'_>) -> std::io::Result<Worker> {
        let mut cmd = Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..]);
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        cmd.stdout(logs::stdio(&spec.streams.stdout)?);
        cmd.stderr(logs::stdio(&spec.streams.stderr)?);
        let agent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                // The agent may have died between fork and prctl.
                if libc::getppid() != agent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let mut tee_threads = Vec::new();
        if let Sink::Tee(path) = &spec.streams.stdout
            && let Some(p) = child.stdout.take()
        {
            tee_threads.push(logs::start_tee(
                Pipe::Out(p),
                path,
                spec.streams.header.clone(),
                spec.stdout_dups,
            )?);
        }
        if let Sink::Tee(path) = &spec.streams.stderr
            && let Some(p) = child.stderr.take()
        {
            tee_threads.push(logs::start_tee(
                Pipe::Err(p),
                path,
                spec.streams.header.clone(),
                spec.stderr_dups,
            )?);
        }
        let stderr_file = match &spec.streams.stderr {
            Sink::File(p) | Sink::Tee(p) => Some(p.clone()),
            _ => None,
        };
        Ok(Worker {
            local_rank: spec.local_rank,
            global_rank: spec.global_rank,
            pid: child.id(),
            child,
            exit: None,
            exited_at: None,
            observed_at: None,
            closing_signal: None,
            error_file: spec.error_file,
            stderr_file,
            tee_threads,
        })
    }

    /// Polls without blocking; records the exit once seen.
    pub fn poll(&mut self) -> Option<i32> {
        if self.exit.is_none()
            && let Ok(Some(st)) = self.child.try_wait()
        {
            self.exit = Some(exit_code(st));
            self.exited_at = Some(SystemTime::now());
            self.observed_at = Some(Instant::now());
        }
        self.exit
    }

    /// True when the worker died of rrun's closing signal (killed by it, or exited
    /// 128+n from a handler): it did not fail on its own.
    pub fn terminated_by_agent(&self) -> bool {
        match (self.closing_signal, self.exit) {
            (Some(s), Some(code)) => code == -s || code == 128 + s || code == -libc::SIGKILL,
            _ => false,
        }
    }

    /// Sends `sig` to the worker's whole process group (grandchildren included).
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) with a negative pid targets the process group.
        unsafe {
            libc::kill(-(self.pid as libc::pid_t), sig);
        }
    }

    /// Waits (at most `limit`) for the tee threads to drain the pipes after the
    /// process exited. A grandchild still holding the pipe is not waited for.
    pub fn join_output(&mut self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.tee_threads.iter().any(|t| !t.is_finished())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for t in self.tee_threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}
