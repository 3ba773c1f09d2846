//! `frugal arena`: prints the memory arena plan (every buffer's offset, the peak
//! and the breakdown by category) for a list of buffers from a file, or for the
//! buffers of a training step of a model preset: the device step's own program
//! (`frugal_model::device::program`), built without a device as `train --dry-run`
//! builds it, so both print the same plan.

use frugal_comm::ShardMode;
use frugal_model::config::{Attention, Config, Preset};
use frugal_model::device::program::Program;
use frugal_model::device::{StepOptions, StepTarget};
use frugal_runtime::arena::{self, plan, plan_fits, BufferRequest, Category, Plan};
use frugal_runtime::device::{Device, DeviceSpec};
use frugal_runtime::roofline::{known_gpu_names, lookup_gpu};
use frugal_runtime::RuntimeError;

use crate::error::CliError;
use crate::error::Context;
use crate::flags::{text, UsageError};
use crate::train::options::{MAX_DIM, MAX_PLAN_WORLD};

/// What `frugal arena --help` says first.
pub const ABOUT: &str = "\
Plans the step's memory arena: one allocation, 256-byte aligned offsets, and
buffers whose lifetimes do not overlap share bytes. Prints one line per buffer
(by offset), then the breakdown by category: 'requested' sums the buffers as if
nothing were shared, 'at peak' counts what is live at the busiest step.";

/// What `frugal arena --help` says last: the `--buffers` file format.
pub const BUFFERS_FORMAT: &str = "\
--buffers FILE: one buffer per line:  name category bytes first last [align]
  name      any word without spaces, unique
  category  params | grads | master | moments | activations | workspace | comm
  bytes     a number, optionally with K, M or G (powers of 1024)
  first, last
            first and last step-schedule index using the buffer (inclusive);
            buffers whose [first, last] ranges do not intersect may share memory
  align     optional power of two (at least 256 is used)
'#' starts a comment; blank lines are skipped. Example:
  wte      params       64M  0  9
  act0     activations  16M  1  8
  scratch  workspace     4M  3  3";

/// `frugal arena`'s flags.
#[derive(Debug, clap::Args)]
#[command(override_usage = "\
frugal arena --buffers FILE [--available BYTES] [--summary]
       frugal arena --model PRESET [--batch B] [--seq T] [--attention flash|vanilla]
                    [--gpu NAME] [--shard none|grad-op|full --world N]
                    [--comm-bucket BYTES] [--available BYTES] [--summary]
       frugal arena --model PRESET --mem-target F [--device auto|cpu|cuda[:N]|emu] [...]")]
pub struct ArenaFlags {
    /// plan the buffers listed in FILE, one per line (format below)
    #[arg(long, value_name = "FILE", value_parser = text::<String>())]
    buffers: Option<String>,
    /// plan the device training step of a preset (tiny, small, paper-100m,
    /// paper-500m, paper-1b, paper-2b), as train --dry-run does: bf16
    /// weights, fp32 master weights, grads and AdamW moments, bf16
    /// activations per layer
    #[arg(long, value_name = "PRESET", value_parser = text::<String>(), verbatim_doc_comment)]
    model: Option<String>,
    /// micro-batch per device (default: the preset's)
    #[arg(long, value_name = "B", value_parser = text::<usize>())]
    batch: Option<usize>,
    /// sequence length (default: the preset's)
    #[arg(long, value_name = "T", value_parser = text::<usize>())]
    seq: Option<usize>,
    /// flash (default) or vanilla (keeps B*NH*T*T scores per layer)
    #[arg(long, value_name = "A", value_parser = text::<String>())]
    attention: Option<String>,
    /// with --model: plan one rank of a job sharding its model state:
    /// none (DDP, default), grad-op (master weights and AdamW moments
    /// sharded) or full (the bf16 weights too, gathered unit by unit)
    #[arg(long, value_name = "MODE", value_parser = text::<String>(), verbatim_doc_comment)]
    shard: Option<String>,
    /// with --model: the ranks of the job --shard splits the state over (default 1)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    world: Option<usize>,
    /// with --model: plan the step a GPU of this model runs (h100-sxm,
    /// a100-80gb, ...): its architecture's kernels, e.g. on sm_90 the
    /// wgmma matmul and flash forward, which allocate differently (no
    /// split-K workspace); default: the sm_80 step, or with --mem-target
    /// the --device's own. Example: --model small --gpu h100-sxm
    #[arg(long, value_name = "NAME", value_parser = text::<String>(), verbatim_doc_comment)]
    gpu: Option<String>,
    /// bytes of one gradient all-reduce bucket (default 0: one device)
    #[arg(long, value_name = "N", value_parser = text::<String>())]
    comm_bucket: Option<String>,
    /// check the plan against N bytes (K/M/G suffixes allowed);
    /// with --model, name the largest batch that fits
    #[arg(long, value_name = "N", value_parser = text::<String>(), verbatim_doc_comment)]
    available: Option<String>,
    /// with --model: the largest batch (up to 1024) whose plan fits
    /// under fraction F of the device's free memory (--device, default
    /// auto; emu's capacity is FRUGAL_EMU_MEMORY_GIB, default 16)
    #[arg(long, value_name = "F", value_parser = text::<f64>(), verbatim_doc_comment)]
    mem_target: Option<f64>,
    /// the device whose free memory --mem-target divides: auto, cpu, cuda[:N] or emu
    #[arg(long, value_name = "D", default_value = "auto", value_parser = text::<DeviceSpec>())]
    device: DeviceSpec,
    /// print only the breakdown
    #[arg(long)]
    summary: bool,
}

fn parse_bytes(flag: &str, s: &str) -> Result<u64, UsageError> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            UsageError(format!(
                "arena: --{flag} '{s}' is not a byte count like 4096 or 80G"
            ))
        })
}

fn print_plan(p: &Plan, summary: bool) {
    if summary {
        print!("{}", p.breakdown_table());
    } else {
        print!("{}", p.table());
    }
}

pub fn run(flags: ArenaFlags) -> Result<(), CliError> {
    let ArenaFlags {
        buffers,
        model,
        batch,
        seq,
        attention,
        shard,
        world,
        comm_bucket,
        available,
        mem_target,
        device,
        summary,
        gpu,
    } = flags;
    let gpu_target = match gpu {
        None => None,
        Some(word) => {
            let facts = lookup_gpu(&word).ok_or_else(|| {
                UsageError(format!(
                    "arena: --gpu '{word}' is not a GPU frugal knows; known: {}",
                    known_gpu_names().join(", ")
                ))
            })?;
            Some((facts.label, crate::cmd::plan::memory::target(facts)))
        }
    };
    let shard = match shard {
        None => ShardMode::None,
        Some(word) => word.parse::<ShardMode>().map_err(|_| {
            UsageError(format!(
                "arena: --shard '{word}' is not one of none, grad-op, full"
            ))
        })?,
    };
    let world = match world {
        None => 1,
        Some(n) if (1..=MAX_PLAN_WORLD).contains(&n) => n,
        Some(n) => {
            return Err(UsageError(format!(
                "arena: --world {n} must be between 1 and {MAX_PLAN_WORLD}"
            ))
            .into())
        }
    };
    let sharding = crate::train::target::sharding(shard, world);
    let attention = match attention {
        None => Attention::Flash,
        Some(word) => word.parse::<Attention>().map_err(|_| {
            UsageError(format!(
                "arena: --attention '{word}' is not flash or vanilla"
            ))
        })?,
    };
    let bucket = match comm_bucket {
        Some(s) => parse_bytes("comm-bucket", &s)?,
        None => 0,
    };
    let available = match available {
        Some(s) => Some(parse_bytes("available", &s)?),
        None => None,
    };
    if let Some(f) = mem_target {
        if !(f > 0.0 && f <= 1.0) {
            return Err(UsageError(format!("arena: --mem-target {f} is not in (0, 1]")).into());
        }
    }

    match (buffers, model) {
        (Some(_), None) if gpu_target.is_some() => Err(UsageError(
            "arena: --gpu plans a --model's step for that GPU; a --buffers list is planned as given"
                .into(),
        )
        .into()),
        (Some(file), None) => {
            let text = std::fs::read_to_string(&file).map_err(|source| CliError::BufferList {
                file: file.clone(),
                source,
            })?;
            let requests = arena::parse_buffers(&text).context(file.as_str())?;
            let p = plan(&requests)?;
            print_plan(&p, summary);
            if let Some(avail) = available {
                plan_fits(&p, avail)?;
                println!("fits in {avail} bytes");
            }
            Ok(())
        }
        (None, Some(name)) => {
            let preset = Preset::by_name(&name).map_err(|e| UsageError(format!("arena: {e}")))?;
            let cfg = preset.config();
            let batch = batch.unwrap_or(preset.default_batch);
            let seq = seq.unwrap_or(cfg.seq_len);
            if batch == 0 || seq == 0 {
                return Err(
                    UsageError("arena: --batch and --seq must be at least 1".into()).into(),
                );
            }
            // As `train` bounds them: far above any real run, low enough that the sizes
            // stay arithmetic (an estimate is printed, nothing is allocated).
            for (flag, v) in [("batch", batch), ("seq", seq)] {
                if v > MAX_DIM {
                    return Err(
                        UsageError(format!("arena: --{flag} {v} is more than {MAX_DIM}")).into(),
                    );
                }
            }
            let mut cfg = cfg;
            cfg.seq_len = seq;
            let mut step = StepRequests {
                cfg: &cfg,
                options: StepOptions {
                    sharding,
                    ..StepOptions::deterministic(attention)
                },
                bucket,
                target: gpu_target.map(|(_, t)| t),
            };
            // Built once up front so that a config the step cannot run is refused with the
            // step's own words (the batch search only passes runtime errors on).
            let asked = step.at(batch)?;

            if let Some(f) = mem_target {
                let dev = Device::open(device)?;
                // The step this device runs, unless --gpu names another.
                if step.target.is_none() {
                    step.target = dev.facts().map(crate::cmd::plan::memory::target);
                }
                let budget = dev.mem_budget(f)?;
                let (b, p) = arena::largest_batch_that_fits(1024, budget, |b| step.searched(b))?;
                let p = p.labelled(sharding.labels());
                let batch = b;
                println!(
                    "model {} (parameters: {}), batch {batch}, seq {seq}, attention {} (the {} step program's buffers, planned without a device)",
                    preset.name,
                    cfg.param_count(),
                    attention,
                    step.arch_words()
                );
                println!("{}", sharding.describe());
                print_plan(&p, summary);
                println!(
                    "--mem-target {f}: batch {b} is the largest that fits in {budget} bytes ({f} of {} free on {})",
                    dev.memory_info().map(|m| m.free).unwrap_or(0),
                    dev.name()
                );
                return Ok(());
            }
            println!(
                "model {} (parameters: {}), batch {batch}, seq {seq}, attention {} (the {} step program's buffers{}, planned without a device)",
                preset.name,
                cfg.param_count(),
                attention,
                step.arch_words(),
                gpu_target.map_or(String::new(), |(label, _)| format!(" for {label}"))
            );
            println!("{}", sharding.describe());
            match available {
                None => {
                    let p = plan(&asked)?.labelled(sharding.labels());
                    print_plan(&p, summary);
                }
                Some(avail) => {
                    let p = arena::plan_for_batch(batch, avail, |b| step.searched(b))?
                        .labelled(sharding.labels());
                    print_plan(&p, summary);
                    println!("fits in {avail} bytes");
                }
            }
            Ok(())
        }
        (Some(_), Some(_)) => {
            Err(UsageError("arena: give --buffers or --model, not both".into()).into())
        }
        (None, None) => Err(CliError::usage_with_help(
            "arena",
            "arena: give --buffers FILE or --model PRESET",
        )),
    }
}

/// The device step's requests for one model at any batch, with the all-reduce buckets
/// `--comm-bucket` adds (two of them, live from the start of the backward to the end).
struct StepRequests<'a> {
    cfg: &'a Config,
    options: StepOptions,
    bucket: u64,
    /// The GPU whose step is planned (`None`: the sm_80 step).
    target: Option<StepTarget>,
}

impl StepRequests<'_> {
    /// Which step the plan is of, for the header ("sm_90").
    fn arch_words(&self) -> String {
        format!("sm_{}", self.target.map_or(80, |t| t.arch))
    }

    fn at(&self, batch: usize) -> Result<Vec<BufferRequest>, frugal_model::ModelError> {
        let seq = self.cfg.seq_len;
        let prog = match self.target {
            Some(t) => Program::plan_only_for(self.cfg, batch, seq, self.options, t)?,
            None => Program::plan_only(self.cfg, batch, seq, self.options)?,
        };
        let mut requests = prog.requests();
        if self.bucket > 0 {
            let last = requests.iter().map(|r| r.last_use).max().unwrap_or(0);
            requests.push(BufferRequest::new(
                "comm.buckets",
                Category::CommBuckets,
                self.bucket.saturating_mul(2),
                prog.backward_start(),
                last,
            ));
        }
        Ok(requests)
    }

    /// [`StepRequests::at`] for the arena's batch search, which passes runtime errors on.
    fn searched(&self, batch: usize) -> Result<Vec<BufferRequest>, RuntimeError> {
        self.at(batch).map_err(|e| RuntimeError::BadRequest {
            name: "device step".into(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args as _, FromArgMatches as _};

    fn args(words: &[&str]) -> ArenaFlags {
        let command = ArenaFlags::augment_args(clap::Command::new("arena"));
        let matches = command
            .try_get_matches_from(std::iter::once("arena").chain(words.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"));
        ArenaFlags::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn plans_a_buffer_file_and_refuses_what_does_not_fit() {
        let dir = std::env::temp_dir().join(format!("frugal-arena-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("buffers.txt");
        std::fs::write(
            &file,
            "w params 1M 0 9\na activations 2M 1 4\nb activations 2M 5 8\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        run(args(&["--buffers", f])).unwrap();
        // a and b share: 3 MiB fits, 4 MiB would be needed without sharing.
        run(args(&["--buffers", f, "--available", "3M"])).unwrap();
        match run(args(&["--buffers", f, "--available", "2M"])) {
            Err(e @ CliError::Runtime(_)) => {
                assert!(e.to_string().contains("3145728 bytes"), "{e}")
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        std::fs::write(&file, "w params lots 0 9\n").unwrap();
        match run(args(&["--buffers", f])) {
            Err(e @ CliError::In { .. }) => assert!(e.to_string().contains("line 1"), "{e}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn model_estimates_name_the_largest_batch() {
        run(args(&["--model", "tiny", "--batch", "4", "--summary"])).unwrap();
        match run(args(&[
            "--model",
            "paper-1b",
            "--batch",
            "64",
            "--available",
            "80G",
        ])) {
            Err(e @ CliError::Runtime(_)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("batch 64 needs") && msg.contains("largest batch that fits is"),
                    "{msg}"
                )
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(matches!(
            run(args(&["--model", "nope"])),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            run(args(&[])),
            Err(CliError::UsageWithHelp { .. })
        ));
        assert!(matches!(
            run(args(&["--model", "tiny", "--mem-target", "0"])),
            Err(CliError::Usage(_))
        ));
    }
}
