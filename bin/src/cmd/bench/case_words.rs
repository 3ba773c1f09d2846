//! The words that name one `bench kernels` case outside the step: `frugal profile
//! --kernel rmsnorm-fwd --shape 4096,768` profiles the case `bench kernels` times as
//! `rmsnorm_fwd` at (rows 4096, C 768), and each `bench kernels --json` line carries the
//! words of its case (`profile_kernel`, `profile_shape`), so that a measured row can be
//! joined with its prediction (scripts/gpu-check.sh's calibration).

use super::kernels::Case;
use frugal_ptx::kernels::rope::Direction;

/// The RMSNorm epsilon and RoPE base a case gets when it is named by words: the common
/// LLaMA values. Neither changes what the kernel reads, writes or executes.
const EPS: f32 = 1e-5;
const THETA: f64 = 10_000.0;

/// Every kernel name with what its `--shape` lists.
pub const VOCABULARY: &[(&str, &str)] = &[
    ("embedding-fwd", "ROWS,C,VOCAB"),
    ("embedding-bwd", "ROWS,C,VOCAB"),
    ("rmsnorm-fwd", "ROWS,C"),
    ("rmsnorm-fwd-residual", "ROWS,C"),
    ("rmsnorm-bwd", "ROWS,C"),
    ("rmsnorm-dg-reduce", "ROWS,C"),
    ("rope-fwd", "ROWS,T,HEADS,HS"),
    ("rope-bwd", "ROWS,T,HEADS,HS"),
    ("attn-softmax-fwd", "HEADS,T,HS"),
    ("attn-softmax-bwd", "HEADS,T,HS"),
    ("swiglu-fwd", "LEN"),
    ("swiglu-bwd", "LEN"),
    ("cross-entropy", "ROWS,VOCAB"),
    ("cross-entropy-mean", "ROWS"),
    ("grad-norm-partial", "PARAMS"),
    ("grad-norm-finish", "PARAMS"),
    ("adamw", "PARAMS"),
];

impl Case {
    /// The case named `name` (a [`VOCABULARY`] word; `_` for `-` is accepted) at `dims`.
    /// `None` when the name is not a case.
    ///
    /// # Errors
    /// The wrong number of dims for the name, or a zero.
    pub fn from_words(name: &str, dims: &[usize]) -> Option<Result<Case, String>> {
        let name = name.replace('_', "-");
        let (word, want) = VOCABULARY.iter().find(|(w, _)| *w == name)?;
        let arity = want.split(',').count();
        if dims.len() != arity || dims.contains(&0) {
            return Some(Err(format!(
                "--kernel {word} takes --shape {want} ({arity} positive numbers)"
            )));
        }
        let d = |i: usize| dims[i];
        let rope = |direction| Case::Rope {
            rows: d(0),
            t: d(1),
            heads: d(2),
            hs: d(3),
            theta: THETA,
            direction,
        };
        let case = match *word {
            "embedding-fwd" => Case::EmbeddingFwd {
                rows: d(0),
                c: d(1),
                vocab: d(2),
            },
            "embedding-bwd" => Case::EmbeddingBwd {
                rows: d(0),
                c: d(1),
                vocab: d(2),
            },
            "rmsnorm-fwd" | "rmsnorm-fwd-residual" => Case::RmsnormFwd {
                rows: d(0),
                c: d(1),
                eps: EPS,
                residual: *word == "rmsnorm-fwd-residual",
            },
            "rmsnorm-bwd" => Case::RmsnormBwd {
                rows: d(0),
                c: d(1),
            },
            "rmsnorm-dg-reduce" => Case::RmsnormDgReduce {
                rows: d(0),
                c: d(1),
            },
            "rope-fwd" => rope(Direction::Forward),
            "rope-bwd" => rope(Direction::Backward),
            "attn-softmax-fwd" => Case::SoftmaxFwd {
                heads: d(0),
                t: d(1),
                hs: d(2),
            },
            "attn-softmax-bwd" => Case::SoftmaxBwd {
                heads: d(0),
                t: d(1),
                hs: d(2),
            },
            "swiglu-fwd" => Case::SwigluFwd { len: d(0) },
            "swiglu-bwd" => Case::SwigluBwd { len: d(0) },
            "cross-entropy" => Case::CrossEntropy {
                rows: d(0),
                vocab: d(1),
            },
            "cross-entropy-mean" => Case::CrossEntropyMean { rows: d(0) },
            "grad-norm-partial" => Case::GradNormPartial { params: d(0) },
            "grad-norm-finish" => Case::GradNormFinish { params: d(0) },
            _ => Case::Adamw { params: d(0) },
        };
        Some(Ok(case))
    }

    /// The `--kernel` and `--shape` words of this case ([`Case::from_words`] reads them back,
    /// up to the eps and theta, which name no shape).
    pub fn profile_words(&self) -> (String, String) {
        let dims: Vec<usize> = match *self {
            Case::EmbeddingFwd { rows, c, vocab } | Case::EmbeddingBwd { rows, c, vocab } => {
                vec![rows, c, vocab]
            }
            Case::RmsnormFwd { rows, c, .. }
            | Case::RmsnormBwd { rows, c }
            | Case::RmsnormDgReduce { rows, c } => vec![rows, c],
            Case::Rope {
                rows, t, heads, hs, ..
            } => vec![rows, t, heads, hs],
            Case::SoftmaxFwd { heads, t, hs } | Case::SoftmaxBwd { heads, t, hs } => {
                vec![heads, t, hs]
            }
            Case::SwigluFwd { len } | Case::SwigluBwd { len } => vec![len],
            Case::CrossEntropy { rows, vocab } => vec![rows, vocab],
            Case::CrossEntropyMean { rows } => vec![rows],
            Case::GradNormPartial { params }
            | Case::GradNormFinish { params }
            | Case::Adamw { params } => vec![params],
        };
        let shape: Vec<String> = dims.iter().map(usize::to_string).collect();
        (self.name().replace('_', "-"), shape.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_names_its_case_and_reads_back() {
        for (word, want) in VOCABULARY {
            let dims: Vec<usize> = (0..want.split(',').count()).map(|i| 16 * (i + 1)).collect();
            let case = Case::from_words(word, &dims).unwrap().unwrap();
            assert_eq!(case.name(), word.replace('-', "_"));
            let (w, shape) = case.profile_words();
            assert_eq!(&w, word);
            let back: Vec<usize> = shape.split(',').map(|x| x.parse().unwrap()).collect();
            assert_eq!(back, dims);
            assert_eq!(Case::from_words(&w, &back).unwrap().unwrap(), case);
        }
        assert!(Case::from_words("no-such", &[1]).is_none());
        assert!(Case::from_words("rmsnorm_fwd", &[4, 8]).unwrap().is_ok());
        assert!(Case::from_words("rmsnorm-fwd", &[4]).unwrap().is_err());
        assert!(Case::from_words("adamw", &[0]).unwrap().is_err());
    }
}
