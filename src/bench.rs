//! `rrun-bench`, a load generator for OpenAI-compatible servers in the spirit of
//! vLLM's benchmark_serving: random token-id prompts (or prompts from a file) with set
//! input/output lengths, sent at a fixed concurrency or as a Poisson process, each a
//! streaming `/v1/completions` request. Reports TTFT, TPOT, ITL and end-to-end
//! latency (mean, p50, p99), request and output-token throughput, as text and JSON.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Load generator for OpenAI-compatible completion servers (rrank, vLLM, …).
#[derive(Debug, Clone, Parser)]
#[command(name = "rrun-bench", version, max_term_width = 100)]
pub struct BenchArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    /// Model name to send (default: the first of /v1/models).
    #[arg(long)]
    pub model: Option<String>,
    /// Number of requests.
    #[arg(long = "num-prompts", default_value_t = 100)]
    pub num_prompts: usize,
    /// Prompt length in tokens (random token ids).
    #[arg(long = "input-len", default_value_t = 512)]
    pub input_len: usize,
    /// Tokens to generate per request (EOS ignored).
    #[arg(long = "output-len", default_value_t = 128)]
    pub output_len: usize,
    /// Prompts from a file, one per line (text), instead of random token ids.
    #[arg(long = "prompts-file")]
    pub prompts_file: Option<PathBuf>,
    /// Requests in flight at once (default: all).
    #[arg(long = "max-concurrency")]
    pub max_concurrency: Option<usize>,
    /// Poisson arrival rate in requests/s (default: all at once).
    #[arg(long = "request-rate")]
    pub request_rate: Option<f64>,
    /// Largest token id used in random prompts.
    #[arg(long = "vocab", default_value_t = 1000)]
    pub vocab: u32,
    /// Seed of the prompt and arrival generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the results as JSON to this file.
    #[arg(long = "result-json")]
    pub result_json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Why a request or the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    BadUrl(&'static str),
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error("HTTP error: {0}")]
    Status(String),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// An `error` event in the stream.
    #[error("{0}")]
    Server(Value),
    #[error("no model in /v1/models: {0}")]
    NoModel(Value),
    #[error("{}: {source}", .path.display())]
    PromptsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", .path.display())]
    WriteResult {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Limit(#[from] tokio::sync::AcquireError),
}

async fn connect(host: &str, port: u16) -> Result<tokio::net::TcpStream, BenchError> {
    tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| BenchError::Connect {
            host: host.to_string(),
            port,
            source,
        })
}

/// What one request measured.
#[derive(Debug, Clone, Default)]
struct Sample {
    ok: bool,
    error: String,
    ttft: f64,
    e2e: f64,
    itl: Vec<f64>,
    output_tokens: usize,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * (s.len() - 1) as f64).round() as usize;
    s[rank.min(s.len() - 1)]
}

fn stats(v: &[f64]) -> Value {
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    json!({"mean_ms": mean * 1e3, "p50_ms": percentile(v, 50.0) * 1e3, "p99_ms": percentile(v, 99.0) * 1e3})
}

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn post_stream(host: &str, port: u16, body: Value) -> Sample {
    let start = Instant::now();
    let mut s = Sample::default();
    let r: Result<(), BenchError> = async {
        let sock = connect(host, port).await?;
        sock.set_nodelay(true).ok();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::post("/v1/completions")
            .header("host", host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let resp = sender.send_request(req).await?;
        if !resp.status().is_success() {
            let b = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(BenchError::Status(String::from_utf8_lossy(&b).into_owned()));
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut last = start;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..pos + 2).collect();
                let line = String::from_utf8_lossy(&event);
                let Some(payload) = line.trim().strip_prefix("data: ") else {
                    continue;
                };
                if payload == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(payload)?;
                if let Some(e) = v.get("error") {
                    return Err(BenchError::Server(e.clone()));
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    s.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
                }
                let has_text = v["choices"]
                    .get(0)
                    .and_then(|c| c["text"].as_str())
                    .is_some_and(|t| !t.is_empty());
                if has_text {
                    let now = Instant::now();
                    if s.ttft == 0.0 {
                        s.ttft = (now - start).as_secs_f64();
                    } else {
                        s.itl.push((now - last).as_secs_f64());
                    }
                    last = now;
                }
            }
        }
        Ok(())
    }
    .await;
    s.e2e = start.elapsed().as_secs_f64();
    match r {
        Ok(()) => s.ok = true,
        Err(e) => s.error = e.to_string(),
    }
    s
}

async fn first_model(host: &str, port: u16) -> Result<String, BenchError> {
    let sock = connect(host, port).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/v1/models")
        .header("host", host)
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let b = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&b)?;
    match v["data"][0]["id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => Err(BenchError::NoModel(v)),
    }
}

/// Runs the benchmark; returns the JSON results (also printed as a table).
pub fn run(a: &BenchArgs) -> Result<Value, BenchError> {
    let url = a.base_url.trim_end_matches('/');
    let hostport = url
        .strip_prefix("http://")
        .ok_or(BenchError::BadUrl("--base-url must start with http://"))?;
    let (host, port) = hostport
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>()))
        .ok_or(BenchError::BadUrl("--base-url needs a port"))?;
    let port = port.map_err(|_| BenchError::BadUrl("bad port in --base-url"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    rt.block_on(async {
        let model = match &a.model {
            Some(m) => m.clone(),
            None => first_model(&host, port).await?,
        };
        let mut rng = SplitMix(a.seed);
        let lines: Option<Vec<String>> = match &a.prompts_file {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|source| BenchError::PromptsFile { path: p.clone(), source })?.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()),
            None => None,
        };
        let bodies: Vec<Value> = (0..a.num_prompts)
            .map(|i| {
                let prompt = match &lines {
                    Some(l) => json!(l[i % l.len()]),
                    None => json!((0..a.input_len).map(|_| 4 + (rng.next() % a.vocab.saturating_sub(4).max(1) as u64) as u32).collect::<Vec<u32>>()),
                };
                json!({"model": model, "prompt": prompt, "max_tokens": a.output_len, "temperature": 0, "ignore_eos": true,
                       "stream": true, "stream_options": {"include_usage": true}})
            })
            .collect();
        let limit = Arc::new(Semaphore::new(a.max_concurrency.unwrap_or(a.num_prompts).max(1)));
        let bar = if a.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(a.num_prompts as u64) };
        let start = Instant::now();
        let mut tasks = Vec::new();
        for body in bodies {
            if let Some(rate) = a.request_rate {
                let gap = -(1.0 - rng.unit()).ln() / rate;
                tokio::time::sleep(Duration::from_secs_f64(gap)).await;
            }
            let permit = limit.clone().acquire_owned().await?;
            let (host, bar) = (host.clone(), bar.clone());
            tasks.push(tokio::spawn(async move {
                let s = post_stream(&host, port, body).await;
                drop(permit);
                bar.inc(1);
                s
            }));
        }
        let mut samples = Vec::new();
        for t in tasks {
            samples.push(t.await?);
        }
        bar.finish_and_clear();
        let dur = start.elapsed().as_secs_f64();
        let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
        let failed = samples.len() - ok.len();
        let out_tokens: usize = ok.iter().map(|s| s.output_tokens).sum();
        let ttft: Vec<f64> = ok.iter().map(|s| s.ttft).collect();
        let e2e: Vec<f64> = ok.iter().map(|s| s.e2e).collect();
        let tpot: Vec<f64> = ok.iter().filter(|s| s.output_tokens > 1).map(|s| (s.e2e - s.ttft) / (s.output_tokens - 1) as f64).collect();
        let itl: Vec<f64> = ok.iter().flat_map(|s| s.itl.iter().copied()).collect();
        let result = json!({
            "model": model, "num_prompts": a.num_prompts, "input_len": a.input_len, "output_len": a.output_len,
            "max_concurrency": a.max_concurrency, "request_rate": a.request_rate,
            "completed": ok.len(), "failed": failed, "first_error": samples.iter().find(|s| !s.ok).map(|s| s.error.clone()),
            "duration_s": dur, "request_throughput": ok.len() as f64 / dur, "output_throughput": out_tokens as f64 / dur,
            "total_output_tokens": out_tokens,
            "ttft": stats(&ttft), "tpot": stats(&tpot), "itl": stats(&itl), "e2e": stats(&e2e),
        });
        Ok(result)
    })
}

/// Writes [`run`]'s JSON to `--result-json`, when given.
pub fn write_result(a: &BenchArgs, r: &Value) -> Result<(), BenchError> {
    let Some(path) = &a.result_json else {
        return Ok(());
    };
    std::fs::write(path, serde_json::to_string_pretty(r)?).map_err(|source| {
        BenchError::WriteResult {
            path: path.clone(),
            source,
        }
    })
}

/// The text report of [`run`]'s JSON.
pub fn report(r: &Value) -> String {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let line = |name: &str, k: &str| {
        format!(
            "{name:<28} mean {:>9.2} ms  p50 {:>9.2} ms  p99 {:>9.2} ms\n",
            r[k]["mean_ms"].as_f64().unwrap_or(0.0),
            r[k]["p50_ms"].as_f64().unwrap_or(0.0),
            r[k]["p99_ms"].as_f64().unwrap_or(0.0)
        )
    };
    let mut s = format!(
        "============ rrun-bench ============\nmodel {}  prompts {}  input {}  output {}\ncompleted {}  failed {}\nduration {:.2} s\nrequest throughput {:.2} req/s\noutput throughput {:.1} tok/s\n",
        r["model"].as_str().unwrap_or(""),
        r["num_prompts"],
        r["input_len"],
        r["output_len"],
        r["completed"],
        r["failed"],
        f("duration_s"),
        f("request_throughput"),
        f("output_throughput")
    );
    s += &line("TTFT (time to first token)", "ttft");
    s += &line("TPOT (per output token)", "tpot");
    s += &line("ITL (inter-token latency)", "itl");
    s += &line("E2E latency", "e2e");
    if let Some(e) = r["first_error"].as_str() {
        s += &format!("first error: {e}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn base_url_errors() {
        let err = |url: &str| {
            let a = BenchArgs::try_parse_from(["rrun-bench", "--base-url", url]).unwrap();
            run(&a).unwrap_err().to_string()
        };
        assert_eq!(err("https://h:1"), "--base-url must start with http://");
        assert_eq!(err("http://h"), "--base-url needs a port");
        assert_eq!(err("http://h:x"), "bad port in --base-url");
    }
}
