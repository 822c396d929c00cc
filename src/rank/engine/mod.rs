//! The serving engine: rank 0's [`scheduler`] decides each step, the [`plan`] is
//! broadcast to every rank, each rank's [`executor`] runs it, and the [`sampler`]'s
//! tokens come back to rank 0. [`Engine::run`] is rank 0's loop; other ranks run
//! [`executor::Executor::follow`].

pub mod executor;
pub mod plan;
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

/// Why rank 0's engine loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("broadcasting a step: {0}")]
    Broadcast(std::io::Error),
    #[error("step failed: {0}")]
    Step(#[from] crate::rank::backend::BackendError),
}

/// A request for the engine thread.
pub struct Submit {
    pub req: GenRequest,
    pub events: UnboundedSender<Event>,
}

/// Steps of one kind: how many, their wall time (plan broadcast to tokens back on
/// rank 0), and the tokens and sequences they carried.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct StepKind {
    pub steps: u64,
    pub seconds: f64,
    pub tokens: u64,
    pub seqs: u64,
}

impl StepKind {
    fn add(&mut self, seconds: f64, tokens: usize, seqs: usize) {
        self.steps += 1;
        self.seconds += seconds;
        self.tokens += tokens as u64;
        self.seqs += seqs as u64;
    }

    fn describe(&self, what: &str) -> String {
        let n = self.steps.max(1) as f64;
        format!(
            "{} {what} (mean {:.2} ms, {:.0} tokens, {:.0} sequences)",
            self.steps,
            self.seconds * 1e3 / n,
            self.tokens as f64 / n,
            self.seqs as f64 / n
        )
    }
}

/// Step timing split by kind: decode-only steps (one token per sequence) and steps
/// that carry prefill chunks. Tells where serving time goes (/metrics and the
/// shutdown line).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub decode: StepKind,
    pub prefill: StepKind,
    /// Rank 0's engine time around the steps (scheduling, plan encoding, token
    /// bookkeeping and stream events), summed.
    pub around: f64,
}

impl StepStats {
    /// Records a step over `seqs` that took `seconds`.
    pub fn record(&mut self, seqs: &[plan::PlanSeq], seconds: f64) {
        let tokens: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let kind = if seqs.iter().any(|s| s.tokens.len() > 1) {
            &mut self.prefill
        } else {
            &mut self.decode
        };
        kind.add(seconds, tokens, seqs.len());
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let n = (self.decode.steps + self.prefill.steps).max(1) as f64;
        format!(
            "steps: {}, {}; engine work around each step (schedule, plan, token updates) mean {:.2} ms",
            self.decode.describe("decode-only"),
            self.prefill.describe("with prefill"),
            self.around * 1e3 / n
        )
    }
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
    pub steps: StepStats,
}

/// Rank 0's engine.
pub struct Engine {
    pub exec: Executor,
    pub sched: Scheduler,
    pub codec: Arc<TextCodec>,
    pub steps: StepStats,
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
            steps: self.steps,
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
    ) -> Result<(), EngineError> {
        let world: Vec<usize> = (0..comm.world()).collect();
        let mut stop_at: Option<std::time::Instant> = None;
        let result = loop {
            if stop.load(Ordering::SeqCst) {
                let t = *stop_at.get_or_insert_with(std::time::Instant::now);
                if self.sched.is_idle() {
                    break Ok(());
                }
                if t.elapsed() >= DRAIN_TIMEOUT {
                    crate::eline!(
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
            let t_loop = std::time::Instant::now();
            self.sched.reap_aborted();
            let seqs = self.sched.schedule();
            *stats.lock().unwrap() = self.stats();
            if seqs.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let t = std::time::Instant::now();
            // One rank alone has no followers to tell.
            if world.len() > 1
                && let Err(e) = comm.broadcast(&world, 0, Plan::Step(seqs.clone()).encode())
            {
                break Err(EngineError::Broadcast(e));
            }
            match self.exec.step(comm, &seqs) {
                Ok(Some(drawn)) => {
                    let step = t.elapsed().as_secs_f64();
                    self.steps.record(&seqs, step);
                    // The step shows in /metrics before its tokens reach any client.
                    stats.lock().unwrap().steps = self.steps;
                    self.sched.update(&seqs, &drawn, &self.codec);
                    self.steps.around += t_loop.elapsed().as_secs_f64() - step;
                }
                Ok(None) => unreachable!("rank 0 receives the tokens"),
                Err(e) => break Err(EngineError::Step(e)),
            }
            *stats.lock().unwrap() = self.stats();
        };
        let _ = comm.broadcast(&world, 0, Plan::Shutdown.encode());
        if self.steps.decode.steps + self.steps.prefill.steps > 0 {
            crate::eline!("rrank: {}", self.steps.summary());
            if let Some(t) = self.exec.backend.step_times() {
                crate::eline!("rrank: {t}");
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::sampling::SamplingParams;

    fn seq(tokens: usize) -> plan::PlanSeq {
        plan::PlanSeq {
            id: 0,
            tokens: vec![1; tokens],
            start: 0,
            blocks: vec![0],
            sample: true,
            params: SamplingParams::default(),
            seed: 0,
            step: 0,
            logprobs: None,
            history: None,
        }
    }

    #[test]
    fn steps_are_split_into_decode_only_and_prefill() {
        let mut st = StepStats::default();
        st.record(&[seq(1), seq(1)], 0.010);
        st.record(&[seq(1), seq(1)], 0.020);
        st.record(&[seq(1), seq(30)], 0.050);
        assert_eq!(
            st.decode,
            StepKind {
                steps: 2,
                seconds: 0.030,
                tokens: 4,
                seqs: 4
            }
        );
        assert_eq!((st.prefill.steps, st.prefill.tokens), (1, 31));
        st.around = 0.003;
        assert_eq!(
            st.summary(),
            "steps: 2 decode-only (mean 15.00 ms, 2 tokens, 2 sequences), 1 with prefill (mean 50.00 ms, 31 tokens, 2 sequences); engine work around each step (schedule, plan, token updates) mean 1.00 ms"
        );
    }
}
