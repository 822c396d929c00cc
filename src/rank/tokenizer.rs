//! Text in and out: `tokenizer.json` through the `tokenizers` crate, and the chat
//! template (from `chat_template.jinja` or tokenizer_config.json) rendered with
//! minijinja.

use std::path::Path;

use serde_json::Value;

use super::model::config::ValidationError;

/// Incremental detokenization of a growing list of token ids (the prefix/read
/// offsets of TGI and vLLM): each call decodes only the tokens since the last
/// complete text, so streaming costs the same at the 1,000th token as at the first
/// (decoding the whole output every step made a 256-sequence step spend milliseconds
/// here). The difference of two decodes of the same window cancels tokenizer
/// artefacts at its start (a dropped leading space). Text that ends in an incomplete
/// UTF-8 sequence is held until it completes or [`Detokenizer::finish`].
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// The complete text `ids` added since the last call (empty while a character is
    /// still incomplete).
    pub fn next(&mut self, codec: &TextCodec, ids: &[u32]) -> String {
        let (before, now) = self.window(codec, ids);
        match now.get(before.len()..) {
            Some(d) if now.len() > before.len() && !now.ends_with('\u{FFFD}') => {
                let d = d.to_string();
                self.prefix = self.read;
                self.read = ids.len();
                d
            }
            _ => String::new(),
        }
    }

    /// Everything not yet returned, an incomplete character included (as U+FFFD).
    pub fn finish(&mut self, codec: &TextCodec, ids: &[u32]) -> String {
        let (before, now) = self.window(codec, ids);
        let d = now.get(before.len()..).unwrap_or("").to_string();
        self.prefix = ids.len();
        self.read = ids.len();
        d
    }

    fn window(&self, codec: &TextCodec, ids: &[u32]) -> (String, String) {
        let p = self.prefix.min(ids.len());
        let r = self.read.clamp(p, ids.len());
        (codec.decode(&ids[p..r]), codec.decode(&ids[p..]))
    }
}

/// Why a text could not be turned into token ids.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{0}")]
    Tokenize(tokenizers::Error),
    #[error("the model has no chat template (chat_template.jinja or tokenizer_config.json)")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    Template(#[from] minijinja::Error),
}

/// A model's tokenizer and chat template.
pub struct TextCodec {
    tok: tokenizers::Tokenizer,
    template: Option<String>,
    bos: String,
    eos: String,
    /// UTF-8 length of the longest vocabulary entry (added tokens included).
    longest_token: usize,
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
        let longest_token = tok
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(TextCodec {
            tok,
            longest_token,
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

    /// A lower bound on the tokens a text of `bytes` bytes encodes to: no
    /// token covers more than 4× the bytes of the longest vocabulary entry (its
    /// stored form is at least as long as the bytes it stands for; the factor covers
    /// normalizers that shorten text).
    pub fn min_tokens(&self, bytes: usize) -> usize {
        bytes / (4 * self.longest_token)
    }

    /// Token ids of `text` (special tokens in the text are recognised; no BOS added
    /// unless the tokenizer's post-processor adds one).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TextError> {
        self.tok
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(TextError::Tokenize)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tok.decode(ids, true).unwrap_or_default()
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Text of one token as log-probabilities show it: special tokens included
    /// (`<|im_end|>`), as vLLM shows them.
    pub fn token_text(&self, id: u32) -> String {
        self.tok.decode(&[id], false).unwrap_or_default()
    }

    /// Renders the chat template for `messages`, with the assistant turn's opening
    /// appended when `add_generation_prompt`.
    pub fn apply_chat_template(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        let t = self.template.as_deref().ok_or(TextError::NoChatTemplate)?;
        let mut env = minijinja::Environment::new();
        env.add_template("chat", t)?;
        Ok(env.get_template("chat")?.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> TextCodec {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama");
        TextCodec::load(&dir).unwrap()
    }

    #[test]
    fn template_errors_say_what_failed() {
        let mut c = codec();
        let msgs = serde_json::json!([{"role": "user", "content": "hi"}]);
        assert!(c.apply_chat_template(&msgs, true).is_ok());
        c.template = Some("{% if %}".into());
        let e = c.apply_chat_template(&msgs, true).unwrap_err();
        assert!(matches!(e, TextError::Template(_)), "{e}");
        assert!(e.to_string().starts_with("chat template: "), "{e}");
        c.template = None;
        assert_eq!(
            c.apply_chat_template(&msgs, true).unwrap_err().to_string(),
            "the model has no chat template (chat_template.jinja or tokenizer_config.json)"
        );
    }

    #[test]
    fn incremental_text_adds_up_to_the_whole_decode() {
        let c = codec();
        // Byte-level BPE over the whole byte alphabet: random ids make broken UTF-8 too.
        let mut seed = 7u64;
        for _ in 0..50 {
            let mut ids = vec![];
            let (mut d, mut got) = (Detokenizer::default(), String::new());
            for _ in 0..40 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ids.push(4 + (seed >> 33) as u32 % 296);
                let piece = d.next(&c, &ids);
                assert!(!piece.contains('\u{FFFD}') || c.decode(&ids).contains('\u{FFFD}'));
                got += &piece;
                assert!(
                    c.decode(&ids).starts_with(&got),
                    "{got:?} vs {:?}",
                    c.decode(&ids)
                );
            }
            got += &d.finish(&c, &ids);
            assert_eq!(got, c.decode(&ids));
        }
    }

    #[test]
    fn an_incomplete_character_is_held_until_it_completes() {
        let c = codec();
        let ids = c.encode("héllo wörld", false).unwrap();
        let mut d = Detokenizer::default();
        let mut got = String::new();
        for n in 1..=ids.len() {
            let piece = d.next(&c, &ids[..n]);
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            got += &piece;
        }
        got += &d.finish(&c, &ids);
        assert_eq!(got, "héllo wörld");
    }
}
