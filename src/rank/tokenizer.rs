//! Text in and out: `tokenizer.json` through the `tokenizers` crate, and the chat
//! template (from `chat_template.jinja` or tokenizer_config.json) rendered with
//! minijinja.

use std::path::Path;

use serde_json::Value;

use super::model::config::ValidationError;

/// A model's tokenizer and chat template.
pub struct TextCodec {
    tok: tokenizers::Tokenizer,
    template: Option<String>,
    bos: String,
    eos: String,
}

fn invalid(m: impl Into<String>) -> ValidationError {
    ValidationError(m.into())
}

fn token_str(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

impl TextCodec {
    /// Loads `tokenizer.json` (required) and the chat template (optional).
    pub fn load(dir: &Path) -> Result<TextCodec, ValidationError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(invalid(format!(
                "{} is missing; rrank needs a Hugging Face tokenizer.json next to the weights",
                path.display()
            )));
        }
        let tok = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| invalid(format!("cannot load {}: {e}", path.display())))?;
        let cfg: Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let template = std::fs::read_to_string(dir.join("chat_template.jinja"))
            .ok()
            .or_else(|| {
                cfg.get("chat_template")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        Ok(TextCodec {
            tok,
            template,
            bos: token_str(cfg.get("bos_token")),
            eos: token_str(cfg.get("eos_token")),
        })
    }

    /// Rows an embedding needs for this tokenizer: its largest id + 1, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tok
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |m| *m as usize + 1)
    }

    /// Token ids of `text` (special tokens in the text are recognised; no BOS added
    /// unless the tokenizer's post-processor adds one).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, String> {
        self.tok
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tok.decode(ids, true).unwrap_or_default()
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Renders the chat template for `messages` with the generation prompt appended.
    pub fn apply_chat_template(&self, messages: &Value) -> Result<String, String> {
        let t = self.template.as_deref().ok_or(
            "the model has no chat template (chat_template.jinja or tokenizer_config.json)",
        )?;
        let mut env = minijinja::Environment::new();
        env.add_template("chat", t)
            .map_err(|e| format!("chat template: {e}"))?;
        env.get_template("chat")
            .and_then(|tpl| {
                tpl.render(minijinja::context! {
                    messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                    add_generation_prompt => true,
                    bos_token => self.bos.clone(),
                    eos_token => self.eos.clone(),
                })
            })
            .map_err(|e| format!("chat template: {e}"))
    }
}
