//! Building responses: JSON and plain bodies, OpenAI-style errors, streamed bodies
//! fed by a channel, the merge of a request's sequences' events, and [`offload`] for
//! work that must not run on the I/O thread.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ApiError;
use crate::rank::engine::scheduler::Event;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()).boxed())
        .expect("static response parts")
}

pub fn json_resp(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

pub fn error(e: &ApiError) -> Response<Body> {
    json_resp(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        &e.body(),
    )
}

/// Runs `f` on a blocking thread.
pub async fn offload<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError::new(
            500,
            "InternalServerError",
            format!("request handler failed: {e}"),
        ))
    })
}

/// The error of a request whose sequences the engine ended before they finished.
pub fn shut_down() -> ApiError {
    ApiError::new(
        503,
        "ServiceUnavailable",
        "the server shut down before the request finished",
    )
}

/// The byte stream of an SSE or NDJSON response fed by `rx`.
pub fn body_of(rx: mpsc::Receiver<Bytes>) -> Body {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    BodyExt::boxed(StreamBody::new(s))
}

/// Merges the events of every sequence, tagged with its choice index.
pub fn merge(seqs: Vec<mpsc::UnboundedReceiver<Event>>) -> mpsc::UnboundedReceiver<(usize, Event)> {
    let (merged_tx, merged) = mpsc::unbounded_channel::<(usize, Event)>();
    for (index, mut rx) in seqs.into_iter().enumerate() {
        let tx = merged_tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if tx.send((index, ev)).is_err() {
                    break; // the client left: dropping rx aborts the sequence
                }
            }
        });
    }
    merged
}
