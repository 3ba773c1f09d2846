//! Which frugal tensor is which Hugging Face tensor, and the RoPE row permutation.
//!
//! frugal's layout ([`ParamLayout`]) keeps every linear weight as (out, in), row-major,
//! as `torch.nn.Linear` does, so matrices map one to one; norms are 1-D in HF.
//!
//! RoPE: frugal rotates interleaved pairs (channels 2i and 2i+1 of a head, Meta's
//! layout; model/src/cpu/rope.rs), `transformers` rotates halves (channels i and
//! i + HS/2). Permuting the rows of Wq and Wk within each head, as `transformers`'
//! Meta-to-HF conversion does, makes the two compute the same attention: HF row
//! `p·HS/2 + i` of a head is frugal row `2i + p` (p in {0, 1}). Q has NH heads, K has
//! NKV heads (grouped-query attention); V and O are not rotated, so not permuted.

use std::ops::Range;

use frugal_model::config::{Config, LayerTensor, ParamLayout};

/// One tensor of a Hugging Face folder and where its values live in frugal's flat vector.
#[derive(Clone, Debug, PartialEq)]
pub struct HfTensor {
    /// The name in the safetensors file, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// The HF shape: `[out, in]` for a matrix, `[C]` for a norm gain.
    pub shape: Vec<usize>,
    /// Its range in the flat parameter vector.
    pub range: Range<usize>,
    /// For Wq and Wk, the heads whose rows are permuted (NH or NKV); `None` otherwise.
    pub rope_heads: Option<usize>,
}

/// Every tensor of a `LlamaForCausalLM` with frugal's model `cfg`, in frugal's layout order.
pub fn tensors(cfg: &Config) -> Vec<HfTensor> {
    let layout = ParamLayout::new(cfg);
    let mut out = Vec::with_capacity(layout.tensors.len());
    let matrix = |spec: &frugal_model::config::TensorSpec| vec![spec.shape.0, spec.shape.1];
    let emb = layout.tok_embedding();
    out.push(HfTensor {
        name: "model.embed_tokens.weight".into(),
        shape: matrix(emb),
        range: emb.range(),
        rope_heads: None,
    });
    for l in 0..cfg.n_layers {
        for t in LayerTensor::ALL {
            let spec = layout.layer(l, t);
            let (name, shape, rope_heads) = match t {
                LayerTensor::AttnNorm => ("input_layernorm", vec![cfg.dim], None),
                LayerTensor::Wq => ("self_attn.q_proj", matrix(spec), Some(cfg.n_heads)),
                LayerTensor::Wk => ("self_attn.k_proj", matrix(spec), Some(cfg.n_kv_heads)),
                LayerTensor::Wv => ("self_attn.v_proj", matrix(spec), None),
                LayerTensor::Wo => ("self_attn.o_proj", matrix(spec), None),
                LayerTensor::MlpNorm => ("post_attention_layernorm", vec![cfg.dim], None),
                LayerTensor::WGate => ("mlp.gate_proj", matrix(spec), None),
                LayerTensor::WUp => ("mlp.up_proj", matrix(spec), None),
                LayerTensor::WDown => ("mlp.down_proj", matrix(spec), None),
            };
            out.push(HfTensor {
                name: format!("model.layers.{l}.{name}.weight"),
                shape,
                range: spec.range(),
                rope_heads,
            });
        }
    }
    let norm = layout.final_norm();
    out.push(HfTensor {
        name: "model.norm.weight".into(),
        shape: vec![cfg.dim],
        range: norm.range(),
        rope_heads: None,
    });
    let head = layout.lm_head();
    out.push(HfTensor {
        name: "lm_head.weight".into(),
        shape: matrix(head),
        range: head.range(),
        rope_heads: None,
    });
    out
}

/// Which way [`permute_rows`] moves rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// frugal's interleaved pairs to HF's halves (export).
    ToHf,
    /// HF's halves to frugal's interleaved pairs (import).
    FromHf,
}

/// `w` (heads·HS rows of `cols`) with the rows of every head permuted between
/// frugal's interleaved RoPE pairs and HF's rotated halves.
///
/// # Panics
/// When `w.len()` is not `heads · head_dim · cols` or `head_dim` is odd: the callers
/// pass a tensor of the layout they built, so that is a programming error.
pub fn permute_rows(
    w: &[f32],
    heads: usize,
    head_dim: usize,
    cols: usize,
    direction: Direction,
) -> Vec<f32> {
    assert_eq!(w.len(), heads * head_dim * cols, "rows of {heads} heads");
    assert!(
        head_dim.is_multiple_of(2),
        "RoPE head size {head_dim} is odd"
    );
    let half = head_dim / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for p in 0..2 {
                let frugal_row = h * head_dim + 2 * i + p;
                let hf_row = h * head_dim + p * half + i;
                let (from, to) = match direction {
                    Direction::ToHf => (frugal_row, hf_row),
                    Direction::FromHf => (hf_row, frugal_row),
                };
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_model::config::Preset;

    #[test]
    fn permutation_matches_a_hand_computed_case() {
        // Two heads of HS = 4, one column: row r holds r. transformers'
        // `w.view(heads, HS/2, 2, cols).transpose(1, 2)` puts, per head, the even rows
        // (the first of each pair) first, then the odd ones.
        let w: Vec<f32> = (0..8).map(|r| r as f32).collect();
        let hf = permute_rows(&w, 2, 4, 1, Direction::ToHf);
        assert_eq!(hf, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        // HS = 6, two columns: rows (0,1) (2,3) (4,5) -> 0 2 4 1 3 5.
        let w: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let hf = permute_rows(&w, 1, 6, 2, Direction::ToHf);
        assert_eq!(hf, [0., 1., 4., 5., 8., 9., 2., 3., 6., 7., 10., 11.]);
        assert_eq!(permute_rows(&hf, 1, 6, 2, Direction::FromHf), w);
    }

    #[test]
    fn tensors_tile_the_layout_with_hf_names_and_gqa_heads() {
        let cfg = Config {
            n_kv_heads: 2,
            ..Preset::by_name("tiny").unwrap().config()
        };
        let ts = tensors(&cfg);
        assert_eq!(ts.len(), 3 + 9 * cfg.n_layers);
        let mut next = 0;
        for t in &ts {
            assert_eq!(t.range.start, next, "{}", t.name);
            assert_eq!(
                t.range.len(),
                t.shape.iter().product::<usize>(),
                "{}",
                t.name
            );
            next = t.range.end;
        }
        assert_eq!(next, cfg.param_count());
        let k = ts
            .iter()
            .find(|t| t.name == "model.layers.1.self_attn.k_proj.weight");
        let k = k.expect("k_proj");
        assert_eq!(k.shape, [cfg.kv_dim(), cfg.dim]);
        assert_eq!(k.rope_heads, Some(2));
        assert_eq!(ts[0].name, "model.embed_tokens.weight");
        assert_eq!(ts.last().map(|t| t.name.as_str()), Some("lm_head.weight"));
    }
}
