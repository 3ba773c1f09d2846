//! The grid: each axis a comma list, their product the configurations, and
//! the `frugal train` words each configuration runs with.
//!
//! Points that would measure the same thing twice are folded: on one device
//! the shard modes and comm backends are all plain training (the first value
//! given stands for them), and the CPU has one attention path (likewise).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt::Display;
use std::str::FromStr;

use frugal_comm::{ShardMode, Transport};
use frugal_model::config::Preset;

use super::record::Config;
use crate::flags::UsageError;
use frugal_model::config::Attention;

/// Most ranks a sweep starts on one host (as `frugal launch`).
pub const MAX_DEVICES: usize = 256;

/// Train flags a sweep sets itself, and the sweep flag to use instead.
const OWNED_BY_SWEEP: &[(&str, &str)] = &[
    ("--model", "--model"),
    ("--batch", "--batch"),
    ("--device", "--device"),
    ("--threads", "--threads"),
    ("--attention", "--attention"),
    ("--shard", "--shard"),
    ("--comm", "--comm"),
    ("--steps", "--steps and --warmup-steps"),
    ("--stop-after", "--steps"),
    ("--out", "--out"),
    ("--metrics", "--out (each run's metrics are kept under it)"),
    ("--resume", "--out (a re-run skips finished configurations)"),
    ("--dry-run", "--dry-run"),
    ("--world", "--devices"),
    ("--mem-target", "--batch"),
    ("--ckpt-every", "nothing: a sweep never checkpoints"),
    ("--val-every", "nothing: a sweep never validates"),
    ("--price-per-gpu-hour", "--prices"),
    ("--price-per-core-hour", "--prices"),
    ("--price-units", "--price-units"),
];

/// The backend a configuration trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Cpu,
    Cuda,
    Emu,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Emu => "emu",
        }
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "cuda" => Ok(Backend::Cuda),
            "emu" => Ok(Backend::Emu),
            s if s.starts_with("cuda:") => Err(format!(
                "'{s}' names one GPU; a sweep uses GPUs 0..D-1 for D devices (CUDA_VISIBLE_DEVICES picks them)"
            )),
            _ => Err(format!("'{s}' is not a device: cpu, cuda or emu")),
        }
    }
}

/// The grid axes as given (`None`: the flag was not given; its default applies).
#[derive(Clone, Debug, Default)]
pub struct Axes {
    pub model: Option<String>,
    pub batch: Option<String>,
    pub devices: Option<String>,
    pub attention: Option<String>,
    pub shard: Option<String>,
    pub comm: Option<String>,
    pub device: Option<String>,
    pub threads: Option<String>,
}

/// The parsed axes, each a non-empty list without repeats, in the order given.
#[derive(Clone, Debug)]
pub struct Grid {
    pub models: Vec<&'static Preset>,
    /// `None`: each model's preset batch.
    pub batches: Option<Vec<usize>>,
    pub devices: Vec<usize>,
    pub attentions: Vec<Attention>,
    pub shards: Vec<ShardMode>,
    pub comms: Vec<Transport>,
    pub backends: Vec<Backend>,
    /// `None`: the cores available divided among the ranks.
    pub threads: Option<Vec<usize>>,
}

/// `--flag a,b,c` as a list of `T`: no empty list or item, no repeats.
pub fn list<T>(flag: &str, text: &str) -> Result<Vec<T>, UsageError>
where
    T: FromStr + PartialEq,
    T::Err: Display,
{
    let example = format!("e.g. --{flag} a,b");
    if text.trim().is_empty() {
        return Err(UsageError(format!(
            "sweep: --{flag} is an empty list; give one or more values separated by commas ({example})"
        )));
    }
    let mut out: Vec<T> = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(UsageError(format!(
                "sweep: --{flag} '{text}' has an empty item; give values separated by single commas"
            )));
        }
        let v = item
            .parse::<T>()
            .map_err(|e| UsageError(format!("sweep: --{flag}: {e}")))?;
        if out.contains(&v) {
            return Err(UsageError(format!(
                "sweep: --{flag} '{text}' gives '{item}' twice; give each value once"
            )));
        }
        out.push(v);
    }
    Ok(out)
}

/// A positive whole number, as an axis value.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Positive(usize);

impl FromStr for Positive {
    type Err = String;
    fn from_str(s: &str) -> Result<Positive, String> {
        match s.parse::<usize>() {
            Ok(0) => Err("'0' is not allowed; values start at 1".into()),
            Ok(n) => Ok(Positive(n)),
            Err(_) => Err(format!("'{s}' is not a whole number")),
        }
    }
}

fn positives(flag: &str, text: &str) -> Result<Vec<usize>, UsageError> {
    Ok(list::<Positive>(flag, text)?
        .into_iter()
        .map(|p| p.0)
        .collect())
}

/// A preset name, as an axis value.
#[derive(Clone, Copy, Debug)]
struct Model(&'static Preset);

impl PartialEq for Model {
    fn eq(&self, other: &Model) -> bool {
        self.0.name == other.0.name
    }
}

impl FromStr for Model {
    type Err = String;
    fn from_str(s: &str) -> Result<Model, String> {
        Preset::by_name(s).map(Model).map_err(|e| e.to_string())
    }
}

impl Grid {
    /// Parses every axis; `default_backend` is what no `--device` means, and
    /// `job_world` the world of a job this sweep runs inside (srun, torchrun),
    /// which is then the only device count.
    ///
    /// # Errors
    /// A usage error naming the flag: an empty list, an unknown value, a repeat.
    pub fn parse(
        axes: &Axes,
        default_backend: Backend,
        job_world: Option<usize>,
    ) -> Result<Grid, UsageError> {
        let models = match &axes.model {
            Some(t) => list::<Model>("model", t)?
                .into_iter()
                .map(|m| m.0)
                .collect(),
            None => vec![Preset::by_name("tiny").map_err(|e| UsageError(e.to_string()))?],
        };
        let batches = axes
            .batch
            .as_deref()
            .map(|t| positives("batch", t))
            .transpose()?;
        let devices = match (&axes.devices, job_world) {
            (None, Some(w)) => vec![w],
            (None, None) => vec![1],
            (Some(t), world) => {
                let d = positives("devices", t)?;
                if let Some(&big) = d.iter().find(|&&d| d > MAX_DEVICES) {
                    return Err(UsageError(format!(
                        "sweep: --devices {big} is more than {MAX_DEVICES} ranks on one host"
                    )));
                }
                if let Some(w) = world {
                    if d != [w] {
                        return Err(UsageError(format!(
                            "sweep: this sweep runs inside a job of {w} ranks (WORLD_SIZE or SLURM_NTASKS), \
                             so every configuration uses {w} devices; drop --devices or give --devices {w}"
                        )));
                    }
                }
                d
            }
        };
        let parsed = |flag: &str, t: &Option<String>, default: &str| {
            list::<String>(flag, t.as_deref().unwrap_or(default))
        };
        let attentions = parsed("attention", &axes.attention, "flash")?
            .iter()
            .map(|s| {
                s.parse::<Attention>()
                    .map_err(|e| UsageError(format!("sweep: --attention: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shards = parsed("shard", &axes.shard, "none")?
            .iter()
            .map(|s| {
                s.parse::<ShardMode>()
                    .map_err(|e| UsageError(format!("sweep: --shard: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let comms = parsed("comm", &axes.comm, "socket")?
            .iter()
            .map(|s| {
                s.parse::<Transport>()
                    .map_err(|e| UsageError(format!("sweep: --comm: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let backends = match &axes.device {
            Some(t) => list::<Backend>("device", t)?,
            None => vec![default_backend],
        };
        let threads = axes
            .threads
            .as_deref()
            .map(|t| positives("threads", t))
            .transpose()?;
        if threads.is_some() && !backends.contains(&Backend::Cpu) {
            return Err(UsageError(
                "sweep: --threads is the CPU's axis; add cpu to --device or drop --threads".into(),
            ));
        }
        Ok(Grid {
            models,
            batches,
            devices,
            attentions,
            shards,
            comms,
            backends,
            threads,
        })
    }

    /// Every configuration, in a stable order (model, device, devices, batch,
    /// attention, shard, comm, threads), with repeats folded (see the module
    /// notes); `cores` divides among a CPU job's ranks when `--threads` is not given.
    pub fn configurations(&self, cores: usize) -> Vec<Config> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for model in &self.models {
            let batches = self
                .batches
                .clone()
                .unwrap_or_else(|| vec![model.default_batch]);
            for &backend in &self.backends {
                for &devices in &self.devices {
                    for &batch in &batches {
                        for &attention in &self.attentions {
                            for &shard in &self.shards {
                                for &comm in &self.comms {
                                    let threads: Vec<Option<usize>> = match (backend, &self.threads)
                                    {
                                        (Backend::Cpu, Some(t)) => {
                                            t.iter().map(|&t| Some(t)).collect()
                                        }
                                        (Backend::Cpu, None) => {
                                            vec![Some((cores / devices).max(1))]
                                        }
                                        _ => vec![None],
                                    };
                                    for threads in threads {
                                        let (attention, shard, comm) =
                                            self.fold(backend, devices, attention, shard, comm);
                                        let c = Config {
                                            model: model.name.to_string(),
                                            devices,
                                            batch,
                                            attention: attention.to_string(),
                                            shard: shard.name().to_string(),
                                            comm: comm.to_string(),
                                            device: backend.name().to_string(),
                                            threads,
                                        };
                                        if seen.insert(c.key()) {
                                            out.push(c);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The values a point is measured under: on one device the first shard
    /// mode and comm backend given, on the CPU the first attention given.
    fn fold(
        &self,
        backend: Backend,
        devices: usize,
        attention: Attention,
        shard: ShardMode,
        comm: Transport,
    ) -> (Attention, ShardMode, Transport) {
        let attention = if backend == Backend::Cpu {
            self.attentions[0]
        } else {
            attention
        };
        if devices == 1 {
            (attention, self.shards[0], self.comms[0])
        } else {
            (attention, shard, comm)
        }
    }
}

/// Refuses train flags after `--` that the sweep sets itself, naming the
/// sweep flag to use.
///
/// # Errors
/// "sweep: --steps after -- is the sweep's to set; use --steps and --warmup-steps".
pub fn check_train_flags(words: &[OsString]) -> Result<(), UsageError> {
    for w in words {
        let Some(w) = w.to_str() else {
            continue;
        };
        let flag = w.split('=').next().unwrap_or(w);
        if let Some((_, instead)) = OWNED_BY_SWEEP.iter().find(|(f, _)| *f == flag) {
            return Err(UsageError(format!(
                "sweep: {flag} after -- is the sweep's to set; use {instead}"
            )));
        }
    }
    Ok(())
}

/// The `frugal train` flags of one configuration (without `--metrics`/`--out`),
/// the fixed train flags last.
pub fn train_words(c: &Config, total_steps: usize, fixed: &[OsString]) -> Vec<OsString> {
    let mut w: Vec<OsString> = [
        "--model",
        &c.model,
        "--device",
        &c.device,
        "--batch",
        &c.batch.to_string(),
        "--steps",
        &total_steps.to_string(),
        "--ckpt-every",
        "never",
        "--val-every",
        "never",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if c.device != "cpu" {
        w.extend(["--attention".into(), OsString::from(&c.attention)]);
    }
    if let Some(t) = c.threads {
        w.extend(["--threads".into(), OsString::from(t.to_string())]);
    }
    if c.devices > 1 {
        w.extend([
            "--shard".into(),
            OsString::from(&c.shard),
            "--comm".into(),
            OsString::from(&c.comm),
        ]);
    }
    w.extend(fixed.iter().cloned());
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axes(pairs: &[(&str, &str)]) -> Axes {
        let mut a = Axes::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "model" => a.model = v,
                "batch" => a.batch = v,
                "devices" => a.devices = v,
                "attention" => a.attention = v,
                "shard" => a.shard = v,
                "comm" => a.comm = v,
                "device" => a.device = v,
                "threads" => a.threads = v,
                _ => unreachable!(),
            }
        }
        a
    }

    #[test]
    fn bad_lists_name_the_flag() {
        let e = |p: &[(&str, &str)]| Grid::parse(&axes(p), Backend::Cpu, None).unwrap_err().0;
        assert!(e(&[("batch", "")]).contains("--batch is an empty list"));
        assert!(e(&[("batch", "1,,2")]).contains("empty item"));
        assert!(e(&[("batch", "1,0")]).contains("'0' is not allowed"));
        assert!(e(&[("batch", "2,2")]).contains("'2' twice"));
        assert!(e(&[("model", "tiny,huge")]).contains("huge"));
        assert!(e(&[("device", "cpu,tpu")]).contains("'tpu' is not a device"));
        assert!(e(&[("device", "cuda:1")]).contains("names one GPU"));
        assert!(e(&[("attention", "flash,slow")]).contains("--attention"));
        assert!(e(&[("shard", "zero")]).contains("--shard"));
        assert!(e(&[("device", "emu"), ("threads", "1")]).contains("CPU's axis"));
        let job = Grid::parse(&axes(&[("devices", "2")]), Backend::Cpu, Some(4)).unwrap_err();
        assert!(job.0.contains("job of 4 ranks"), "{job}");
    }

    #[test]
    fn the_product_folds_points_that_measure_the_same() {
        let g = Grid::parse(
            &axes(&[
                ("batch", "1,2"),
                ("devices", "1,2"),
                ("shard", "none,full"),
                ("attention", "flash,vanilla"),
                ("device", "cpu,emu"),
                ("threads", "1"),
            ]),
            Backend::Cpu,
            None,
        )
        .unwrap();
        let c = g.configurations(2);
        // cpu: attention folded; 1 device: shard folded -> 2 batches x (1 + 2) = 6.
        // emu: 2 batches x 2 attentions x (1 + 2) = 12.
        assert_eq!(c.len(), 18);
        assert!(c
            .iter()
            .filter(|c| c.device == "cpu")
            .all(|c| c.attention == "flash"));
        assert!(c
            .iter()
            .filter(|c| c.devices == 1)
            .all(|c| c.shard == "none"));
        assert!(c
            .iter()
            .filter(|c| c.device == "emu")
            .all(|c| c.threads.is_none()));
        let keys: HashSet<_> = c.iter().map(Config::key).collect();
        assert_eq!(keys.len(), c.len());
    }

    #[test]
    fn threads_default_to_the_cores_shared_by_the_ranks() {
        let g = Grid::parse(&axes(&[("devices", "1,2,4")]), Backend::Cpu, None).unwrap();
        let t: Vec<_> = g.configurations(4).iter().map(|c| c.threads).collect();
        assert_eq!(t, [Some(4), Some(2), Some(1)]);
        let g = Grid::parse(&axes(&[]), Backend::Cpu, None).unwrap();
        assert_eq!(g.configurations(2)[0].batch, 8, "tiny's preset batch");
    }

    #[test]
    fn train_flags_the_sweep_sets_are_refused() {
        let w = |s: &str| s.split_whitespace().map(OsString::from).collect::<Vec<_>>();
        assert!(check_train_flags(&w("--seq 64 --layers 2")).is_ok());
        let e = check_train_flags(&w("--seq 64 --steps=5")).unwrap_err();
        assert!(
            e.0.contains("--steps after -- is the sweep's to set"),
            "{e}"
        );
        assert!(check_train_flags(&w("--metrics m.jsonl")).is_err());
    }
}
