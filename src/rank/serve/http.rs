//! Rank 0's HTTP front (hyper 1, HTTP/1.1, a small tokio runtime on its own thread):
//! OpenAI `/v1/completions`, `/v1/chat/completions` (JSON or SSE), `/v1/models`,
//! `/health`, `/version`, `/tokenize`, `/detokenize`, `/metrics`. Requests are
//! tokenized here and handed to the engine thread; a client that goes away drops its
//! event channel, and the engine frees that sequence's blocks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::api::{self, ApiError, Kind, PromptIn};
use crate::rank::engine::scheduler::{Event, Finish, StopReason};
use crate::rank::engine::{Stats, StepKind, Submit};
use crate::rank::tokenizer::TextCodec;

/// Largest accepted request body.
pub const MAX_BODY: usize = 16 << 20;

/// What every handler shares.
pub struct AppState {
    pub codec: Arc<TextCodec>,
    pub submit: Mutex<std::sync::mpsc::Sender<Submit>>,
    pub served: String,
    pub max_model_len: usize,
    pub vocab: usize,
    pub api_key: Option<String>,
    pub stats: Arc<Mutex<Stats>>,
    pub stopping: Arc<AtomicBool>,
    /// Weights loaded and the engine running.
    pub ready: AtomicBool,
    pub created: u64,
    /// Extra gauge lines for /metrics (per-rank memory).
    pub gauges: Mutex<Vec<String>>,
    pub latency: Arc<Mutex<super::metrics::Latency>>,
}

type Body = BoxBody<Bytes, Infallible>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

fn json_resp(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn error(e: &ApiError) -> Response<Body> {
    json_resp(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        &e.body(),
    )
}

/// Binds `host:port` and serves on a background thread until the process ends.
pub fn spawn(state: Arc<AppState>, host: &str, port: u16) -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind((host, port))
        .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("rrank-http".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let st = state.clone();
                    tokio::spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(sock);
                        let svc = hyper::service::service_fn(move |req| {
                            let st = st.clone();
                            async move { Ok::<_, Infallible>(route(req, st).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(10))
                            .serve_connection(io, svc)
                            .await;
                    });
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(addr)
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::new(
                413,
                "RequestTooLarge",
                format!("request body larger than {MAX_BODY} bytes"),
            ));
        }
        Err(e) => {
            return Err(ApiError::bad(
                format!("cannot read the request body: {e}"),
                None,
            ));
        }
    };
    if !ctype.is_empty() && !ctype.starts_with("application/json") {
        return Err(ApiError::bad(
            "Unsupported Media Type: Only 'application/json' is allowed",
            None,
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("Invalid JSON body: {e}"), None))
}

async fn route(req: Request<Incoming>, st: Arc<AppState>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path.starts_with("/v1")
        && req.method() != Method::OPTIONS
        && let Some(key) = &st.api_key
    {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {key}"));
        if !ok {
            return json_resp(StatusCode::UNAUTHORIZED, &json!({"error": "Unauthorized"}));
        }
    }
    let method = req.method().clone();
    let result = match (method.as_str(), path.as_str()) {
        ("GET", "/health") => {
            return if st.stopping.load(Ordering::SeqCst) || !st.ready.load(Ordering::SeqCst) {
                full(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "")
            } else {
                full(StatusCode::OK, "text/plain", "")
            };
        }
        ("GET", "/version") => Ok(json_resp(
            StatusCode::OK,
            &json!({"version": env!("CARGO_PKG_VERSION")}),
        )),
        ("GET", "/v1/models") => Ok(json_resp(
            StatusCode::OK,
            &json!({"object": "list", "data": [{"id": st.served, "object": "model", "created": st.created, "owned_by": "rrun",
                     "root": st.served, "parent": null, "max_model_len": st.max_model_len, "permission": []}]}),
        )),
        ("GET", "/metrics") => Ok(full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics(&st),
        )),
        ("POST", "/tokenize") => match read_json(req).await {
            Ok(b) => tokenize(&st, &b),
            Err(e) => Err(e),
        },
        ("POST", "/detokenize") => match read_json(req).await {
            Ok(b) => detokenize(&st, &b),
            Err(e) => Err(e),
        },
        ("POST", "/v1/completions") => match read_json(req).await {
            Ok(b) => generate(st.clone(), b, Kind::Completion).await,
            Err(e) => Err(e),
        },
        ("POST", "/v1/chat/completions") => match read_json(req).await {
            Ok(b) => generate(st.clone(), b, Kind::Chat).await,
            Err(e) => Err(e),
        },
        ("POST", "/generate") => match read_json(req).await {
            Ok(b) => demo_generate(st.clone(), b).await,
            Err(e) => Err(e),
        },
        ("GET", "/openapi.json") => Ok(json_resp(StatusCode::OK, &openapi(&st))),
        (
            _,
            "/health"
            | "/version"
            | "/v1/models"
            | "/metrics"
            | "/tokenize"
            | "/detokenize"
            | "/v1/completions"
            | "/v1/chat/completions"
            | "/generate"
            | "/openapi.json",
        ) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::not_found(format!("no route {method} {path}"))),
    };
    result.unwrap_or_else(|e| error(&e))
}

fn metrics(st: &AppState) -> String {
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

fn prompt_ids(st: &AppState, p: &PromptIn, add_special: bool) -> Result<Vec<u32>, ApiError> {
    let ids = match p {
        PromptIn::Ids(ids) => ids.clone(),
        PromptIn::Text(t) => st.codec.encode(t, add_special).map_err(|e| {
            ApiError::bad(format!("cannot tokenize the prompt: {e}"), Some("prompt"))
        })?,
        PromptIn::Messages(m) => {
            let text = st
                .codec
                .apply_chat_template(m)
                .map_err(|e| ApiError::bad(e, Some("messages")))?;
            st.codec.encode(&text, false).map_err(|e| {
                ApiError::bad(
                    format!("cannot tokenize the messages: {e}"),
                    Some("messages"),
                )
            })?
        }
    };
    if ids.is_empty() {
        return Err(ApiError::bad("the prompt is empty", Some("prompt")));
    }
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= st.vocab) {
        return Err(ApiError::bad(
            format!(
                "token id {bad} is outside the vocabulary (size {})",
                st.vocab
            ),
            Some("prompt"),
        ));
    }
    Ok(ids)
}

fn tokenize(st: &AppState, b: &Value) -> Result<Response<Body>, ApiError> {
    let add = b.get("add_special_tokens").and_then(Value::as_bool);
    let (p, add) = match (b.get("prompt"), b.get("messages")) {
        (Some(Value::String(s)), _) => (PromptIn::Text(s.clone()), add.unwrap_or(true)),
        (_, Some(m @ Value::Array(_))) => (PromptIn::Messages(m.clone()), add.unwrap_or(false)),
        _ => {
            return Err(ApiError::bad(
                "give `prompt` (a string) or `messages`",
                Some("prompt"),
            ));
        }
    };
    let ids = prompt_ids(st, &p, add)?;
    Ok(json_resp(
        StatusCode::OK,
        &json!({"count": ids.len(), "max_model_len": st.max_model_len, "tokens": ids}),
    ))
}

fn detokenize(st: &AppState, b: &Value) -> Result<Response<Body>, ApiError> {
    let ids = match b.get("tokens") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .filter(|v| (*v as usize) < st.vocab)
                    .map(|v| v as u32)
            })
            .collect::<Option<Vec<u32>>>(),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::bad(
            format!("tokens must be a list of token ids below {}", st.vocab),
            Some("tokens"),
        )
    })?;
    Ok(json_resp(
        StatusCode::OK,
        &json!({"prompt": st.codec.decode(&ids)}),
    ))
}

/// One generated token's log-probability record.
type Lp = (u32, f32, Vec<(u32, f32)>);

/// `logprobs` of a choice: completions style (`tokens`, `token_logprobs`, `top_logprobs`,
/// `text_offset`) or chat style (`content: [{token, logprob, bytes, top_logprobs}]`).
fn logprobs_json(codec: &TextCodec, kind: Kind, lps: &[Lp], offset0: usize) -> Value {
    let tok = |t: u32| codec.decode(&[t]);
    match kind {
        Kind::Completion => {
            let mut off = offset0;
            let mut offsets = Vec::new();
            for (t, _, _) in lps {
                offsets.push(off);
                off += tok(*t).len();
            }
            json!({
                "tokens": lps.iter().map(|(t, _, _)| tok(*t)).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|(_, l, _)| *l).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|(_, _, top)| top.iter().map(|(t, l)| (tok(*t), json!(l))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
        Kind::Chat => {
            let entry = |t: u32, l: f32| {
                let s = tok(t);
                json!({"token": s, "logprob": l, "bytes": s.as_bytes()})
            };
            json!({"content": lps.iter().map(|(t, l, top)| {
                let mut e = entry(*t, *l);
                e["top_logprobs"] = Value::Array(top.iter().map(|(tt, ll)| entry(*tt, *ll)).collect());
                e
            }).collect::<Vec<_>>()})
        }
    }
}

fn finish_fields(f: &Finish) -> (&'static str, Value) {
    match f {
        Finish::Length => ("length", Value::Null),
        Finish::Stop(None) => ("stop", Value::Null),
        Finish::Stop(Some(StopReason::Token(t))) => ("stop", json!(t)),
        Finish::Stop(Some(StopReason::Text(s))) => ("stop", json!(s)),
    }
}

async fn generate(st: Arc<AppState>, body: Value, kind: Kind) -> Result<Response<Body>, ApiError> {
    let arrival = std::time::Instant::now();
    let p = api::parse(&body, kind, &st.served)?;
    if !st.ready.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            "the model is still loading",
        ));
    }
    if st.stopping.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            "the server is shutting down",
        ));
    }
    let mut seqs = Vec::new(); // (choice index, prompt len, echo text, receiver)
    let mut plans = Vec::new();
    for (i, prompt) in p.prompts.iter().enumerate() {
        let ids = prompt_ids(&st, prompt, true)?;
        let max = api::fit_context(ids.len(), p.max_tokens, st.max_model_len)?;
        plans.push((i, ids, max));
    }
    for (i, ids, max) in plans {
        let echo = if p.echo && kind == Kind::Completion {
            st.codec.decode(&ids)
        } else {
            String::new()
        };
        for j in 0..p.n {
            let (tx, rx) = mpsc::unbounded_channel();
            let req = api::gen_request(&p, ids.clone(), max, j);
            st.submit
                .lock()
                .unwrap()
                .send(Submit { req, events: tx })
                .map_err(|_| ApiError::new(503, "ServiceUnavailable", "the engine has stopped"))?;
            seqs.push((
                i * p.n + j,
                echo.clone(),
                super::metrics::tap(st.latency.clone(), arrival, rx),
            ));
        }
    }
    let id = format!(
        "{}-{}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        uuid::Uuid::new_v4().simple()
    );
    let created = now();
    if p.stream {
        let spec = StreamSpec {
            id,
            created,
            kind,
            include_usage: p.include_usage,
            n: p.n,
            want_lp: p.logprobs.is_some(),
        };
        return Ok(stream(st, spec, seqs));
    }
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let mut seen_prompts = std::collections::HashSet::new();
    for (index, echo, mut rx) in seqs {
        let echo_len = echo.len();
        let mut text = echo;
        let mut finish = Finish::Length;
        let mut lps: Vec<Lp> = Vec::new();
        let mut finished = false;
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Token {
                    text: t,
                    token,
                    logprob,
                    top,
                } => {
                    text.push_str(&t);
                    if let Some(l) = logprob {
                        lps.push((token, l, top));
                    }
                }
                Event::Done {
                    finish: f,
                    prompt_tokens: pt,
                    completion_tokens: ct,
                } => {
                    finish = f;
                    if seen_prompts.insert(index / p.n) {
                        prompt_tokens += pt;
                    }
                    completion_tokens += ct;
                    finished = true;
                    break;
                }
            }
        }
        if !finished {
            return Err(ApiError::new(
                503,
                "ServiceUnavailable",
                "the server shut down before the request finished",
            ));
        }
        let (reason, stop_reason) = finish_fields(&finish);
        let lp = if p.logprobs.is_some() {
            logprobs_json(&st.codec, kind, &lps, echo_len)
        } else {
            Value::Null
        };
        choices.push(match kind {
            Kind::Completion => json!({"index": index, "text": text, "logprobs": lp, "finish_reason": reason, "stop_reason": stop_reason}),
            Kind::Chat => json!({"index": index, "message": {"role": "assistant", "content": text, "tool_calls": []},
                                 "logprobs": lp, "finish_reason": reason, "stop_reason": stop_reason}),
        });
    }
    let object = if kind == Kind::Chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    Ok(json_resp(
        StatusCode::OK,
        &json!({"id": id, "object": object, "created": created, "model": st.served, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
                "system_fingerprint": null}),
    ))
}

/// What a streamed response needs besides its sequences.
struct StreamSpec {
    id: String,
    created: u64,
    kind: Kind,
    include_usage: bool,
    /// Samples per prompt.
    n: usize,
    want_lp: bool,
}

fn stream(
    st: Arc<AppState>,
    spec: StreamSpec,
    seqs: Vec<(usize, String, mpsc::UnboundedReceiver<Event>)>,
) -> Response<Body> {
    let StreamSpec {
        id,
        created,
        kind,
        include_usage,
        n,
        want_lp,
    } = spec;
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(64);
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let model = st.served.clone();
    let n_per_prompt = seqs.len();
    tokio::spawn(async move {
        // Merge every choice's events, tagged with its index.
        let (merged_tx, mut merged) = mpsc::unbounded_channel::<(usize, Event)>();
        let mut first = Vec::new();
        for (index, echo, mut rx) in seqs {
            first.push((index, echo));
            let tx = merged_tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    if tx.send((index, ev)).is_err() {
                        break; // the client left: dropping rx aborts the sequence
                    }
                }
            });
        }
        drop(merged_tx);
        let chunk = |choices: Value| -> Bytes {
            let v = json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
            Bytes::from(format!("data: {v}\n\n"))
        };
        for (index, echo) in &first {
            let c = match kind {
                Kind::Chat => {
                    json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])
                }
                Kind::Completion if !echo.is_empty() => {
                    json!([{"index": index, "text": echo, "logprobs": null, "finish_reason": null}])
                }
                Kind::Completion => continue,
            };
            if out_tx.send(chunk(c)).await.is_err() {
                return;
            }
        }
        let (mut pt_total, mut ct_total, mut done) = (0usize, 0usize, 0usize);
        let mut counted = std::collections::HashSet::new();
        // Log-probabilities of tokens whose text is held back ride on the next chunk.
        let mut pending: std::collections::HashMap<usize, Vec<Lp>> =
            std::collections::HashMap::new();
        let mut offsets: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        let codec = st.codec.clone();
        let mut lp_for = |index: usize,
                          text_len: usize,
                          pending: &mut std::collections::HashMap<usize, Vec<Lp>>|
         -> Value {
            let l = pending.remove(&index).unwrap_or_default();
            if !want_lp {
                return Value::Null;
            }
            let off = offsets.entry(index).or_insert(0);
            let v = logprobs_json(&codec, kind, &l, *off);
            *off += text_len;
            v
        };
        while let Some((index, ev)) = merged.recv().await {
            let c = match ev {
                Event::Token {
                    text,
                    token,
                    logprob,
                    top,
                } => {
                    if let Some(l) = logprob {
                        pending.entry(index).or_default().push((token, l, top));
                    }
                    if text.is_empty() {
                        continue;
                    }
                    let lp = lp_for(index, text.len(), &mut pending);
                    match kind {
                        Kind::Chat => {
                            json!([{"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}])
                        }
                        Kind::Completion => {
                            json!([{"index": index, "text": text, "logprobs": lp, "finish_reason": null}])
                        }
                    }
                }
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    done += 1;
                    if counted.insert(index / n) {
                        pt_total += prompt_tokens;
                    }
                    ct_total += completion_tokens;
                    let (reason, stop_reason) = finish_fields(&finish);
                    let lp = if pending.get(&index).is_some_and(|v| !v.is_empty()) {
                        lp_for(index, 0, &mut pending)
                    } else {
                        Value::Null
                    };
                    match kind {
                        Kind::Chat => {
                            json!([{"index": index, "delta": {}, "logprobs": lp, "finish_reason": reason, "stop_reason": stop_reason}])
                        }
                        Kind::Completion => {
                            json!([{"index": index, "text": "", "logprobs": lp, "finish_reason": reason, "stop_reason": stop_reason}])
                        }
                    }
                }
            };
            if out_tx.send(chunk(c)).await.is_err() {
                return;
            }
            if done == n_per_prompt {
                break;
            }
        }
        if done < n_per_prompt {
            let e = ApiError::new(
                503,
                "ServiceUnavailable",
                "the server shut down before the request finished",
            );
            let _ = out_tx
                .send(Bytes::from(format!("data: {}\n\n", e.body())))
                .await;
        } else if include_usage {
            let v = json!({"id": id, "object": object, "created": created, "model": model, "choices": [],
                           "usage": {"prompt_tokens": pt_total, "completion_tokens": ct_total, "total_tokens": pt_total + ct_total}});
            let _ = out_tx.send(Bytes::from(format!("data: {v}\n\n"))).await;
        }
        let _ = out_tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let s = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(s)))
        .unwrap()
}

/// vLLM's demo `/generate`: `{"prompt": str, "stream"?: bool, ...sampling fields}` →
/// `{"text": [prompt + output, …]}` (one entry per `n`), or newline-delimited JSON lines of
/// the cumulative texts when streaming.
async fn demo_generate(st: Arc<AppState>, body: Value) -> Result<Response<Body>, ApiError> {
    let arrival = std::time::Instant::now();
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::bad("prompt must be a string", Some("prompt"))),
    };
    let p = api::parse(&body, Kind::Completion, &st.served)?;
    if !st.ready.load(Ordering::SeqCst) || st.stopping.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            "the server is not accepting requests",
        ));
    }
    let ids = prompt_ids(&st, &PromptIn::Text(prompt.clone()), true)?;
    let max = api::fit_context(ids.len(), p.max_tokens, st.max_model_len)?;
    let mut rxs = Vec::new();
    for j in 0..p.n {
        let (tx, rx) = mpsc::unbounded_channel();
        st.submit
            .lock()
            .unwrap()
            .send(Submit {
                req: api::gen_request(&p, ids.clone(), max, j),
                events: tx,
            })
            .map_err(|_| ApiError::new(503, "ServiceUnavailable", "the engine has stopped"))?;
        rxs.push(super::metrics::tap(st.latency.clone(), arrival, rx));
    }
    let (merged_tx, mut merged) = mpsc::unbounded_channel::<(usize, Event)>();
    for (j, mut rx) in rxs.into_iter().enumerate() {
        let tx = merged_tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if tx.send((j, ev)).is_err() {
                    break;
                }
            }
        });
    }
    drop(merged_tx);
    let n = p.n;
    if !p.stream {
        let mut texts = vec![prompt.clone(); n];
        let mut done = 0;
        while let Some((j, ev)) = merged.recv().await {
            match ev {
                Event::Token { text, .. } => texts[j].push_str(&text),
                Event::Done { .. } => done += 1,
            }
        }
        if done < n {
            return Err(ApiError::new(
                503,
                "ServiceUnavailable",
                "the server shut down before the request finished",
            ));
        }
        return Ok(json_resp(StatusCode::OK, &json!({"text": texts})));
    }
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut texts = vec![prompt; n];
        while let Some((j, ev)) = merged.recv().await {
            match ev {
                Event::Token { text, .. } if text.is_empty() => continue,
                Event::Token { text, .. } => texts[j].push_str(&text),
                Event::Done { .. } => continue,
            }
            if out_tx
                .send(Bytes::from(format!("{}\n", json!({"text": texts}))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let s = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(s)))
        .unwrap())
}

/// A small OpenAPI 3 description of the routes.
fn openapi(st: &AppState) -> Value {
    let post = |summary: &str| {
        json!({"post": {"summary": summary, "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "OK"}, "400": {"description": "Bad request (OpenAI-style error JSON)"}, "404": {"description": "Unknown model"},
                      "413": {"description": "Body too large"}, "503": {"description": "Loading or shutting down"}}}})
    };
    let get = |summary: &str| json!({"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "rrank", "version": env!("CARGO_PKG_VERSION"), "description": format!("OpenAI/vLLM-compatible API serving {}", st.served)},
        "paths": {
            "/v1/completions": post("OpenAI completions (JSON or SSE stream)"),
            "/v1/chat/completions": post("OpenAI chat completions (JSON or SSE stream)"),
            "/generate": post("vLLM demo generate (JSON or newline-delimited JSON stream)"),
            "/tokenize": post("Prompt or messages to token ids"),
            "/detokenize": post("Token ids to text"),
            "/v1/models": get("Served models"),
            "/health": get("200 when serving, 503 while loading or shutting down"),
            "/version": get("Server version"),
            "/metrics": get("Prometheus metrics (rrun: prefix)"),
            "/openapi.json": get("This document"),
        }
    })
}
