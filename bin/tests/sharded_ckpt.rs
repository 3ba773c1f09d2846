//! Sharded checkpoints as a user meets them: `frugal consolidate` assembles a
//! `.shards` set into the whole file `frugal train` itself writes, refuses to
//! overwrite, and names what is wrong with an incomplete or damaged set; a
//! set resumes `frugal train` like a whole file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use frugal_model::checkpoint::{self, sharded, Checkpoint};

mod common;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_frugal");

/// A model of ~165k parameters, so a few steps take a moment.
const S: &[&str] = &[
    "--layers",
    "2",
    "--hidden",
    "64",
    "--heads",
    "2",
    "--ffn",
    "172",
    "--seq",
    "32",
    "--batch",
    "4",
    "--threads",
    "1",
    "--val-every",
    "0",
    "--val-batches",
    "1",
];

fn frugal(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FRUGAL_PRICE_PER_GPU_HOUR")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .output()
        .unwrap()
}

fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--out", out.to_str().unwrap()];
    args.extend_from_slice(S);
    args.extend_from_slice(extra);
    frugal(&args)
}

/// Writes `ck` as a set of `bounds.len() - 1` parts (boundaries inside
/// tensors) into `dir`, as the ranks of a sharded run do.
fn write_set(dir: &Path, ck: &Checkpoint, bounds: &[usize]) -> PathBuf {
    let world = bounds.len() - 1;
    let set = dir.join(sharded::set_name(ck.step));
    let mut ck = ck.clone();
    ck.world_size = world;
    let mut parts = Vec::new();
    for rank in 0..world {
        let range = bounds[rank]..bounds[rank + 1];
        let mut part = ck.clone();
        part.params = ck.params[range.clone()].to_vec();
        part.optimizer.m = ck.optimizer.m[range.clone()].to_vec();
        part.optimizer.v = ck.optimizer.v[range.clone()].to_vec();
        let rec = sharded::save_part(
            &set,
            world,
            &sharded::PartRef {
                ckpt: &part,
                rank,
                range,
            },
        )
        .unwrap();
        parts.push(rec);
    }
    let m = sharded::Manifest {
        step: ck.step,
        world,
        params: ck.params.len(),
        parts,
    };
    sharded::commit(&set, &m).unwrap();
    set
}

fn thirds(n: usize) -> Vec<usize> {
    vec![0, n / 3 + 1, 2 * n / 3 + 7, n]
}

#[test]
fn consolidate_rebuilds_frugals_own_whole_checkpoint_and_never_overwrites() {
    let dir = scratch_in("sharded", "consolidate");
    let run = dir.join("run");
    assert_ok(&train(&run, &["--steps", "2"]));
    let whole_path = run.join(Checkpoint::file_name(2));
    let whole = checkpoint::load(&whole_path).unwrap();

    let sets = dir.join("sets");
    let set = write_set(&sets, &whole, &thirds(whole.params.len()));
    let o = frugal(&["consolidate", set.to_str().unwrap()]);
    assert_ok(&o);
    let (stdout, _) = text(&o);
    assert!(stdout.contains("3 parts of 3 ranks"), "{stdout}");
    // Next to the set, the same bytes frugal writes for this state (on 3 ranks).
    let out = sets.join(Checkpoint::file_name(2));
    let mut expect = whole.clone();
    expect.world_size = 3;
    assert_eq!(std::fs::read(&out).unwrap(), checkpoint::encode(&expect));
    let mut back = checkpoint::load(&out).unwrap();
    back.world_size = 1;
    assert_eq!(back, whole);
    assert_eq!(params_bits(&out), params_bits(&whole_path));

    // Run again: the output exists and is not overwritten (exit 2, named).
    let before = std::fs::read(&out).unwrap();
    std::fs::write(&out, b"mine").unwrap();
    let o = frugal(&["consolidate", set.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("step-00000002.ckpt exists") && err.contains("not overwritten"),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"mine");
    // --out elsewhere works, and leaves no temporary file.
    let other = dir.join("whole.ckpt");
    assert_ok(&frugal(&[
        "consolidate",
        set.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read(&other).unwrap(), before);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn consolidate_names_what_is_wrong_with_a_set() {
    let dir = scratch_in("sharded", "refuse");
    let run = dir.join("run");
    assert_ok(&train(&run, &["--steps", "1"]));
    let whole = checkpoint::load(&run.join(Checkpoint::file_name(1))).unwrap();
    let n = whole.params.len();
    let fresh = |name: &str| write_set(&dir.join(name), &whole, &thirds(n));
    let refused = |set: &Path, names: &[&str]| {
        let o = frugal(&["consolidate", set.to_str().unwrap()]);
        let err = assert_fails_cleanly(&o);
        for name in names {
            assert!(err.contains(name), "{name}: {err}");
        }
        assert!(
            !set.parent()
                .unwrap()
                .join(Checkpoint::file_name(1))
                .exists(),
            "nothing is written for a bad set"
        );
    };
    let set = fresh("nomanifest");
    std::fs::remove_file(set.join("manifest")).unwrap();
    refused(&set, &["manifest", "incomplete"]);
    let set = fresh("missing");
    std::fs::remove_file(set.join(sharded::part_name(2, 3))).unwrap();
    refused(&set, &["rank-00002-of-00003.part", "missing"]);
    let set = fresh("damaged");
    let p = set.join(sharded::part_name(1, 3));
    let mut bytes = std::fs::read(&p).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    refused(&set, &["rank-00001-of-00003.part", "checksum"]);
    let set = fresh("tiling");
    let mut m = sharded::read_manifest(&set).unwrap();
    m.parts[1].range.start += 4;
    std::fs::write(set.join("manifest"), sharded::encode_manifest(&m)).unwrap();
    refused(&set, &["manifest", "do not tile"]);
    // A whole file is not a set: a usage error.
    let o = frugal(&[
        "consolidate",
        run.join(Checkpoint::file_name(1)).to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("whole already"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_set_of_two_ranks_resumes_one_rank_with_the_same_bits() {
    // The state of step 2 as a 2-part set written by 2 ranks of --batch 2
    // (global batch 4), resumed on 1 rank of --batch 4: the same weights at
    // step 4 as resuming the whole file.
    let dir = scratch_in("sharded", "resume");
    let whole_run = dir.join("whole");
    assert_ok(&train(&whole_run, &["--steps", "2"]));
    let whole = checkpoint::load(&whole_run.join(Checkpoint::file_name(2))).unwrap();
    let mut two = whole.clone();
    two.loader.batch = 2;
    two.loader.world = 2;
    let n = whole.params.len();
    let set_run = dir.join("set");
    let set = write_set(&set_run, &two, &[0, n / 2 + 5, n]);
    assert_eq!(checkpoint::load(&set).unwrap().world_size, 2);
    // At another global batch it is refused, naming the flags that would match.
    let o = train(
        &set_run,
        &[
            "--steps",
            "4",
            "--grad-accum",
            "2",
            "--resume",
            set.to_str().unwrap(),
        ],
    );
    let err = assert_fails_cleanly(&o);
    assert!(
        err.contains("global batch") && err.contains("--batch 4 --grad-accum 1"),
        "{err}"
    );
    let o = train(
        &set_run,
        &["--steps", "4", "--resume", set.to_str().unwrap()],
    );
    assert_ok(&o);
    let (stdout, _) = text(&o);
    assert!(
        stdout.contains("resuming from") && stdout.contains(".shards"),
        "{stdout}"
    );
    assert_ok(&train(&whole_run, &["--steps", "4", "--resume", "auto"]));
    assert_eq!(
        params_bits(&set_run.join(Checkpoint::file_name(4))),
        params_bits(&whole_run.join(Checkpoint::file_name(4)))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
