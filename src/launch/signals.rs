//! Signal handling from the first instruction on (torchrun only installs its
//! handlers after rendezvous, so Ctrl-C on a waiting node 0 does nothing for up to
//! 15 minutes). Before workers exist a handled signal ends rrun at once with
//! 128+n; afterwards it is queued for the supervisor, which forwards it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};

use signal_hook::iterator::Signals;

use super::config::signal_name;

/// Handled signals, delivered in order of arrival.
pub struct SignalQueue {
    pub rx: Receiver<i32>,
    workers_started: Arc<AtomicBool>,
}

impl SignalQueue {
    /// Installs handlers for `signals`. Returns the queue and warnings for signals
    /// that cannot be handled (SIGKILL, SIGSTOP…).
    pub fn install(signals: &[i32]) -> (SignalQueue, Vec<String>) {
        let mut warnings = Vec::new();
        let ok: Vec<i32> = signals
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
                !forbidden
            })
            .collect();
        let (tx, rx) = channel();
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        match Signals::new(&ok) {
            Ok(mut sigs) => {
                let spawned = std::thread::Builder::new()
                    .name("rrun-signals".into())
                    .spawn(move || {
                        for s in sigs.forever() {
                            if !flag.load(Ordering::SeqCst) {
                                eprintln!(
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
}
