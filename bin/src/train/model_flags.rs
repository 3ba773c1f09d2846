//! Where a run's model comes from: a preset with `--layers` .. `--seq` applied, a Hugging
//! Face folder (`--init-from`), and V from the tokenizer the data's shards record.

use std::path::Path;

use frugal_model::config::Config;
use frugal_model::data::DataSpec;

use crate::flags::UsageError;
use crate::shard_tokens::{self, DataTokens, Tokenization};

/// The largest value accepted for any one dimension, batch or accumulation
/// count: far above any real model, low enough that products of a few of them
/// cannot overflow the size arithmetic.
pub const MAX_DIM: usize = 1 << 20;

/// A usage error of `frugal train`.
pub(super) fn usage(msg: String) -> UsageError {
    UsageError(format!("train: {msg}"))
}

/// `v`, refused when 0.
pub(super) fn positive(name: &str, v: usize) -> Result<usize, UsageError> {
    if v == 0 {
        return Err(usage(format!("--{name} must be at least 1")));
    }
    Ok(v)
}

/// The model-shape flags of `frugal train` (`--layers` .. `--seq`), as given.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct DimFlags {
    pub layers: Option<usize>,
    pub hidden: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub ffn: Option<usize>,
    pub vocab: Option<usize>,
    pub seq: Option<usize>,
}

/// The dimensions a run overrode, as (flag name, value).
pub type Overrides = Vec<(&'static str, usize)>;

/// The preset's config with `--layers` .. `--seq` applied, validated, and the
/// overrides given (flag name, value) for printing.
pub(super) fn overridden(
    mut config: Config,
    flags: &DimFlags,
) -> Result<(Config, Overrides), UsageError> {
    let mut overrides = Vec::new();
    for (name, v) in [
        ("layers", flags.layers),
        ("hidden", flags.hidden),
        ("heads", flags.heads),
        ("kv-heads", flags.kv_heads),
        ("ffn", flags.ffn),
        ("vocab", flags.vocab),
        ("seq", flags.seq),
    ] {
        if let Some(v) = v {
            overrides.push((name, positive(name, v)?));
        }
    }
    if let Some(v) = flags.layers {
        config.n_layers = v;
    }
    if let Some(v) = flags.hidden {
        config.dim = v;
    }
    if let Some(v) = flags.heads {
        config.n_heads = v;
        // A preset is multi-head; overriding the head count keeps it so
        // unless --kv-heads asks for grouped-query attention.
        config.n_kv_heads = v;
    }
    if let Some(v) = flags.kv_heads {
        config.n_kv_heads = v;
    }
    if let Some(v) = flags.ffn {
        config.ffn_dim = v;
    }
    if let Some(v) = flags.vocab {
        config.vocab_size = v;
    }
    if let Some(v) = flags.seq {
        config.seq_len = v;
    }
    config.validate().map_err(|e| usage(e.to_string()))?;
    for (name, v) in [
        ("layers", config.n_layers),
        ("hidden", config.dim),
        ("heads", config.n_heads),
        ("ffn", config.ffn_dim),
        ("seq", config.seq_len),
    ] {
        if v > MAX_DIM {
            return Err(usage(format!("--{name} {v} is more than {MAX_DIM}")));
        }
    }
    Ok((config, overrides))
}

/// The config of `--init-from DIR` (its config.json), with every dimension listed as
/// overridden (so the default --out names its hash). A dimension flag that
/// contradicts the folder is refused naming both; `--seq` may shorten the context.
pub(super) fn init_from_config(
    dir: &Path,
    flags: &DimFlags,
) -> Result<(Config, Overrides), UsageError> {
    let file = dir.join(crate::hf::CONFIG_FILE);
    let mut config = crate::hf::config::read(&file)?;
    for (flag, given, field, value) in [
        ("layers", flags.layers, "num_hidden_layers", config.n_layers),
        ("hidden", flags.hidden, "hidden_size", config.dim),
        ("heads", flags.heads, "num_attention_heads", config.n_heads),
        (
            "kv-heads",
            flags.kv_heads,
            "num_key_value_heads",
            config.n_kv_heads,
        ),
        ("ffn", flags.ffn, "intermediate_size", config.ffn_dim),
        ("vocab", flags.vocab, "vocab_size", config.vocab_size),
    ] {
        if let Some(v) = given.filter(|&v| v != value) {
            return Err(usage(format!(
                "--{flag} {v} contradicts {field} {value} in {}; the model's dimensions come \
                 from --init-from: leave --{flag} out",
                file.display()
            )));
        }
    }
    if let Some(seq) = flags.seq {
        if seq > config.seq_len {
            return Err(usage(format!(
                "--seq {seq} is longer than max_position_embeddings {} in {}; use at most {}",
                config.seq_len,
                file.display(),
                config.seq_len
            )));
        }
        config.seq_len = positive("seq", seq)?;
    }
    let overrides = vec![
        ("layers", config.n_layers),
        ("hidden", config.dim),
        ("heads", config.n_heads),
        ("kv-heads", config.n_kv_heads),
        ("ffn", config.ffn_dim),
        ("vocab", config.vocab_size),
        ("seq", config.seq_len),
    ];
    Ok((config, overrides))
}

/// The data's tokenizer for a run whose model comes from `--init-from DIR`: its V is the
/// folder's, so a tokenizer with more ids is refused naming both (nothing is resized).
pub(super) fn init_from_tokens(
    data: &DataSpec,
    dir: &Path,
    config: &Config,
) -> Result<Option<DataTokens>, UsageError> {
    let tokens = shard_tokens::for_data(data).map_err(|e| usage(format!("--data: {e}")))?;
    if let Some(t) = &tokens {
        if t.vocab_size > config.vocab_size {
            return Err(usage(format!(
                "the data's tokenizer, {}, has more ids than vocab_size {} of --init-from {}: \
                 train on data written with that model's tokenizer",
                t.describe(),
                config.vocab_size,
                dir.display()
            )));
        }
    }
    Ok(tokens)
}

/// V against the tokenizer the data's shards record (`DIR/NAME.tokens.json`):
/// `--vocab`, or a preset named by `--model`, must hold its ids (refused
/// naming both sizes); without either, V is the tokenizer's (the default
/// preset's V is replaced, and listed as an override). Byte-level shards need
/// V ≥ 256 and leave the preset's V as it is. The data's tokenizer, if any.
pub(super) fn data_vocab(
    data: &DataSpec,
    flags: &DimFlags,
    model_named: Option<&str>,
    config: &mut Config,
    overrides: &mut Overrides,
) -> Result<Option<DataTokens>, UsageError> {
    let Some(tokens) = shard_tokens::for_data(data).map_err(|e| usage(format!("--data: {e}")))?
    else {
        return Ok(None);
    };
    let need = tokens.vocab_size;
    let byte_level = tokens.tokenization == Tokenization::Bytes;
    if let Some(v) = flags.vocab {
        if v < need {
            return Err(usage(format!(
                "--vocab {v} is smaller than the data's tokenizer, {}: give --vocab {need} or more, \
                 or leave --vocab out to take V from the tokenizer",
                tokens.describe()
            )));
        }
    } else if let Some(name) = model_named.filter(|_| config.vocab_size < need) {
        return Err(usage(format!(
            "--model {name} has vocabulary {}, smaller than the data's tokenizer, {}: \
             add --vocab {need} (or more)",
            config.vocab_size,
            tokens.describe()
        )));
    } else if model_named.is_none() && (!byte_level || config.vocab_size < need) {
        config.vocab_size = need;
        overrides.push(("vocab", need));
        config.validate().map_err(|e| usage(e.to_string()))?;
    }
    Ok(Some(tokens))
}

/// ", tokenizer sha256 0123456789ab (V ids, recorded in FILE)" for `describe`.
pub(super) fn tokens_note(tokens: Option<&DataTokens>) -> String {
    tokens.map_or_else(String::new, |t| format!("  ({})", t.describe()))
}
