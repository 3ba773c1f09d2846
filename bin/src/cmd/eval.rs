//! `frugal eval`: the mean loss (nats/token) and perplexity of a checkpoint over
//! every window of a split of some data, in file order.
//!
//! Windows are the trainer's (T + 1 tokens at stride T, T the checkpoint's
//! sequence length, never straddling two files; `frugal_model::data`), taken
//! in file order without a shuffle; the last batch may be partial and is
//! evaluated too (its empty rows are padded with ignored targets). The loss is
//! the trainer's validation forward on each device (`CpuModel::loss` on the
//! CPU, `DeviceModel::loss` on `cuda`/`emu`, as `CpuStep`/`DeviceStep` call
//! them); each token's loss is read back and summed per window in f64, then
//! over windows in order, so the result does not depend on `--batch`.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use frugal_model::checkpoint::{self, Checkpoint};
use frugal_model::cpu::CpuModel;
use frugal_model::data::{DataSpec, Dataset, OrderedWindows, Scope, Split};
use frugal_model::device::{DeviceModel, OptimHyper, StepOptions};
use frugal_model::{ModelError, IGNORE_INDEX};
use frugal_runtime::device::{Device, DeviceSpec};

use crate::codec::Codec;
use crate::error::{CliError, Context};
use crate::train::options::default_threads;

pub const ABOUT: &str = "\
Mean loss (nats/token) and perplexity of a checkpoint over EVERY window of a split of some
data: windows of T+1 tokens at stride T (T = the checkpoint's sequence length), in file
order, the last partial batch included; the split is the trainer's (files named *val*, else
the last 5% of each file). The loss is the trainer's validation loss on those windows,
summed per window in f64 (so --batch does not change it).

Example:
  frugal eval runs/tiny --data corpus.txt
  frugal eval runs/tiny/step-000200.ckpt --data 'shards/*.bin' --split all --json";

/// Which tokens of the data to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitChoice {
    /// the validation split (as the trainer holds it out)
    Val,
    /// the training split
    Train,
    /// every token of every file
    All,
}

impl SplitChoice {
    fn scope(self) -> Scope {
        match self {
            SplitChoice::Val => Scope::Split(Split::Val),
            SplitChoice::Train => Scope::Split(Split::Train),
            SplitChoice::All => Scope::All,
        }
    }
}

/// Where the forward runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalDevice {
    /// the f32 CPU model
    Cpu,
    /// CUDA device 0 (bf16 activations, as in training there)
    Cuda,
    /// the PTX emulator (slow: tiny models only)
    Emu,
}

#[derive(Debug, clap::Args)]
pub struct EvalFlags {
    /// a .ckpt file, a step-N.shards folder, or a run folder (its newest checkpoint that verifies)
    pub checkpoint: PathBuf,
    /// the data: a text file (byte-level), llm.c shards (a .bin file, a folder or a glob), or 'default'
    #[arg(long, value_name = "FILE|GLOB")]
    pub data: OsString,
    /// which windows to evaluate
    #[arg(long, value_enum, default_value = "val")]
    pub split: SplitChoice,
    /// windows per forward (only speed and memory depend on it)
    #[arg(long, default_value_t = 8, value_name = "B")]
    pub batch: usize,
    /// where the forward runs
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: EvalDevice,
    /// CPU threads (default: every core)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// the tokenizer.json the model was trained with (default: the one beside the checkpoint, else byte-level); only for bits/byte
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    /// write the first batch's logits to FILE: raw little-endian f32, row-major [B, T, V] (cpu only)
    #[arg(long, value_name = "FILE")]
    pub dump_logits: Option<PathBuf>,
}

/// The checkpoint a CKPT argument names: a `.ckpt` file or a `.shards` set
/// as it is, a run folder by its newest checkpoint that loads and verifies.
///
/// # Errors
/// A path that does not exist, a folder with no loadable checkpoint, or a
/// file that does not load (naming it and why).
pub fn resolve_checkpoint(path: &Path) -> Result<(PathBuf, Checkpoint), CliError> {
    if !path.exists() {
        return Err(CliError::usage(format!(
            "checkpoint {} does not exist: give a .ckpt file, a step-N.shards folder or a run folder",
            path.display()
        )));
    }
    // A sharded set is a folder too: it is told from a run folder by its
    // manifest or its `.shards` name.
    let is_set = path.join(checkpoint::sharded::MANIFEST).exists()
        || path
            .extension()
            .is_some_and(|e| checkpoint::sharded::SET_SUFFIX.strip_prefix('.') == e.to_str());
    if path.is_dir() && !is_set {
        return match checkpoint::latest_valid(path).with_context(|| {
            format!("looking for checkpoints in {}", path.display())
        })? {
            Some(found) => Ok(found),
            None => Err(CliError::usage(format!(
                "{} holds no checkpoint that loads (step-N.ckpt or step-N.shards): give a checkpoint \
                 file, or the run folder `frugal train --out` wrote",
                path.display()
            ))),
        };
    }
    let ckpt = checkpoint::load(path).with_context(|| format!("checkpoint {}", path.display()))?;
    Ok((path.to_path_buf(), ckpt))
}

/// The result of an evaluation.
#[derive(Debug)]
struct Totals {
    windows: u64,
    tokens: u64,
    /// Σ over windows (in order) of Σ over its tokens of the loss, in f64.
    loss_sum: f64,
    /// The first batch: windows in it, and its first window's inputs.
    first_batch: usize,
    first_inputs: Vec<u32>,
}

pub fn run(flags: EvalFlags) -> Result<(), CliError> {
    if flags.batch == 0 {
        return Err(CliError::usage("eval: --batch must be at least 1"));
    }
    if flags.threads == Some(0) {
        return Err(CliError::usage("eval: --threads must be at least 1"));
    }
    if flags.dump_logits.is_some() && flags.device != EvalDevice::Cpu {
        return Err(CliError::usage(
            "eval: --dump-logits reads the f32 logits of the CPU forward (a device keeps bf16 logits and \
             overwrites them with their gradient); run it with --device cpu",
        ));
    }
    let threads = flags.threads.unwrap_or_else(default_threads);
    let (path, ckpt) = resolve_checkpoint(&flags.checkpoint)?;
    let cfg = ckpt.config.clone();
    let t = cfg.seq_len;
    let spec = DataSpec::from_os(&flags.data).map_err(|e| CliError::usage(e.to_string()))?;
    let data = Dataset::open(&spec, cfg.vocab_size).map_err(|e| data_error(e, &path, &ckpt))?;
    let scope = flags.split.scope();
    let mut windows = data.windows_in_order(scope, t).map_err(|e| {
        CliError::usage(format!(
            "--data {spec}: {e} (T = {t} is the checkpoint's sequence length)"
        ))
    })?;
    // Bits per byte only when a token is a byte; an unreadable --tokenizer is an error.
    let byte_level = match Codec::for_checkpoint(&path, flags.tokenizer.as_deref(), cfg.vocab_size)
    {
        // A byte-level codec and data read as bytes (a text file, which the
        // dataset's description says): not shards nor the embedded corpus,
        // whose tokens are not bytes.
        Ok(codec) => matches!(codec, Codec::Bytes) && data.describe().contains("byte-level"),
        Err(e) if flags.tokenizer.is_some() => return Err(e),
        Err(_) => false,
    };
    let batch = (flags.batch as u64).min(windows.len()) as usize;
    let (mut model, device_name) = EvalModel::new(&flags, &ckpt, batch, threads)?;
    let totals = evaluate(
        &mut model,
        &mut windows,
        t,
        batch,
        flags.dump_logits.as_deref(),
    )?;

    let loss = totals.loss_sum / totals.tokens as f64;
    let perplexity = loss.exp();
    let bits_per_byte = byte_level.then(|| loss / std::f64::consts::LN_2);
    let logits_shape = [totals.first_batch, t, cfg.vocab_size];
    if flags.json {
        let mut obj = serde_json::json!({
            "loss": loss,
            "perplexity": perplexity,
            "tokens": totals.tokens,
            "windows": totals.windows,
            "split": scope.name(),
            "checkpoint": path.display().to_string(),
            "checkpoint_step": ckpt.step,
            "data": spec.to_string(),
            "device": device_name,
            "bits_per_byte": bits_per_byte,
        });
        if let Some(file) = &flags.dump_logits {
            obj["logits_file"] = file.display().to_string().into();
            obj["logits_shape"] = serde_json::json!(logits_shape);
            obj["logits_dtype"] = "f32-le".into();
            // Row-major [B, T]: the inputs whose logits the file holds.
            obj["first_batch_input_ids"] =
                serde_json::json!(totals.first_inputs.chunks(t.max(1)).collect::<Vec<_>>());
        }
        println!("{obj}");
    } else {
        println!("checkpoint  {} (step {})", path.display(), ckpt.step);
        println!("data        {spec}, {} split", scope.name());
        println!("device      {device_name}");
        println!(
            "windows     {} of {} tokens ({} targets each)",
            totals.windows,
            t + 1,
            t
        );
        println!("tokens      {}", totals.tokens);
        println!("loss        {loss:.6} nats/token");
        println!("perplexity  {perplexity:.4}");
        if let Some(bpb) = bits_per_byte {
            println!("bits/byte   {bpb:.4}");
        }
        if let Some(file) = &flags.dump_logits {
            let ids: Vec<String> = totals
                .first_inputs
                .iter()
                .take(t)
                .map(u32::to_string)
                .collect();
            println!(
                "logits      {}: f32 little-endian, shape [{}, {}, {}] (B, T, V)",
                file.display(),
                logits_shape[0],
                logits_shape[1],
                logits_shape[2]
            );
            println!("first window input ids: {}", ids.join(" "));
        }
    }
    Ok(())
}

/// A data error, said in terms of this checkpoint: a token it cannot embed is
/// data tokenized for another model (exit 2).
fn data_error(e: ModelError, path: &Path, ckpt: &Checkpoint) -> CliError {
    match e {
        ModelError::DataTokenOutOfRange {
            path: file,
            offset,
            token,
            max_token,
            ..
        } => CliError::usage(format!(
            "{}: byte {offset}: token {token} is not below the vocabulary size {} of checkpoint {} \
             (the largest token in this file is {max_token}): this data was not tokenized for this model",
            file.display(),
            ckpt.config.vocab_size,
            path.display()
        )),
        ModelError::EmptyGlob { .. } | ModelError::Io { .. } => {
            CliError::usage(format!("--data: {e}"))
        }
        other => CliError::In {
            context: "--data".into(),
            source: Box::new(other.into()),
        },
    }
}

/// The trainer's forward and loss, on the CPU or a device, at one micro-batch shape.
enum EvalModel {
    Cpu {
        model: Box<CpuModel>,
        params: Vec<f32>,
    },
    Device(Box<DeviceModel>),
}

impl EvalModel {
    fn new(
        flags: &EvalFlags,
        ckpt: &Checkpoint,
        batch: usize,
        threads: usize,
    ) -> Result<(EvalModel, String), CliError> {
        let cfg = &ckpt.config;
        let spec = match flags.device {
            EvalDevice::Cpu => {
                let model =
                    CpuModel::new(cfg, batch, cfg.seq_len, threads).context("the CPU model")?;
                let name = format!("cpu ({threads} threads)");
                let params = ckpt.params.clone();
                let model = Box::new(model);
                return Ok((EvalModel::Cpu { model, params }, name));
            }
            EvalDevice::Cuda => DeviceSpec::Cuda(0),
            EvalDevice::Emu => DeviceSpec::Emu,
        };
        let device = Device::open(spec).with_context(|| format!("--device {spec}"))?;
        let name = device.name();
        let opt = &ckpt.optimizer;
        let hyper = OptimHyper {
            beta1: opt.beta1,
            beta2: opt.beta2,
            eps: opt.eps,
            weight_decay: opt.weight_decay,
        };
        let mut model = DeviceModel::new_with(
            device,
            cfg,
            batch,
            cfg.seq_len,
            StepOptions::default(),
            hyper,
        )
        .context("setting up the device forward")?;
        model
            .set_state(&ckpt.params, &opt.m, &opt.v, opt.step)
            .context("uploading the checkpoint's weights")?;
        Ok((EvalModel::Device(Box::new(model)), name))
    }

    /// The loss of every token of the batch into `row_losses` (B·T).
    fn row_losses(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        row_losses: &mut [f32],
    ) -> Result<(), CliError> {
        match self {
            EvalModel::Cpu { model, params } => {
                model.loss(params, inputs, targets).context("forward")?;
                row_losses.copy_from_slice(model.row_losses());
            }
            EvalModel::Device(model) => {
                model.loss(inputs, targets).context("forward")?;
                model
                    .read_row_losses(row_losses)
                    .context("reading the losses")?;
            }
        }
        Ok(())
    }

    fn logits(&self) -> Option<&[f32]> {
        match self {
            EvalModel::Cpu { model, .. } => Some(model.logits()),
            EvalModel::Device(_) => None,
        }
    }
}

/// Every window of `windows`, `batch` per forward, in order.
fn evaluate(
    model: &mut EvalModel,
    windows: &mut OrderedWindows,
    t: usize,
    batch: usize,
    dump_logits: Option<&Path>,
) -> Result<Totals, CliError> {
    let n = windows.len();
    let mut inputs = vec![0u32; batch * t];
    let mut targets = vec![0u32; batch * t];
    let mut rows = vec![0.0f32; batch * t];
    let mut window = vec![0u32; t + 1];
    let mut totals = Totals {
        windows: 0,
        tokens: 0,
        loss_sum: 0.0,
        first_batch: 0,
        first_inputs: Vec::new(),
    };
    let mut next = 0u64;
    while next < n {
        let real = (n - next).min(batch as u64) as usize;
        for row in 0..batch {
            let (x, y) = (
                &mut inputs[row * t..(row + 1) * t],
                &mut targets[row * t..(row + 1) * t],
            );
            if row < real {
                windows
                    .read(next + row as u64, &mut window)
                    .context("reading the data")?;
                x.copy_from_slice(&window[..t]);
                y.copy_from_slice(&window[1..]);
            } else {
                // Padding of a last partial batch: any valid inputs, no counted target.
                x.copy_from_slice(&window[..t]);
                y.fill(IGNORE_INDEX);
            }
        }
        model.row_losses(&inputs, &targets, &mut rows)?;
        for w in rows[..real * t].chunks_exact(t) {
            totals.loss_sum += w.iter().map(|&l| f64::from(l)).sum::<f64>();
        }
        if next == 0 {
            totals.first_batch = real;
            totals.first_inputs = inputs[..real * t].to_vec();
            if let Some(file) = dump_logits {
                let logits = model.logits().unwrap_or_default();
                let v = logits.len() / (batch * t);
                write_logits(file, &logits[..real * t * v])?;
            }
        }
        totals.windows += real as u64;
        totals.tokens += (real * t) as u64;
        next += real as u64;
    }
    Ok(totals)
}

/// `logits` as raw little-endian f32.
fn write_logits(path: &Path, logits: &[f32]) -> Result<(), CliError> {
    let mut bytes = Vec::with_capacity(logits.len() * 4);
    for x in logits {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    let mut f = std::fs::File::create(path).map_err(|e| CliError::io("create", path, e))?;
    f.write_all(&bytes)
        .map_err(|e| CliError::io("write", path, e))?;
    Ok(())
}
