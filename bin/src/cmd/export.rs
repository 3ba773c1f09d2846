//! `frugal export`: a checkpoint written as a Hugging Face `LlamaForCausalLM`
//! folder (`model.safetensors`, `config.json`, the tokenizer when the run had
//! one, a README), built in a temporary folder and renamed into place.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use frugal_model::checkpoint::{self, sharded, Checkpoint};

use crate::codec::{self, Codec};
use crate::error::{CliError, Context as _};
use crate::hf::{self, tensors::Dtype};

/// The long help of `frugal export`.
pub const ABOUT: &str = "\
Writes a checkpoint as a Hugging Face LlamaForCausalLM folder that `transformers` loads with \
LlamaForCausalLM.from_pretrained(DIR): model.safetensors, config.json, the tokenizer \
(tokenizer.json) when the run trained with one, and a README.md saying what it is.

CKPT is a step-NNNNNNNN.ckpt file, a sharded step-NNNNNNNN.shards folder (consolidated on the \
way) or a run folder (its newest checkpoint that verifies). frugal rotates interleaved RoPE \
pairs and transformers rotates halves, so the rows of every head of q_proj and k_proj are \
permuted as transformers' own Meta-to-HF conversion does; nothing else changes. \
`frugal train --init-from DIR` reads such a folder back (the f32 round trip is bit-exact).

The folder is written under a temporary name beside DIR and renamed when complete; an \
existing non-empty DIR is never written into.

Example:
  frugal export runs/tiny-seed1337 --format hf --out exports/tiny
  frugal export runs/tiny-seed1337/step-00000200.ckpt --format hf --out exports/tiny-bf16 --dtype bf16";

/// `frugal export`'s flags.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "frugal export CKPT --format hf --out DIR [--dtype f32|bf16] [--tokenizer FILE]"
)]
pub struct ExportFlags {
    /// a .ckpt file, a .shards folder or a run folder (its newest valid checkpoint)
    #[arg(value_name = "CKPT", value_parser = crate::flags::path())]
    ckpt: PathBuf,
    /// the output format: hf (a Hugging Face LlamaForCausalLM folder)
    #[arg(long, value_name = "hf", value_parser = ["hf"])]
    format: String,
    /// the folder to create; refused when it exists and is not empty
    #[arg(long, value_name = "DIR", value_parser = crate::flags::path())]
    out: PathBuf,
    /// the weights' type: f32 (exact, default) or bf16 (rounded to nearest even)
    #[arg(long, value_name = "f32|bf16", value_parser = ["f32", "bf16"], default_value = "f32")]
    dtype: String,
    /// the tokenizer.json to ship with the model (default: the one beside the checkpoint, if any)
    #[arg(long, value_name = "FILE", value_parser = crate::flags::path())]
    tokenizer: Option<PathBuf>,
}

pub fn run(flags: ExportFlags) -> Result<(), CliError> {
    let ExportFlags {
        ckpt,
        format: _,
        out,
        dtype,
        tokenizer,
    } = flags;
    let dtype = if dtype == "bf16" {
        Dtype::Bf16
    } else {
        Dtype::F32
    };
    refuse_nonempty(&out)?;
    if let Some(t) = &tokenizer {
        if !t.is_file() {
            return Err(CliError::usage(format!(
                "export: --tokenizer {} is not a file",
                t.display()
            )));
        }
    }
    let (path, whole) = resolve(&ckpt)?;
    let tokenizer = tokenizer.or_else(|| codec::tokenizer_beside(&path));
    if let Some(t) = &tokenizer {
        // Refuses a tokenizer whose ids do not fit the model's vocabulary.
        Codec::for_checkpoint(&path, Some(t), whole.config.vocab_size)?;
    }
    let written = write_folder(&out, &whole, dtype, tokenizer.as_deref(), &path)?;
    // A closed stdout (`| head`) is no failure: the folder is written.
    let _ = writeln!(
        std::io::stdout(),
        "{}: step {}, {} parameters -> {} ({} {}, {})",
        path.display(),
        whole.step,
        whole.params.len(),
        out.display(),
        hf::WEIGHTS_FILE,
        dtype.torch_name(),
        crate::units::size(written)
    );
    Ok(())
}

/// The checkpoint CKPT names, with the path it was loaded from.
fn resolve(ckpt: &Path) -> Result<(PathBuf, Checkpoint), CliError> {
    let load = |p: &Path| {
        checkpoint::load(p)
            .map_err(CliError::from)
            .context("export")
    };
    if !ckpt.exists() {
        return Err(CliError::usage_with_help(
            "export",
            format!("export: {} does not exist", ckpt.display()),
        ));
    }
    let is_set = ckpt.join(sharded::MANIFEST).exists()
        || ckpt
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(sharded::SET_SUFFIX));
    if !ckpt.is_dir() || is_set {
        return Ok((ckpt.to_path_buf(), load(ckpt)?));
    }
    match checkpoint::latest_valid(ckpt).context("export")? {
        Some(found) => Ok(found),
        None => Err(CliError::usage(format!(
            "export: {} holds no checkpoint that verifies (step-NNNNNNNN.ckpt or .shards); \
             name a checkpoint or a run folder",
            ckpt.display()
        ))),
    }
}

/// Refuses an `--out` that exists, unless it is an empty folder.
fn refuse_nonempty(out: &Path) -> Result<(), CliError> {
    let empty_dir = out.is_dir()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if out.symlink_metadata().is_ok() && !empty_dir {
        return Err(CliError::usage(format!(
            "export: {} exists and is not an empty folder; nothing is written into it: \
             remove it or choose another --out",
            out.display()
        )));
    }
    Ok(())
}

/// Writes the folder under a temporary name beside `out`, then renames it to
/// `out`: a reader never sees half an export. Gives the weights' size.
fn write_folder(
    out: &Path,
    ck: &Checkpoint,
    dtype: Dtype,
    tokenizer: Option<&Path>,
    source: &Path,
) -> Result<u64, CliError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| CliError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    // A folder of this name is a killed export of a process with this id: garbage.
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
    let result = fill(&tmp, ck, dtype, tokenizer, source).and_then(|bytes| {
        refuse_nonempty(out)?;
        // Over an empty folder or nothing: rename replaces an empty directory.
        std::fs::rename(&tmp, out).map_err(|source| CliError::Move {
            from: tmp.clone(),
            to: out.to_path_buf(),
            source,
        })?;
        Ok(bytes)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The folder's files, written into `dir`.
fn fill(
    dir: &Path,
    ck: &Checkpoint,
    dtype: Dtype,
    tokenizer: Option<&Path>,
    source: &Path,
) -> Result<u64, CliError> {
    let weights = dir.join(hf::WEIGHTS_FILE);
    hf::tensors::write(&weights, &ck.config, &ck.params, dtype)?;
    let config = hf::config::to_json(&ck.config, dtype.torch_name());
    let config_path = dir.join(hf::CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config).unwrap_or_default() + "\n";
    std::fs::write(&config_path, text).map_err(|source| CliError::Io {
        action: "write",
        path: config_path.clone(),
        source,
    })?;
    if let Some(t) = tokenizer {
        let to = dir.join(codec::TOKENIZER_FILE);
        std::fs::copy(t, &to).map_err(|source| CliError::Io {
            action: "copy the tokenizer to",
            path: to.clone(),
            source,
        })?;
    }
    let readme = dir.join("README.md");
    std::fs::write(&readme, readme_text(ck, dtype, tokenizer.is_some(), source)).map_err(
        |source| CliError::Io {
            action: "write",
            path: readme.clone(),
            source,
        },
    )?;
    let bytes = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
    Ok(bytes)
}

/// README.md: what the folder is, where it came from, how to load it.
fn readme_text(ck: &Checkpoint, dtype: Dtype, has_tokenizer: bool, source: &Path) -> String {
    let c = &ck.config;
    let loss = match ck.best_val_loss {
        Some(l) => format!("{l:.4} (the lowest validation loss the run recorded)"),
        None => "not recorded (the run did not validate)".into(),
    };
    let source = source.file_name().map_or_else(
        || source.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let (tokens, example) = if has_tokenizer {
        (
            "`tokenizer.json` (a Hugging Face tokenizers file) turns text into ids",
            "from tokenizers import Tokenizer\ntok = Tokenizer.from_file(\"DIR/tokenizer.json\")\n\
             ids = torch.tensor([tok.encode(\"Once upon a time\").ids])",
        )
    } else {
        (
            "byte-level: a token id is one byte of UTF-8 text (0..255); there is no tokenizer file",
            "ids = torch.tensor([list(\"Once upon a time\".encode(\"utf-8\"))])",
        )
    };
    format!(
        "# A frugal model as a Hugging Face LlamaForCausalLM\n\n\
         Exported by `frugal export` from `{source}` (step {step}, {tokens_seen} training tokens).\n\n\
         - validation loss: {loss}\n\
         - {params} parameters: {layers} layers, hidden {dim}, {heads} heads ({kv} key/value heads), \
         FFN {ffn}, vocabulary {vocab}, trained on sequences of {seq} tokens\n\
         - weights: `model.safetensors` in {dtype}\n\
         - tokens: {tokens}\n\n\
         frugal rotates interleaved RoPE pairs; the rows of each head of `q_proj` and `k_proj` are \
         permuted here to the rotated halves `transformers` uses, as its Meta-to-HF conversion does.\n\n\
         ## Load it\n\n\
         ```python\n\
         import torch\n\
         from transformers import LlamaForCausalLM\n\n\
         model = LlamaForCausalLM.from_pretrained(\"DIR\")\n\
         {example}\n\
         logits = model(ids).logits\n\
         ```\n\n\
         `frugal train --init-from DIR` continues training from this folder.\n",
        step = ck.step,
        tokens_seen = ck.tokens_seen,
        params = ck.params.len(),
        layers = c.n_layers,
        dim = c.dim,
        heads = c.n_heads,
        kv = c.n_kv_heads,
        ffn = c.ffn_dim,
        vocab = c.vocab_size,
        seq = c.seq_len,
        dtype = dtype.torch_name(),
    )
}
