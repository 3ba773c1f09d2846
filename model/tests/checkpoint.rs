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
    ck.check_compatible(&small_config(), 2).unwrap();
    let mut cfg = small_config();
    cfg.dim = 8;
    cfg.n_layers = 2;
    let e = ck.check_compatible(&cfg, 4).unwrap_err();
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
            ("world size", "2", "4")
        ]
    );
    assert!(
        e.to_string()
            .contains("hidden size (--hidden) is 4 in the checkpoint but 8 in this run"),
        "{e}"
    );
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
