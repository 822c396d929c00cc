//! What every HTTP handler shares ([`AppState`]): the tokenizer, the way into the
//! engine with its queue bound, the serving flags and the numbers /metrics shows.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::api::{ApiError, PromptIn};
use super::metrics::{Latency, tap};
use crate::rank::engine::scheduler::{Event, GenRequest};
use crate::rank::engine::{Stats, Submit};
use crate::rank::tokenizer::TextCodec;

/// What every handler shares.
pub struct AppState {
    pub codec: Arc<TextCodec>,
    pub submit: Mutex<std::sync::mpsc::Sender<Submit>>,
    pub served: String,
    pub max_model_len: usize,
    pub vocab: usize,
    pub api_key: Option<String>,
    /// Longest a request body may take to arrive.
    pub body_timeout: Duration,
    /// Most sequences queued or running at once.
    pub max_queued: usize,
    /// Sequences submitted and not yet ended.
    pub queued: AtomicUsize,
    pub stats: Arc<Mutex<Stats>>,
    pub stopping: Arc<AtomicBool>,
    /// Weights loaded and the engine running.
    pub ready: AtomicBool,
    pub created: u64,
    /// Extra gauge lines for /metrics (per-rank memory).
    pub gauges: Mutex<Vec<String>>,
    pub latency: Arc<Mutex<Latency>>,
}

/// One queue place, given back when the sequence's events end.
struct Place(Arc<AppState>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AppState {
    /// 503 while the weights load or the server shuts down.
    pub fn accepting(&self) -> Result<(), ApiError> {
        if !self.ready.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                503,
                "ServiceUnavailable",
                "the model is still loading",
            ));
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is shutting down",
            ));
        }
        Ok(())
    }

    /// Token ids of a prompt, checked against the vocabulary.
    pub fn prompt_ids(&self, p: &PromptIn, add_special: bool) -> Result<Arc<[u32]>, ApiError> {
        let ids: Arc<[u32]> = match p {
            PromptIn::Ids(ids) => ids.clone(),
            PromptIn::Text(t) => self
                .fits(t.len())?
                .codec
                .encode(t, add_special)
                .map_err(|e| {
                    ApiError::bad(format!("cannot tokenize the prompt: {e}"), Some("prompt"))
                })?
                .into(),
            PromptIn::Messages(m) => {
                return self.message_ids(m, true, add_special);
            }
        };
        self.check_ids(ids, "prompt")
    }

    /// Token ids of chat messages rendered with the chat template.
    pub fn message_ids(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        add_special: bool,
    ) -> Result<Arc<[u32]>, ApiError> {
        let contents: usize = messages
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("content").and_then(serde_json::Value::as_str))
            .map(str::len)
            .sum();
        self.fits(contents)?;
        let text = self
            .codec
            .apply_chat_template(messages, add_generation_prompt)
            .map_err(|e| ApiError::bad(e.to_string(), Some("messages")))?;
        let ids = self
            .fits(text.len())?
            .codec
            .encode(&text, add_special)
            .map_err(|e| {
                ApiError::bad(
                    format!("cannot tokenize the messages: {e}"),
                    Some("messages"),
                )
            })?;
        self.check_ids(ids.into(), "messages")
    }

    /// Refuses, before tokenizing, a text that surely has more tokens than the
    /// context holds: tokenizing costs far more memory than the text itself.
    fn fits(&self, bytes: usize) -> Result<&Self, ApiError> {
        let at_least = self.codec.min_tokens(bytes);
        if at_least >= self.max_model_len {
            return Err(ApiError {
                status: 400,
                kind: "BadRequestError",
                message: format!(
                    "This model's maximum context length is {} tokens. However, your prompt contains at least {at_least} input tokens ({bytes} bytes). Please reduce the length of the input prompt. (parameter=input_tokens, value={at_least})",
                    self.max_model_len,
                ),
                param: Some("input_tokens".into()),
            });
        }
        Ok(self)
    }

    fn check_ids(&self, ids: Arc<[u32]>, param: &str) -> Result<Arc<[u32]>, ApiError> {
        if ids.is_empty() {
            return Err(ApiError::bad("the prompt is empty", Some(param)));
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(ApiError::bad(
                format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    self.vocab
                ),
                Some(param),
            ));
        }
        Ok(ids)
    }

    /// Takes `n` queue places, or answers 429 when the queue is full.
    pub fn reserve(self: &Arc<Self>, n: usize) -> Result<Places, ApiError> {
        if n > self.max_queued {
            return Err(ApiError::bad(
                format!(
                    "this request asks for {n} sequences, more than the server holds at once (--max-queued-seqs {})",
                    self.max_queued
                ),
                Some("n"),
            ));
        }
        let prev = self.queued.fetch_add(n, Ordering::SeqCst);
        if prev + n > self.max_queued {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(ApiError::new(
                429,
                "TooManyRequests",
                format!(
                    "the server is at capacity: {prev} sequences are queued or running and this request adds {n} (--max-queued-seqs {}); retry later",
                    self.max_queued
                ),
            ));
        }
        Ok(Places {
            st: self.clone(),
            left: n,
        })
    }
}

/// Queue places reserved for one request; those not used are given back on drop.
pub struct Places {
    st: Arc<AppState>,
    left: usize,
}

impl Places {
    /// Hands one sequence to the engine on one of the places; its events come back
    /// through the latency tap, and the place is given back when they end.
    pub fn submit(
        &mut self,
        req: GenRequest,
        arrival: Instant,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        assert!(self.left > 0, "more sequences submitted than reserved");
        self.left -= 1;
        let place = Place(self.st.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        self.st
            .submit
            .lock()
            .unwrap()
            .send(Submit { req, events: tx })
            .map_err(|_| ApiError::new(503, "ServiceUnavailable", "the engine has stopped"))?;
        Ok(tap(self.st.latency.clone(), arrival, rx, place))
    }
}

impl Drop for Places {
    fn drop(&mut self) {
        self.st.queued.fetch_sub(self.left, Ordering::SeqCst);
    }
}
