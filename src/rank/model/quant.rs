//! Quantized checkpoints: `quantization_config` read as vLLM detects it, and what the
//! weights recipe needs from it. Implemented: compressed-tensors `float-quantized` FP8
//! (e4m3 weights with per-channel or per-tensor scales; activations quantized per token
//! at run time, or with one saved scale per layer; the f32 reference computes them
//! unquantized, as the tool's dequantized model does). Every other method, format or scheme is refused with one line naming it.

use serde_json::Value;

/// Why a `quantization_config` is refused: one line naming the construct and what is
/// implemented.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QuantRefusal(pub String);

/// How an FP8 weight's scales are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleStrategy {
    /// One scale per output row, stored `[out, 1]`.
    Channel,
    /// One scale for the whole tensor, stored `[1]` or `[]`.
    Tensor,
    /// One scale per `(rows, cols)` block, stored `[⌈out/rows⌉, ⌈in/cols⌉]`.
    Block(usize, usize),
}

/// How a checkpoint's activations are quantized before each FP8 product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// No activation quantization (weight-only FP8).
    None,
    /// Per token, at run time.
    DynamicToken,
    /// One saved `input_scale` per Linear module.
    StaticTensor,
}

/// A checkpoint's FP8 scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fp8 {
    pub weights: ScaleStrategy,
    /// The scale tensor beside each FP8 weight: `{module}.weight_scale`
    /// (compressed-tensors) or `{module}.weight_scale_inv` (transformers' `fp8`); the
    /// weight is `e4m3 · scale` either way.
    pub scale_suffix: &'static str,
    /// The CPU reference computes activations in f32 whatever this says (the tool's
    /// dequantized model); the saved input scales of a static scheme are still checked.
    pub activations: Activations,
    /// Linear layers left unquantized (module names, e.g. `lm_head`).
    pub ignore: Vec<String>,
    /// The checkpoint holds unquantized weights and rrank quantizes them at load
    /// (`--quantization fp8`): per channel, `scale = max|w| / 448`.
    pub at_load: bool,
}

impl Fp8 {
    /// `--quantization fp8` on an unquantized checkpoint: every Linear of the layers
    /// quantized at load per channel (the LM head stays unquantized).
    pub fn at_load() -> Fp8 {
        Fp8 {
            weights: ScaleStrategy::Channel,
            scale_suffix: "",
            activations: Activations::DynamicToken,
            ignore: vec!["lm_head".into()],
            at_load: true,
        }
    }

    /// Whether the Linear module `name` (e.g. `model.layers.0.mlp.down_proj`) holds FP8 weights.
    pub fn covers(&self, name: &str) -> bool {
        !self.ignore.iter().any(|i| i == name)
    }
}

fn refuse(what: impl std::fmt::Display) -> QuantRefusal {
    QuantRefusal(format!(
        "quantization_config: {what}; rrank serves compressed-tensors float-quantized FP8 (weights e4m3, per-channel or per-tensor scales; activations dynamic per token or static per tensor) and unquantized checkpoints"
    ))
}

/// The FP8 scheme of a compressed-tensors `quantization_config`, or why it is refused.
/// `layers`: the model's number of decoder layers, to check the ignore list against.
pub fn parse_compressed_tensors(q: &Value, layers: usize) -> Result<Fp8, QuantRefusal> {
    let format = q.get("format").and_then(Value::as_str).unwrap_or("");
    if format != "float-quantized" {
        return Err(refuse(format!("format {format:?} is not implemented")));
    }
    if let Some(kv) = q.get("kv_cache_scheme").filter(|v| !v.is_null()) {
        return Err(refuse(format!(
            "kv_cache_scheme {kv} (an FP8 KV cache) is not implemented"
        )));
    }
    for (key, what) in [
        ("sparsity_config", "sparse weights"),
        ("transform_config", "rotations applied to the weights"),
    ] {
        if q.get(key)
            .and_then(Value::as_object)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(refuse(format!("{key} ({what}) is not implemented")));
        }
    }
    if let Some(status) = q
        .get("quantization_status")
        .and_then(Value::as_str)
        .filter(|s| *s != "compressed")
    {
        return Err(refuse(format!(
            "quantization_status {status:?} is not implemented (saved compressed is)"
        )));
    }
    let groups = q
        .get("config_groups")
        .and_then(Value::as_object)
        .filter(|g| !g.is_empty())
        .ok_or_else(|| refuse("no config_groups"))?;
    if groups.len() > 1 {
        return Err(refuse(format!(
            "{} config_groups (one scheme per layer kind) are not implemented; one group is",
            groups.len()
        )));
    }
    let (gname, g) = groups.iter().next().expect("one group");
    if let Some(f) = g
        .get("format")
        .and_then(Value::as_str)
        .filter(|f| *f != "float-quantized")
    {
        return Err(refuse(format!("{gname}.format {f:?} is not implemented")));
    }
    let targets: Vec<&str> = g
        .get("targets")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if targets != ["Linear"] {
        return Err(refuse(format!(
            "{gname}.targets {targets:?} is not implemented (targets [\"Linear\"] is)"
        )));
    }
    let w = g
        .get("weights")
        .filter(|w| !w.is_null())
        .ok_or_else(|| refuse(format!("{gname} has no weights scheme")))?;
    let field = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    if field(w, "type") != "float" || field(w, "num_bits") != 8 {
        return Err(refuse(format!(
            "{gname}.weights type {} num_bits {} is not implemented (float 8 is)",
            field(w, "type"),
            field(w, "num_bits")
        )));
    }
    if field(w, "symmetric") == false || field(w, "dynamic") == true {
        return Err(refuse(format!(
            "{gname}.weights must be symmetric and static (saved scales)"
        )));
    }
    let weights = match w.get("strategy").and_then(Value::as_str) {
        Some("channel") => ScaleStrategy::Channel,
        Some("tensor") => ScaleStrategy::Tensor,
        other => {
            return Err(refuse(format!(
                "{gname}.weights strategy {other:?} (block or group scales) is not implemented (channel and tensor are)"
            )));
        }
    };
    let activations = match g.get("input_activations").filter(|a| !a.is_null()) {
        None => Activations::None,
        Some(a) => {
            let fp8 = field(a, "type") == "float" && field(a, "num_bits") == 8;
            match (fp8, field(a, "dynamic"), field(a, "strategy").as_str()) {
                (true, Value::Bool(true), Some("token")) => Activations::DynamicToken,
                (true, Value::Bool(false), Some("tensor")) => Activations::StaticTensor,
                _ => {
                    return Err(refuse(format!(
                        "{gname}.input_activations {} {} bits, dynamic {}, strategy {} is not implemented (FP8 dynamic per token, or static per tensor, is)",
                        field(a, "type"),
                        field(a, "num_bits"),
                        field(a, "dynamic"),
                        field(a, "strategy")
                    )));
                }
            }
        }
    };
    if g.get("output_activations").is_some_and(|o| !o.is_null()) {
        return Err(refuse(format!(
            "{gname}.output_activations is not implemented"
        )));
    }
    let ignore = module_list(q, "ignore", layers).map_err(|name| {
        refuse(format!(
            "ignore names {name:?}, which is not a Linear layer of this model (lm_head, or model.layers.N.self_attn.{{q,k,v,o}}_proj / model.layers.N.mlp.{{gate,up,down}}_proj with N < {layers}; \"re:\" patterns are not implemented)"
        ))
    })?;
    Ok(Fp8 {
        weights,
        scale_suffix: "weight_scale",
        activations,
        ignore,
        at_load: false,
    })
}

/// The FP8 scheme of transformers' fine-grained `fp8` `quantization_config` (the format of
/// DeepSeek and Qwen3 FP8 checkpoints: 128×128 blocks of `weight_scale_inv`), or why it
/// is refused. The output embedding stays unquantized, as transformers keeps it.
pub fn parse_transformers_fp8(q: &Value, layers: usize) -> Result<Fp8, QuantRefusal> {
    let refuse = |what: String| {
        QuantRefusal(format!(
            "quantization_config (quant_method \"fp8\"): {what}; rrank serves transformers' fp8 with weight_block_size, dynamic activations and float scales"
        ))
    };
    let get = |k: &str| q.get(k).cloned().unwrap_or(Value::Null);
    match get("activation_scheme").as_str() {
        Some("dynamic") | None => {}
        Some(other) => {
            return Err(refuse(format!(
                "activation_scheme {other:?} is not implemented"
            )));
        }
    }
    if get("dequantize") == true {
        return Err(refuse("dequantize true is not implemented".into()));
    }
    if !matches!(get("scale_fmt").as_str(), None | Some("float")) {
        return Err(refuse(format!(
            "scale_fmt {} is not implemented",
            get("scale_fmt")
        )));
    }
    if !get("modules_to_convert").is_null() {
        return Err(refuse("modules_to_convert is not implemented".into()));
    }
    let block = get("weight_block_size");
    let dims: Vec<usize> = block
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64().map(|v| v as usize))
                .collect()
        })
        .unwrap_or_default();
    let weights = match dims[..] {
        [r, c] if r > 0 && c > 0 => ScaleStrategy::Block(r, c),
        _ => {
            return Err(refuse(format!(
                "weight_block_size {block} is not implemented (two positive sizes, e.g. [128, 128], are)"
            )));
        }
    };
    let mut ignore = module_list(q, "modules_to_not_convert", layers).map_err(|name| {
        refuse(format!(
            "modules_to_not_convert names {name:?}, which is not a Linear layer of this model"
        ))
    })?;
    ignore.push("lm_head".into());
    Ok(Fp8 {
        weights,
        scale_suffix: "weight_scale_inv",
        activations: Activations::DynamicToken,
        ignore,
        at_load: false,
    })
}

/// The module names listed under `key`, or the first that is not one of the model's
/// Linear modules.
fn module_list(q: &Value, key: &str, layers: usize) -> Result<Vec<String>, String> {
    let names: Vec<String> = q
        .get(key)
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    match names.iter().find(|n| !linear_exists(n, layers)) {
        Some(bad) => Err(bad.clone()),
        None => Ok(names),
    }
}

/// Whether `name` is one of the model's Linear modules.
fn linear_exists(name: &str, layers: usize) -> bool {
    if name == "lm_head" {
        return true;
    }
    let Some(rest) = name.strip_prefix("model.layers.") else {
        return false;
    };
    let Some((n, module)) = rest.split_once('.') else {
        return false;
    };
    let in_range = n.parse::<usize>().is_ok_and(|n| n < layers);
    let known = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    in_range && known.contains(&module)
}

/// Every e4m3 byte's f32 value, by byte.
pub fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|b| e4m3_to_f32(b as u8)))
}

/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// `x` rounded to the nearest e4m3 value, ties to the even code, as torch's
/// `.to(torch.float8_e4m3fn)` rounds (|x| ≤ 448 + half a step; beyond that NaN).
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let table = e4m3_table();
    let a = x.abs();
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    // Codes 0x00..=0x7e are the finite non-negative values, increasing.
    let hi = (0u8..=0x7e).find(|&c| table[c as usize] >= a);
    let code = match hi {
        None if a < E4M3_MAX + 16.0 => 0x7e,
        None => return 0x7f,
        Some(0) => 0,
        Some(c) => {
            let (lo_v, hi_v) = (table[c as usize - 1], table[c as usize]);
            let (dl, dh) = (a - lo_v, hi_v - a);
            if dl < dh || (dl == dh && (c - 1) % 2 == 0) {
                c - 1
            } else {
                c
            }
        }
    };
    sign | code
}

/// The per-channel scale of a weight row as vLLM's online FP8 takes it:
/// `max|w| / 448` (1 for a row of zeros); the row is then stored as `e4m3(w / scale)`.
pub fn channel_scale(row: &[f32]) -> f32 {
    let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax > 0.0 { amax / E4M3_MAX } else { 1.0 }
}

/// An e4m3 (`float8_e4m3fn`) byte as f32: 1 sign, 4 exponent (bias 7), 3 mantissa
/// bits, no infinities, 0x7f/0xff NaN.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llmcompressor_fp8_dynamic() -> Value {
        json!({"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
               "kv_cache_scheme": null, "sparsity_config": {}, "transform_config": {}, "quantization_status": "compressed", "config_groups": {"group_0": {
                 "targets": ["Linear"], "format": "float-quantized", "output_activations": null,
                 "weights": {"num_bits": 8, "type": "float", "symmetric": true, "dynamic": false, "strategy": "channel"},
                 "input_activations": {"num_bits": 8, "type": "float", "symmetric": true, "dynamic": true, "strategy": "token"}}}})
    }

    #[test]
    fn llmcompressor_fp8_dynamic_is_read() {
        let f = parse_compressed_tensors(&llmcompressor_fp8_dynamic(), 4).unwrap();
        assert_eq!(f.weights, ScaleStrategy::Channel);
        assert_eq!(f.activations, Activations::DynamicToken);
        let mut st = llmcompressor_fp8_dynamic();
        st["config_groups"]["group_0"]["input_activations"]["dynamic"] = json!(false);
        st["config_groups"]["group_0"]["input_activations"]["strategy"] = json!("tensor");
        let f = parse_compressed_tensors(&st, 4).unwrap();
        assert_eq!(f.activations, Activations::StaticTensor);
        assert!(!f.covers("lm_head"));
        assert!(f.covers("model.layers.3.mlp.up_proj"));
    }

    #[test]
    fn schemes_it_does_not_implement_are_named() {
        let cases: [(&str, Value, &str); 8] = [
            (
                "/config_groups/group_0/weights/strategy",
                json!("block"),
                "strategy Some(\"block\")",
            ),
            (
                "/config_groups/group_0/weights/num_bits",
                json!(4),
                "num_bits 4",
            ),
            (
                "/config_groups/group_0/input_activations/dynamic",
                json!(false),
                "dynamic false, strategy \"token\" is not implemented",
            ),
            (
                "/kv_cache_scheme",
                json!({"num_bits": 8}),
                "kv_cache_scheme",
            ),
            (
                "/format",
                json!("pack-quantized"),
                "format \"pack-quantized\"",
            ),
            (
                "/ignore",
                json!(["model.layers.9.mlp.up_proj"]),
                "not a Linear layer of this model",
            ),
            (
                "/transform_config",
                json!({"config_groups": {}}),
                "transform_config (rotations",
            ),
            (
                "/quantization_status",
                json!("frozen"),
                "quantization_status \"frozen\"",
            ),
        ];
        for (path, value, want) in cases {
            let mut q = llmcompressor_fp8_dynamic();
            *q.pointer_mut(path).unwrap() = value;
            let e = parse_compressed_tensors(&q, 4).unwrap_err().0;
            assert!(e.contains(want), "{path}: {e}");
            assert!(e.starts_with("quantization_config: "), "{e}");
        }
    }

    #[test]
    fn transformers_fp8_blocks_are_read() {
        let q = json!({"quant_method": "fp8", "activation_scheme": "dynamic", "dequantize": false,
                       "modules_to_convert": null, "modules_to_not_convert": null, "scale_fmt": "float",
                       "weight_block_size": [128, 128]});
        let f = parse_transformers_fp8(&q, 4).unwrap();
        assert_eq!(f.weights, ScaleStrategy::Block(128, 128));
        assert_eq!(f.scale_suffix, "weight_scale_inv");
        assert!(
            !f.covers("lm_head"),
            "the output embedding stays unquantized"
        );
        for (k, v, want) in [
            (
                "activation_scheme",
                json!("static"),
                "activation_scheme \"static\"",
            ),
            ("weight_block_size", json!(null), "weight_block_size null"),
            ("scale_fmt", json!("ue8m0"), "scale_fmt \"ue8m0\""),
        ] {
            let mut bad = q.clone();
            bad[k] = v;
            let e = parse_transformers_fp8(&bad, 4).unwrap_err().0;
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn e4m3_bytes_decode_as_torch_does() {
        // torch.tensor([...], dtype=torch.uint8).view(torch.float8_e4m3fn).float()
        for (b, want) in [
            (0x00u8, 0.0f32),
            (0x38, 1.0),
            (0x40, 2.0),
            (0xb8, -1.0),
            (0x7e, 448.0),
            (0x01, 0.001953125),
            (0x07, 0.013671875),
            (0x3c, 1.5),
        ] {
            assert_eq!(e4m3_to_f32(b), want, "{b:#x}");
        }
        assert!(e4m3_to_f32(0x7f).is_nan());
    }

    #[test]
    fn rounding_to_e4m3_is_nearest_with_ties_to_even() {
        for c in 0u8..=0x7e {
            let v = e4m3_to_f32(c);
            assert_eq!(f32_to_e4m3(v), c, "{v} is exact");
            assert_eq!(f32_to_e4m3(-v) & 0x7f, c);
        }
        // torch: tensor([1.0625, 1.1875, 0.3, 447.0, 460.0]).to(float8_e4m3fn)
        // → 1.0 (tie to even), 1.25 (tie to even), 0.3125, 448, 448.
        assert_eq!(e4m3_to_f32(f32_to_e4m3(1.0625)), 1.0);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(1.1875)), 1.25);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(0.3)), 0.3125);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(447.0)), 448.0);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(460.0)), 448.0);
        let s = channel_scale(&[0.5, -2.0, 1.0]);
        assert_eq!(s, 2.0 / 448.0);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(-2.0 / s)), -448.0);
        assert_eq!(channel_scale(&[0.0; 4]), 1.0);
    }
}
