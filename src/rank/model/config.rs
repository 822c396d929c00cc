//! `config.json` of a Llama-family checkpoint (Llama 2/3/3.1/3.2, Mistral, Qwen2) and
//! the placement checks that must pass before any weight is read
//! (docs/spec/serving-api.md §4.2).
//!
//! Accepts both transformers layouts: `rope_theta`/`rope_scaling` (older) and
//! `rope_parameters` (transformers 5). Every refusal is one line naming the numbers
//! and the fix; the same files give the same text on every rank.
//!
//! Fields are read as transformers 5.17's LlamaConfig, MistralConfig and Qwen2Config
//! and their modeling code read them, defaults included. Those that change the math:
//! `hidden_act` (SiLU and the GELU family are implemented, others refused),
//! `rope_parameters`/`rope_scaling` (default, linear and llama3; yarn, dynamic,
//! longrope and the rest refused, as is partial RoPE where the rope type uses it),
//! `head_dim`, `rms_norm_eps`, `tie_word_embeddings`, `attention_bias` and `mlp_bias`
//! (Llama only: Mistral has no biases, Qwen2 always q/k/v biases), and the sliding
//! window: Mistral's `sliding_window` on every layer, Qwen2's on the layers that
//! `layer_types` marks `sliding_attention` (derived, when absent, from
//! `use_sliding_window` and `max_window_layers`), none on Llama. Fields that do not
//! change inference in transformers 5.17 are ignored: `pretraining_tp` (its modeling
//! code no longer reads it), `attention_dropout` (training only), `initializer_range`,
//! `use_cache`, Mistral's `layer_types`.

use std::path::Path;

use serde_json::Value;

use super::quant::{self, Fp8};

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

/// The MLP's activation: `act(gate) · up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu`, `swish`: `x · sigmoid(x)`.
    Silu,
    /// `gelu`, `gelu_python`: `x/2 · (1 + erf(x/√2))`.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_python_tanh`, `gelu_fast`, `gelu_accurate`:
    /// `x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))`.
    GeluTanh,
}

/// `hidden_act` names transformers' ACT2FN maps to each [`Activation`].
const ACTIVATIONS: [(&str, Activation); 9] = [
    ("silu", Activation::Silu),
    ("swish", Activation::Silu),
    ("gelu", Activation::Gelu),
    ("gelu_python", Activation::Gelu),
    ("gelu_new", Activation::GeluTanh),
    ("gelu_pytorch_tanh", Activation::GeluTanh),
    ("gelu_python_tanh", Activation::GeluTanh),
    ("gelu_fast", Activation::GeluTanh),
    ("gelu_accurate", Activation::GeluTanh),
];

impl Activation {
    /// The GPU backend's kernel stem of `act(gate) · up` (kernels/elementwise.cu).
    pub fn mul_kernel(self) -> &'static str {
        match self {
            Activation::Silu => "silu_mul",
            Activation::Gelu => "gelu_mul",
            Activation::GeluTanh => "gelu_tanh_mul",
        }
    }
}

/// RoPE frequencies: plain, linearly scaled (every frequency / factor), or Llama 3's
/// piecewise scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
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
    pub hidden_act: Activation,
    /// Each layer's sliding window (keys at positions `> pos - window`), by global
    /// layer index; `None`: full causal attention.
    pub layer_windows: Vec<Option<usize>>,
    /// `quantization_config.quant_method`, if any.
    pub quant_method: Option<String>,
    /// The FP8 scheme of a compressed-tensors checkpoint (see [`super::quant`]).
    pub fp8: Option<Fp8>,
    /// Why the checkpoint's `quantization_config` is refused (reported by
    /// [`ModelConfig::validate_placement`]).
    quant_refusal: Option<String>,
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
        // An optional integer: `absent` when the key is missing (the config class's
        // default), `null` when it is null (what __post_init__ puts there).
        let opt_int = |k: &str, absent: Option<usize>| -> Result<Option<usize>, ValidationError> {
            match v.get(k) {
                None => Ok(absent),
                Some(Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                    invalid(format!(
                        "config.json: {k} {x} is not a non-negative integer"
                    ))
                }),
            }
        };
        let hidden_size = int("hidden_size")?;
        let num_heads = int("num_attention_heads")?;
        let num_layers = int("num_hidden_layers")?;
        let num_kv_heads = opt_int(
            "num_key_value_heads",
            match arch {
                Arch::Llama => None,
                Arch::Mistral => Some(8),
                Arch::Qwen2 => Some(32),
            },
        )?
        .unwrap_or(num_heads);
        let head_dim = v
            .get("head_dim")
            .and_then(Value::as_u64)
            .filter(|&d| d > 0)
            .map(|x| x as usize)
            .unwrap_or(hidden_size / num_heads.max(1));
        let max_position_embeddings = v
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(match arch {
                Arch::Llama => 2048,
                Arch::Mistral => 131072,
                Arch::Qwen2 => 32768,
            });
        let hidden_act = match v.get("hidden_act") {
            None | Some(Value::Null) => Activation::Silu,
            Some(a) => ACTIVATIONS
                .iter()
                .find(|(n, _)| a.as_str() == Some(n))
                .map(|(_, act)| *act)
                .ok_or_else(|| {
                    let names: Vec<&str> = ACTIVATIONS.iter().map(|(n, _)| *n).collect();
                    invalid(format!(
                        "config.json: hidden_act {a} is not supported (supported: {})",
                        names.join(", ")
                    ))
                })?,
        };
        let (rope_theta, rope_scaling) = rope(v, max_position_embeddings)?;
        let attention_bias = v
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let layer_windows = layer_windows(v, arch, num_layers)?;
        let quant_method = v.get("quantization_config").map(|q| {
            q.get("quant_method")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string()
        });
        let (fp8, quant_refusal) = match (v.get("quantization_config"), quant_method.as_deref()) {
            (Some(q), Some("compressed-tensors")) => {
                match quant::parse_compressed_tensors(q, num_layers) {
                    Ok(f) => (Some(f), None),
                    Err(e) => (None, Some(e.0)),
                }
            }
            (Some(q), Some("fp8")) => match quant::parse_transformers_fp8(q, num_layers) {
                Ok(f) => (Some(f), None),
                Err(e) => (None, Some(e.0)),
            },
            (_, Some(m)) => (
                None,
                Some(format!(
                    "quantized checkpoint (quantization_config.quant_method = {m:?}) is not supported; use an unquantized bf16/f16/f32 checkpoint or a compressed-tensors FP8 one"
                )),
            ),
            (_, None) => (None, None),
        };
        Ok(ModelConfig {
            arch,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_layers,
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
            max_position_embeddings,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || (arch == Arch::Llama && attention_bias),
            o_bias: arch == Arch::Llama && attention_bias,
            mlp_bias: arch == Arch::Llama
                && v.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false),
            hidden_act,
            layer_windows,
            quant_method,
            fp8,
            quant_refusal,
            bos_token_id: ids(v.get("bos_token_id")).first().copied(),
            eos_token_ids: ids(v.get("eos_token_id")),
        })
    }

    /// The sliding window of global layer `layer`, if it has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.layer_windows.get(layer).copied().flatten()
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
        if let Some(why) = &self.quant_refusal {
            return Err(invalid(why.clone()));
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

/// `rope_theta` and the frequency scaling, as transformers' RotaryEmbeddingConfigMixin
/// standardises them: `rope_scaling` (the old name) wins over `rope_parameters`; the
/// dict's `rope_theta` over the top-level one (default 10000); `rope_type` or its old
/// name `type` (default "default").
fn rope(v: &Value, max_position_embeddings: usize) -> Result<(f64, RopeScaling), ValidationError> {
    let (key, r) = match (
        v.get("rope_scaling").filter(|r| r.is_object()),
        v.get("rope_parameters").filter(|r| r.is_object()),
    ) {
        (Some(r), _) => ("rope_scaling", Some(r)),
        (None, r) => ("rope_parameters", r),
    };
    let get = |k: &str| r.and_then(|r| r.get(k)).filter(|x| !x.is_null());
    if let Some((k, _)) = r
        .and_then(Value::as_object)
        .and_then(|o| o.iter().find(|(_, x)| x.is_object()))
    {
        return Err(invalid(format!(
            "config.json: {key} per layer type (key {k:?}) is not supported; rrank takes one RoPE for every layer"
        )));
    }
    let theta = get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| v.get("rope_theta").and_then(Value::as_f64))
        .unwrap_or(10000.0);
    let (type_key, rope_type) = match (get("rope_type"), get("type")) {
        (Some(t), _) => ("rope_type", t),
        (None, Some(t)) => ("type", t),
        (None, None) => ("rope_type", &Value::Null),
    };
    let name = if rope_type.is_null() {
        "default"
    } else {
        rope_type.as_str().unwrap_or("")
    };
    let num = |k: &str| {
        get(k).and_then(Value::as_f64).ok_or_else(|| {
            invalid(format!(
                "config.json: {key}.{type_key} {name:?} needs a number {k:?}"
            ))
        })
    };
    let scaling = match name {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            // A top-level original_max_position_embeddings wins; max_position_embeddings
            // stands in for a missing one.
            original_max_position_embeddings: v
                .get("original_max_position_embeddings")
                .and_then(Value::as_f64)
                .or_else(|| get("original_max_position_embeddings").and_then(Value::as_f64))
                .unwrap_or(max_position_embeddings as f64),
        },
        _ => {
            return Err(invalid(format!(
                "config.json: {key}.{type_key} {rope_type} is not supported (supported: default, linear, llama3)"
            )));
        }
    };
    // The default RoPE of these models ignores partial_rotary_factor; linear and llama3
    // would rotate only part of each head.
    if scaling != RopeScaling::None {
        let (pkey, partial) = match get("partial_rotary_factor") {
            Some(p) => (format!("{key}.partial_rotary_factor"), Some(p)),
            None => (
                "partial_rotary_factor".to_string(),
                v.get("partial_rotary_factor").filter(|x| !x.is_null()),
            ),
        };
        if let Some(p) = partial
            && p.as_f64() != Some(1.0)
        {
            return Err(invalid(format!(
                "config.json: {pkey} {p} is not supported with rope_type {name:?} (RoPE on the whole head only)"
            )));
        }
    }
    Ok((theta, scaling))
}

/// Each layer's sliding window, as transformers 5.17's modeling code applies it:
/// none on Llama; Mistral's `sliding_window` (default 4096, null for none) on every
/// layer; Qwen2's (default 4096, and none unless `use_sliding_window`) on the layers
/// `layer_types` marks "sliding_attention", where absent layer_types is
/// "sliding_attention" from layer `max_window_layers` (default 28) on when there is a
/// window and "full_attention" otherwise.
fn layer_windows(
    v: &Value,
    arch: Arch,
    num_layers: usize,
) -> Result<Vec<Option<usize>>, ValidationError> {
    let window = || -> Result<Option<usize>, ValidationError> {
        match v.get("sliding_window") {
            None => Ok(Some(4096)),
            Some(Value::Null) => Ok(None),
            Some(w) => match w.as_u64() {
                Some(w) if w > 0 => Ok(Some(w as usize)),
                _ => Err(invalid(format!(
                    "config.json: sliding_window {w} is not a positive integer"
                ))),
            },
        }
    };
    match arch {
        Arch::Llama => Ok(vec![None; num_layers]),
        Arch::Mistral => Ok(vec![window()?; num_layers]),
        Arch::Qwen2 => {
            let use_sliding = v.get("use_sliding_window");
            let on = use_sliding.and_then(Value::as_bool).unwrap_or(false);
            let w = if on { window()? } else { None };
            let types: Vec<String> = match v.get("layer_types") {
                None | Some(Value::Null) => {
                    let from = v
                        .get("max_window_layers")
                        .and_then(Value::as_u64)
                        .unwrap_or(28) as usize;
                    (0..num_layers)
                        .map(|i| {
                            if w.is_some() && i >= from {
                                "sliding_attention".to_string()
                            } else {
                                "full_attention".to_string()
                            }
                        })
                        .collect()
                }
                Some(Value::Array(a)) => {
                    if a.len() != num_layers {
                        return Err(invalid(format!(
                            "config.json: layer_types has {} entries but num_hidden_layers is {num_layers}",
                            a.len()
                        )));
                    }
                    a.iter()
                        .map(|t| t.as_str().map_or_else(|| t.to_string(), str::to_string))
                        .collect()
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "config.json: layer_types {other} is not a list"
                    )));
                }
            };
            types
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    "full_attention" => Ok(None),
                    "sliding_attention" => w.map(Some).ok_or_else(|| {
                        invalid(format!(
                            "config.json: layer_types[{i}] is \"sliding_attention\" but there is no sliding window (use_sliding_window {}, sliding_window {})",
                            use_sliding.map_or("absent".to_string(), Value::to_string),
                            v.get("sliding_window").map_or("absent".to_string(), Value::to_string)
                        ))
                    }),
                    other => Err(invalid(format!(
                        "config.json: layer_types[{i}] {other:?} is not supported (supported: full_attention, sliding_attention)"
                    ))),
                })
                .collect()
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

    fn arch(name: &str) -> Value {
        let mut v = smollm();
        v["architectures"] = json!([name]);
        v
    }

    fn err(v: &Value) -> String {
        ModelConfig::from_json(v).unwrap_err().to_string()
    }

    #[test]
    fn hidden_act_names_map_as_transformers_act2fn() {
        let mut v = smollm();
        assert_eq!(
            ModelConfig::from_json(&v).unwrap().hidden_act,
            Activation::Silu
        );
        for (name, act) in [
            ("swish", Activation::Silu),
            ("gelu", Activation::Gelu),
            ("gelu_python", Activation::Gelu),
            ("gelu_pytorch_tanh", Activation::GeluTanh),
            ("gelu_new", Activation::GeluTanh),
            ("gelu_fast", Activation::GeluTanh),
        ] {
            v["hidden_act"] = json!(name);
            assert_eq!(
                ModelConfig::from_json(&v).unwrap().hidden_act,
                act,
                "{name}"
            );
        }
        v["hidden_act"] = json!("gelu_10");
        assert!(
            err(&v).starts_with("config.json: hidden_act \"gelu_10\" is not supported (supported: silu, swish, gelu,"),
            "{}",
            err(&v)
        );
    }

    #[test]
    fn rope_fields_as_transformers_standardises_them() {
        let mut v = smollm();
        v["rope_parameters"] = json!({"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0});
        let c = ModelConfig::from_json(&v).unwrap();
        // The dict's rope_theta wins over the top-level one.
        assert_eq!(c.rope_theta, 500.0);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        // The old name rope_scaling (with "type") wins over rope_parameters.
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        let c = ModelConfig::from_json(&v).unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(c.rope_theta, 100000.0);
        v["rope_scaling"] = json!({"type": "yarn", "factor": 2.0});
        assert_eq!(
            err(&v),
            "config.json: rope_scaling.type \"yarn\" is not supported (supported: default, linear, llama3)"
        );
        // llama3 without original_max_position_embeddings takes max_position_embeddings.
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0});
        let c = ModelConfig::from_json(&v).unwrap();
        assert!(
            matches!(c.rope_scaling, RopeScaling::Llama3 { original_max_position_embeddings, .. } if original_max_position_embeddings == 8192.0)
        );
        v["partial_rotary_factor"] = json!(0.25);
        assert!(
            err(&v).starts_with(
                "config.json: partial_rotary_factor 0.25 is not supported with rope_type \"llama3\""
            ),
            "{}",
            err(&v)
        );
        // The default RoPE of these models ignores partial_rotary_factor.
        v.as_object_mut().unwrap().remove("rope_scaling");
        v.as_object_mut().unwrap().remove("rope_parameters");
        assert_eq!(
            ModelConfig::from_json(&v).unwrap().rope_scaling,
            RopeScaling::None
        );
    }

    #[test]
    fn sliding_windows_per_layer_as_transformers_applies_them() {
        let windows = |v: &Value| ModelConfig::from_json(v).unwrap().layer_windows;
        let mut q = arch("Qwen2ForCausalLM");
        q["num_hidden_layers"] = json!(4);
        // use_sliding_window absent or false: no window, whatever else is set.
        q["sliding_window"] = json!(3);
        q["max_window_layers"] = json!(1);
        assert_eq!(windows(&q), vec![None; 4]);
        q["use_sliding_window"] = json!(true);
        assert_eq!(windows(&q), vec![None, Some(3), Some(3), Some(3)]);
        q.as_object_mut().unwrap().remove("max_window_layers");
        assert_eq!(
            windows(&q),
            vec![None; 4],
            "max_window_layers defaults to 28"
        );
        q.as_object_mut().unwrap().remove("sliding_window");
        q["max_window_layers"] = json!(3);
        assert_eq!(
            windows(&q),
            vec![None, None, None, Some(4096)],
            "sliding_window defaults to 4096"
        );
        q["layer_types"] = json!([
            "sliding_attention",
            "full_attention",
            "full_attention",
            "sliding_attention"
        ]);
        q["sliding_window"] = json!(5);
        assert_eq!(
            windows(&q),
            vec![Some(5), None, None, Some(5)],
            "layer_types wins"
        );
        q["sliding_window"] = Value::Null;
        assert!(err(&q).starts_with("config.json: layer_types[0] is \"sliding_attention\" but there is no sliding window"), "{}", err(&q));
        let mut m = arch("MistralForCausalLM");
        m["num_hidden_layers"] = json!(2);
        assert_eq!(windows(&m), vec![Some(4096); 2], "Mistral's default");
        m["sliding_window"] = Value::Null;
        assert_eq!(windows(&m), vec![None; 2]);
        m["sliding_window"] = json!(7);
        m["layer_types"] = json!(["full_attention", "full_attention"]);
        assert_eq!(windows(&m), vec![Some(7); 2], "Mistral ignores layer_types");
        let mut l = smollm();
        l["sliding_window"] = json!(7);
        l["use_sliding_window"] = json!(true);
        assert!(
            windows(&l).iter().all(Option::is_none),
            "Llama has no window"
        );
    }

    #[test]
    fn biases_and_defaults_follow_each_architecture() {
        let mut m = arch("MistralForCausalLM");
        m["attention_bias"] = json!(true);
        m["mlp_bias"] = json!(true);
        m.as_object_mut().unwrap().remove("num_key_value_heads");
        m.as_object_mut().unwrap().remove("max_position_embeddings");
        let c = ModelConfig::from_json(&m).unwrap();
        assert!(
            !c.qkv_bias && !c.o_bias && !c.mlp_bias,
            "Mistral has no biases"
        );
        assert_eq!((c.num_kv_heads, c.max_position_embeddings), (8, 131072));
        let mut q = arch("Qwen2ForCausalLM");
        q["attention_bias"] = json!(false);
        q["mlp_bias"] = json!(true);
        q.as_object_mut().unwrap().remove("num_key_value_heads");
        let c = ModelConfig::from_json(&q).unwrap();
        assert!(
            c.qkv_bias && !c.o_bias && !c.mlp_bias,
            "Qwen2: q/k/v biases only"
        );
        assert_eq!(c.num_kv_heads, 32);
        q["num_key_value_heads"] = Value::Null;
        assert_eq!(ModelConfig::from_json(&q).unwrap().num_kv_heads, 9);
        let mut l = smollm();
        l["attention_bias"] = json!(true);
        l["pretraining_tp"] = json!(4);
        let c = ModelConfig::from_json(&l).unwrap();
        assert!(c.qkv_bias && c.o_bias && !c.mlp_bias);
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
