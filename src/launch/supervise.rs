//! Watching a worker group and tearing it down (docs/spec/torchrun.md §3.1–3.2,
//! §3.8): poll every `--monitor-interval`; on the first failure or a handled signal,
//! send the closing signal to every worker's process group, wait one shared grace
//! period (`--term-timeout`), SIGKILL survivors, and wait a bounded time for them.

use std::time::{Duration, Instant};

use super::config::signal_name;
use super::signals::{Event, SignalQueue};
use super::spawn::Worker;
use super::tlog::{self, src};

/// How a monitored group ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every worker exited 0.
    Succeeded,
    /// At least one worker exited non-zero (or died by a signal).
    Failed,
    /// rrun received this handled signal.
    Signaled(i32),
}

/// Polls until all workers succeed, one fails, or a handled signal arrives.
/// Child exits wake it at once (SIGCHLD); the interval bounds the wait otherwise.
pub fn monitor(workers: &mut [Worker], signals: &SignalQueue, interval: Duration) -> Outcome {
    loop {
        let mut running = false;
        let mut failed = false;
        for w in workers.iter_mut() {
            match w.poll() {
                None => running = true,
                Some(0) => {}
                Some(_) => failed = true,
            }
        }
        if failed {
            return Outcome::Failed;
        }
        if !running {
            return Outcome::Succeeded;
        }
        if let Event::Signal(sig) = signals.next(interval) {
            return Outcome::Signaled(sig);
        }
    }
}

/// Polls every worker (no short-circuit: each poll records an exit).
fn all_exited(workers: &mut [Worker]) -> bool {
    let mut done = true;
    for w in workers.iter_mut() {
        done &= w.poll().is_some();
    }
    done
}

fn wait_until(workers: &mut [Worker], deadline: Instant, signals: Option<&SignalQueue>) -> bool {
    loop {
        if all_exited(workers) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // A second handled signal (say, another Ctrl-C) skips the grace period.
        if signals.and_then(SignalQueue::pending_signal).is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `sig` to every running worker's group, waits up to `grace` in total, then
/// SIGKILLs survivors and waits at most 5 s more. Never blocks forever: a worker
/// stuck in the kernel is reported and left behind.
pub fn shut_down(workers: &mut [Worker], sig: i32, grace: Duration, signals: &SignalQueue) {
    for w in workers.iter_mut() {
        if w.poll().is_none() {
            tlog::log(
                'W',
                src::CLOSING,
                &format!(
                    "Sending process {} closing signal {}",
                    w.pid,
                    signal_name(sig)
                ),
            );
            w.closing_signal = Some(sig);
            w.signal_group(sig);
        }
    }
    if !wait_until(workers, Instant::now() + grace, Some(signals)) {
        for w in workers.iter_mut() {
            if w.poll().is_none() {
                tlog::log(
                    'W',
                    src::FORCE_KILL,
                    &format!(
                        "Unable to shutdown process {} via {sig}, forcefully exiting via 9",
                        w.pid
                    ),
                );
                w.signal_group(libc::SIGKILL);
            }
        }
        if !wait_until(workers, Instant::now() + Duration::from_secs(5), None) {
            for w in workers.iter_mut().filter(|w| w.exit.is_none()) {
                crate::eline!(
                    "rrun: worker pid {} (local rank {}) did not exit 5 s after SIGKILL (stuck in the kernel?); not waiting for it",
                    w.pid,
                    w.local_rank
                );
            }
        }
    }
    // Grandchildren left in exited workers' groups go too.
    for w in workers.iter().filter(|w| w.exit.is_some()) {
        w.signal_group(libc::SIGKILL);
    }
    for w in workers.iter_mut() {
        w.join_output(Duration::from_secs(2));
    }
}
