//! Rank 0's HTTP server (hyper 1, HTTP/1.1, a small tokio runtime on its own
//! thread): the accept loop, request limits (body size from the header on, body
//! arrival time), authentication, routing with 405 + `Allow`, and the graceful
//! shutdown that lets every response in flight end before the process exits. The
//! routes live in [`super::openai`] and [`super::vllm`]; JSON parsing, tokenization
//! and response building run on blocking threads ([`offload`]), so the I/O thread
//! keeps answering `/health` and streaming tokens while a large request is handled.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::watch;

use super::api::{ApiError, Kind};
use super::respond::{Body, error, full, json_resp};
use super::state::AppState;
use super::{exposition, openai, vllm};

/// Largest accepted request body.
pub const MAX_BODY: usize = 16 << 20;

/// Blocking threads for parsing, tokenization and response building.
const BLOCKING_THREADS: usize = 4;

/// The running server.
pub struct Front {
    pub addr: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    thread: std::thread::JoinHandle<bool>,
}

impl Front {
    /// Stops accepting connections, lets the responses in flight end (at most
    /// `grace`), closes idle connections and returns whether all ended in time.
    pub fn shutdown(self, grace: Duration) -> bool {
        let _ = self.stop.send(Some(grace));
        self.thread.join().unwrap_or(false)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("cannot listen on {host}:{port}: {source}")]
    Listen {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("cannot start the HTTP server: {0}")]
    Start(#[from] std::io::Error),
}

/// Binds `host:port` and serves on a background thread until [`Front::shutdown`].
pub fn spawn(state: Arc<AppState>, host: &str, port: u16) -> Result<Front, FrontError> {
    let listener =
        std::net::TcpListener::bind((host, port)).map_err(|source| FrontError::Listen {
            host: host.to_string(),
            port,
            source,
        })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?;
    let (stop, mut stop_rx) = watch::channel(None);
    let thread = std::thread::Builder::new()
        .name("rrank-http".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let graceful = hyper_util::server::graceful::GracefulShutdown::new();
                let grace = loop {
                    tokio::select! {
                        r = listener.accept() => {
                            let Ok((sock, _)) = r else {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            };
                            let st = state.clone();
                            let svc = hyper::service::service_fn(move |req| {
                                let st = st.clone();
                                async move { Ok::<_, Infallible>(route(req, st).await) }
                            });
                            let conn = hyper::server::conn::http1::Builder::new()
                                .timer(hyper_util::rt::TokioTimer::new())
                                .header_read_timeout(Duration::from_secs(10))
                                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc);
                            let conn = graceful.watch(conn);
                            tokio::spawn(async move {
                                let _ = conn.await;
                            });
                        }
                        _ = stop_rx.changed() => break stop_rx.borrow().unwrap_or_default(),
                    }
                };
                drop(listener);
                tokio::time::timeout(grace, graceful.shutdown())
                    .await
                    .is_ok()
            })
        })?;
    Ok(Front { addr, stop, thread })
}

/// The body of `req` as bytes: 413 at once when `Content-Length` says it is over
/// [`MAX_BODY`] (or when it grows past it), 408 when it takes longer than the
/// server's body timeout, 400 for a content type other than JSON.
async fn read_body(req: Request<Incoming>, st: &AppState) -> Result<Bytes, ApiError> {
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let too_large = || {
        ApiError::new(
            413,
            "RequestTooLarge",
            format!("request body larger than {MAX_BODY} bytes"),
        )
    };
    if let Ok(len) = header(hyper::header::CONTENT_LENGTH).parse::<u64>()
        && len > MAX_BODY as u64
    {
        return Err(too_large());
    }
    let ctype = header(hyper::header::CONTENT_TYPE);
    if !ctype.is_empty() && !ctype.starts_with("application/json") {
        return Err(ApiError::bad(
            "Unsupported Media Type: Only 'application/json' is allowed",
            None,
        ));
    }
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(st.body_timeout, collect).await {
        Err(_) => Err(ApiError::new(
            408,
            "RequestTimeout",
            format!(
                "the request body did not arrive within {:.0} s (--body-timeout)",
                st.body_timeout.as_secs_f64()
            ),
        )),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad(
            format!("cannot read the request body: {e}"),
            None,
        )),
    }
}

/// The methods a path answers, for routing and for 405's `Allow`.
fn allowed(path: &str) -> Option<&'static str> {
    Some(match path {
        "/health" | "/version" | "/v1/models" | "/metrics" | "/openapi.json" => "GET",
        "/tokenize" | "/detokenize" | "/v1/completions" | "/v1/chat/completions" | "/generate" => {
            "POST"
        }
        _ => return None,
    })
}

/// Routes open without the API key: probes and monitoring.
fn open_route(path: &str) -> bool {
    matches!(path, "/health" | "/version" | "/metrics")
}

async fn route(req: Request<Incoming>, st: Arc<AppState>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let Some(allow) = allowed(&path) else {
        return error(&ApiError::not_found(format!("no route {method} {path}")));
    };
    if let Some(key) = &st.api_key
        && !open_route(&path)
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
    if method.as_str() != allow {
        let mut r = error(&ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not allowed on {path}; allowed: {allow}"),
        ));
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static(allow),
        );
        return r;
    }
    if method == Method::GET {
        return get(&path, &st);
    }
    let body = match read_body(req, &st).await {
        Ok(b) => b,
        Err(e) => {
            // The rest of the body is not read: the connection cannot be reused.
            let mut r = error(&e);
            r.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            return r;
        }
    };
    let result = match path.as_str() {
        "/tokenize" => vllm::tokenize(st, body).await,
        "/detokenize" => vllm::detokenize(st, body).await,
        "/v1/completions" => openai::generate(st, body, Kind::Completion).await,
        "/v1/chat/completions" => openai::generate(st, body, Kind::Chat).await,
        "/generate" => vllm::generate(st, body).await,
        _ => unreachable!("allowed() lists POST routes"),
    };
    result.unwrap_or_else(|e| error(&e))
}

fn get(path: &str, st: &AppState) -> Response<Body> {
    match path {
        "/health" => {
            if st.stopping.load(Ordering::SeqCst) || !st.ready.load(Ordering::SeqCst) {
                full(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "")
            } else {
                full(StatusCode::OK, "text/plain", "")
            }
        }
        "/version" => json_resp(
            StatusCode::OK,
            &json!({"version": env!("CARGO_PKG_VERSION")}),
        ),
        "/v1/models" => json_resp(
            StatusCode::OK,
            &json!({"object": "list", "data": [{"id": st.served, "object": "model", "created": st.created, "owned_by": "rrun",
                     "root": st.served, "parent": null, "max_model_len": st.max_model_len, "permission": []}]}),
        ),
        "/metrics" => full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            exposition::render(st),
        ),
        "/openapi.json" => json_resp(StatusCode::OK, &vllm::openapi(st)),
        _ => unreachable!("allowed() lists GET routes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_one_method_and_unknown_paths_none() {
        assert_eq!(allowed("/v1/completions"), Some("POST"));
        assert_eq!(allowed("/health"), Some("GET"));
        assert_eq!(allowed("/v1/nope"), None);
        assert!(open_route("/health") && !open_route("/generate") && !open_route("/tokenize"));
    }
}
