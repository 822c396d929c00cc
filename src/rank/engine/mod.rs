//! The serving engine: rank 0's [`scheduler`] decides each step, the [`plan`] is
//! broadcast to every rank, each rank's [`executor`] runs it, and the [`sampler`]'s
//! tokens come back to rank 0. [`Engine::run`] is rank 0's loop; other ranks run
//! [`executor::Executor::follow`].

pub mod executor;
pub mod plan;
pub mod sampler;
pub mod scheduler;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::rank::dist::Comm;
use crate::rank::tokenizer::TextCodec;
use executor::Executor;
use plan::Plan;
use scheduler::{Event, GenRequest, Scheduler};

/// How long requests in flight may run on after SIGTERM before they are ended.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A request for the engine thread.
pub struct Submit {
    pub req: GenRequest,
    pub events: UnboundedSender<Event>,
}

/// Numbers the HTTP side reads for /metrics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub prefix_cache_hits: u64,
    pub prefix_cache_queries: u64,
    pub counters: scheduler::Counters,
}

/// Rank 0's engine.
pub struct Engine {
    pub exec: Executor,
    pub sched: Scheduler,
    pub codec: Arc<TextCodec>,
}

impl Engine {
    /// The numbers /metrics shows now.
    pub fn stats(&self) -> Stats {
        Stats {
            running: self.sched.num_running(),
            waiting: self.sched.num_waiting(),
            kv_blocks_total: self.sched.alloc.total(),
            kv_blocks_free: self.sched.alloc.free_blocks(),
            prefix_cache_hits: self.sched.alloc.hits,
            prefix_cache_queries: self.sched.alloc.queries,
            counters: self.sched.counters.clone(),
        }
    }

    /// Serves requests from `rx` until `stop` is set and the work in flight is done
    /// (or `rx` closes), then sends Shutdown to every rank.
    pub fn run(
        &mut self,
        comm: &mut dyn Comm,
        rx: Receiver<Submit>,
        stop: Arc<AtomicBool>,
        stats: Arc<std::sync::Mutex<Stats>>,
    ) -> Result<(), String> {
        let world: Vec<usize> = (0..comm.world()).collect();
        let mut stop_at: Option<std::time::Instant> = None;
        let result = loop {
            if stop.load(Ordering::SeqCst) {
                let t = *stop_at.get_or_insert_with(std::time::Instant::now);
                if self.sched.is_idle() {
                    break Ok(());
                }
                if t.elapsed() >= DRAIN_TIMEOUT {
                    eprintln!(
                        "rrank: {} requests still running {DRAIN_TIMEOUT:?} after the stop signal; ending them",
                        self.sched.num_running() + self.sched.num_waiting()
                    );
                    self.sched.abort_all();
                    break Ok(());
                }
            }
            if self.sched.is_idle() {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(s) => {
                        self.sched.add(s.req, s.events);
                    }
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break Ok(()),
                }
            }
            while let Ok(s) = rx.try_recv() {
                self.sched.add(s.req, s.events);
            }
            self.sched.reap_aborted();
            let seqs = self.sched.schedule();
            *stats.lock().unwrap() = self.stats();
            if seqs.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if let Err(e) = comm.broadcast(&world, 0, Plan::Step(seqs.clone()).encode()) {
                break Err(format!("broadcasting a step: {e}"));
            }
            match self.exec.step(comm, &seqs) {
                Ok(Some(drawn)) => self.sched.update(&seqs, &drawn, &self.codec),
                Ok(None) => unreachable!("rank 0 receives the tokens"),
                Err(e) => break Err(format!("step failed: {e}")),
            }
            *stats.lock().unwrap() = self.stats();
        };
        let _ = comm.broadcast(&world, 0, Plan::Shutdown.encode());
        result
    }
}
