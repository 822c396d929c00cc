//! `config.json` of a Llama-family checkpoint (Llama 2/3/3.1/3.2, Mistral, Qwen2) and
//! the placement checks that must pass before any weight is read
//! (shared/spec/serving-api.md §4.2).
//!
//! Accepts both transformers layouts: `rope_theta`/`rope_scaling` (older) and
//! `rope_parameters` (transformers 5). Every refusal is one line naming the numbers
//! and the fix; the same files give the same text on every rank.

use std::path::Path;

use serde_json::Value;

/// A checkpoint or placement that cannot be served. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

fn invalid(msg: impl Into<String>) -> ValidationError {
    ValidationError(msg.into())
}

/// Supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

/// RoPE frequencies: plain, or Llama 3's piecewise scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// What the forward needs from config.json.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2, or Llama with attention_bias).
    pub qkv_bias: bool,
    /// o_proj carries a bias (Llama with attention_bias).
    pub o_bias: bool,
    /// gate/up/down carry biases (Llama with mlp_bias).
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
    /// `quantization_config.quant_method`, if any.
    pub quant_method: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    /// Reads `<dir>/config.json` (and eos ids from generation_config.json when present).
    pub fn load(dir: &Path) -> Result<ModelConfig, ValidationError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            invalid(format!("cannot read {}: {e}; --model must be a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)", path.display()))
        })?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| invalid(format!("{} is not valid JSON: {e}", path.display())))?;
        let mut cfg = Self::from_json(&v)?;
        if let Ok(t) = std::fs::read_to_string(dir.join("generation_config.json"))
            && let Ok(g) = serde_json::from_str::<Value>(&t)
        {
            let e = ids(g.get("eos_token_id"));
            if !e.is_empty() {
                cfg.eos_token_ids = e;
            }
        }
        Ok(cfg)
    }

    /// Parses a config.json value.
    pub fn from_json(v: &Value) -> Result<ModelConfig, ValidationError> {
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .unwrap_or("");
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = match (arch_name, model_type) {
            ("LlamaForCausalLM", _) | ("", "llama") => Arch::Llama,
            ("MistralForCausalLM", _) | ("", "mistral") => Arch::Mistral,
            ("Qwen2ForCausalLM", _) | ("", "qwen2") => Arch::Qwen2,
            _ => {
                return Err(invalid(format!(
                    "unsupported architecture {:?} (model_type {model_type:?}); rrank serves LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM",
                    arch_name
                )));
            }
        };
        let int = |k: &str| -> Result<usize, ValidationError> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| invalid(format!("config.json has no integer {k:?}")))
        };
        let hidden_size = int("hidden_size")?;
        let num_heads = int("num_attention_heads")?;
        let num_kv_heads = v
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(num_heads);
        let head_dim = v
            .get("head_dim")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(hidden_size / num_heads.max(1));
        let rope = v
            .get("rope_parameters")
            .or_else(|| v.get("rope_scaling"))
            .filter(|r| r.is_object());
        let rope_theta = v
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| {
                rope.and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10000.0);
        let rope_type = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let rope_scaling = match rope_type {
            "default" => RopeScaling::None,
            "llama3" => {
                let r = rope.unwrap();
                let f = |k: &str| {
                    r.get(k)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| invalid(format!("rope scaling llama3 needs {k:?}")))
                };
                RopeScaling::Llama3 {
                    factor: f("factor")?,
                    low_freq_factor: f("low_freq_factor")?,
                    high_freq_factor: f("high_freq_factor")?,
                    original_max_position_embeddings: f("original_max_position_embeddings")?,
                }
            }
            other => {
                return Err(invalid(format!(
                    "rope scaling type {other:?} is not supported (default and llama3 are)"
                )));
            }
        };
        let attention_bias = v
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let sliding = v
            .get("sliding_window")
            .and_then(Value::as_u64)
            .map(|x| x as usize);
        let use_sliding = v.get("use_sliding_window").and_then(Value::as_bool);
        Ok(ModelConfig {
            arch,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_layers: int("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: int("vocab_size")?,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(2048) as usize,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch == Arch::Llama && attention_bias,
            mlp_bias: arch == Arch::Llama
                && v.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false),
            sliding_window: match (arch, use_sliding) {
                (Arch::Mistral, _) => sliding,
                (Arch::Qwen2, Some(true)) => sliding,
                _ => None,
            },
            quant_method: v.get("quantization_config").map(|q| {
                q.get("quant_method")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_string()
            }),
            bos_token_id: ids(v.get("bos_token_id")).first().copied(),
            eos_token_ids: ids(v.get("eos_token_id")),
        })
    }

    /// The placement and checkpoint-level checks (before any tensor is opened).
    pub fn validate_placement(
        &self,
        tp: usize,
        pp: usize,
        world: usize,
    ) -> Result<(), ValidationError> {
        if tp == 0 || pp == 0 {
            return Err(invalid(
                "--tensor-parallel-size and --pipeline-parallel-size must be at least 1",
            ));
        }
        if tp * pp != world {
            return Err(invalid(format!(
                "tensor parallel size ({tp}) x pipeline parallel size ({pp}) = {} but WORLD_SIZE is {world}; start {} ranks (e.g. rrun --nproc-per-node {}) or change -tp/-pp",
                tp * pp,
                tp * pp,
                tp * pp
            )));
        }
        if let Some(m) = &self.quant_method {
            return Err(invalid(format!(
                "quantized checkpoint (quantization_config.quant_method = {m:?}) is not supported; use an unquantized bf16/f16/f32 checkpoint"
            )));
        }
        if !self.num_heads.is_multiple_of(tp) {
            return Err(invalid(format!(
                "Total number of attention heads ({}) must be divisible by tensor parallel size ({tp}); valid -tp values: {}",
                self.num_heads,
                divisors(self.num_heads)
            )));
        }
        let kv = self.num_kv_heads;
        if !(kv.is_multiple_of(tp) || tp.is_multiple_of(kv)) {
            return Err(invalid(format!(
                "number of key/value heads ({kv}) and tensor parallel size ({tp}) must divide one another (split or replicate KV heads); valid -tp values: {}",
                divisors(self.num_heads)
            )));
        }
        if !self.intermediate_size.is_multiple_of(tp) {
            return Err(invalid(format!(
                "intermediate size ({}) must be divisible by tensor parallel size ({tp})",
                self.intermediate_size
            )));
        }
        if self.num_layers < pp {
            return Err(invalid(format!(
                "pipeline parallel size ({pp}) exceeds the number of hidden layers ({}); use -pp {} or less",
                self.num_layers, self.num_layers
            )));
        }
        Ok(())
    }

    /// KV heads held by each TP rank (1 when heads are replicated).
    pub fn kv_heads_per_rank(&self, tp: usize) -> usize {
        (self.num_kv_heads / tp).max(1)
    }

    /// Which KV head block a TP rank holds: `[start, start + kv_heads_per_rank)`.
    pub fn kv_head_start(&self, tp: usize, tp_rank: usize) -> usize {
        if self.num_kv_heads >= tp {
            tp_rank * (self.num_kv_heads / tp)
        } else {
            tp_rank / (tp / self.num_kv_heads)
        }
    }
}

fn divisors(n: usize) -> String {
    (1..=n)
        .filter(|d| n.is_multiple_of(*d))
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Layers `[start, end)` of pipeline stage `stage` (vLLM's split: remainder to the
/// stages after the first, then the first).
pub fn stage_layers(num_layers: usize, pp: usize, stage: usize) -> (usize, usize) {
    let base = num_layers / pp;
    let extra = num_layers % pp;
    // The leftover layers go to the last `extra` stages (the first holds the embedding).
    let sizes: Vec<usize> = (0..pp)
        .map(|s| base + usize::from(s >= pp - extra))
        .collect();
    let start: usize = sizes[..stage].iter().sum();
    (start, start + sizes[stage])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smollm() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
               "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
               "vocab_size": 49152, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true,
               "max_position_embeddings": 8192})
    }

    #[test]
    fn smollm_placements() {
        let c = ModelConfig::from_json(&smollm()).unwrap();
        assert_eq!(c.head_dim, 64);
        assert!(c.validate_placement(1, 2, 2).is_ok());
        let e = c.validate_placement(2, 1, 2).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "Total number of attention heads (9) must be divisible by tensor parallel size (2)"
            ),
            "{e}"
        );
        assert!(e.contains("valid -tp values: 1, 3, 9"));
        assert!(
            c.validate_placement(1, 1, 2)
                .unwrap_err()
                .to_string()
                .contains("WORLD_SIZE is 2")
        );
        assert!(
            c.validate_placement(1, 31, 31)
                .unwrap_err()
                .to_string()
                .contains("exceeds the number of hidden layers (30)")
        );
    }

    #[test]
    fn rope_parameters_and_quantization() {
        let mut v = smollm();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = ModelConfig::from_json(&v).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        v["quantization_config"] = json!({"quant_method": "gptq"});
        let e = ModelConfig::from_json(&v)
            .unwrap()
            .validate_placement(1, 1, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"gptq\""), "{e}");
    }

    #[test]
    fn kv_head_assignment() {
        let mut v = smollm();
        v["num_attention_heads"] = json!(8);
        v["num_key_value_heads"] = json!(2);
        let c = ModelConfig::from_json(&v).unwrap();
        assert_eq!((c.kv_heads_per_rank(4), c.kv_head_start(4, 3)), (1, 1));
        assert_eq!((c.kv_heads_per_rank(2), c.kv_head_start(2, 1)), (1, 1));
        assert_eq!((c.kv_heads_per_rank(1), c.kv_head_start(1, 0)), (2, 0));
        assert!(c.validate_placement(4, 1, 4).is_ok());
    }

    #[test]
    fn stages_cover_all_layers() {
        for (n, pp) in [(30, 2), (4, 2), (5, 2), (7, 3), (3, 3)] {
            let mut next = 0;
            for s in 0..pp {
                let (a, b) = stage_layers(n, pp, s);
                assert_eq!(a, next);
                assert!(b > a);
                next = b;
            }
            assert_eq!(next, n);
        }
        assert_eq!(stage_layers(5, 2, 0), (0, 2));
    }
}
