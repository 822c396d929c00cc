//! OpenAI `/v1/completions` and `/v1/chat/completions`: the body is parsed,
//! validated and tokenized off the I/O thread, each prompt × `n` becomes one engine
//! sequence, and the answer is one JSON document or an SSE stream (`data: [DONE]`,
//! `stream_options.include_usage`). Every stream ends with its last chunk, or with
//! an error event when the engine stops before the sequence ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::api::{self, ApiError, Kind, Parsed};
use super::body::Body as JsonBody;
use super::respond::{Body, body_of, json_resp, merge, offload, shut_down};
use super::state::AppState;
use crate::rank::engine::scheduler::{Event, Finish, StopReason};
use crate::rank::tokenizer::TextCodec;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One generated token's log-probability record.
type Lp = (u32, f32, Vec<(u32, f32)>);

/// `logprobs` of a choice: completions style (`tokens`, `token_logprobs`, `top_logprobs`,
/// `text_offset`) or chat style (`content: [{token, logprob, bytes, top_logprobs}]`).
/// Tokens are shown with their special-token text, as vLLM shows them.
fn logprobs_json(codec: &TextCodec, kind: Kind, lps: &[Lp], offset0: usize) -> Value {
    let tok = |t: u32| codec.token_text(t);
    match kind {
        Kind::Completion => {
            let mut off = offset0;
            let mut offsets = Vec::new();
            let mut tokens = Vec::new();
            for (t, _, _) in lps {
                let s = tok(*t);
                offsets.push(off);
                off += s.len();
                tokens.push(s);
            }
            json!({
                "tokens": tokens,
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

pub fn finish_fields(f: &Finish) -> (&'static str, Value) {
    match f {
        Finish::Length => ("length", Value::Null),
        Finish::Stop(None) => ("stop", Value::Null),
        Finish::Stop(Some(StopReason::Token(t))) => ("stop", json!(t)),
        Finish::Stop(Some(StopReason::Text(s))) => ("stop", json!(s)),
    }
}

/// A request ready for the engine: its parameters and, per prompt, the token ids,
/// the most tokens to generate and the echoed text.
pub struct Prepared {
    pub p: Parsed,
    pub prompts: Vec<(Arc<[u32]>, usize, String)>,
}

/// Parses, validates and tokenizes a body (runs on a blocking thread). Token-id
/// prompts longer than the context are refused before they are copied.
pub fn prepare(st: &AppState, bytes: Bytes, kind: Kind) -> Result<Prepared, ApiError> {
    let body = JsonBody::parse(&bytes)?;
    drop(bytes);
    if let Some(ids) = body.ids("prompt")
        && let Some(long) = ids.lists.iter().find(|l| l.len() >= st.max_model_len)
    {
        api::fit_context(long.len(), None, st.max_model_len)?;
    }
    let p = api::parse(&body, kind, &st.served)?;
    drop(body);
    let mut prompts = Vec::with_capacity(p.prompts.len());
    for prompt in &p.prompts {
        let ids = match prompt {
            api::PromptIn::Messages(m) => {
                st.message_ids(m, p.add_generation_prompt, p.add_special_tokens)?
            }
            other => st.prompt_ids(other, p.add_special_tokens)?,
        };
        let max = api::fit_context(ids.len(), p.max_tokens, st.max_model_len)?;
        let echo = if p.echo {
            st.codec.decode(&ids)
        } else {
            String::new()
        };
        prompts.push((ids, max, echo));
    }
    Ok(Prepared { p, prompts })
}

/// A submitted sequence: its choice index, echoed text and events.
type Choice = (usize, String, mpsc::UnboundedReceiver<Event>);

pub async fn generate(
    st: Arc<AppState>,
    bytes: Bytes,
    kind: Kind,
) -> Result<Response<Body>, ApiError> {
    let arrival = Instant::now();
    st.accepting()?;
    let st2 = st.clone();
    let Prepared { p, prompts } = offload(move || prepare(&st2, bytes, kind)).await?;
    st.accepting()?;
    let mut places = st.reserve(prompts.len() * p.n)?;
    let mut seqs: Vec<Choice> = Vec::new();
    for (i, (ids, max, echo)) in prompts.into_iter().enumerate() {
        for j in 0..p.n {
            let req = api::gen_request(&p, ids.clone(), max, j);
            seqs.push((i * p.n + j, echo.clone(), places.submit(req, arrival)?));
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
    let mut outs = Vec::with_capacity(seqs.len());
    for (index, echo, mut rx) in seqs {
        let mut lps: Vec<Lp> = Vec::new();
        let mut text = echo;
        let echo_len = text.len();
        let mut end = None;
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
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    end = Some((finish, prompt_tokens, completion_tokens));
                    break;
                }
            }
        }
        let Some(end) = end else {
            return Err(shut_down());
        };
        outs.push((index, text, echo_len, lps, end));
    }
    let want_lp = p.logprobs.is_some();
    let n = p.n;
    let model = st.served.clone();
    let codec = st.codec.clone();
    let doc = offload(move || {
        let mut choices = Vec::with_capacity(outs.len());
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        let mut seen_prompts = HashSet::new();
        for (index, text, echo_len, lps, (finish, pt, ct)) in outs {
            if seen_prompts.insert(index / n) {
                prompt_tokens += pt;
            }
            completion_tokens += ct;
            let (reason, stop_reason) = finish_fields(&finish);
            let lp = if want_lp {
                logprobs_json(&codec, kind, &lps, echo_len)
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
        Ok(json!({"id": id, "object": object, "created": created, "model": model, "choices": choices,
                  "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
                  "system_fingerprint": null}))
    })
    .await?;
    Ok(json_resp(StatusCode::OK, &doc))
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

fn stream(st: Arc<AppState>, spec: StreamSpec, seqs: Vec<Choice>) -> Response<Body> {
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
    let n_seqs = seqs.len();
    let mut first = Vec::with_capacity(n_seqs);
    let mut rxs = Vec::with_capacity(n_seqs);
    for (index, echo, rx) in seqs {
        first.push((index, echo));
        rxs.push(rx);
    }
    tokio::spawn(async move {
        let mut merged = merge(rxs);
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
        let mut counted = HashSet::new();
        // Log-probabilities of tokens whose text is held back ride on the next chunk.
        let mut pending: HashMap<usize, Vec<Lp>> = HashMap::new();
        let mut offsets: HashMap<usize, usize> = HashMap::new();
        let codec = st.codec.clone();
        let mut lp_for =
            |index: usize, text_len: usize, pending: &mut HashMap<usize, Vec<Lp>>| -> Value {
                let l = pending.remove(&index).unwrap_or_default();
                if !want_lp {
                    return Value::Null;
                }
                let off = offsets.entry(index).or_insert(0);
                let v = logprobs_json(&codec, kind, &l, *off);
                *off += text_len;
                v
            };
        while let Some((seq, ev)) = merged.recv().await {
            let index = first[seq].0;
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
            if done == n_seqs {
                break;
            }
        }
        if done < n_seqs {
            let e = shut_down();
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
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body_of(out_rx))
        .expect("static response parts")
}
