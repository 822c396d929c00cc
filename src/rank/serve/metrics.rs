//! /metrics: the Prometheus text ([`render`]: queue, KV cache, counters, engine
//! steps, per-rank memory) and the request-level latency histograms (vLLM's SLO set
//! under the `rrun:` prefix): time to first token and end-to-end latency from the
//! request's arrival, and inter-token latency. [`tap`] measures a request by
//! watching its events.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::state::AppState;
use crate::rank::engine::StepKind;
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

/// The Prometheus exposition text of /metrics.
pub fn render(st: &AppState) -> String {
    let s = st.stats.lock().unwrap().clone();
    let name = &st.served;
    let usage = if s.kv_blocks_total == 0 {
        0.0
    } else {
        1.0 - s.kv_blocks_free as f64 / s.kv_blocks_total as f64
    };
    let mut out = String::new();
    let mut g = |kind: &str, metric: &str, help: &str, v: String| {
        out.push_str(&format!("# HELP rrun:{metric} {help}\n# TYPE rrun:{metric} {kind}\nrrun:{metric}{{model_name=\"{name}\"}} {v}\n"));
    };
    g(
        "gauge",
        "num_requests_running",
        "Requests in the running batch.",
        s.running.to_string(),
    );
    g(
        "gauge",
        "num_requests_waiting",
        "Requests waiting to be scheduled.",
        s.waiting.to_string(),
    );
    g(
        "gauge",
        "kv_cache_usage_perc",
        "Fraction of KV-cache blocks in use.",
        format!("{usage:.6}"),
    );
    g(
        "gauge",
        "kv_cache_blocks_free",
        "Free KV-cache blocks.",
        s.kv_blocks_free.to_string(),
    );
    g(
        "gauge",
        "kv_cache_blocks_total",
        "All KV-cache blocks.",
        s.kv_blocks_total.to_string(),
    );
    g(
        "counter",
        "prefix_cache_hits_total",
        "Prompt tokens served from the prefix cache.",
        s.prefix_cache_hits.to_string(),
    );
    g(
        "counter",
        "prefix_cache_queries_total",
        "Prompt tokens looked up in the prefix cache.",
        s.prefix_cache_queries.to_string(),
    );
    g(
        "counter",
        "num_preemptions_total",
        "Sequences preempted (recomputed later).",
        s.counters.preemptions.to_string(),
    );
    g(
        "counter",
        "request_success_total",
        "Requests finished.",
        s.counters.finished.to_string(),
    );
    g(
        "counter",
        "request_aborted_total",
        "Requests aborted by their client.",
        s.counters.aborted.to_string(),
    );
    g(
        "counter",
        "prompt_tokens_total",
        "Prompt tokens received.",
        s.counters.prompt_tokens.to_string(),
    );
    g(
        "counter",
        "generation_tokens_total",
        "Tokens generated.",
        s.counters.generation_tokens.to_string(),
    );
    let kinds = [("decode", &s.steps.decode), ("prefill", &s.steps.prefill)];
    type Field = fn(&StepKind) -> String;
    let families: [(&str, &str, Field); 4] = [
        (
            "engine_steps_total",
            "Engine steps (decode: one token per sequence; prefill: with prompt chunks).",
            |k| k.steps.to_string(),
        ),
        (
            "engine_step_seconds_total",
            "Wall time of engine steps, plan broadcast to tokens back.",
            |k| format!("{:.6}", k.seconds),
        ),
        (
            "engine_step_tokens_total",
            "Tokens fed to the model in engine steps.",
            |k| k.tokens.to_string(),
        ),
        (
            "engine_step_seqs_total",
            "Sequences in engine steps.",
            |k| k.seqs.to_string(),
        ),
    ];
    for (metric, help, field) in families {
        out.push_str(&format!(
            "# HELP rrun:{metric} {help}\n# TYPE rrun:{metric} counter\n"
        ));
        for (kind, k) in kinds {
            out.push_str(&format!(
                "rrun:{metric}{{model_name=\"{name}\",kind=\"{kind}\"}} {}\n",
                field(k)
            ));
        }
    }
    out.push_str(&st.latency.lock().unwrap().render(name));
    for line in st.gauges.lock().unwrap().iter() {
        out.push_str(line);
        out.push('\n');
    }
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
