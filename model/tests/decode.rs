//! The KV-cache decoder against the full forward: after every token, the
//! decoder's next-token logits equal those of [`CpuModel`] run over the whole
//! prefix, for a model with grouped-query attention (NKV < NH); and the
//! decoder's bits do not depend on the thread count or on how the sequence is
//! cut into pieces.

use frugal_model::config::Config;
use frugal_model::cpu::decode::KvDecoder;
use frugal_model::cpu::CpuModel;
use frugal_model::init::init_params;
use frugal_model::rng::Rng;

/// NH 4 over NKV 2 (two query heads per key/value head), HS 8, two layers.
fn gqa_config() -> Config {
    Config {
        vocab_size: 97,
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 48,
        seq_len: 40,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
    }
}

/// Initial weights scaled up, so attention is far from uniform and the logits
/// far from flat: a wrong position or head mapping then shows.
fn params(cfg: &Config) -> Vec<f32> {
    init_params(cfg, 11).iter().map(|w| w * 6.0).collect()
}

fn tokens(cfg: &Config, n: usize) -> Vec<u32> {
    let mut rng = Rng::new(5);
    (0..n)
        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
        .collect()
}

/// The logits after the last of `prefix`, from the full forward over it.
fn full_forward_last(cfg: &Config, params: &[f32], prefix: &[u32]) -> Vec<f32> {
    let t = prefix.len();
    let mut model = CpuModel::new(cfg, 1, t, 2).unwrap();
    let targets = vec![0u32; t];
    model.loss(params, prefix, &targets).unwrap();
    let v = cfg.vocab_size;
    model.logits()[(t - 1) * v..t * v].to_vec()
}

/// max |a − b| / max |b|: relative to the logits' scale.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// Relative tolerance of decoder vs full forward: both f32 with the same
/// matmul kernels, the attention summed in another order (a dot per key here,
/// a blocked GEMM there, with scaled-up weights); the worst observed is 2.9e-6.
const TOLERANCE: f32 = 1e-5;

#[test]
fn kv_cache_logits_equal_the_full_forward_at_every_step() {
    let cfg = gqa_config();
    let p = params(&cfg);
    let seq = tokens(&cfg, cfg.seq_len);
    let mut dec = KvDecoder::new(&cfg, cfg.seq_len, 2).unwrap();
    // A prompt of 5 at once, then one token per step up to the context.
    let mut worst = 0.0f32;
    let logits = dec.append(&p, &seq[..5]).unwrap().to_vec();
    let full = full_forward_last(&cfg, &p, &seq[..5]);
    worst = worst.max(rel_diff(&logits, &full));
    for t in 5..cfg.seq_len {
        let logits = dec.append(&p, &seq[t..t + 1]).unwrap().to_vec();
        let full = full_forward_last(&cfg, &p, &seq[..t + 1]);
        let d = rel_diff(&logits, &full);
        assert!(d < TOLERANCE, "position {t}: relative difference {d}");
        worst = worst.max(d);
    }
    assert_eq!(dec.len(), cfg.seq_len);
    // The logits must vary with the position, or the comparison proves little.
    let spread = full_forward_last(&cfg, &p, &seq[..2])
        .iter()
        .zip(full_forward_last(&cfg, &p, &seq[..3]))
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        spread > 0.1,
        "logits barely change with the prefix: {spread}"
    );
    eprintln!("worst relative difference, decoder vs full forward: {worst:e}");
}

#[test]
fn same_bits_for_any_thread_count_and_any_cut() {
    let cfg = gqa_config();
    let p = params(&cfg);
    let seq = tokens(&cfg, 24);
    let run = |threads: usize, cuts: &[usize]| {
        let mut dec = KvDecoder::new(&cfg, cfg.seq_len, threads).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        for &end in cuts {
            out.push(dec.append(&p, &seq[at..end]).unwrap().to_vec());
            at = end;
        }
        out
    };
    let one_by_one: Vec<usize> = (1..=24).collect();
    let a = run(1, &one_by_one);
    for threads in [2, 3, 8] {
        assert_eq!(a, run(threads, &one_by_one), "threads {threads}");
    }
    // Pieces of several rows take the row-split path; the last logits match
    // the one-by-one run's to rounding.
    let b = run(3, &[7, 8, 24]);
    assert!(rel_diff(&b[2], &a[23]) < TOLERANCE);
}

#[test]
fn refuses_a_piece_past_the_context_and_a_token_past_the_vocabulary() {
    let cfg = gqa_config();
    let p = params(&cfg);
    let mut dec = KvDecoder::new(&cfg, 8, 1).unwrap();
    let e = dec.append(&p, &tokens(&cfg, 9)).unwrap_err().to_string();
    assert!(e.contains("context"), "{e}");
    assert!(dec.is_empty(), "nothing cached after a refusal");
    let e = dec.append(&p, &[3, 97]).unwrap_err().to_string();
    assert!(e.contains("97"), "{e}");
    dec.append(&p, &tokens(&cfg, 8)).unwrap();
    assert!(dec.append(&p, &[1]).is_err(), "the context is full");
    dec.reset();
    assert!(dec.append(&p, &[1]).is_ok());
    assert!(KvDecoder::new(&cfg, cfg.seq_len + 1, 1).is_err());
}
