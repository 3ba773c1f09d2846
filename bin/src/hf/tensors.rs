//! The weights of a Hugging Face folder in safetensors files: written from
//! frugal's flat parameter vector (f32, or bf16 rounded to nearest even), and
//! read back into one (f32, bf16 or f16; one file or an index of shards).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use frugal_model::config::Config;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};

use super::layout::{self, Direction, HfTensor};
use super::{INDEX_FILE, WEIGHTS_FILE};
use crate::error::CliError;

/// The element type an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    /// bfloat16, each f32 rounded to the nearest (ties to even).
    Bf16,
}

impl Dtype {
    /// The name `config.json`'s `torch_dtype` uses.
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::Bf16 => "bfloat16",
        }
    }

    fn safetensors(self) -> StDtype {
        match self {
            Dtype::F32 => StDtype::F32,
            Dtype::Bf16 => StDtype::BF16,
        }
    }

    /// `values` as little-endian bytes of this type.
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
            // half's conversion rounds to nearest, ties to even, and keeps NaN a NaN.
            Dtype::Bf16 => values
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }
}

/// One tensor ready to write.
struct Encoded {
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Encoded {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The HF tensors of `params` (frugal's flat vector for `cfg`), Wq and Wk permuted
/// to HF's RoPE halves, in `dtype`, by name.
fn encode_all(cfg: &Config, params: &[f32], dtype: Dtype) -> Vec<(String, Encoded)> {
    let hs = cfg.head_dim();
    layout::tensors(cfg)
        .into_iter()
        .map(|t| {
            let values = &params[t.range.clone()];
            let bytes = match t.rope_heads {
                Some(heads) => {
                    let rows = layout::permute_rows(values, heads, hs, cfg.dim, Direction::ToHf);
                    dtype.encode(&rows)
                }
                None => dtype.encode(values),
            };
            let encoded = Encoded {
                dtype: dtype.safetensors(),
                shape: t.shape,
                bytes,
            };
            (t.name, encoded)
        })
        .collect()
}

/// Writes `params` (frugal's flat vector for `cfg`) to the safetensors file `path`.
///
/// # Errors
/// A vector of another length than `cfg`'s, or the file cannot be written.
pub fn write(path: &Path, cfg: &Config, params: &[f32], dtype: Dtype) -> Result<(), CliError> {
    if params.len() != cfg.param_count() {
        return Err(CliError::CheckpointParams {
            holds: params.len(),
            model: cfg.param_count(),
        });
    }
    let tensors = encode_all(cfg, params, dtype);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let views = tensors.iter().map(|(name, t)| (name.as_str(), t));
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| CliError::Hf {
        path: path.to_path_buf(),
        why: format!("cannot write: {e}"),
    })
}

/// The safetensors files of the folder `dir`: those its index lists, else [`WEIGHTS_FILE`].
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let index = dir.join(INDEX_FILE);
    if !index.exists() {
        let single = dir.join(WEIGHTS_FILE);
        if !single.is_file() {
            return Err(CliError::Hf {
                path: dir.to_path_buf(),
                why: format!("has neither {WEIGHTS_FILE} nor {INDEX_FILE}"),
            });
        }
        return Ok(vec![single]);
    }
    let bad = |why: String| CliError::Hf {
        path: index.clone(),
        why,
    };
    let text = std::fs::read_to_string(&index).map_err(|e| bad(format!("cannot read: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("field weight_map is missing or not an object".into()))?;
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let name = file.as_str().filter(|f| {
            let p = Path::new(f);
            // A plain file name beside the index: the index may not point elsewhere.
            !f.is_empty() && p.file_name() == Some(p.as_os_str())
        });
        let name = name.ok_or_else(|| {
            bad(format!(
                "weight_map gives {tensor} the file {file}, not a file name in the folder"
            ))
        })?;
        files.insert(name.to_string());
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// frugal's flat parameter vector for `cfg` from the HF folder `dir`: every
/// tensor present once with the shape `cfg` gives it, in f32, bf16 or f16, Wq and
/// Wk permuted back to frugal's interleaved RoPE pairs.
///
/// # Errors
/// [`CliError::Hf`] naming the file and tensor: no weights, a corrupt safetensors
/// header, a missing, repeated or unexpected tensor, a wrong shape or element type.
pub fn read_params(dir: &Path, cfg: &Config) -> Result<Vec<f32>, CliError> {
    let expected: HashMap<String, HfTensor> = layout::tensors(cfg)
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let n = cfg.param_count();
    let mut params = Vec::new();
    params
        .try_reserve_exact(n)
        .map_err(|_| CliError::HostMemory {
            bytes: n.saturating_mul(4),
            what: "the imported weights",
        })?;
    params.resize(n, 0.0f32);
    let mut found: HashMap<String, PathBuf> = HashMap::new();
    for file in weight_files(dir)? {
        let bad = |why: String| CliError::Hf {
            path: file.clone(),
            why,
        };
        let f = File::open(&file).map_err(|e| bad(format!("cannot open: {e}")))?;
        // SAFETY: the map is only read, and only while this function runs; a file
        // changed underneath by another process could give wrong values (the same
        // as reading it while it is written), not unsoundness in this process,
        // since every offset is checked by the safetensors parser before use.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| bad(format!("cannot map: {e}")))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| bad(format!("not a valid safetensors file (its header: {e})")))?;
        // In frugal's parameter order (the file's own order is a hash map's), so that the
        // first bad tensor reported is the same every run.
        let mut views: Vec<_> = st.iter().collect();
        views.sort_by_key(|(name, _)| {
            (
                expected.get(*name).map_or(usize::MAX, |t| t.range.start),
                name.to_string(),
            )
        });
        for (name, view) in views {
            let Some(t) = expected.get(name) else {
                // Old exports saved RoPE's frequency table; it is derived, not trained.
                if name.ends_with("rotary_emb.inv_freq") {
                    continue;
                }
                return Err(bad(format!(
                    "tensor {name} is not part of a LLaMA of this config.json (frugal has no \
                     biases or other extra tensors)"
                )));
            };
            if let Some(other) = found.insert(name.to_string(), file.clone()) {
                return Err(bad(format!(
                    "tensor {name} is also in {}; each tensor must appear once",
                    other.display()
                )));
            }
            if view.shape() != t.shape.as_slice() {
                return Err(bad(format!(
                    "tensor {name} has shape {:?}, config.json says {:?}",
                    view.shape(),
                    t.shape
                )));
            }
            let values = decode(view.dtype(), view.data()).ok_or_else(|| {
                bad(format!(
                    "tensor {name} is {:?}; frugal reads F32, BF16 and F16",
                    view.dtype()
                ))
            })?;
            let values = match t.rope_heads {
                Some(heads) => {
                    layout::permute_rows(&values, heads, cfg.head_dim(), cfg.dim, Direction::FromHf)
                }
                None => values,
            };
            params[t.range.clone()].copy_from_slice(&values);
        }
    }
    let mut missing: Vec<&HfTensor> = expected
        .values()
        .filter(|t| !found.contains_key(&t.name))
        .collect();
    missing.sort_by_key(|t| t.range.start);
    if let Some(first) = missing.first() {
        let why = if first.name == "lm_head.weight" {
            "tensor lm_head.weight is missing: the model ties its output layer to the input \
             embedding, and frugal trains untied embeddings only"
                .to_string()
        } else {
            format!(
                "tensor {} is missing{}",
                first.name,
                match missing.len() {
                    1 => String::new(),
                    k => format!(" (and {} more)", k - 1),
                }
            )
        };
        return Err(CliError::Hf {
            path: dir.to_path_buf(),
            why,
        });
    }
    Ok(params)
}

/// Little-endian `bytes` of `dtype` as f32; `None` for a type frugal does not read.
fn decode(dtype: StDtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let pairs = || {
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    Some(match dtype {
        StDtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        StDtype::BF16 => pairs().map(|b| half::bf16::from_bits(b).to_f32()).collect(),
        StDtype::F16 => pairs().map(|b| half::f16::from_bits(b).to_f32()).collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_model::config::Preset;

    fn small() -> Config {
        Config {
            vocab_size: 40,
            dim: 16,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 24,
            seq_len: 8,
            ..Preset::by_name("tiny").unwrap().config()
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("frugal-hf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn f32_round_trip_is_bit_exact() {
        let cfg = small();
        let params: Vec<f32> = (0..cfg.param_count())
            .map(|i| ((i as f32) * 0.731).sin() * 1e-3 + f32::from_bits(i as u32 % 7))
            .collect();
        let dir = temp_dir("roundtrip");
        write(&dir.join(WEIGHTS_FILE), &cfg, &params, Dtype::F32).unwrap();
        let back = read_params(&dir, &cfg).unwrap();
        let same = params
            .iter()
            .zip(&back)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same && back.len() == params.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values: ties to the even one (1.0);
        // 1 + 3·2^-8 is halfway too and rounds up to 1 + 2^-6 (even mantissa).
        let xs = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5f32];
        let bytes = Dtype::Bf16.encode(&xs);
        let back = decode(StDtype::BF16, &bytes).unwrap();
        assert_eq!(back, [1.0, 1.0 + 4.0 / 256.0, -2.5]);
    }
}
