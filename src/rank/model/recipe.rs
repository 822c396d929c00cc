//! The weights recipe: which checkpoint tensors feed which weight of the forward, how
//! each one is cut for a rank (tensor-parallel rows or columns, replicated, a vocab
//! slice), which ones stack into one fused weight (q|k|v, gate|up), and when a tensor
//! exists at all (biases as config.json declares them, the LM head or the tied
//! embedding, the first and last pipeline stage).
//!
//! One table of [`Row`]s per architecture. The checkpoint check ([`checkpoint_tensors`])
//! and both backends ([`for_rank`]) read it, so a new tensor kind or architecture is new
//! rows here and a new [`Role`] where the forward uses it, not a loader per backend.

use super::config::{Arch, ModelConfig};
use super::quant::{Activations, Fp8, ScaleStrategy};
use super::shard::Shard;
use crate::rank::dist::Placement;

/// A weight of one layer's forward; several checkpoint tensors may stack into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    InNorm,
    /// `[q | k | v]` rows: `[nq + 2·nkv, hidden]`.
    Qkv,
    QkvBias,
    /// `[hidden, nq]`, row-parallel.
    O,
    OBias,
    PostNorm,
    /// `[gate | up]` rows: `[2·inter, hidden]`.
    GateUp,
    GateUpBias,
    /// `[hidden, inter]`, row-parallel.
    Down,
    DownBias,
}

impl Role {
    pub const COUNT: usize = 10;

    /// How the forward uses this weight.
    pub fn kind(self) -> Kind {
        match self {
            Role::Qkv | Role::O | Role::GateUp | Role::Down => Kind::Matrix,
            _ => Kind::Vector,
        }
    }
}

/// How the forward uses a weight, which decides how a backend stores it (the CPU
/// keeps bf16 matrices as bf16 and widens everything else to f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The right-hand side of a product, `[out, in]`.
    Matrix,
    /// Elementwise: a norm's weight or a bias.
    Vector,
    /// Looked up by token id (the embedding).
    Table,
}

/// A dimension of a checkpoint tensor, in config.json's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    Hidden,
    /// All query heads × head_dim.
    Q,
    /// All KV heads × head_dim.
    Kv,
    Inter,
    Vocab,
}

impl Dim {
    fn size(self, cfg: &ModelConfig) -> usize {
        match self {
            Dim::Hidden => cfg.hidden_size,
            Dim::Q => cfg.num_heads * cfg.head_dim,
            Dim::Kv => cfg.num_kv_heads * cfg.head_dim,
            Dim::Inter => cfg.intermediate_size,
            Dim::Vocab => cfg.vocab_size,
        }
    }

    /// This rank's range along the dimension.
    fn range(self, cfg: &ModelConfig, shard: &Shard) -> (usize, usize) {
        match self {
            Dim::Hidden => (0, cfg.hidden_size),
            Dim::Q => shard.q,
            Dim::Kv => shard.kv,
            Dim::Inter => shard.mlp,
            Dim::Vocab => shard.vocab,
        }
    }
}

/// How a tensor is cut for one rank: whole (replicated), or this rank's range of
/// its rows (column-parallel products) or columns (row-parallel products).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    Whole,
    Rows(Dim),
    Cols(Dim),
}

/// When a tensor is part of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    QkvBias,
    OBias,
    MlpBias,
}

impl When {
    fn holds(self, cfg: &ModelConfig) -> bool {
        match self {
            When::Always => true,
            When::QkvBias => cfg.qkv_bias,
            When::OBias => cfg.o_bias,
            When::MlpBias => cfg.mlp_bias,
        }
    }
}

/// One checkpoint tensor of a layer: the weight it feeds (rows of the same role stack
/// in table order), its name under `model.layers.{i}.`, its full shape, its cut.
struct Row {
    role: Role,
    name: &'static str,
    shape: &'static [Dim],
    split: Split,
    when: When,
}

const fn row(role: Role, name: &'static str, shape: &'static [Dim], split: Split) -> Row {
    Row {
        role,
        name,
        shape,
        split,
        when: When::Always,
    }
}

const fn bias(
    role: Role,
    name: &'static str,
    shape: &'static [Dim],
    split: Split,
    when: When,
) -> Row {
    Row {
        role,
        name,
        shape,
        split,
        when,
    }
}

use Dim::{Hidden as H, Inter as I, Kv, Q};
use Split::{Cols, Rows, Whole};

/// Llama 2/3, Mistral and Qwen2: one decoder layer as Hugging Face stores it.
const LLAMA_LAYER: &[Row] = &[
    row(Role::InNorm, "input_layernorm.weight", &[H], Whole),
    row(
        Role::PostNorm,
        "post_attention_layernorm.weight",
        &[H],
        Whole,
    ),
    row(Role::Qkv, "self_attn.q_proj.weight", &[Q, H], Rows(Q)),
    row(Role::Qkv, "self_attn.k_proj.weight", &[Kv, H], Rows(Kv)),
    row(Role::Qkv, "self_attn.v_proj.weight", &[Kv, H], Rows(Kv)),
    row(Role::O, "self_attn.o_proj.weight", &[H, Q], Cols(Q)),
    row(Role::GateUp, "mlp.gate_proj.weight", &[I, H], Rows(I)),
    row(Role::GateUp, "mlp.up_proj.weight", &[I, H], Rows(I)),
    row(Role::Down, "mlp.down_proj.weight", &[H, I], Cols(I)),
    bias(
        Role::QkvBias,
        "self_attn.q_proj.bias",
        &[Q],
        Rows(Q),
        When::QkvBias,
    ),
    bias(
        Role::QkvBias,
        "self_attn.k_proj.bias",
        &[Kv],
        Rows(Kv),
        When::QkvBias,
    ),
    bias(
        Role::QkvBias,
        "self_attn.v_proj.bias",
        &[Kv],
        Rows(Kv),
        When::QkvBias,
    ),
    bias(
        Role::OBias,
        "self_attn.o_proj.bias",
        &[H],
        Whole,
        When::OBias,
    ),
    bias(
        Role::GateUpBias,
        "mlp.gate_proj.bias",
        &[I],
        Rows(I),
        When::MlpBias,
    ),
    bias(
        Role::GateUpBias,
        "mlp.up_proj.bias",
        &[I],
        Rows(I),
        When::MlpBias,
    ),
    bias(
        Role::DownBias,
        "mlp.down_proj.bias",
        &[H],
        Whole,
        When::MlpBias,
    ),
];

const EMBED: &str = "model.embed_tokens.weight";
const FINAL_NORM: &str = "model.norm.weight";
const LM_HEAD: &str = "lm_head.weight";

fn layer_rows(arch: Arch) -> &'static [Row] {
    match arch {
        Arch::Llama | Arch::Mistral | Arch::Qwen2 => LLAMA_LAYER,
    }
}

/// What a checkpoint tensor's dtype must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// BF16, F16 or F32.
    Float,
    /// F8_E4M3 (an FP8 weight).
    Fp8,
    /// A float scale of an FP8 weight (its shape may also be `[]` for one per tensor).
    Scale(ScaleStrategy),
}

/// A checkpoint tensor the model reads: name, full shape, stored kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub name: String,
    pub shape: Vec<usize>,
    pub stored: Stored,
}

/// The FP8 scheme covering Linear module `module`, when config.json quantizes it.
fn fp8_of<'c>(cfg: &'c ModelConfig, module: &str) -> Option<&'c Fp8> {
    // Only Linear modules are quantized: the LM head (the embedding is looked up, also
    // where it is tied to the head) and the layers' projections.
    let linear = module == "lm_head" || module.starts_with("model.layers.");
    cfg.fp8.as_ref().filter(|f| linear && f.covers(module))
}

/// A weight tensor and, for an FP8 one, its scale, with full shapes.
fn wants(cfg: &ModelConfig, name: String, shape: Vec<usize>, kind: Kind) -> Vec<Want> {
    let module = name
        .strip_suffix(".weight")
        .filter(|_| kind == Kind::Matrix);
    let Some(fp8) = module.and_then(|m| fp8_of(cfg, m)).filter(|f| !f.at_load) else {
        return vec![Want {
            name,
            shape,
            stored: Stored::Float,
        }];
    };
    // A static scheme saves one input scale per module (checked; the f32 reference does
    // not quantize activations).
    let input_scale = (fp8.activations == Activations::StaticTensor)
        .then(|| module.map(|m| format!("{m}.input_scale")))
        .flatten();
    let scale_shape = match fp8.weights {
        ScaleStrategy::Channel => vec![shape[0], 1],
        ScaleStrategy::Tensor => vec![1],
        ScaleStrategy::Block(r, c) => vec![shape[0].div_ceil(r), shape[1].div_ceil(c)],
    };
    let scale_name = format!("{}.{}", module.unwrap_or_default(), fp8.scale_suffix);
    let mut w = vec![
        Want {
            name: scale_name,
            shape: scale_shape,
            stored: Stored::Scale(fp8.weights),
        },
        Want {
            name,
            shape,
            stored: Stored::Fp8,
        },
    ];
    w.extend(input_scale.map(|name| Want {
        name,
        shape: vec![1],
        stored: Stored::Scale(ScaleStrategy::Tensor),
    }));
    w
}

/// Every checkpoint tensor config.json implies, with its full shape and stored kind, in
/// the order the checkpoint check looks for them. `has_lm_head`: the checkpoint stores
/// `lm_head.weight` (required unless the embeddings are tied).
pub fn checkpoint_tensors(cfg: &ModelConfig, has_lm_head: bool) -> Vec<Want> {
    let shape = |dims: &[Dim]| dims.iter().map(|d| d.size(cfg)).collect::<Vec<_>>();
    let mut want = wants(cfg, EMBED.to_string(), shape(&[Dim::Vocab, H]), Kind::Table);
    want.extend(wants(
        cfg,
        FINAL_NORM.to_string(),
        shape(&[H]),
        Kind::Vector,
    ));
    if !cfg.tie_word_embeddings || has_lm_head {
        want.extend(wants(
            cfg,
            LM_HEAD.to_string(),
            shape(&[Dim::Vocab, H]),
            Kind::Matrix,
        ));
    }
    for l in 0..cfg.num_layers {
        for r in layer_rows(cfg.arch).iter().filter(|r| r.when.holds(cfg)) {
            let name = format!("model.layers.{l}.{}", r.name);
            want.extend(wants(cfg, name, shape(r.shape), r.role.kind()));
        }
    }
    want
}

/// Which part of a checkpoint tensor a rank reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    All,
    /// Rows `[a, b)` (elements of a 1-D tensor).
    Rows(usize, usize),
    /// Columns `[a, b)` of a 2-D tensor.
    Cols(usize, usize),
}

/// One checkpoint tensor's part of a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub name: String,
    pub cut: Cut,
}

/// One weight as a backend holds it: its pieces stacked by rows, `[rows, cols]`
/// (`cols` = 1 for vectors). Rows past the pieces' are zeros (the LM head's vocab
/// slice padded to the slice every rank holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    pub pieces: Vec<Piece>,
    pub rows: usize,
    pub cols: usize,
    pub kind: Kind,
    /// For FP8 weights, the scales of each weight piece. Empty for unquantized weights.
    pub scales: Vec<ScalePiece>,
    /// Stored unquantized, quantized to FP8 per channel at load (`--quantization fp8`).
    pub quantize_at_load: bool,
}

impl Tensor {
    /// Whether the weight is stored as FP8 with scales.
    pub fn is_fp8(&self) -> bool {
        !self.scales.is_empty()
    }
}

impl Tensor {
    /// Elements held, `rows · cols`.
    pub fn elems(&self) -> usize {
        self.rows * self.cols
    }
}

/// One layer's weights, by role (`None`: the model has no such tensor).
#[derive(Debug)]
pub struct Layer<T> {
    by_role: Vec<Option<T>>,
}

impl<T> Layer<T> {
    /// The weight of `role`, which this model has.
    pub fn get(&self, role: Role) -> &T {
        self.opt(role)
            .unwrap_or_else(|| panic!("the recipe gives every layer a {role:?}"))
    }

    /// The weight of `role`, if the model has it (biases).
    pub fn opt(&self, role: Role) -> Option<&T> {
        self.by_role[role as usize].as_ref()
    }

    /// Every weight of the layer.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.by_role.iter().flatten()
    }
}

/// A rank's weights: its stage's layers, the embedding (first stage), the final norm
/// and LM head (last stage).
#[derive(Debug)]
pub struct RankWeights<T> {
    pub layers: Vec<Layer<T>>,
    pub embed: Option<T>,
    pub final_norm: Option<T>,
    pub lm_head: Option<T>,
}

impl<T> RankWeights<T> {
    /// Every weight, layers first.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.layers
            .iter()
            .flat_map(|l| l.all())
            .chain(self.embed.iter())
            .chain(self.final_norm.iter())
            .chain(self.lm_head.iter())
    }
}

impl RankWeights<Tensor> {
    /// Makes every weight with `load`, in recipe order.
    pub fn load<U, E>(
        &self,
        mut load: impl FnMut(&Tensor) -> Result<U, E>,
    ) -> Result<RankWeights<U>, E> {
        let mut opt = |t: &Option<Tensor>| t.as_ref().map(&mut load).transpose();
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let by_role = l.by_role.iter().map(&mut opt).collect::<Result<_, E>>()?;
            layers.push(Layer { by_role });
        }
        Ok(RankWeights {
            layers,
            embed: opt(&self.embed)?,
            final_norm: opt(&self.final_norm)?,
            lm_head: opt(&self.lm_head)?,
        })
    }
}

/// An FP8 weight piece's scales: the scale tensor's piece, the weight rows it covers,
/// and the block of weight elements one scale value covers (`(1, cols)` per channel,
/// `(rows, cols)` per tensor, the checkpoint's block otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePiece {
    pub piece: Piece,
    pub rows: usize,
    pub block: (usize, usize),
}

/// The scales of FP8 weight piece `p` (`rows` × `cols` once cut), if the weight is FP8:
/// per-channel scales are cut like the weight's rows, block scales like its rows or
/// columns (in blocks; the cut is block-aligned, see [`check_block_cuts`]), a per-tensor
/// scale and a column cut's per-channel scales are read whole.
fn scale_piece(
    cfg: &ModelConfig,
    p: &Piece,
    (rows, cols): (usize, usize),
    kind: Kind,
) -> Option<ScalePiece> {
    let module = p
        .name
        .strip_suffix(".weight")
        .filter(|_| kind == Kind::Matrix)?;
    let fp8 = fp8_of(cfg, module).filter(|f| !f.at_load)?;
    let (cut, block) = match (fp8.weights, p.cut) {
        (ScaleStrategy::Channel, Cut::Rows(a, b)) => (Cut::Rows(a, b), (1, cols)),
        (ScaleStrategy::Channel, _) => (Cut::All, (1, cols)),
        (ScaleStrategy::Tensor, _) => (Cut::All, (rows, cols)),
        (ScaleStrategy::Block(br, bc), Cut::Rows(a, b)) => {
            (Cut::Rows(a / br, b.div_ceil(br)), (br, bc))
        }
        (ScaleStrategy::Block(br, bc), Cut::Cols(a, b)) => {
            (Cut::Cols(a / bc, b.div_ceil(bc)), (br, bc))
        }
        (ScaleStrategy::Block(br, bc), Cut::All) => (Cut::All, (br, bc)),
    };
    Some(ScalePiece {
        piece: Piece {
            name: format!("{module}.{}", fp8.scale_suffix),
            cut,
        },
        rows,
        block,
    })
}

/// Refuses a tensor-parallel size whose shards would cut an FP8 scale block: every
/// rank's rows of q/k/v/gate/up and columns of o/down must start on a block boundary.
pub fn check_block_cuts(cfg: &ModelConfig, tp: usize) -> Result<(), String> {
    let Some(ScaleStrategy::Block(br, bc)) = cfg.fp8.as_ref().map(|f| f.weights) else {
        return Ok(());
    };
    let cut = |t: usize| {
        let p = Placement {
            tp: t,
            pp: 1,
            rank: 0,
        };
        (0..t).map(move |r| Shard::new(cfg, Placement { rank: r, ..p }))
    };
    let bad = |t: usize| -> Option<(&'static str, usize, usize)> {
        for s in cut(t) {
            for (what, (a, _), block) in [
                ("q_proj rows", s.q, br),
                ("k_proj/v_proj rows", s.kv, br),
                ("gate_proj/up_proj rows", s.mlp, br),
                ("o_proj columns", s.q, bc),
                ("down_proj columns", s.mlp, bc),
            ] {
                if a % block != 0 {
                    return Some((what, a, block));
                }
            }
        }
        None
    };
    let Some((what, at, block)) = bad(tp) else {
        return Ok(());
    };
    let valid: Vec<String> = (1..=cfg.num_heads)
        .filter(|t| {
            cfg.num_heads.is_multiple_of(*t)
                && cfg.validate_placement(*t, 1, *t).is_ok()
                && bad(*t).is_none()
        })
        .map(|t| t.to_string())
        .collect();
    Err(format!(
        "tensor parallel size {tp} would cut the FP8 scale blocks ({br}×{bc}): a shard's {what} start at {at}, not a multiple of {block}; valid -tp values: {}",
        valid.join(", ")
    ))
}

/// A tensor of one piece cut along `split`, for a checkpoint tensor of `shape`.
fn piece(
    cfg: &ModelConfig,
    shard: &Shard,
    name: String,
    shape: &[Dim],
    split: Split,
) -> (Piece, usize, usize) {
    let full: Vec<usize> = shape.iter().map(|d| d.size(cfg)).collect();
    let cols = full.get(1).copied().unwrap_or(1);
    let (cut, rows, cols) = match split {
        Split::Whole => (Cut::All, full[0], cols),
        Split::Rows(d) => {
            let (a, b) = d.range(cfg, shard);
            (Cut::Rows(a, b), b - a, cols)
        }
        Split::Cols(d) => {
            let (a, b) = d.range(cfg, shard);
            (Cut::Cols(a, b), full[0], b - a)
        }
    };
    (Piece { name, cut }, rows, cols)
}

/// The weights rank `place` loads: every tensor of its layers cut for its shard and
/// stacked by role, the embedding on the first stage, the final norm and LM head on
/// the last (the LM head padded to `shard.chunk` rows; the tied embedding when the
/// checkpoint has no `lm_head.weight`).
pub fn for_rank(
    cfg: &ModelConfig,
    shard: &Shard,
    place: Placement,
    has_lm_head: bool,
) -> RankWeights<Tensor> {
    let layers = (shard.layers.0..shard.layers.1)
        .map(|l| {
            let mut by_role: Vec<Option<Tensor>> = vec![None; Role::COUNT];
            for r in layer_rows(cfg.arch).iter().filter(|r| r.when.holds(cfg)) {
                let name = format!("model.layers.{l}.{}", r.name);
                let (p, rows, cols) = piece(cfg, shard, name, r.shape, r.split);
                let t = by_role[r.role as usize].get_or_insert_with(|| Tensor {
                    pieces: vec![],
                    rows: 0,
                    cols,
                    kind: r.role.kind(),
                    scales: vec![],
                    quantize_at_load: r.role.kind() == Kind::Matrix
                        && r.name.strip_suffix(".weight").is_some_and(|m| {
                            fp8_of(cfg, &format!("model.layers.{l}.{m}")).is_some_and(|f| f.at_load)
                        }),
                });
                debug_assert_eq!(t.cols, cols, "{:?} stacks tensors of one width", r.role);
                if let Some(sc) = scale_piece(cfg, &p, (rows, cols), t.kind) {
                    t.scales.push(sc);
                }
                t.pieces.push(p);
                t.rows += rows;
            }
            Layer { by_role }
        })
        .collect();
    let vocab = |name: &str, kind: Kind, pad_to: usize| {
        let (p, rows, cols) = piece(
            cfg,
            shard,
            name.to_string(),
            &[Dim::Vocab, H],
            Rows(Dim::Vocab),
        );
        Tensor {
            scales: scale_piece(cfg, &p, (rows, cols), kind)
                .into_iter()
                .collect(),
            pieces: vec![p],
            rows: rows.max(pad_to),
            cols,
            kind,
            quantize_at_load: false,
        }
    };
    let last = place.last_stage();
    RankWeights {
        layers,
        embed: place.first_stage().then(|| vocab(EMBED, Kind::Table, 0)),
        final_norm: last.then(|| {
            let (p, rows, cols) = piece(cfg, shard, FINAL_NORM.to_string(), &[H], Whole);
            Tensor {
                pieces: vec![p],
                rows,
                cols,
                kind: Kind::Vector,
                scales: vec![],
                quantize_at_load: false,
            }
        }),
        lm_head: last.then(|| {
            let name = if has_lm_head { LM_HEAD } else { EMBED };
            vocab(name, Kind::Matrix, shard.chunk)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(extra: serde_json::Value) -> ModelConfig {
        let mut v = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
            "vocab_size": 1001, "rms_norm_eps": 1e-5, "max_position_embeddings": 256});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        ModelConfig::from_json(&v).unwrap()
    }

    fn place(tp: usize, pp: usize, rank: usize) -> Placement {
        Placement { tp, pp, rank }
    }

    #[test]
    fn tensor_parallel_rank_stacks_its_slices() {
        // TP rank 1 of 2, stage 1 of 2: heads 4..8 (rows 32..64 of q), KV head 1 (rows 8..16).
        let c = cfg(json!({}));
        let p = place(2, 2, 3);
        let s = Shard::new(&c, p);
        let w = for_rank(&c, &s, p, false);
        assert_eq!(w.layers.len(), 2, "layers 2 and 3");
        assert!(w.embed.is_none(), "the embedding lives on the first stage");
        let qkv = w.layers[0].get(Role::Qkv);
        assert_eq!(
            qkv.pieces,
            vec![
                Piece {
                    name: "model.layers.2.self_attn.q_proj.weight".into(),
                    cut: Cut::Rows(32, 64)
                },
                Piece {
                    name: "model.layers.2.self_attn.k_proj.weight".into(),
                    cut: Cut::Rows(8, 16)
                },
                Piece {
                    name: "model.layers.2.self_attn.v_proj.weight".into(),
                    cut: Cut::Rows(8, 16)
                },
            ]
        );
        assert_eq!(
            (qkv.rows, qkv.cols, qkv.kind),
            (32 + 8 + 8, 64, Kind::Matrix)
        );
        let o = w.layers[1].get(Role::O);
        assert_eq!(o.pieces[0].cut, Cut::Cols(32, 64));
        assert_eq!((o.rows, o.cols), (64, 32));
        let gu = w.layers[1].get(Role::GateUp);
        assert_eq!((gu.rows, gu.cols), (96, 64), "gate and up rows 48..96 each");
        assert_eq!(w.layers[1].get(Role::Down).pieces[0].cut, Cut::Cols(48, 96));
        assert!(
            w.layers[0].opt(Role::QkvBias).is_none(),
            "no biases unless config.json says so"
        );
        // The tied LM head: embedding rows 501..1001, padded to the 501-row slice.
        let head = w.lm_head.as_ref().unwrap();
        assert_eq!(
            head.pieces[0],
            Piece {
                name: EMBED.into(),
                cut: Cut::Rows(501, 1001)
            }
        );
        assert_eq!((head.rows, head.cols), (501, 64));
        assert_eq!(w.final_norm.as_ref().unwrap().kind, Kind::Vector);
    }

    #[test]
    fn biases_follow_config_json_and_the_head_prefers_lm_head() {
        let c = cfg(json!({"attention_bias": true, "mlp_bias": true}));
        let p = place(1, 1, 0);
        let w = for_rank(&c, &Shard::new(&c, p), p, true);
        let l = &w.layers[3];
        assert_eq!(l.get(Role::QkvBias).rows, 64 + 16 + 16);
        assert_eq!(l.get(Role::QkvBias).cols, 1);
        assert_eq!(l.get(Role::OBias).pieces[0].cut, Cut::All);
        assert_eq!(l.get(Role::GateUpBias).rows, 2 * 96);
        assert_eq!(l.get(Role::DownBias).rows, 64);
        assert_eq!(w.lm_head.as_ref().unwrap().pieces[0].name, LM_HEAD);
        assert_eq!(w.embed.as_ref().unwrap().kind, Kind::Table);
        assert_eq!(w.all().count(), 4 * 10 + 3);
    }

    #[test]
    fn the_checkpoint_check_wants_every_layer_unsharded() {
        let c = cfg(json!({"tie_word_embeddings": true}));
        let want = checkpoint_tensors(&c, false);
        assert_eq!(want.len(), 2 + 4 * 9, "tied: no lm_head");
        let has = |w: &[Want], n: &str, shape: Vec<usize>, stored: Stored| {
            w.iter()
                .any(|x| x.name == n && x.shape == shape && x.stored == stored)
        };
        let o = "model.layers.3.self_attn.o_proj.weight";
        assert!(has(&want, o, vec![64, 64], Stored::Float));
        let k = "model.layers.0.self_attn.k_proj.weight";
        assert!(has(&want, k, vec![16, 64], Stored::Float));
        assert_eq!(checkpoint_tensors(&c, true).len(), 3 + 4 * 9);
        let q = cfg(json!({"architectures": ["Qwen2ForCausalLM"]}));
        let v = "model.layers.1.self_attn.v_proj.bias";
        assert!(has(
            &checkpoint_tensors(&q, true),
            v,
            vec![16],
            Stored::Float
        ));
    }

    fn fp8(strategy: &str) -> ModelConfig {
        let group = json!({"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
            "symmetric": true, "dynamic": false, "strategy": strategy}, "input_activations": {"num_bits": 8,
            "type": "float", "dynamic": true, "strategy": "token"}});
        cfg(
            json!({"tie_word_embeddings": true, "quantization_config": {"quant_method": "compressed-tensors",
            "format": "float-quantized", "ignore": ["lm_head", "model.layers.1.mlp.down_proj"],
            "config_groups": {"group_0": group}}}),
        )
    }

    #[test]
    fn fp8_weights_bring_their_scales_cut_like_their_rows() {
        let c = fp8("channel");
        let want = checkpoint_tensors(&c, false);
        let find = |n: &str| want.iter().find(|w| w.name == n).cloned();
        let scale = find("model.layers.0.self_attn.q_proj.weight_scale").unwrap();
        assert_eq!(
            (scale.shape, scale.stored),
            (vec![64, 1], Stored::Scale(ScaleStrategy::Channel))
        );
        assert_eq!(
            find("model.layers.0.self_attn.q_proj.weight")
                .unwrap()
                .stored,
            Stored::Fp8
        );
        assert!(
            find("model.layers.1.mlp.down_proj.weight_scale").is_none(),
            "ignored"
        );
        assert!(
            find("model.embed_tokens.weight_scale").is_none(),
            "the embedding is no Linear"
        );
        assert_eq!(want.len(), 2 + 4 * 9 + 4 * 7 - 1);
        // TP rank 1 of 2: q rows 32..64 take scale rows 32..64; o's columns take every scale.
        let p = place(2, 1, 1);
        let w = for_rank(&c, &Shard::new(&c, p), p, false);
        let qkv = w.layers[0].get(Role::Qkv);
        assert!(qkv.is_fp8());
        assert_eq!(qkv.scales[0].piece.cut, Cut::Rows(32, 64));
        assert_eq!((qkv.scales[0].rows, qkv.scales[0].block), (32, (1, 64)));
        assert_eq!(w.layers[0].get(Role::O).scales[0].piece.cut, Cut::All);
        assert!(!w.layers[1].get(Role::Down).is_fp8());
        assert!(
            !w.lm_head.as_ref().unwrap().is_fp8(),
            "tied to the bf16 embedding"
        );
        let t = fp8("tensor");
        let p = place(1, 1, 0);
        let w = for_rank(&t, &Shard::new(&t, p), p, false);
        let gu = w.layers[2].get(Role::GateUp);
        assert_eq!(
            gu.scales
                .iter()
                .map(|s| (s.piece.cut, s.rows, s.block))
                .collect::<Vec<_>>(),
            [(Cut::All, 96, (96, 64)), (Cut::All, 96, (96, 64))],
            "one scale per tensor covers its 96 rows"
        );
    }
}
