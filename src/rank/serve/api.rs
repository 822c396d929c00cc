//! The OpenAI/vLLM request fields and their validation: a [`Body`] becomes prompts
//! plus generation parameters, or an [`ApiError`] with the status, type, param and
//! vLLM's message. Fields rrank does not know are ignored, as vLLM does; fields it
//! knows but does not implement (tools, structured outputs, prompt log-probabilities…)
//! are refused with a 400 rather than ignored.

use std::sync::Arc;

use serde_json::Value;

use super::body::Body;
pub use super::error::ApiError;

use crate::rank::engine::scheduler::GenRequest;
use crate::rank::sampling::SamplingParams;

/// Which endpoint a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

/// A validated generation request: the prompt(s) are still to be tokenized by the caller.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub prompts: Vec<PromptIn>,
    pub n: usize,
    /// `None`: fill the context (chat without max_tokens).
    pub max_tokens: Option<usize>,
    pub params: SamplingParams,
    pub seed: Option<u64>,
    /// Shared by the request's `n` samples and prompts.
    pub stop: Arc<[String]>,
    pub stop_token_ids: Arc<[u32]>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
    pub echo: bool,
    /// Log-probabilities with this many alternatives (completions `logprobs: k`, chat
    /// `logprobs: true` + `top_logprobs: k`).
    pub logprobs: Option<u32>,
    /// Let the tokenizer add its special tokens (BOS): completions default true, chat false.
    pub add_special_tokens: bool,
    /// Chat: end the rendered template with the assistant's turn opening.
    pub add_generation_prompt: bool,
}

/// Most sequences (prompts × `n`) one request may ask for.
pub const MAX_REQUEST_SEQS: usize = 2048;

/// Most stop strings, and most stop token ids, of one request.
pub const MAX_STOPS: usize = 256;

/// A prompt as given.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptIn {
    Text(String),
    /// Shared by the prompt's `n` samples.
    Ids(Arc<[u32]>),
    Messages(Value),
}

fn num(v: &Body, key: &str) -> Result<Option<f64>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(ApiError::bad(
            format!("{key} must be a number, got {other}"),
            Some(key),
        )),
    }
}

fn int(v: &Body, key: &str) -> Result<Option<i64>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(Value::Number(n)) if n.is_u64() => Err(ApiError::bad(
            format!("{key} is too large, got {n}"),
            Some(key),
        )),
        Some(other) => Err(ApiError::bad(
            format!("{key} must be an integer, got {other}"),
            Some(key),
        )),
    }
}

fn boolean(v: &Body, key: &str) -> Result<bool, ApiError> {
    flag(v.get(key), key)
}

fn flag(v: Option<&Value>, key: &str) -> Result<bool, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::bad(
            format!("{key} must be a boolean, got {other}"),
            Some(key),
        )),
    }
}

fn token_ids(a: &[Value], key: &str) -> Result<Vec<u32>, ApiError> {
    a.iter()
        .map(|x| {
            x.as_u64()
                .filter(|v| *v <= u32::MAX as u64)
                .map(|v| v as u32)
                .ok_or_else(|| {
                    ApiError::bad(
                        format!("{key} must hold token ids (non-negative integers), got {x}"),
                        Some(key),
                    )
                })
        })
        .collect()
}

/// Whether a field asks for something: present, not null, not false, not empty.
fn asks(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

/// Refuses fields that change the answer and that this server does not implement:
/// a 400 naming the field, never a 200 that silently differs from vLLM's.
fn refuse_unimplemented(body: &Body, kind: Kind) -> Result<(), ApiError> {
    let no = |key: &str, what: &str| {
        Err(ApiError::bad(
            format!("`{key}` is not supported by this server yet: {what}"),
            Some(key),
        ))
    };
    for key in ["tools", "functions"] {
        if asks(body.get(key)) {
            return no(
                key,
                "tool calling is not implemented (as vLLM without --tool-call-parser)",
            );
        }
    }
    for key in ["tool_choice", "function_call"] {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "none" => {}
            Some(_) => {
                return no(
                    key,
                    "tool calling is not implemented (as vLLM without --tool-call-parser)",
                );
            }
        }
    }
    match body.get("response_format") {
        None | Some(Value::Null) => {}
        Some(v) if v.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(_) => {
            return no(
                "response_format",
                "structured outputs (JSON mode, JSON schema) are not implemented",
            );
        }
    }
    for key in [
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "structured_outputs",
    ] {
        if asks(body.get(key)) {
            return no(key, "structured outputs are not implemented");
        }
    }
    for (key, what) in [
        (
            "prompt_logprobs",
            "the prompt's log-probabilities are not computed",
        ),
        ("logit_bias", "logit biases are not applied"),
        ("suffix", "insertion (suffix) is not implemented"),
        ("allowed_token_ids", "token allow-lists are not applied"),
        ("bad_words", "bad-word lists are not applied"),
        ("use_beam_search", "beam search is not implemented"),
        (
            "include_stop_str_in_output",
            "stop strings are always cut from the output",
        ),
        (
            "continue_final_message",
            "the final message cannot be continued",
        ),
        (
            "chat_template",
            "only the model's own chat template is used",
        ),
        (
            "chat_template_kwargs",
            "the chat template takes no extra arguments",
        ),
        ("documents", "documents are not passed to the chat template"),
        (
            "truncate_prompt_tokens",
            "prompts are not truncated; shorten the prompt",
        ),
        ("prompt_embeds", "prompt embeddings are not accepted"),
        ("return_tokens_as_token_ids", "tokens are returned as text"),
        ("mm_processor_kwargs", "the model is text-only"),
        ("audio", "the model is text-only"),
        ("prediction", "predicted outputs are not implemented"),
        ("reasoning_effort", "the model has no reasoning modes"),
    ] {
        if asks(body.get(key)) {
            return no(key, what);
        }
    }
    match body.get("modalities") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.iter().all(|m| m == "text") => {}
        Some(_) => return no("modalities", "the model is text-only"),
    }
    for (key, neutral) in [
        ("min_tokens", 0.0),
        ("priority", 0.0),
        ("length_penalty", 1.0),
    ] {
        if let Some(v) = num(body, key)?
            && v != neutral
        {
            return no(key, &format!("only {neutral} is implemented"));
        }
    }
    for key in ["skip_special_tokens", "spaces_between_special_tokens"] {
        if body.get(key) == Some(&Value::Bool(false)) {
            return no(key, "special tokens are always skipped in the text");
        }
    }
    if let Some(b) = int(body, "best_of")?
        && b != int(body, "n")?.unwrap_or(1)
    {
        return no(
            "best_of",
            "best_of must equal n (no candidates are drawn and ranked)",
        );
    }
    let _ = kind;
    Ok(())
}

/// A chat message made ready for the chat template: text content parts joined
/// with newlines (as vLLM does for text-only models); image, audio and other parts,
/// and tool calls, refused.
pub fn message(m: &Value) -> Result<Value, ApiError> {
    let bad = |msg: String| Err(ApiError::bad(msg, Some("messages")));
    let (Some(Value::String(role)), Some(content)) =
        (m.get("role"), m.get("content").or(Some(&Value::Null)))
    else {
        return bad(format!(
            "each message needs a string `role` and a `content`, got {}",
            short(m)
        ));
    };
    if asks(m.get("tool_calls")) || role == "tool" || role == "function" {
        return bad(
            "tool calls and tool messages are not supported by this server yet (no tool calling)"
                .into(),
        );
    }
    let text = match content {
        Value::String(_) | Value::Null => content.clone(),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                    (Some("text"), _) => {
                        return bad(format!(
                            "a text content part needs a string `text`, got {}",
                            short(part)
                        ));
                    }
                    (Some(other), _) => {
                        return bad(format!(
                            "content parts of type `{other}` are not supported: this server serves a text-only model"
                        ));
                    }
                    (None, _) => {
                        return bad(format!(
                            "each content part needs a `type`, got {}",
                            short(part)
                        ));
                    }
                }
            }
            Value::String(texts.join("\n"))
        }
        other => {
            return bad(format!(
                "a message's content must be a string or a list of content parts, got {}",
                short(other)
            ));
        }
    };
    let mut out = m.clone();
    out["content"] = text;
    Ok(out)
}

/// Parses and validates a completions or chat body against the served model name.
pub fn parse(body: &Body, kind: Kind, served: &str) -> Result<Parsed, ApiError> {
    refuse_unimplemented(body, kind)?;
    match body.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == served => {}
        Some(Value::String(m)) => {
            return Err(ApiError::not_found(format!(
                "The model `{m}` does not exist."
            )));
        }
        Some(other) => {
            return Err(ApiError::bad(
                format!("model must be a string, got {other}"),
                Some("model"),
            ));
        }
    }
    let prompts = match kind {
        Kind::Completion => match body.get("prompt") {
            None if body.ids("prompt").is_some() => {
                let ids = body.ids("prompt").expect("checked");
                ids.lists
                    .iter()
                    .map(|l| PromptIn::Ids(l.as_slice().into()))
                    .collect()
            }
            None | Some(Value::Null) => {
                return Err(ApiError::bad(
                    "At least one of `prompt` or `prompt_embeds` must be set.",
                    Some("prompt"),
                ));
            }
            Some(Value::String(s)) => vec![PromptIn::Text(s.clone())],
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(ApiError::bad("prompt must not be empty", Some("prompt")));
            }
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                .iter()
                .map(|s| PromptIn::Text(s.as_str().unwrap().to_string()))
                .collect(),
            Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
                vec![PromptIn::Ids(token_ids(a, "prompt")?.into())]
            }
            Some(other) => {
                return Err(ApiError::bad(
                    format!(
                        "prompt must be a string, a list of strings, or token ids, got {}",
                        short(other)
                    ),
                    Some("prompt"),
                ));
            }
        },
        Kind::Chat => match body.get("messages") {
            Some(Value::Array(a)) if !a.is_empty() => {
                vec![PromptIn::Messages(Value::Array(
                    a.iter().map(message).collect::<Result<_, _>>()?,
                ))]
            }
            _ => {
                return Err(ApiError::bad(
                    "messages must be a non-empty list of {role, content} objects",
                    Some("messages"),
                ));
            }
        },
    };
    let temperature = num(body, "temperature")?.unwrap_or(1.0);
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(ApiError::bad(
            format!("temperature must be non-negative, got {temperature}."),
            Some("temperature"),
        ));
    }
    if temperature > 2.0 {
        return Err(ApiError::bad(
            format!("temperature must be in [0, 2], got {temperature}."),
            Some("temperature"),
        ));
    }
    let top_p = num(body, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad(
            format!("top_p must be in (0, 1], got {top_p}."),
            Some("top_p"),
        ));
    }
    let top_k = int(body, "top_k")?.unwrap_or(0);
    if top_k < -1 {
        return Err(ApiError::bad(
            format!("top_k must be 0 (disable), or at least 1, got {top_k}."),
            Some("top_k"),
        ));
    }
    let min_p = num(body, "min_p")?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::bad(
            format!("min_p must be in [0, 1], got {min_p}."),
            Some("min_p"),
        ));
    }
    for key in ["presence_penalty", "frequency_penalty"] {
        if let Some(p) = num(body, key)?
            && !(-2.0..=2.0).contains(&p)
        {
            return Err(ApiError::bad(
                format!("{key} must be in [-2, 2], got {p}."),
                Some(key),
            ));
        }
    }
    let repetition_penalty = num(body, "repetition_penalty")?.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
        return Err(ApiError::bad(
            format!("repetition_penalty must be greater than zero, got {repetition_penalty}."),
            Some("repetition_penalty"),
        ));
    }
    let repetition_penalty = repetition_penalty as f32;
    let n = int(body, "n")?.unwrap_or(1);
    if !(1..=128).contains(&n) {
        return Err(ApiError::bad(
            format!("n must be in [1, 128], got {n}."),
            Some("n"),
        ));
    }
    let key = if kind == Kind::Chat
        && body
            .get("max_completion_tokens")
            .is_some_and(|v| !v.is_null())
    {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match int(body, key)? {
        Some(m) if m < 1 => {
            return Err(ApiError::bad(
                format!("max_tokens must be at least 1, got {m}."),
                Some(key),
            ));
        }
        Some(m) => Some(m as usize),
        None if kind == Kind::Completion => Some(16),
        None => None,
    };
    let seed = int(body, "seed")?.map(|s| s as u64);
    let stop: Vec<String> = match body.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().map(|s| s.as_str().unwrap().to_string()).collect()
        }
        Some(other) => {
            return Err(ApiError::bad(
                format!(
                    "stop must be a string or a list of strings, got {}",
                    short(other)
                ),
                Some("stop"),
            ));
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad(
            "stop cannot contain an empty string.",
            Some("stop"),
        ));
    }
    let stop_token_ids = match body.get("stop_token_ids") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => token_ids(a, "stop_token_ids")?,
        Some(other) => {
            return Err(ApiError::bad(
                format!(
                    "stop_token_ids must be a list of integers, got {}",
                    short(other)
                ),
                Some("stop_token_ids"),
            ));
        }
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::bad(
            format!(
                "stop may hold at most {MAX_STOPS} strings, got {}.",
                stop.len()
            ),
            Some("stop"),
        ));
    }
    if stop_token_ids.len() > MAX_STOPS {
        return Err(ApiError::bad(
            format!(
                "stop_token_ids may hold at most {MAX_STOPS} ids, got {}.",
                stop_token_ids.len()
            ),
            Some("stop_token_ids"),
        ));
    }
    let stream = boolean(body, "stream")?;
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(o @ Value::Object(_)) => {
            if !stream {
                return Err(ApiError::bad(
                    "Stream options can only be defined when `stream=True`.",
                    Some("stream_options"),
                ));
            }
            flag(o.get("include_usage"), "include_usage")?
        }
        Some(other) => {
            return Err(ApiError::bad(
                format!("stream_options must be an object, got {}", short(other)),
                Some("stream_options"),
            ));
        }
    };
    let max_lp = 20;
    let logprobs = match kind {
        Kind::Completion => match int(body, "logprobs")? {
            None => None,
            Some(k) if (0..=max_lp).contains(&k) => Some(k as u32),
            Some(k) if k < 0 => {
                return Err(ApiError::bad(
                    format!("logprobs must be non-negative, got {k}."),
                    Some("logprobs"),
                ));
            }
            Some(k) => {
                return Err(ApiError::bad(
                    format!(
                        "Requested sample logprobs of {k}, which is greater than max allowed: {max_lp}"
                    ),
                    Some("logprobs"),
                ));
            }
        },
        Kind::Chat => {
            let on = boolean(body, "logprobs")?;
            match (on, int(body, "top_logprobs")?) {
                (false, Some(t)) if t > 0 => {
                    return Err(ApiError::bad(
                        "when using `top_logprobs`, `logprobs` must be set to true.",
                        Some("top_logprobs"),
                    ));
                }
                (_, Some(t)) if !(0..=max_lp).contains(&t) => {
                    return Err(ApiError::bad(
                        format!("top_logprobs must be in [0, {max_lp}], got {t}."),
                        Some("top_logprobs"),
                    ));
                }
                (true, t) => Some(t.unwrap_or(0) as u32),
                (false, _) => None,
            }
        }
    };
    let echo = boolean(body, "echo")?;
    if echo && logprobs.is_some() {
        return Err(ApiError::bad(
            "`echo` with `logprobs` asks for the prompt's log-probabilities, which this server does not compute yet; send `echo` or `logprobs`, not both",
            Some("echo"),
        ));
    }
    if echo && kind == Kind::Chat {
        return Err(ApiError::bad(
            "`echo` is not supported on chat completions by this server yet",
            Some("echo"),
        ));
    }
    let seqs = prompts.len() * n as usize;
    if seqs > MAX_REQUEST_SEQS {
        return Err(ApiError::bad(
            format!(
                "a request may ask for at most {MAX_REQUEST_SEQS} sequences (prompts × n), this one asks for {} × {n} = {seqs}.",
                prompts.len()
            ),
            Some("n"),
        ));
    }
    if temperature == 0.0 && n > 1 {
        return Err(ApiError::bad(
            format!("n must be 1 when using greedy sampling, got {n}."),
            Some("n"),
        ));
    }
    Ok(Parsed {
        prompts,
        n: n as usize,
        max_tokens,
        params: SamplingParams {
            temperature: temperature as f32,
            top_p: top_p as f32,
            top_k,
            min_p: min_p as f32,
            presence_penalty: num(body, "presence_penalty")?.unwrap_or(0.0) as f32,
            frequency_penalty: num(body, "frequency_penalty")?.unwrap_or(0.0) as f32,
            repetition_penalty,
        },
        seed,
        stop: stop.into(),
        stop_token_ids: stop_token_ids.into(),
        ignore_eos: boolean(body, "ignore_eos")?,
        stream,
        include_usage,
        echo,
        logprobs,
        add_special_tokens: match body.get("add_special_tokens") {
            None | Some(Value::Null) => kind == Kind::Completion,
            v => flag(v, "add_special_tokens")?,
        },
        add_generation_prompt: match body.get("add_generation_prompt") {
            None | Some(Value::Null) => true,
            v => flag(v, "add_generation_prompt")?,
        },
    })
}

/// The context-length check (vLLM's 2025-26 wording). Returns the max tokens to generate.
pub fn fit_context(
    prompt_len: usize,
    max_tokens: Option<usize>,
    max_model_len: usize,
) -> Result<usize, ApiError> {
    match max_tokens {
        Some(m) if prompt_len + m > max_model_len => Err(ApiError {
            status: 400,
            kind: "BadRequestError",
            message: format!(
                "This model's maximum context length is {max_model_len} tokens. However, you requested {m} output tokens and your prompt contains at least {prompt_len} input tokens, for a total of at least {} tokens. Please reduce the length of the input prompt or the number of requested output tokens. (parameter=input_tokens, value={prompt_len})",
                prompt_len + m
            ),
            param: Some("input_tokens".into()),
        }),
        Some(m) => Ok(m),
        None if prompt_len >= max_model_len => Err(ApiError {
            status: 400,
            kind: "BadRequestError",
            message: format!(
                "This model's maximum context length is {max_model_len} tokens. However, your prompt contains at least {prompt_len} input tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value={prompt_len})"
            ),
            param: Some("input_tokens".into()),
        }),
        None => Ok(max_model_len - prompt_len),
    }
}

/// The engine request for one prompt and one of its `n` samples.
pub fn gen_request(
    p: &Parsed,
    prompt: Arc<[u32]>,
    max_tokens: usize,
    sample_index: usize,
) -> GenRequest {
    let base = p
        .seed
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    GenRequest {
        prompt,
        params: p.params.clone(),
        max_tokens,
        seed: base.wrapping_add(sample_index as u64),
        stop: p.stop.clone(),
        stop_token_ids: p.stop_token_ids.clone(),
        ignore_eos: p.ignore_eos,
        logprobs: p.logprobs,
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// [`super::parse`] on a body given as a `Value`.
    fn parse(v: &Value, kind: Kind, served: &str) -> Result<Parsed, ApiError> {
        super::parse(&Body::from_value(v.clone())?, kind, served)
    }

    #[test]
    fn defaults_and_errors() {
        let p = parse(&json!({"prompt": "hi"}), Kind::Completion, "m").unwrap();
        assert_eq!(
            (p.max_tokens, p.n, p.params.temperature),
            (Some(16), 1, 1.0)
        );
        let e = parse(
            &json!({"prompt": "hi", "model": "x"}),
            Kind::Completion,
            "m",
        )
        .unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (404, "The model `x` does not exist.")
        );
        let e = parse(
            &json!({"prompt": "hi", "temperature": -1}),
            Kind::Completion,
            "m",
        )
        .unwrap_err();
        assert_eq!(e.message, "temperature must be non-negative, got -1.");
        let e = parse(
            &json!({"prompt": "hi", "temperature": 0, "n": 2}),
            Kind::Completion,
            "m",
        )
        .unwrap_err();
        assert!(
            e.message
                .starts_with("n must be 1 when using greedy sampling")
        );
        let e = parse(
            &json!({"prompt": "hi", "stream_options": {"include_usage": true}}),
            Kind::Completion,
            "m",
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "Stream options can only be defined when `stream=True`."
        );
        assert_eq!(
            parse(&json!({"prompt": [[1, 2], [3]]}), Kind::Completion, "m")
                .unwrap()
                .prompts
                .len(),
            2
        );
        assert!(parse(&json!({"messages": []}), Kind::Chat, "m").is_err());
        assert_eq!(
            parse(
                &json!({"messages": [{"role": "user", "content": "x"}]}),
                Kind::Chat,
                "m"
            )
            .unwrap()
            .max_tokens,
            None
        );
        assert_eq!(
            parse(
                &json!({"prompt": "x", "unknown_field": 3}),
                Kind::Completion,
                "m"
            )
            .unwrap()
            .n,
            1
        );
    }

    #[test]
    fn context_length_message() {
        let e = fit_context(10, Some(20), 16).unwrap_err();
        assert!(e.message.starts_with("This model's maximum context length is 16 tokens. However, you requested 20 output tokens and your prompt contains at least 10 input tokens, for a total of at least 30 tokens."));
        assert_eq!(fit_context(10, None, 16).unwrap(), 6);
    }

    #[test]
    fn fields_that_would_be_ignored_are_refused() {
        let refused = [
            json!({"prompt": "x", "echo": true, "logprobs": 1}),
            json!({"prompt": "x", "echo": true, "logprobs": 0}),
            json!({"prompt": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}),
            json!({"prompt": "x", "tool_choice": "auto"}),
            json!({"prompt": "x", "tool_choice": {"type": "function", "function": {"name": "f"}}}),
            json!({"prompt": "x", "response_format": {"type": "json_object"}}),
            json!({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {}}}),
            json!({"prompt": "x", "guided_json": {"type": "object"}}),
            json!({"prompt": "x", "min_tokens": 3}),
            json!({"prompt": "x", "best_of": 3}),
            json!({"prompt": "x", "skip_special_tokens": false}),
            json!({"prompt": "x", "include_stop_str_in_output": true}),
            json!({"prompt": "x", "prompt_logprobs": 1}),
            json!({"prompt": "x", "logit_bias": {"5": 10}}),
            json!({"prompt": "x", "stop": vec!["s"; MAX_STOPS + 1]}),
            json!({"prompt": vec!["p"; 17], "n": 128}),
        ];
        for b in refused {
            let e = parse(&b, Kind::Completion, "m").expect_err(&b.to_string());
            assert_eq!(e.status, 400, "{b}");
        }
        let e = parse(
            &json!({"prompt": "x", "echo": true, "logprobs": 1}),
            Kind::Completion,
            "m",
        )
        .unwrap_err();
        assert!(
            e.message.contains("prompt's log-probabilities"),
            "{}",
            e.message
        );
        // Neutral values of the same fields change nothing and are accepted.
        for b in [
            json!({"prompt": "x", "tools": [], "tool_choice": "none"}),
            json!({"prompt": "x", "response_format": {"type": "text"}}),
            json!({"prompt": "x", "min_tokens": 0, "best_of": 1, "skip_special_tokens": true}),
            json!({"prompt": "x", "echo": true}),
            json!({"prompt": vec!["p"; 16], "n": 128}),
        ] {
            parse(&b, Kind::Completion, "m").unwrap_or_else(|e| panic!("{b}: {}", e.message));
        }
    }

    #[test]
    fn text_content_parts_are_joined_and_others_refused() {
        let p = parse(
            &json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
            Kind::Chat,
            "m",
        )
        .unwrap();
        assert_eq!(
            p.prompts,
            vec![PromptIn::Messages(
                json!([{"role": "user", "content": "a\nb"}])
            )]
        );
        for content in [
            json!([{"type": "image_url", "image_url": {"url": "data:,"}}]),
            json!([{"type": "input_audio", "input_audio": {}}]),
            json!([{"type": "text"}]),
            json!([{"text": "no type"}]),
            json!(5),
        ] {
            let e = parse(
                &json!({"messages": [{"role": "user", "content": content}]}),
                Kind::Chat,
                "m",
            )
            .unwrap_err();
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some("messages")),
                "{content}"
            );
        }
        let e = parse(
            &json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            Kind::Chat,
            "m",
        )
        .unwrap_err();
        assert!(e.message.contains("`image_url`"), "{}", e.message);
    }

    #[test]
    fn token_id_prompts_are_shared_not_copied() {
        let p = parse(
            &json!({"prompt": [[1, 2], [3]], "n": 3}),
            Kind::Completion,
            "m",
        )
        .unwrap();
        let PromptIn::Ids(ids) = &p.prompts[0] else {
            panic!("ids")
        };
        let a = gen_request(&p, ids.clone(), 4, 0);
        let b = gen_request(&p, ids.clone(), 4, 1);
        assert!(Arc::ptr_eq(&a.prompt, &b.prompt) && Arc::ptr_eq(&a.stop, &b.stop));
        assert_ne!(a.seed, b.seed);
    }
}
