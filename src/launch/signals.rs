//! Signal handling from the first instruction on (torchrun only installs its
//! handlers after rendezvous, so Ctrl-C on a waiting node 0 does nothing for up to
//! 15 minutes). Before workers exist a handled signal ends rrun at once with
//! 128+n; afterwards it is queued for the supervisor, which forwards it. SIGCHLD
//! wakes the supervisor, so an exit is seen at once rather than at the next poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::Signals;

use super::config::signal_name;

/// What the supervisor is woken by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A handled signal (its number).
    Signal(i32),
    /// Some child changed state.
    ChildExited,
    /// Nothing happened within the timeout.
    Timeout,
}

/// Handled signals and child exits, delivered in order of arrival.
pub struct SignalQueue {
    rx: Receiver<i32>,
    workers_started: Arc<AtomicBool>,
}

impl SignalQueue {
    /// Installs handlers for `signals` (and SIGCHLD). Returns the queue and warnings
    /// for signals that cannot be handled (SIGKILL, SIGSTOP…).
    pub fn install(signals: &[i32]) -> (SignalQueue, Vec<String>) {
        let mut warnings = Vec::new();
        let mut ok: Vec<i32> = signals
            .iter()
            .copied()
            .filter(|s| {
                let forbidden = signal_hook::consts::FORBIDDEN.contains(s);
                if forbidden {
                    warnings.push(format!(
                        "Signal {} cannot be handled, ignoring",
                        signal_name(*s)
                    ));
                }
                !forbidden && *s != SIGCHLD
            })
            .collect();
        ok.push(SIGCHLD);
        let (tx, rx) = channel();
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        match Signals::new(&ok) {
            Ok(mut sigs) => {
                let spawned = std::thread::Builder::new()
                    .name("rrun-signals".into())
                    .spawn(move || {
                        for s in sigs.forever() {
                            let running = flag.load(Ordering::SeqCst);
                            if s == SIGCHLD && !running {
                                continue;
                            }
                            if !running {
                                crate::eline!(
                                    "rrun: received {} before any worker started; exiting",
                                    signal_name(s)
                                );
                                std::process::exit(128 + s);
                            }
                            if tx.send(s).is_err() {
                                break;
                            }
                        }
                    });
                if let Err(e) = spawned {
                    warnings.push(format!("cannot start the signal thread: {e}"));
                }
            }
            Err(e) => warnings.push(format!("cannot install signal handlers: {e}")),
        }
        (
            SignalQueue {
                rx,
                workers_started: started,
            },
            warnings,
        )
    }

    /// From now on signals are queued for the supervisor instead of ending rrun.
    pub fn workers_starting(&self) {
        self.workers_started.store(true, Ordering::SeqCst);
    }

    /// Waits up to `timeout` for the next event.
    pub fn next(&self, timeout: Duration) -> Event {
        match self.rx.recv_timeout(timeout) {
            Ok(SIGCHLD) => Event::ChildExited,
            Ok(s) => Event::Signal(s),
            Err(RecvTimeoutError::Timeout) => Event::Timeout,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                Event::Timeout
            }
        }
    }

    /// A handled signal that arrived since the last call, if any (child exits are skipped).
    pub fn pending_signal(&self) -> Option<i32> {
        while let Ok(s) = self.rx.try_recv() {
            if s != SIGCHLD {
                return Some(s);
            }
        }
        None
    }
}
