//! Checkpoints: round trip, atomic save and pruning, rejection of truncated
//! and damaged files (every byte position), fallback to the newest good one,
//! and the compatibility check.

use std::path::{Path, PathBuf};

use frugal_model::checkpoint::{self, crc32, Checkpoint, OptimizerState, Provenance, Segment};
use frugal_model::config::{Config, ParamLayout, Preset};
use frugal_model::data::{DataSpec, Dataset, LoaderState, Split};
use frugal_model::rng::Rng;
use frugal_model::schedule::CosineSchedule;
use frugal_model::ModelError;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("frugal-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A model small enough that a checkpoint is ~2 KB, so every byte can be flipped.
fn small_config() -> Config {
    Config {
        vocab_size: 8,
        dim: 4,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        ffn_dim: 6,
        seq_len: 4,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
    }
}

fn sample(cfg: Config, step: u64, best: Option<f64>) -> Checkpoint {
    let n = ParamLayout::new(&cfg).total();
    let mut rng = Rng::new(step);
    let mut draw = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
    Checkpoint {
        config: cfg,
        world_size: 2,
        step,
        seed: 1234,
        params: draw(n),
        optimizer: OptimizerState {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
            m: draw(n),
            v: draw(n),
        },
        schedule: CosineSchedule {
            max_lr: 3e-4,
            min_lr: 3e-5,
            warmup_steps: 10,
            total_steps: 100,
        },
        loader: LoaderState {
            split: Split::Train,
            seed: 1234,
            consumed: step * 16,
            windows_per_epoch: 999,
            batch: 8,
            seq: 4,
            world: 2,
        },
        rng: Rng::new(99).state(),
        provenance: Provenance {
            run_id: 0xfeed_0000 + step,
            lineage: vec![
                Segment {
                    run_id: 3,
                    start_step: 0,
                },
                Segment {
                    run_id: 0xfeed_0000 + step,
                    start_step: step / 2,
                },
            ],
            clip: 1.0,
            grad_accum: 2,
            data_fingerprint: 0xabcdef,
            data: "shards/*.bin".to_string(),
        },
        usd_spent: 0.125 * step as f64,
        tokens_seen: step * 64,
        wall_seconds: 1.5 * step as f64,
        best_val_loss: best,
    }
}

#[test]
fn crc32_matches_the_standard_check_value() {
    // The CRC-32/ISO-HDLC check value of "123456789" (catalogue of CRCs).
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
    // Sliced and byte-wise paths agree at every split point.
    let data: Vec<u8> = (0..100u32).map(|i| (i * 31 % 251) as u8).collect();
    for cut in 0..data.len() {
        let mut c = checkpoint::Crc32::new();
        c.update(&data[..cut]);
        c.update(&data[cut..]);
        assert_eq!(c.finish(), crc32(&data));
    }
}

#[test]
fn save_then_load_round_trips_every_field() {
    let dir = temp_dir("roundtrip");
    for best in [None, Some(2.75)] {
        let ck = sample(small_config(), 7, best);
        let path = checkpoint::save(&dir, &ck).unwrap();
        assert_eq!(path.file_name().unwrap(), "step-00000007.ckpt");
        let back = checkpoint::load(&path).unwrap();
        assert_eq!(back, ck);
        assert_eq!(checkpoint::encode(&ck), std::fs::read(&path).unwrap());
        assert_eq!(
            checkpoint::decode(&path, &std::fs::read(&path).unwrap()).unwrap(),
            ck
        );
    }
    // Only finished checkpoints remain: no temporary files.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["step-00000007.ckpt".to_string()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_preset_sized_checkpoint_round_trips() {
    let dir = temp_dir("tiny");
    let ck = sample(Preset::by_name("tiny").unwrap().config(), 100, Some(1.9));
    let path = checkpoint::save(&dir, &ck).unwrap();
    assert_eq!(checkpoint::load(&path).unwrap(), ck);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn assert_rejected(path: &Path, bytes: &[u8], what: &str) {
    let err = match checkpoint::decode(path, bytes) {
        Ok(_) => panic!("{what}: a damaged checkpoint was accepted"),
        Err(e) => e,
    };
    assert!(
        matches!(err, ModelError::CheckpointCorrupt { .. }),
        "{what}: {err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{what}: {err}"
    );
}

#[test]
fn every_flipped_byte_is_rejected() {
    let good = checkpoint::encode(&sample(small_config(), 3, Some(1.0)));
    assert!(good.len() > 500 && good.len() < 10_000, "{}", good.len());
    let name = Path::new("run/step-00000003.ckpt");
    for i in 0..good.len() {
        for mask in [0x01u8, 0x80, 0xFF] {
            let mut bad = good.clone();
            bad[i] ^= mask;
            assert_rejected(name, &bad, &format!("byte {i} ^ {mask:#x}"));
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    let good = checkpoint::encode(&sample(small_config(), 3, None));
    let name = Path::new("step-00000003.ckpt");
    for len in 0..good.len() {
        assert_rejected(name, &good[..len], &format!("truncated to {len}"));
    }
    let mut longer = good.clone();
    longer.push(0);
    assert_rejected(name, &longer, "one byte appended");
}

#[test]
fn lengths_are_checked_before_allocating() {
    let good = checkpoint::encode(&sample(small_config(), 3, None));
    let name = Path::new("x.ckpt");
    // A payload length near 2^64 must not overflow or allocate.
    let mut bad = good.clone();
    bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = checkpoint::decode(name, &bad).unwrap_err();
    assert!(e.to_string().contains("length field"), "{e}");
    // An array count of 2^61 with a valid checksum (as a buggy writer could
    // produce): refused from the byte count, not by trying to allocate 8 EiB.
    let mut bad = good[..good.len() - 4].to_vec();
    let n = ParamLayout::new(&small_config()).total();
    let params_count_at = good.len() - 4 - 3 * 8 - 3 * 4 * n;
    assert_eq!(
        &bad[params_count_at..params_count_at + 8],
        &(n as u64).to_le_bytes()
    );
    bad[params_count_at..params_count_at + 8].copy_from_slice(&(1u64 << 61).to_le_bytes());
    let crc = crc32(&bad);
    bad.extend_from_slice(&crc.to_le_bytes());
    let e = checkpoint::decode(name, &bad).unwrap_err();
    assert!(
        e.to_string().contains("claims 2305843009213693952 values"),
        "{e}"
    );
}

#[test]
fn contents_must_fit_the_config() {
    let dir = temp_dir("fit");
    let mut ck = sample(small_config(), 5, None);
    ck.params.pop();
    let path = checkpoint::save(&dir, &ck).unwrap();
    let e = checkpoint::load(&path).unwrap_err();
    assert!(
        e.to_string().contains("parameters") && e.to_string().contains("step-00000005"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn save_touches_nothing_else_and_provenance_reads_without_the_arrays() {
    let dir = temp_dir("keep");
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    for step in 1..=3 {
        checkpoint::save(&dir, &sample(small_config(), step, None)).unwrap();
    }
    let steps: Vec<u64> = checkpoint::list(&dir)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![1, 2, 3]);
    assert!(dir.join("notes.txt").exists());
    let path = dir.join("step-00000003.ckpt");
    let (step, prov) = checkpoint::read_provenance(&path).unwrap();
    assert_eq!(step, 3);
    assert_eq!(prov, sample(small_config(), 3, None).provenance);
    let ck = sample(small_config(), 3, None);
    assert_eq!(
        checkpoint::encoded_len(&ck),
        std::fs::metadata(&path).unwrap().len()
    );
    let n = ParamLayout::new(&small_config()).total() as u64;
    assert!(checkpoint::size_bound(n, 2, 9) >= checkpoint::encoded_len(&ck));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lineage_membership() {
    let lineage = [
        Segment {
            run_id: 7,
            start_step: 0,
        },
        Segment {
            run_id: 9,
            start_step: 50,
        },
    ];
    // Run 7's checkpoints up to the branch point belong; after it they are an abandoned branch.
    assert!(Provenance::contains(&lineage, 7, 10));
    assert!(Provenance::contains(&lineage, 7, 50));
    assert!(!Provenance::contains(&lineage, 7, 60));
    // The last run is open-ended; its steps start after the branch point.
    assert!(Provenance::contains(&lineage, 9, 60));
    assert!(Provenance::contains(&lineage, 9, 1000));
    assert!(!Provenance::contains(&lineage, 9, 50));
    assert!(!Provenance::contains(&lineage, 8, 60));
    // Run 0 is "unknown" (a version-1 file): on no lineage, even one that names it.
    let from_v1 = [
        Segment {
            run_id: 0,
            start_step: 0,
        },
        Segment {
            run_id: 9,
            start_step: 50,
        },
    ];
    assert!(!Provenance::contains(&from_v1, 0, 40));
    assert!(Provenance::contains(&from_v1, 9, 51));
}

#[test]
fn version_1_files_still_load_with_unknown_provenance() {
    let mut ck = sample(small_config(), 4, Some(2.5));
    let v2 = checkpoint::encode(&ck);
    // Rebuild the version-1 bytes: header with version 1, the payload without
    // the provenance block, then the CRC.
    let prov_len = checkpoint::encode(&ck).len() - {
        let mut bare = ck.clone();
        bare.provenance = Provenance::default();
        checkpoint::encode(&bare).len()
    };
    let arrays = 3 * (8 + 4 * ck.params.len());
    let payload_v2 = v2.len() - 28;
    let head_end = 24 + payload_v2 - arrays; // end of the provenance block
    let bare_prov = 8 + 8 + 8 + 8 + 8 + 8; // run id, count, clip, accum, fingerprint, label length
    let prov_total = bare_prov + 16 * ck.provenance.lineage.len() + ck.provenance.data.len();
    assert_eq!(prov_total - bare_prov, prov_len);
    let mut v1 = Vec::new();
    v1.extend_from_slice(&v2[..8]);
    v1.extend_from_slice(&1u32.to_le_bytes());
    v1.extend_from_slice(&0u32.to_le_bytes());
    v1.extend_from_slice(&((payload_v2 - prov_total) as u64).to_le_bytes());
    v1.extend_from_slice(&v2[24..head_end - prov_total]);
    v1.extend_from_slice(&v2[head_end..24 + payload_v2]);
    let crc = checkpoint::crc32(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    let back = checkpoint::decode(Path::new("v1.ckpt"), &v1).unwrap();
    assert_eq!(back.provenance.run_id, 0);
    assert!(back.provenance.lineage.is_empty() && back.provenance.clip.is_nan());
    ck.provenance = back.provenance.clone();
    assert_eq!(back.params, ck.params);
    assert_eq!(back.optimizer, ck.optimizer);
    assert_eq!(back.loader, ck.loader);
}

#[test]
fn latest_valid_falls_back_past_damaged_and_truncated_files() {
    let dir = temp_dir("latest");
    assert!(checkpoint::latest_valid(&dir.join("absent"))
        .unwrap()
        .is_none());
    assert!(checkpoint::latest_valid(&dir).unwrap().is_none());
    for step in [10, 20, 30] {
        checkpoint::save(&dir, &sample(small_config(), step, None)).unwrap();
    }
    let (path, ck) = checkpoint::latest_valid(&dir).unwrap().unwrap();
    assert_eq!(
        (ck.step, path.file_name().unwrap().to_str().unwrap()),
        (30, "step-00000030.ckpt")
    );
    // Truncate 30, flip a byte of 20: the newest good one is 10.
    let p30 = dir.join("step-00000030.ckpt");
    let bytes = std::fs::read(&p30).unwrap();
    std::fs::write(&p30, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load(&p30).unwrap_err();
    assert!(
        e.to_string().contains("step-00000030.ckpt") && e.to_string().contains("truncated"),
        "{e}"
    );
    let p20 = dir.join("step-00000020.ckpt");
    let mut bytes = std::fs::read(&p20).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x10;
    std::fs::write(&p20, bytes).unwrap();
    let e = checkpoint::load(&p20).unwrap_err();
    assert!(
        e.to_string().contains("step-00000020.ckpt") && e.to_string().contains("checksum"),
        "{e}"
    );
    let (_, ck) = checkpoint::latest_valid(&dir).unwrap().unwrap();
    assert_eq!(ck.step, 10);
    assert_eq!(ck, sample(small_config(), 10, None));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn incompatible_runs_are_told_what_differs() {
    let ck = sample(small_config(), 1, None);
    // Saved by 2 ranks x batch 8 x 2 micro-batches = 32 windows per step.
    ck.check_compatible(&small_config(), 2, 8, 2).unwrap();
    // The same ranks and batch resume whatever --grad-accum (a noted change).
    ck.check_compatible(&small_config(), 2, 8, 3).unwrap();
    // Another world size at the same global batch resumes.
    ck.check_compatible(&small_config(), 1, 16, 2).unwrap();
    ck.check_compatible(&small_config(), 4, 8, 1).unwrap();
    ck.check_compatible(&small_config(), 4, 2, 4).unwrap();
    let mut cfg = small_config();
    cfg.dim = 8;
    cfg.n_layers = 2;
    let e = ck.check_compatible(&cfg, 4, 8, 2).unwrap_err();
    let ModelError::CheckpointMismatch { diffs } = &e else {
        panic!("{e}")
    };
    let fields: Vec<(&str, &str, &str)> = diffs
        .iter()
        .map(|d| (d.field, d.checkpoint.as_str(), d.run.as_str()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("hidden size (--hidden)", "4", "8"),
            ("layers (--layers)", "1", "2"),
            (
                "global batch (ranks x --batch x --grad-accum)",
                "2 x 8 x 2 = 32",
                "4 x 8 x 2 = 64 (on 4 ranks --batch 8 --grad-accum 1 or --batch 4 --grad-accum 2 \
                 or --batch 2 --grad-accum 4 would match)"
            )
        ]
    );
    assert!(
        e.to_string()
            .contains("hidden size (--hidden) is 4 in the checkpoint but 8 in this run"),
        "{e}"
    );
    // No split of 32 windows over 3 ranks: says so.
    let e = ck.check_compatible(&small_config(), 3, 8, 2).unwrap_err();
    assert!(
        e.to_string()
            .contains("no --batch and --grad-accum make 32 on 3 ranks"),
        "{e}"
    );
    // A version-1 file does not know its micro-batches: its world size stays.
    let mut v1 = ck.clone();
    v1.provenance.grad_accum = 0;
    v1.check_compatible(&small_config(), 2, 8, 2).unwrap();
    v1.check_compatible(&small_config(), 2, 8, 1).unwrap();
    let e = v1.check_compatible(&small_config(), 1, 16, 2).unwrap_err();
    assert!(e.to_string().contains("version-1"), "{e}");
}

#[test]
fn loader_position_survives_a_checkpoint() {
    let dir = temp_dir("loader");
    let ds = Dataset::open(&DataSpec::Default, 512).unwrap();
    let (b, t) = (2, 8);
    let mut loader = ds.loader(Split::Train, b, t, 0, 1, 77).unwrap();
    let (mut x, mut y) = (vec![0u32; b * t], vec![0u32; b * t]);
    for _ in 0..3 {
        loader.next_batch(&mut x, &mut y).unwrap();
    }
    let mut ck = sample(small_config(), 3, None);
    ck.loader = loader.state();
    let path = checkpoint::save(&dir, &ck).unwrap();
    loader.next_batch(&mut x, &mut y).unwrap();
    let mut resumed = ds.loader(Split::Train, b, t, 0, 1, 77).unwrap();
    resumed
        .restore(&checkpoint::load(&path).unwrap().loader)
        .unwrap();
    let (mut x2, mut y2) = (vec![0u32; b * t], vec![0u32; b * t]);
    resumed.next_batch(&mut x2, &mut y2).unwrap();
    assert_eq!((x, y), (x2, y2));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------- sharded ---

use frugal_model::checkpoint::sharded::{self, Manifest, PartRef};

/// The part of `ck` that covers `range` (the arrays sliced, every other field whole).
fn part_of(ck: &Checkpoint, range: std::ops::Range<usize>) -> Checkpoint {
    let mut p = ck.clone();
    p.params = ck.params[range.clone()].to_vec();
    p.optimizer.m = ck.optimizer.m[range.clone()].to_vec();
    p.optimizer.v = ck.optimizer.v[range].to_vec();
    p
}

/// Writes `ck` as a sharded set cut at `bounds` (world + 1 boundaries) into
/// `dir` as the trainer does: every rank its part, then rank 0 reads the
/// others' records from disk and commits the manifest.
fn save_set(dir: &Path, ck: &Checkpoint, bounds: &[usize]) -> PathBuf {
    let world = bounds.len() - 1;
    let set = dir.join(sharded::set_name(ck.step));
    let mut ck = ck.clone();
    ck.world_size = world;
    for rank in 0..world {
        let range = bounds[rank]..bounds[rank + 1];
        let part = part_of(&ck, range.clone());
        let rec = sharded::save_part(
            &set,
            world,
            &PartRef {
                ckpt: &part,
                rank,
                range,
            },
        )
        .unwrap();
        assert_eq!(
            sharded::read_part_record(&set, rank, world).unwrap(),
            Some(rec)
        );
    }
    let parts = (0..world)
        .map(|r| sharded::read_part_record(&set, r, world).unwrap().unwrap())
        .collect();
    let m = Manifest {
        step: ck.step,
        world,
        params: ck.params.len(),
        parts,
    };
    sharded::commit(&set, &m).unwrap();
    set
}

/// Boundaries over `n` for `world` ranks that fall inside tensors (odd
/// offsets), with an empty part when there are four ranks.
fn odd_bounds(n: usize, world: usize) -> Vec<usize> {
    match world {
        1 => vec![0, n],
        2 => vec![0, n / 2 + 3, n],
        3 => vec![0, 7, n / 3 + 5, n],
        _ => vec![0, 13, 13, n / 2 + 1, n],
    }
}

fn bits(ck: &Checkpoint) -> Vec<u32> {
    ck.params
        .iter()
        .chain(&ck.optimizer.m)
        .chain(&ck.optimizer.v)
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn sharded_sets_assemble_to_the_whole_checkpoint_on_any_world_size() {
    let dir = temp_dir("sets");
    let n = ParamLayout::new(&small_config()).total();
    for world in 1..=4 {
        let mut ck = sample(small_config(), 10 + world as u64, Some(1.5));
        ck.world_size = world;
        let set = save_set(&dir, &ck, &odd_bounds(n, world));
        assert_eq!(
            set.file_name().unwrap(),
            sharded::set_name(ck.step).as_str()
        );
        let back = checkpoint::load(&set).unwrap();
        assert_eq!(bits(&back), bits(&ck), "world {world}");
        assert_eq!(back, ck, "world {world}");
        checkpoint::verify(&set).unwrap();
        let (step, prov) = checkpoint::read_provenance(&set).unwrap();
        assert_eq!((step, &prov), (ck.step, &ck.provenance));
        // No temporary file is left in the set.
        let mut names: Vec<String> = std::fs::read_dir(&set)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = (0..world).map(|r| sharded::part_name(r, world)).collect();
        want.push(sharded::MANIFEST.to_string());
        want.sort();
        assert_eq!(names, want);
    }
    // list() sees the sets as checkpoints, latest_valid takes the newest.
    let steps: Vec<u64> = checkpoint::list(&dir)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![11, 12, 13, 14]);
    assert_eq!(checkpoint::latest_valid(&dir).unwrap().unwrap().1.step, 14);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Expects `load` (and `verify`) of `set` to fail naming `file` and saying `why`.
fn assert_set_refused(set: &Path, file: &str, why: &str) {
    for e in [
        checkpoint::load(set).unwrap_err(),
        checkpoint::verify(set).unwrap_err(),
    ] {
        let text = e.to_string();
        assert!(matches!(e, ModelError::CheckpointCorrupt { .. }), "{text}");
        assert!(
            text.contains(file) && text.contains(why),
            "{file} / {why}: {text}"
        );
    }
}

#[test]
fn damaged_or_incomplete_sets_are_refused_naming_the_file() {
    let dir = temp_dir("badsets");
    let n = ParamLayout::new(&small_config()).total();
    let fresh = |name: &str| {
        let d = dir.join(name);
        let set = save_set(&d, &sample(small_config(), 5, None), &odd_bounds(n, 3));
        (d, set)
    };
    // No manifest: incomplete.
    let (_, set) = fresh("nomanifest");
    std::fs::remove_file(set.join("manifest")).unwrap();
    assert_set_refused(&set, "manifest", "incomplete");
    // A part truncated.
    let (_, set) = fresh("truncated");
    let p1 = set.join(sharded::part_name(1, 3));
    let bytes = std::fs::read(&p1).unwrap();
    std::fs::write(&p1, &bytes[..bytes.len() - 9]).unwrap();
    assert_set_refused(&set, "rank-00001-of-00003.part", "truncated");
    // A flipped byte in a part's arrays.
    let (_, set) = fresh("flipped");
    let p2 = set.join(sharded::part_name(2, 3));
    let mut bytes = std::fs::read(&p2).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x04;
    std::fs::write(&p2, bytes).unwrap();
    assert_set_refused(&set, "rank-00002-of-00003.part", "checksum");
    // A missing part.
    let (_, set) = fresh("missing");
    std::fs::remove_file(set.join(sharded::part_name(0, 3))).unwrap();
    assert_set_refused(&set, "rank-00000-of-00003.part", "missing");
    // An extra part (of another world size) in the folder.
    let (_, set) = fresh("extra");
    std::fs::copy(
        set.join(sharded::part_name(0, 3)),
        set.join(sharded::part_name(3, 4)),
    )
    .unwrap();
    assert_set_refused(&set, "rank-00003-of-00004.part", "extra part");
    // A part replaced by one of another save of the same size: its CRC differs from the manifest's.
    let (_, set) = fresh("replaced");
    let other = dir.join("other");
    let other_set = save_set(
        &other,
        &sample(small_config(), 5, Some(3.0)),
        &odd_bounds(n, 3),
    );
    std::fs::copy(
        other_set.join(sharded::part_name(1, 3)),
        set.join(sharded::part_name(1, 3)),
    )
    .unwrap();
    assert_set_refused(&set, "rank-00001-of-00003.part", "manifest says");
    // Overlapping ranges: refused when committing, and in a manifest on disk
    // (rewritten with a valid CRC, as a buggy writer could).
    let (_, set) = fresh("overlap");
    let mut m = sharded::read_manifest(&set).unwrap();
    m.parts[1].range.start -= 2;
    let e = sharded::commit(&set, &m).unwrap_err();
    assert!(e.to_string().contains("overlaps"), "{e}");
    std::fs::write(set.join("manifest"), sharded::encode_manifest(&m)).unwrap();
    assert_set_refused(&set, "manifest", "overlaps");
    // Ranges that stop short of the model.
    let mut m = sharded::read_manifest(&fresh("short").1).unwrap();
    m.parts[2].range.end -= 1;
    let e = sharded::commit(&dir.join("short").join(sharded::set_name(5)), &m).unwrap_err();
    assert!(e.to_string().contains("do not tile"), "{e}");
    // A part file where a whole checkpoint is expected, and the reverse.
    let e = checkpoint::load(&set.join(sharded::part_name(0, 3))).unwrap_err();
    assert!(e.to_string().contains("load its .shards folder"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn latest_valid_skips_an_incomplete_newer_set() {
    let dir = temp_dir("incomplete");
    let n = ParamLayout::new(&small_config()).total();
    checkpoint::save(&dir, &sample(small_config(), 10, None)).unwrap();
    save_set(&dir, &sample(small_config(), 20, None), &odd_bounds(n, 2));
    let newer = save_set(&dir, &sample(small_config(), 30, None), &odd_bounds(n, 2));
    assert_eq!(checkpoint::latest_valid(&dir).unwrap().unwrap().1.step, 30);
    // Step 30's save died before its manifest: step 20's set is the newest.
    std::fs::remove_file(newer.join("manifest")).unwrap();
    let (path, ck) = checkpoint::latest_valid(&dir).unwrap().unwrap();
    assert_eq!(ck.step, 20);
    assert_eq!(path.file_name().unwrap(), "step-00000020.shards");
    assert!(checkpoint::read_provenance(&newer).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_damaged_manifest_byte_and_truncation_is_refused() {
    let m = Manifest {
        step: 7,
        world: 2,
        params: 100,
        parts: vec![
            sharded::PartRecord {
                rank: 0,
                range: 0..37,
                bytes: 900,
                crc: 0xdead_beef,
            },
            sharded::PartRecord {
                rank: 1,
                range: 37..100,
                bytes: 1200,
                crc: 0x0123_4567,
            },
        ],
    };
    let good = sharded::encode_manifest(&m);
    let name = Path::new("set/manifest");
    assert_eq!(sharded::parse_manifest(name, &good).unwrap(), m);
    for i in 0..good.len() {
        for mask in [0x01u8, 0x20, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= mask;
            let e = sharded::parse_manifest(name, &bad).unwrap_err();
            assert!(e.to_string().contains("set/manifest"), "byte {i}: {e}");
        }
    }
    for len in 0..good.len() {
        assert!(
            sharded::parse_manifest(name, &good[..len]).is_err(),
            "truncated to {len}"
        );
    }
}

#[test]
fn restoring_at_another_world_size_continues_the_same_global_windows() {
    // 12 windows per step: 1 x 12, 2 x 6, 3 x 4 (and 3 ranks x 2 x 2 micro-batches).
    let ds = Dataset::open(&DataSpec::Default, 512).unwrap();
    let t = 8;
    // The whole sequence of windows of steps 3..6, as one rank of batch 12 takes them.
    let mut one = ds.loader(Split::Train, 12, t, 0, 1, 5).unwrap();
    let mut x = vec![0u32; 12 * t];
    let mut y = vec![0u32; 12 * t];
    for _ in 0..3 {
        one.next_batch(&mut x, &mut y).unwrap();
    }
    let saved = one.state();
    let mut expect = Vec::new();
    for _ in 0..3 {
        one.next_batch(&mut x, &mut y).unwrap();
        expect.push(x.clone());
    }
    for (world, batch, accum) in [(1, 12, 1), (2, 6, 1), (3, 4, 1), (3, 2, 2), (4, 3, 1)] {
        let mut ranks: Vec<_> = (0..world)
            .map(|r| {
                let mut l = ds.loader(Split::Train, batch, t, r, world, 5).unwrap();
                l.restore(&saved).unwrap();
                l
            })
            .collect();
        for (step, want) in expect.iter().enumerate() {
            // Each step's windows, gathered in global order: micro-batch k of
            // rank r holds positions k·world·B + r·B ..
            let mut got = Vec::new();
            for _ in 0..accum {
                for l in ranks.iter_mut() {
                    let (mut xb, mut yb) = (vec![0u32; batch * t], vec![0u32; batch * t]);
                    l.next_batch(&mut xb, &mut yb).unwrap();
                    got.extend(xb);
                }
            }
            assert_eq!(
                &got, want,
                "world {world} batch {batch} x {accum}: step {step}"
            );
        }
    }
    // A split that does not fall on this run's batches is refused.
    let mut five = ds.loader(Split::Train, 5, t, 0, 1, 5).unwrap();
    assert!(matches!(
        five.restore(&saved),
        Err(ModelError::LoaderStateMismatch { .. })
    ));
}
