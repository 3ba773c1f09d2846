//! `config.json` of a `LlamaForCausalLM`: written from a frugal [`Config`], and read
//! back into one, refusing (with the field named) what frugal does not train.

use std::path::Path;

use frugal_model::config::Config;
use serde_json::{json, Map, Value};

use crate::flags::UsageError;

/// The one architecture frugal trains.
pub const ARCHITECTURE: &str = "LlamaForCausalLM";

/// `config.json` for `cfg`, its weights stored as `torch_dtype` ("float32" or "bfloat16").
/// Untied embeddings, no biases, SiLU, no RoPE scaling: frugal's architecture.
/// `max_position_embeddings` is the sequence length frugal trained at.
pub fn to_json(cfg: &Config, torch_dtype: &str) -> Value {
    json!({
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim(),
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": null,
        "max_position_embeddings": cfg.seq_len,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "torch_dtype": torch_dtype,
    })
}

/// The frugal [`Config`] of the `config.json` at `path` (a folder's [`super::CONFIG_FILE`]).
///
/// Required: `architectures` (with `LlamaForCausalLM`), `hidden_size`,
/// `intermediate_size`, `num_hidden_layers`, `num_attention_heads`, `vocab_size`,
/// `max_position_embeddings` and `rms_norm_eps`. Optional, with `transformers`'
/// defaults: `num_key_value_heads` (= heads), `rope_theta` (10000), `head_dim`,
/// `tie_word_embeddings`, `attention_bias`, `mlp_bias` (false), `hidden_act` (silu),
/// `rope_scaling` (null).
///
/// # Errors
/// A [`UsageError`] naming the file and the field: unreadable or not JSON, a missing
/// or mistyped field, or an architecture frugal does not train.
pub fn read(path: &Path) -> Result<Config, UsageError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read {shown}: {e}; --init-from needs a Hugging Face LLaMA folder \
             (config.json and model.safetensors)"
        ))
    })?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| UsageError(format!("{shown} is not JSON: {e}")))?;
    let Some(fields) = value.as_object() else {
        return Err(UsageError(format!("{shown} is not a JSON object")));
    };
    parse(fields).map_err(|why| UsageError(format!("{shown}: {why}")))
}

/// [`read`]'s checks on the parsed object; the error is the message after the file name.
fn parse(f: &Map<String, Value>) -> Result<Config, String> {
    let architectures = f
        .get("architectures")
        .ok_or_else(|| missing("architectures"))?;
    let names: Vec<&str> = architectures
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !names.contains(&ARCHITECTURE) {
        return Err(format!(
            "architectures is {architectures}, frugal trains only {ARCHITECTURE}"
        ));
    }
    if let Some(t) = f.get("model_type") {
        if t.as_str() != Some("llama") {
            return Err(format!("model_type is {t}, frugal trains only \"llama\""));
        }
    }
    for (field, what) in [
        ("attention_bias", "biases on the attention projections"),
        ("mlp_bias", "biases on the MLP projections"),
        (
            "tie_word_embeddings",
            "an LM head tied to the input embedding",
        ),
    ] {
        if flag(f, field)? {
            return Err(format!(
                "{field} is true: frugal does not train {what}; only models with \
                 {field} false (or absent) can be loaded"
            ));
        }
    }
    match f.get("rope_scaling") {
        None | Some(Value::Null) => {}
        Some(v) => {
            return Err(format!(
                "rope_scaling is {v}: frugal implements plain RoPE only (rope_scaling null)"
            ))
        }
    }
    match f.get("hidden_act") {
        None => {}
        Some(v) if v.as_str() == Some("silu") => {}
        Some(v) => {
            return Err(format!(
                "hidden_act is {v}: frugal's MLP is SwiGLU (\"silu\")"
            ))
        }
    }
    let dim = count(f, "hidden_size")?;
    let n_heads = count(f, "num_attention_heads")?;
    let n_kv_heads = match f.get("num_key_value_heads") {
        None | Some(Value::Null) => n_heads,
        Some(_) => count(f, "num_key_value_heads")?,
    };
    if n_heads > 0 && dim % n_heads == 0 {
        if let Some(v) = f.get("head_dim").filter(|v| !v.is_null()) {
            let head_dim = count(f, "head_dim")?;
            if head_dim != dim / n_heads {
                return Err(format!(
                    "head_dim is {v}, not hidden_size / num_attention_heads = {}: frugal's \
                     head size is always hidden / heads",
                    dim / n_heads
                ));
            }
        }
    }
    let rope_theta = match f.get("rope_theta") {
        None => 10000.0,
        Some(_) => real(f, "rope_theta")?,
    };
    let cfg = Config {
        vocab_size: count(f, "vocab_size")?,
        dim,
        n_layers: count(f, "num_hidden_layers")?,
        n_heads,
        n_kv_heads,
        ffn_dim: count(f, "intermediate_size")?,
        seq_len: count(f, "max_position_embeddings")?,
        rope_theta,
        norm_eps: real(f, "rms_norm_eps")?,
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn missing(field: &str) -> String {
    format!("field {field} is missing; frugal needs it to build the model")
}

/// A boolean field, false when absent or null.
fn flag(f: &Map<String, Value>, field: &str) -> Result<bool, String> {
    match f.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!("{field} is {v}, not true or false")),
    }
}

/// A required positive integer field.
fn count(f: &Map<String, Value>, field: &str) -> Result<usize, String> {
    let v = f.get(field).ok_or_else(|| missing(field))?;
    v.as_u64()
        .filter(|&n| n > 0)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{field} is {v}, not a positive integer"))
}

/// A required positive finite number.
fn real(f: &Map<String, Value>, field: &str) -> Result<f64, String> {
    let v = f.get(field).ok_or_else(|| missing(field))?;
    v.as_f64()
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| format!("{field} is {v}, not a positive number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_model::config::Preset;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn written_config_reads_back_as_the_same_model() {
        let cfg = Config {
            n_kv_heads: 2,
            rope_theta: 500000.0,
            norm_eps: 1e-6,
            ..Preset::by_name("tiny").unwrap().config()
        };
        assert_eq!(parse(&fields(to_json(&cfg, "float32"))), Ok(cfg));
    }

    #[test]
    fn unsupported_architectures_are_refused_by_field() {
        let cfg = Preset::by_name("tiny").unwrap().config();
        for (field, value) in [
            ("attention_bias", json!(true)),
            ("mlp_bias", json!(true)),
            ("tie_word_embeddings", json!(true)),
            (
                "rope_scaling",
                json!({"rope_type": "linear", "factor": 2.0}),
            ),
            ("hidden_act", json!("gelu")),
            ("head_dim", json!(32)),
            ("architectures", json!(["MistralForCausalLM"])),
            ("hidden_size", json!(0)),
        ] {
            let mut f = fields(to_json(&cfg, "float32"));
            f.insert(field.into(), value);
            let e = parse(&f).unwrap_err();
            assert!(e.starts_with(field), "{field}: {e}");
        }
        for field in ["rms_norm_eps", "vocab_size", "architectures"] {
            let mut f = fields(to_json(&cfg, "float32"));
            f.remove(field);
            let e = parse(&f).unwrap_err();
            assert!(e.contains(&format!("field {field} is missing")), "{e}");
        }
    }
}
