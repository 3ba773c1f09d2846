//! `frugal export --format hf` and `frugal train --init-from` end to end, on the
//! CPU at tiny dims with grouped-query attention: the f32 round trip is bit-exact,
//! q_proj and k_proj rows are permuted per head as transformers' conversion does,
//! bf16 rounds to nearest even, and bad folders are refused with the field or
//! tensor named.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_ok, scratch_in, text};
use frugal_model::checkpoint::{self, Checkpoint};
use frugal_model::config::{LayerTensor, ParamLayout};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::Value;

/// Tiny dims, GQA on (4 query heads share 2 key/value heads), head size 16.
const DIMS: &[&str] = &[
    "--layers",
    "2",
    "--hidden",
    "64",
    "--heads",
    "4",
    "--kv-heads",
    "2",
    "--ffn",
    "96",
    "--seq",
    "32",
    "--vocab",
    "256",
    "--batch",
    "2",
];

fn frugal() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_frugal"));
    for var in ["WORLD_SIZE", "RANK", "SLURM_PROCID", "SLURM_NTASKS"] {
        c.env_remove(var);
    }
    c
}

fn run(args: &[&str], paths: &[&Path]) -> Output {
    let mut c = frugal();
    c.args(args);
    c.args(paths);
    c.output().unwrap()
}

/// A 2-step run in `dir/run` and its export in `dir/export`; the last checkpoint.
fn trained_and_exported(dir: &Path, extra: &[&str]) -> (Checkpoint, PathBuf) {
    let run_dir = dir.join("run");
    let mut c = frugal();
    c.args(["train", "--steps", "2", "--out"])
        .arg(&run_dir)
        .args(DIMS);
    assert_ok(&c.output().unwrap());
    let ckpt = checkpoint::load(&run_dir.join(Checkpoint::file_name(2))).unwrap();
    let out = dir.join("export");
    let mut c = frugal();
    c.arg("export")
        .arg(&run_dir)
        .args(["--format", "hf", "--out"])
        .arg(&out)
        .args(extra);
    assert_ok(&c.output().unwrap());
    (ckpt, out)
}

/// `train --init-from` for one step whose update is far below half an ulp of any
/// weight (lr 1e-45, the smallest f32, no weight decay), so its checkpoint holds
/// the imported weights exactly: a way to read what the import built, through the
/// real command.
fn init_from(hf: &Path, out: &Path) -> Output {
    let mut c = frugal();
    c.args([
        "train",
        "--steps",
        "1",
        "--lr",
        "1e-45",
        "--weight-decay",
        "0",
    ])
    .args(["--warmup", "0", "--batch", "2", "--init-from"])
    .arg(hf)
    .arg("--out")
    .arg(out);
    c.output().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn f32s(t: &TensorView<'_>) -> Vec<f32> {
    assert_eq!(t.dtype(), Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn assert_refused(o: &Output, code: i32, needles: &[&str]) {
    let (out, err) = text(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "expected '{n}' in:\n{err}");
    }
}

#[test]
fn f32_export_then_init_from_is_bit_exact() {
    let dir = scratch_in("export", "roundtrip");
    let (ckpt, hf) = trained_and_exported(&dir, &[]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_key_value_heads"], 2);
    assert_eq!(config["torch_dtype"], "float32");
    assert_eq!(config["tie_word_embeddings"], false);
    assert!(std::fs::read_to_string(hf.join("README.md"))
        .unwrap()
        .contains("step 2"));

    let again = dir.join("again");
    assert_ok(&init_from(&hf, &again));
    let back = checkpoint::load(&again.join(Checkpoint::file_name(1))).unwrap();
    assert_eq!(back.config, ckpt.config);
    assert_eq!(back.params.len(), ckpt.params.len());
    let differ = ckpt
        .params
        .iter()
        .zip(&back.params)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differ, 0, "parameters differ after export -> import");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(again.join("run.json")).unwrap()).unwrap();
    let from = manifest["initialised_from"].as_str().unwrap_or_default();
    assert!(from.ends_with("export"), "{manifest}");

    // And the same folder again, byte for byte, from the imported run.
    let hf2 = dir.join("export2");
    assert_ok(&run(
        &["export", "--format", "hf", "--out"],
        &[&hf2, &again],
    ));
    assert_eq!(
        std::fs::read(hf.join("model.safetensors")).unwrap(),
        std::fs::read(hf2.join("model.safetensors")).unwrap()
    );
}

#[test]
fn q_and_k_rows_are_permuted_per_head_and_nothing_else() {
    let dir = scratch_in("export", "permute");
    let (ckpt, hf) = trained_and_exported(&dir, &[]);
    let bytes = std::fs::read(hf.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let lay = ParamLayout::new(&ckpt.config);
    let (c, hs) = (ckpt.config.dim, ckpt.config.head_dim());
    assert_eq!(hs, 16);
    let row = |t: LayerTensor, r: usize| {
        let spec = lay.layer(1, t);
        ckpt.params[spec.offset + r * c..spec.offset + (r + 1) * c].to_vec()
    };
    let q = f32s(&st.tensor("model.layers.1.self_attn.q_proj.weight").unwrap());
    let k = f32s(&st.tensor("model.layers.1.self_attn.k_proj.weight").unwrap());
    let hf_row = |w: &[f32], r: usize| w[r * c..(r + 1) * c].to_vec();
    // By hand, HS = 16 (halves of 8): HF row 1 is frugal's row 2 (pair 1, first),
    // HF row 8 frugal's row 1 (pair 0, second), HF row 15 frugal's 15; head 1
    // starts at 16: HF row 16 + 9 is frugal's 16 + 3.
    for (hf_r, frugal_r) in [
        (0, 0),
        (1, 2),
        (7, 14),
        (8, 1),
        (9, 3),
        (15, 15),
        (25, 19),
        (63, 63),
    ] {
        assert_eq!(
            hf_row(&q, hf_r),
            row(LayerTensor::Wq, frugal_r),
            "q row {hf_r}"
        );
    }
    // K has 2 heads (GQA): 32 rows.
    assert_eq!(k.len(), 2 * hs * c);
    for (hf_r, frugal_r) in [(1, 2), (8, 1), (24, 17), (31, 31)] {
        assert_eq!(
            hf_row(&k, hf_r),
            row(LayerTensor::Wk, frugal_r),
            "k row {hf_r}"
        );
    }
    // Every other tensor is frugal's, unpermuted.
    let same = |name: &str, range: std::ops::Range<usize>| {
        assert_eq!(
            f32s(&st.tensor(name).unwrap()),
            &ckpt.params[range],
            "{name}"
        );
    };
    same("model.embed_tokens.weight", lay.tok_embedding().range());
    same("lm_head.weight", lay.lm_head().range());
    same("model.norm.weight", lay.final_norm().range());
    for (name, t) in [
        ("self_attn.v_proj", LayerTensor::Wv),
        ("self_attn.o_proj", LayerTensor::Wo),
        ("mlp.gate_proj", LayerTensor::WGate),
        ("mlp.up_proj", LayerTensor::WUp),
        ("mlp.down_proj", LayerTensor::WDown),
        ("input_layernorm", LayerTensor::AttnNorm),
        ("post_attention_layernorm", LayerTensor::MlpNorm),
    ] {
        same(
            &format!("model.layers.0.{name}.weight"),
            lay.layer(0, t).range(),
        );
    }
    let shape = st.tensor("model.layers.0.mlp.down_proj.weight").unwrap();
    assert_eq!(shape.shape(), [64, 96]);
    assert_eq!(st.len(), 3 + 9 * 2);
}

#[test]
fn bf16_export_rounds_to_nearest_even_and_imports() {
    let dir = scratch_in("export", "bf16");
    let (ckpt, hf) = trained_and_exported(&dir, &["--dtype", "bf16"]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let bytes = std::fs::read(hf.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let emb = st.tensor("model.embed_tokens.weight").unwrap();
    assert_eq!(emb.dtype(), Dtype::BF16);
    let lay = ParamLayout::new(&ckpt.config);
    let want: Vec<u16> = ckpt.params[lay.tok_embedding().range()]
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect();
    let got: Vec<u16> = emb
        .data()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(got, want);
    // Half the values at most can be exact in bf16; rounding moved most of them.
    let moved = ckpt.params[lay.tok_embedding().range()]
        .iter()
        .filter(|&&x| half::bf16::from_f32(x).to_f32() != x)
        .count();
    assert!(moved > want.len() / 2, "{moved} of {}", want.len());

    let again = dir.join("again");
    assert_ok(&init_from(&hf, &again));
    let back = checkpoint::load(&again.join(Checkpoint::file_name(1))).unwrap();
    let rounded: Vec<f32> = ckpt
        .params
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert!(rounded
        .iter()
        .zip(&back.params)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn sharded_safetensors_with_an_index_import_like_one_file() {
    let dir = scratch_in("export", "sharded");
    let (ckpt, hf) = trained_and_exported(&dir, &[]);
    let bytes = std::fs::read(hf.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let split = dir.join("split");
    std::fs::create_dir_all(&split).unwrap();
    std::fs::copy(hf.join("config.json"), split.join("config.json")).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [a, b].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let tensors: Vec<(String, TensorView<'_>)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        for n in part {
            weight_map.insert(n.clone(), Value::from(file.clone()));
        }
        safetensors::serialize_to_file(tensors, None, &split.join(&file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        split.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let again = dir.join("again");
    assert_ok(&init_from(&split, &again));
    let back = checkpoint::load(&again.join(Checkpoint::file_name(1))).unwrap();
    assert!(ckpt
        .params
        .iter()
        .zip(&back.params)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn bad_folders_are_refused_naming_the_field_or_tensor() {
    let dir = scratch_in("export", "bad");
    let (_, hf) = trained_and_exported(&dir, &[]);
    let variant = |name: &str| {
        let d = dir.join(name);
        copy_dir(&hf, &d);
        d
    };
    let out = dir.join("never");

    // config.json problems are usage errors (exit 2), found before any training.
    let d = variant("no-eps");
    edit_config(&d, |c| {
        c.remove("rms_norm_eps");
    });
    assert_refused(
        &init_from(&d, &out),
        2,
        &["config.json", "field rms_norm_eps is missing"],
    );
    for (name, field, value) in [
        ("tied", "tie_word_embeddings", Value::Bool(true)),
        ("bias", "attention_bias", Value::Bool(true)),
        ("mlp-bias", "mlp_bias", Value::Bool(true)),
        ("gelu", "hidden_act", Value::from("gelu")),
        (
            "scaled",
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": 2.0}),
        ),
        ("head-dim", "head_dim", Value::from(8)),
        (
            "arch",
            "architectures",
            serde_json::json!(["GPT2LMHeadModel"]),
        ),
    ] {
        let d = variant(name);
        edit_config(&d, |c| {
            c.insert(field.into(), value);
        });
        assert_refused(&init_from(&d, &out), 2, &[field]);
    }

    // Weights that do not fit: failures (exit 1) naming the file and tensor.
    let d = variant("corrupt");
    let mut junk = 40u64.to_le_bytes().to_vec();
    junk.extend_from_slice(b"{\"model.norm.weight\": {\"dtype\": \"F32\", ");
    std::fs::write(d.join("model.safetensors"), junk).unwrap();
    assert_refused(&init_from(&d, &out), 1, &["model.safetensors", "header"]);

    let d = variant("wider");
    edit_config(&d, |c| {
        c.insert("intermediate_size".into(), Value::from(128));
    });
    assert_refused(
        &init_from(&d, &out),
        1,
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "shape [96, 64]",
            "[128, 64]",
        ],
    );

    let d = variant("no-head");
    let bytes = std::fs::read(hf.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: HashMap<String, TensorView<'_>> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "lm_head.weight")
        .collect();
    safetensors::serialize_to_file(kept, None, &d.join("model.safetensors")).unwrap();
    assert_refused(
        &init_from(&d, &out),
        1,
        &["lm_head.weight is missing", "untied"],
    );
    assert!(!out.join("step-00000001.ckpt").exists());
}

#[test]
fn an_existing_out_is_never_written_into() {
    let dir = scratch_in("export", "exists");
    let (_, hf) = trained_and_exported(&dir, &[]);
    let before = std::fs::read(hf.join("model.safetensors")).unwrap();
    let o = run(
        &["export", "--format", "hf", "--dtype", "bf16", "--out"],
        &[&hf, &dir.join("run")],
    );
    assert_refused(&o, 2, &["exists", "remove it or choose another --out"]);
    assert_eq!(std::fs::read(hf.join("model.safetensors")).unwrap(), before);
    // An empty folder is no export yet: it is filled.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let ckpt = dir.join("run").join(Checkpoint::file_name(2));
    assert_ok(&run(
        &["export", "--format", "hf", "--out"],
        &[&empty, &ckpt],
    ));
    assert!(empty.join("model.safetensors").is_file());
    // No temporary folder is left beside it.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(left.is_empty());
    let o = run(&["train", "--resume", "auto", "--init-from"], &[&hf]);
    assert_refused(&o, 2, &["--init-from", "--resume"]);
}
