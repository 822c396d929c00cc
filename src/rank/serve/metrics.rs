//! The request-level latency histograms of /metrics (vLLM's SLO set under the
//! `rrun:` prefix): time to first token and end-to-end latency from the
//! request's arrival, and inter-token latency. [`tap`] measures a request by
//! watching its events.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::rank::engine::scheduler::Event;

const BUCKETS: [f64; 17] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
    40.0,
];

/// A Prometheus histogram with fixed buckets (seconds).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; 17],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, v: f64) {
        for (c, b) in self.counts.iter_mut().zip(BUCKETS) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// Exposition lines for `rrun:<name>` with the model label.
    pub fn render(&self, name: &str, help: &str, model: &str) -> String {
        let mut out = format!("# HELP rrun:{name} {help}\n# TYPE rrun:{name} histogram\n");
        for (c, b) in self.counts.iter().zip(BUCKETS) {
            out += &format!("rrun:{name}_bucket{{le=\"{b}\",model_name=\"{model}\"}} {c}\n");
        }
        out += &format!(
            "rrun:{name}_bucket{{le=\"+Inf\",model_name=\"{model}\"}} {}\n",
            self.count
        );
        out += &format!("rrun:{name}_sum{{model_name=\"{model}\"}} {}\n", self.sum);
        out += &format!(
            "rrun:{name}_count{{model_name=\"{model}\"}} {}\n",
            self.count
        );
        out
    }
}

/// The latency histograms of the server.
#[derive(Debug, Default)]
pub struct Latency {
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
}

impl Latency {
    pub fn render(&self, model: &str) -> String {
        self.ttft.render(
            "time_to_first_token_seconds",
            "Time to first token, from arrival.",
            model,
        ) + &self.itl.render(
            "inter_token_latency_seconds",
            "Time between successive tokens.",
            model,
        ) + &self.e2e.render(
            "e2e_request_latency_seconds",
            "Arrival to last token.",
            model,
        )
    }
}

/// Forwards a request's events, recording its latencies in `lat`; `held` lives
/// until the events end.
pub fn tap(
    lat: Arc<Mutex<Latency>>,
    arrival: Instant,
    mut rx: UnboundedReceiver<Event>,
    held: impl Send + 'static,
) -> UnboundedReceiver<Event> {
    let (tx, out) = unbounded_channel();
    tokio::spawn(async move {
        let _held = held;
        let mut last: Option<Instant> = None;
        while let Some(ev) = rx.recv().await {
            let now = Instant::now();
            {
                let mut l = lat.lock().unwrap();
                match &ev {
                    Event::Token { .. } => {
                        match last {
                            None => l.ttft.observe((now - arrival).as_secs_f64()),
                            Some(t) => l.itl.observe((now - t).as_secs_f64()),
                        }
                        last = Some(now);
                    }
                    Event::Done { .. } => l.e2e.observe((now - arrival).as_secs_f64()),
                }
            }
            if tx.send(ev).is_err() {
                break; // the client left; dropping rx aborts the request
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(3.0);
        let t = h.render("x", "h", "m");
        assert!(t.contains("rrun:x_bucket{le=\"0.005\",model_name=\"m\"} 1\n"));
        assert!(t.contains("rrun:x_bucket{le=\"5\",model_name=\"m\"} 2\n"));
        assert!(t.contains("rrun:x_count{model_name=\"m\"} 2\n"));
    }
}
