//! vLLM's own routes: the demo `/generate` (JSON, or newline-delimited JSON of the
//! cumulative texts), `/tokenize`, `/detokenize`, and `/openapi.json`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::api::{self, ApiError, Kind, PromptIn};
use super::body::Body as JsonBody;
use super::openai::Prepared;
use super::respond::{Body, body_of, json_resp, merge, offload, shut_down};
use super::state::AppState;
use crate::rank::engine::scheduler::Event;

/// `/tokenize`: `{"prompt": str}` or `{"messages": [...]}` → `{count, max_model_len, tokens}`.
pub async fn tokenize(st: Arc<AppState>, bytes: Bytes) -> Result<Response<Body>, ApiError> {
    let st2 = st.clone();
    let ids = offload(move || {
        let b = JsonBody::parse(&bytes)?;
        let add = match b.get("add_special_tokens") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(v)) => Some(*v),
            Some(other) => {
                return Err(ApiError::bad(
                    format!("add_special_tokens must be a boolean, got {other}"),
                    Some("add_special_tokens"),
                ));
            }
        };
        match (b.get("prompt"), b.get("messages")) {
            (Some(Value::String(s)), _) => {
                st2.prompt_ids(&PromptIn::Text(s.clone()), add.unwrap_or(true))
            }
            (_, Some(Value::Array(m))) => {
                let m = m.iter().map(api::message).collect::<Result<Vec<_>, _>>()?;
                st2.message_ids(&Value::Array(m), true, add.unwrap_or(false))
            }
            _ => Err(ApiError::bad(
                "give `prompt` (a string) or `messages`",
                Some("prompt"),
            )),
        }
    })
    .await?;
    let v = json!({"count": ids.len(), "max_model_len": st.max_model_len, "tokens": &*ids});
    Ok(json_resp(StatusCode::OK, &v))
}

/// `/detokenize`: `{"tokens": [ids]}` → `{"prompt": text}`.
pub async fn detokenize(st: Arc<AppState>, bytes: Bytes) -> Result<Response<Body>, ApiError> {
    let st2 = st.clone();
    let text = offload(move || {
        let b = JsonBody::parse(&bytes)?;
        let bad = || {
            ApiError::bad(
                format!("tokens must be a list of token ids below {}", st2.vocab),
                Some("tokens"),
            )
        };
        let ids: &[u32] = match (b.ids("tokens"), b.get("tokens")) {
            (Some(ids), _) if !ids.nested => &ids.lists[0],
            (_, Some(Value::Array(a))) if a.is_empty() => &[],
            _ => return Err(bad()),
        };
        if ids.iter().any(|&t| t as usize >= st2.vocab) {
            return Err(bad());
        }
        Ok(st2.codec.decode(ids))
    })
    .await?;
    Ok(json_resp(StatusCode::OK, &json!({"prompt": text})))
}

/// vLLM's demo `/generate`: `{"prompt": str, "stream"?: bool, ...sampling fields}` →
/// `{"text": [prompt + output, …]}` (one entry per `n`), or newline-delimited JSON lines of
/// the cumulative texts when streaming.
pub async fn generate(st: Arc<AppState>, bytes: Bytes) -> Result<Response<Body>, ApiError> {
    let arrival = Instant::now();
    st.accepting()?;
    let st2 = st.clone();
    let (prompt, Prepared { p, prompts }) = offload(move || {
        let body = JsonBody::parse(&bytes)?;
        let prompt = match body.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(ApiError::bad("prompt must be a string", Some("prompt"))),
        };
        let p = api::parse(&body, Kind::Completion, &st2.served)?;
        let ids = st2.prompt_ids(&PromptIn::Text(prompt.clone()), true)?;
        let max = api::fit_context(ids.len(), p.max_tokens, st2.max_model_len)?;
        Ok((
            prompt,
            Prepared {
                p,
                prompts: vec![(ids, max, String::new())],
            },
        ))
    })
    .await?;
    st.accepting()?;
    let n = p.n;
    let (ids, max, _) = &prompts[0];
    let mut places = st.reserve(n)?;
    let mut rxs = Vec::with_capacity(n);
    for j in 0..n {
        rxs.push(places.submit(api::gen_request(&p, ids.clone(), *max, j), arrival)?);
    }
    let mut merged = merge(rxs);
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
            return Err(shut_down());
        }
        return Ok(json_resp(StatusCode::OK, &json!({"text": texts})));
    }
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut texts = vec![prompt; n];
        let mut done = 0;
        while let Some((j, ev)) = merged.recv().await {
            match ev {
                Event::Token { text, .. } if text.is_empty() => continue,
                Event::Token { text, .. } => texts[j].push_str(&text),
                Event::Done { .. } => {
                    done += 1;
                    continue;
                }
            }
            let line = Bytes::from(format!("{}\n", json!({"text": texts})));
            if out_tx.send(line).await.is_err() {
                return;
            }
        }
        if done < n {
            let _ = out_tx
                .send(Bytes::from(format!("{}\n", shut_down().body())))
                .await;
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(body_of(out_rx))
        .expect("static response parts"))
}

/// A small OpenAPI 3 description of the routes.
pub fn openapi(st: &AppState) -> Value {
    let post = |summary: &str| {
        json!({"post": {"summary": summary, "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "OK"}, "400": {"description": "Bad request (OpenAI-style error JSON)"}, "404": {"description": "Unknown model"},
                      "413": {"description": "Body too large"}, "408": {"description": "Body too slow"}, "429": {"description": "Queue full"},
                      "503": {"description": "Loading or shutting down"}}}})
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
