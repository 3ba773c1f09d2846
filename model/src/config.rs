//! LLaMA configuration, the presets (the paper's four sizes and two CPU sizes),
//! the flat parameter layout every backend shares, and the counts derived from
//! a config: parameters and training FLOPs per token.
//!
//! Shape vocabulary used across frugal: B batch, T time (sequence), C channels
//! (hidden), L layers, NH query heads, NKV key/value heads, HS head size
//! (C / NH), F FFN width, V vocabulary.

use std::fmt;

/// The largest vocabulary a config may have. Token ids are u32 everywhere
/// (the loader, the devices, llm.c's uint32 shards); 2^24 is far above any
/// real tokenizer (LLaMA 3: 128,256), low enough to catch a typo.
pub const MAX_VOCAB: usize = 1 << 24;

/// The architecture of one LLaMA-style model: untied input and output
/// embeddings, RMSNorm, RoPE, multi-head (or grouped-query) attention, SwiGLU.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// V: vocabulary size.
    pub vocab_size: usize,
    /// C: hidden size.
    pub dim: usize,
    /// L: transformer blocks.
    pub n_layers: usize,
    /// NH: query heads. HS = C / NH.
    pub n_heads: usize,
    /// NKV: key/value heads; divides NH (NKV == NH is plain multi-head attention).
    pub n_kv_heads: usize,
    /// F: SwiGLU hidden width.
    pub ffn_dim: usize,
    /// T: the longest sequence the model is trained on.
    pub seq_len: usize,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
}

/// Why a config cannot describe a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A dimension that must be positive was zero.
    Zero { field: &'static str },
    /// C is not a multiple of NH, so there is no integer head size.
    HeadsDoNotDivide { dim: usize, n_heads: usize },
    /// NKV does not divide NH, so query heads cannot share key/value heads evenly.
    KvHeadsDoNotDivide { n_heads: usize, n_kv_heads: usize },
    /// RoPE rotates pairs of channels, so HS must be even.
    OddHeadSize { head_dim: usize },
    /// More than [`MAX_VOCAB`] ids: far beyond any tokenizer, so a typo.
    VocabTooLarge { vocab_size: usize },
    /// No preset has this name.
    UnknownPreset { name: String },
    /// The host could not allocate a buffer of this size (RAM, a container's limit or
    /// `ulimit -v`): the model, batch or sequence is too large for this machine.
    HostMemory { what: String, bytes: u64 },
    /// No [`Attention`] has this name.
    UnknownAttention { name: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Zero { field } => write!(f, "{field} must be at least 1"),
            ConfigError::HeadsDoNotDivide { dim, n_heads } => write!(
                f,
                "hidden size {dim} is not a multiple of the head count {n_heads}; choose --hidden and --heads so that hidden/heads is an integer"
            ),
            ConfigError::KvHeadsDoNotDivide { n_heads, n_kv_heads } => write!(
                f,
                "--kv-heads {n_kv_heads} does not divide --heads {n_heads}; use a divisor of {n_heads}"
            ),
            ConfigError::OddHeadSize { head_dim } => {
                write!(f, "head size {head_dim} is odd; RoPE needs an even head size")
            }
            ConfigError::VocabTooLarge { vocab_size } => write!(
                f,
                "vocabulary {vocab_size} is larger than {MAX_VOCAB}; no tokenizer has that many ids"
            ),
            ConfigError::HostMemory { what, bytes } => write!(
                f,
                "could not allocate {bytes} bytes ({:.2} GiB) of host memory for {what}: this machine, \
                 its container or the process's limit (ulimit -v) allows less; use a smaller model, \
                 --batch or --seq (--dry-run prints what a run needs)",
                *bytes as f64 / (1u64 << 30) as f64
            ),
            ConfigError::UnknownAttention { name } => {
                write!(f, "'{name}' is not one of flash, vanilla")
            }
            ConfigError::UnknownPreset { name } => write!(
                f,
                "unknown model preset '{name}'; known presets: {}",
                PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Which attention a GPU step runs (the paper's axis; `--attention`). The CPU model has
/// one attention path and ignores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    /// FlashAttention-2: keeps only the log-sum-exp per row (f32, B×NH×T) per layer.
    Flash,
    /// Materialised scores ("FlashAttention off"): keeps the probabilities (bf16,
    /// B×NH×T×T) per layer.
    Vanilla,
}

impl Attention {
    /// Both, in flag order.
    pub const ALL: [Attention; 2] = [Attention::Flash, Attention::Vanilla];

    /// The flag word (`flash`, `vanilla`), as tables and JSON print it.
    pub fn name(self) -> &'static str {
        match self {
            Attention::Flash => "flash",
            Attention::Vanilla => "vanilla",
        }
    }
}

impl fmt::Display for Attention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Attention {
    type Err = ConfigError;

    /// The flag word; [`ConfigError::UnknownAttention`] names any other.
    fn from_str(s: &str) -> Result<Attention, ConfigError> {
        Attention::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| ConfigError::UnknownAttention {
                name: s.to_string(),
            })
    }
}

/// A named configuration with the batch size it trains at by default.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub ffn_dim: usize,
    pub seq_len: usize,
    /// Per-device micro-batch used when `--batch` is not given.
    pub default_batch: usize,
}

/// Every preset. The paper's four (Ashkboos et al., 2024, table 1) have head size
/// 64, vocabulary 32000 and sequence length 1024; their parameter counts are
/// asserted in tests. `tiny` and `small` are sized to train on a CPU.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "tiny",
        vocab_size: 512,
        dim: 256,
        n_layers: 4,
        n_heads: 4,
        ffn_dim: 704,
        seq_len: 256,
        default_batch: 8,
    },
    Preset {
        name: "small",
        vocab_size: 4096,
        dim: 512,
        n_layers: 8,
        n_heads: 8,
        ffn_dim: 1376,
        seq_len: 512,
        default_batch: 8,
    },
    Preset {
        name: "paper-100m",
        vocab_size: 32000,
        dim: 832,
        n_layers: 9,
        n_heads: 13,
        ffn_dim: 2332,
        seq_len: 1024,
        default_batch: 32,
    },
    Preset {
        name: "paper-500m",
        vocab_size: 32000,
        dim: 1536,
        n_layers: 15,
        n_heads: 24,
        ffn_dim: 4147,
        seq_len: 1024,
        default_batch: 32,
    },
    Preset {
        name: "paper-1b",
        vocab_size: 32000,
        dim: 1920,
        n_layers: 19,
        n_heads: 30,
        ffn_dim: 5184,
        seq_len: 1024,
        default_batch: 16,
    },
    Preset {
        name: "paper-2b",
        vocab_size: 32000,
        dim: 2496,
        n_layers: 24,
        n_heads: 39,
        ffn_dim: 6739,
        seq_len: 1024,
        default_batch: 8,
    },
];

impl Preset {
    /// Looks a preset up by name.
    ///
    /// # Errors
    /// [`ConfigError::UnknownPreset`] listing the known names.
    pub fn by_name(name: &str) -> Result<&'static Preset, ConfigError> {
        PRESETS
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ConfigError::UnknownPreset {
                name: name.to_string(),
            })
    }

    /// The preset's model config (multi-head attention: NKV = NH).
    pub fn config(&self) -> Config {
        Config {
            vocab_size: self.vocab_size,
            dim: self.dim,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_heads,
            ffn_dim: self.ffn_dim,
            seq_len: self.seq_len,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        }
    }
}

impl Config {
    /// Checks that the dimensions describe a buildable model.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("vocab", self.vocab_size),
            ("hidden", self.dim),
            ("layers", self.n_layers),
            ("heads", self.n_heads),
            ("kv-heads", self.n_kv_heads),
            ("ffn", self.ffn_dim),
            ("seq", self.seq_len),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return Err(ConfigError::HeadsDoNotDivide {
                dim: self.dim,
                n_heads: self.n_heads,
            });
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ConfigError::KvHeadsDoNotDivide {
                n_heads: self.n_heads,
                n_kv_heads: self.n_kv_heads,
            });
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ConfigError::OddHeadSize {
                head_dim: self.head_dim(),
            });
        }
        if self.vocab_size > MAX_VOCAB {
            return Err(ConfigError::VocabTooLarge {
                vocab_size: self.vocab_size,
            });
        }
        Ok(())
    }

    /// HS = C / NH.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// NKV * HS: the width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    /// Total trainable parameters, by arithmetic (equal to [`ParamLayout::total`], without
    /// building the layout's per-tensor list, so any config is answered at once). Saturates
    /// at `usize::MAX` for dimensions whose product overflows.
    pub fn param_count(&self) -> usize {
        let (v, c, kv, f) = (
            self.vocab_size as u128,
            self.dim as u128,
            self.kv_dim() as u128,
            self.ffn_dim as u128,
        );
        // Per block: two norm gains (C), wq and wo (C, C), wk and wv (KV, C), and the
        // three SwiGLU matrices (F, C); then tok_embedding and lm_head (V, C), final_norm (C).
        let per_layer = 2 * c + 2 * c * c + 2 * kv * c + 3 * f * c;
        let total = (self.n_layers as u128)
            .saturating_mul(per_layer)
            .saturating_add(2 * v * c + c);
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    /// Forward FLOPs per token at sequence length `t`: 2 per multiply-add of
    /// every matrix (QKV, output, the three SwiGLU matrices, LM head) plus the
    /// attention scores QKᵀ and the weighted sum PV, each 2·NH·HS per key, with
    /// the causal mask halving the keys a token sees on average (t/2, as
    /// FlashAttention's benchmarks count). Norms, RoPE and softmax are not
    /// counted: they are O(C) per token and conventionally left out of MFU.
    pub fn forward_flops_per_token(&self, t: usize) -> f64 {
        let c = self.dim as f64;
        let kv = self.kv_dim() as f64;
        let f = self.ffn_dim as f64;
        let v = self.vocab_size as f64;
        let per_layer_matmul = 2.0 * (c * c + 2.0 * c * kv + c * c + 3.0 * c * f);
        let per_layer_attention = 2.0 * 2.0 * c * (t as f64) / 2.0;
        self.n_layers as f64 * (per_layer_matmul + per_layer_attention) + 2.0 * c * v
    }

    /// Training FLOPs per token: forward + backward, the backward costing twice
    /// the forward (a gradient for the input and one for the weight per product).
    pub fn train_flops_per_token(&self, t: usize) -> f64 {
        3.0 * self.forward_flops_per_token(t)
    }
}

/// What a parameter tensor is, for the optimizer (weight decay applies to
/// matrices only) and for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Token embedding table (V, C): no weight decay.
    Embedding,
    /// RMSNorm gain (C): no weight decay.
    Norm,
    /// A linear layer's weight (out, in): weight decay.
    Matrix,
}

/// The parameter tensors of one transformer block, in layout order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerTensor {
    /// (C)
    AttnNorm,
    /// (C, C): out = NH·HS, in = C
    Wq,
    /// (NKV·HS, C)
    Wk,
    /// (NKV·HS, C)
    Wv,
    /// (C, C)
    Wo,
    /// (C)
    MlpNorm,
    /// (F, C)
    WGate,
    /// (F, C)
    WUp,
    /// (C, F)
    WDown,
}

impl LayerTensor {
    pub const ALL: [LayerTensor; 9] = [
        LayerTensor::AttnNorm,
        LayerTensor::Wq,
        LayerTensor::Wk,
        LayerTensor::Wv,
        LayerTensor::Wo,
        LayerTensor::MlpNorm,
        LayerTensor::WGate,
        LayerTensor::WUp,
        LayerTensor::WDown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LayerTensor::AttnNorm => "attn_norm",
            LayerTensor::Wq => "wq",
            LayerTensor::Wk => "wk",
            LayerTensor::Wv => "wv",
            LayerTensor::Wo => "wo",
            LayerTensor::MlpNorm => "mlp_norm",
            LayerTensor::WGate => "w_gate",
            LayerTensor::WUp => "w_up",
            LayerTensor::WDown => "w_down",
        }
    }

    /// (rows, cols) of the tensor; norms are (1, C).
    pub fn shape(self, cfg: &Config) -> (usize, usize) {
        let (c, kv, f) = (cfg.dim, cfg.kv_dim(), cfg.ffn_dim);
        match self {
            LayerTensor::AttnNorm | LayerTensor::MlpNorm => (1, c),
            LayerTensor::Wq | LayerTensor::Wo => (c, c),
            LayerTensor::Wk | LayerTensor::Wv => (kv, c),
            LayerTensor::WGate | LayerTensor::WUp => (f, c),
            LayerTensor::WDown => (c, f),
        }
    }

    pub fn kind(self) -> ParamKind {
        match self {
            LayerTensor::AttnNorm | LayerTensor::MlpNorm => ParamKind::Norm,
            _ => ParamKind::Matrix,
        }
    }
}

/// One tensor's place in the flat parameter vector.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// e.g. "tok_embedding", "layers.3.wq", "final_norm", "lm_head".
    pub name: String,
    /// (rows, cols), row-major; a vector is (1, n).
    pub shape: (usize, usize),
    /// First element in the flat vector.
    pub offset: usize,
    pub kind: ParamKind,
    /// The block it belongs to, if any.
    pub layer: Option<usize>,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.0 * self.shape.1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Which pass a unit is requested for (a sharded provider may gather a unit for
/// the forward, free it, and gather it again for the backward).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    Forward,
    Backward,
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
        })
    }
}

/// An FSDP unit: a contiguous range of the flat parameter vector that a sharded
/// run gathers whole before the model uses it and frees after. The model asks for
/// one unit at a time (see [`crate::cpu::Weights`]), so a rank holds its shard plus
/// at most one gathered unit (and a prefetched next one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// `tok_embedding (V, C)`.
    Embedding,
    /// Block `l`'s nine tensors.
    Layer(usize),
    /// `final_norm (C)` and `lm_head (V, C)`: adjacent in the layout, and used
    /// together at the end of the forward and the start of the backward.
    Head,
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unit::Embedding => write!(f, "the token embedding"),
            Unit::Layer(l) => write!(f, "layer {l}"),
            Unit::Head => write!(f, "the final norm and LM head"),
        }
    }
}

/// Where every parameter lives in one flat vector, shared by every backend,
/// the optimizer, checkpoints and gradient buckets. Order:
/// `tok_embedding (V, C)`, then per layer `attn_norm, wq, wk, wv, wo, mlp_norm,
/// w_gate, w_up, w_down`, then `final_norm (C)`, `lm_head (V, C)`. Each block is
/// contiguous, so a block's gradients form one range (DDP buckets in reverse
/// layer order are ranges of this vector).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    pub tensors: Vec<TensorSpec>,
    /// Index in `tensors` of each block's first tensor.
    layer_start: Vec<usize>,
    n_layers: usize,
}

impl ParamLayout {
    pub fn new(cfg: &Config) -> ParamLayout {
        let mut tensors = Vec::with_capacity(3 + 9 * cfg.n_layers);
        let mut offset = 0;
        let mut push =
            |name: String, shape: (usize, usize), kind: ParamKind, layer: Option<usize>| {
                tensors.push(TensorSpec {
                    name,
                    shape,
                    offset,
                    kind,
                    layer,
                });
                offset += shape.0 * shape.1;
            };
        push(
            "tok_embedding".into(),
            (cfg.vocab_size, cfg.dim),
            ParamKind::Embedding,
            None,
        );
        let mut layer_start = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            layer_start.push(1 + 9 * l);
            for t in LayerTensor::ALL {
                push(
                    format!("layers.{l}.{}", t.name()),
                    t.shape(cfg),
                    t.kind(),
                    Some(l),
                );
            }
        }
        push("final_norm".into(), (1, cfg.dim), ParamKind::Norm, None);
        push(
            "lm_head".into(),
            (cfg.vocab_size, cfg.dim),
            ParamKind::Matrix,
            None,
        );
        ParamLayout {
            tensors,
            layer_start,
            n_layers: cfg.n_layers,
        }
    }

    /// Number of f32 (or bf16) elements in the flat vector.
    pub fn total(&self) -> usize {
        self.tensors.last().map_or(0, |t| t.offset + t.len())
    }

    pub fn tok_embedding(&self) -> &TensorSpec {
        &self.tensors[0]
    }

    pub fn layer(&self, l: usize, t: LayerTensor) -> &TensorSpec {
        let i = LayerTensor::ALL.iter().position(|&x| x == t).unwrap_or(0);
        &self.tensors[self.layer_start[l] + i]
    }

    /// The contiguous range of block `l`'s parameters.
    pub fn layer_range(&self, l: usize) -> std::ops::Range<usize> {
        let first = &self.tensors[self.layer_start[l]];
        let last = &self.tensors[self.layer_start[l] + 8];
        first.offset..last.offset + last.len()
    }

    pub fn final_norm(&self) -> &TensorSpec {
        &self.tensors[1 + 9 * self.n_layers]
    }

    pub fn lm_head(&self) -> &TensorSpec {
        &self.tensors[2 + 9 * self.n_layers]
    }

    /// The flat range of `unit`'s parameters.
    ///
    /// # Panics
    /// For [`Unit::Layer`]`(l)` with `l` not below the number of layers (the units
    /// come from [`ParamLayout::units`], so that is a programming error).
    pub fn unit_range(&self, unit: Unit) -> std::ops::Range<usize> {
        match unit {
            Unit::Embedding => self.tok_embedding().range(),
            Unit::Layer(l) => self.layer_range(l),
            Unit::Head => self.final_norm().offset..self.lm_head().range().end,
        }
    }

    /// Every unit in forward order: the embedding, layers 0..L−1, the head. Their
    /// ranges tile `0..total()` in this order.
    pub fn units(&self) -> Vec<Unit> {
        let mut units = Vec::with_capacity(self.n_layers + 2);
        units.push(Unit::Embedding);
        units.extend((0..self.n_layers).map(Unit::Layer));
        units.push(Unit::Head);
        units
    }

    /// True for elements that weight decay applies to (matrices), one per parameter.
    pub fn decay_mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.total()];
        for t in &self.tensors {
            if t.kind == ParamKind::Matrix {
                mask[t.range()].iter_mut().for_each(|m| *m = true);
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_reads_and_prints_its_flag_words() {
        for a in Attention::ALL {
            assert_eq!(a.to_string().parse::<Attention>(), Ok(a));
        }
        assert_eq!("vanilla".parse(), Ok(Attention::Vanilla));
        let e = "sdpa".parse::<Attention>().unwrap_err();
        assert_eq!(e.to_string(), "'sdpa' is not one of flash, vanilla");
    }

    #[test]
    fn paper_presets_have_the_papers_parameter_counts() {
        for (name, expected) in [
            ("paper-100m", 130_569_920),
            ("paper-500m", 526_550_016),
            ("paper-1b", 970_458_240),
            ("paper-2b", 1_969_027_008),
        ] {
            let cfg = Preset::by_name(name).unwrap().config();
            cfg.validate().unwrap();
            assert_eq!(cfg.head_dim(), 64, "{name}");
            assert_eq!(cfg.param_count(), expected, "{name}");
        }
    }

    #[test]
    fn cpu_presets_are_sized_for_a_cpu() {
        let tiny = Preset::by_name("tiny").unwrap().config();
        let small = Preset::by_name("small").unwrap().config();
        tiny.validate().unwrap();
        small.validate().unwrap();
        assert!((1_000_000..10_000_000).contains(&tiny.param_count()));
        assert!((10_000_000..100_000_000).contains(&small.param_count()));
    }

    #[test]
    fn layout_is_contiguous_and_layers_are_ranges() {
        let mut cfg = Preset::by_name("tiny").unwrap().config();
        cfg.n_kv_heads = 2;
        let lay = ParamLayout::new(&cfg);
        let mut next = 0;
        for t in &lay.tensors {
            assert_eq!(t.offset, next, "{}", t.name);
            next += t.len();
        }
        assert_eq!(lay.layer(1, LayerTensor::Wk).shape, (2 * 64, 256));
        assert_eq!(
            lay.layer_range(1).start,
            lay.layer(1, LayerTensor::AttnNorm).offset
        );
        assert_eq!(
            lay.layer_range(1).end,
            lay.layer(2, LayerTensor::AttnNorm).offset
        );
        assert_eq!(lay.final_norm().name, "final_norm");
        assert_eq!(lay.lm_head().range().end, lay.total());
    }

    #[test]
    fn units_tile_the_layout_in_forward_order() {
        for cfg in [
            Preset::by_name("tiny").unwrap().config(),
            odd_config(),
            Config {
                n_layers: 0,
                ..odd_config()
            },
        ] {
            let lay = ParamLayout::new(&cfg);
            let units = lay.units();
            assert_eq!(units.len(), cfg.n_layers + 2);
            assert_eq!(units.first(), Some(&Unit::Embedding));
            assert_eq!(units.last(), Some(&Unit::Head));
            let mut next = 0;
            for &u in &units {
                let r = lay.unit_range(u);
                assert_eq!(r.start, next, "{u}");
                assert!(!r.is_empty(), "{u}");
                next = r.end;
            }
            assert_eq!(next, lay.total());
            for l in 0..cfg.n_layers {
                assert_eq!(lay.unit_range(Unit::Layer(l)), lay.layer_range(l));
            }
            let head = lay.unit_range(Unit::Head);
            assert_eq!(head.start, lay.final_norm().offset);
            assert_eq!(head.len(), lay.final_norm().len() + lay.lm_head().len());
        }
    }

    #[test]
    fn param_count_is_the_layouts_total() {
        let mut gqa = Preset::by_name("tiny").unwrap().config();
        gqa.n_kv_heads = 2;
        for cfg in PRESETS
            .iter()
            .map(|p| p.config())
            .chain([gqa, odd_config()])
        {
            assert_eq!(cfg.param_count(), ParamLayout::new(&cfg).total(), "{cfg:?}");
        }
        // A million layers is answered without a per-tensor list.
        let mut deep = odd_config();
        deep.n_layers = 1 << 20;
        let per_layer = 2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64;
        assert_eq!(
            deep.param_count(),
            (1 << 20) * per_layer + 2 * 300 * 64 + 64
        );
    }

    fn odd_config() -> Config {
        Config {
            vocab_size: 300,
            dim: 64,
            n_layers: 3,
            n_heads: 2,
            n_kv_heads: 1,
            ffn_dim: 172,
            seq_len: 32,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        }
    }

    #[test]
    fn flops_per_token_counts_the_matrices() {
        // With T = 0 only the matrices count: 2 FLOPs per weight of the blocks and
        // the LM head, and none for the embedding lookup.
        let cfg = Preset::by_name("paper-100m").unwrap().config();
        let lay = ParamLayout::new(&cfg);
        let norms = (2 * cfg.n_layers + 1) * cfg.dim;
        let matmul_weights = lay.total() - lay.tok_embedding().len() - norms;
        assert_eq!(cfg.forward_flops_per_token(0), 2.0 * matmul_weights as f64);
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut cfg = Preset::by_name("tiny").unwrap().config();
        cfg.n_kv_heads = 3;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::KvHeadsDoNotDivide { .. })
        ));
        cfg.n_kv_heads = 4;
        cfg.dim = 250;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::HeadsDoNotDivide { .. })
        ));
        assert!(Preset::by_name("huge").is_err());
    }
}
