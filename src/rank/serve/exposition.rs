//! The Prometheus text of /metrics: queue, KV cache, counters, engine steps by kind,
//! the latency histograms and each rank's memory, under the `rrun:` prefix.

use super::state::AppState;
use crate::rank::engine::StepKind;

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
    let c = &s.counters;
    let series: [(&str, &str, &str, String); 12] = [
        (
            "gauge",
            "num_requests_running",
            "Requests in the running batch.",
            s.running.to_string(),
        ),
        (
            "gauge",
            "num_requests_waiting",
            "Requests waiting to be scheduled.",
            s.waiting.to_string(),
        ),
        (
            "gauge",
            "kv_cache_usage_perc",
            "Fraction of KV-cache blocks in use.",
            format!("{usage:.6}"),
        ),
        (
            "gauge",
            "kv_cache_blocks_free",
            "Free KV-cache blocks.",
            s.kv_blocks_free.to_string(),
        ),
        (
            "gauge",
            "kv_cache_blocks_total",
            "All KV-cache blocks.",
            s.kv_blocks_total.to_string(),
        ),
        (
            "counter",
            "prefix_cache_hits_total",
            "Prompt tokens served from the prefix cache.",
            s.prefix_cache_hits.to_string(),
        ),
        (
            "counter",
            "prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            s.prefix_cache_queries.to_string(),
        ),
        (
            "counter",
            "num_preemptions_total",
            "Sequences preempted (recomputed later).",
            c.preemptions.to_string(),
        ),
        (
            "counter",
            "request_success_total",
            "Requests finished.",
            c.finished.to_string(),
        ),
        (
            "counter",
            "request_aborted_total",
            "Requests aborted by their client.",
            c.aborted.to_string(),
        ),
        (
            "counter",
            "prompt_tokens_total",
            "Prompt tokens received.",
            c.prompt_tokens.to_string(),
        ),
        (
            "counter",
            "generation_tokens_total",
            "Tokens generated.",
            c.generation_tokens.to_string(),
        ),
    ];
    for (kind, metric, help, v) in series {
        out.push_str(&format!("# HELP rrun:{metric} {help}\n# TYPE rrun:{metric} {kind}\nrrun:{metric}{{model_name=\"{name}\"}} {v}\n"));
    }
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
