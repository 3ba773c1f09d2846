//! `frugal sample`: text from a checkpoint, one token at a time on the CPU with
//! a KV cache (`frugal_model::cpu::decode`), printed as it comes.
//!
//! Sampling, on the logits of each step: temperature 0 is greedy (the largest
//! logit, ties to the lowest id); otherwise softmax(logits / temperature), cut
//! to the `top-k` most likely ids, then to the smallest most-likely prefix whose
//! probability reaches `top-p` (nucleus), renormalised, and one draw from the
//! model crate's seeded RNG. exp is the model's `fastmath::exp` (not libm) and
//! the sums are in a fixed order, so a seed gives the same text on every
//! machine and at every thread count (the decoder's logits have the same bits
//! for any thread count).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use frugal_model::cpu::decode::KvDecoder;
use frugal_model::cpu::fastmath;
use frugal_model::rng::Rng;

use crate::cmd::eval::{resolve_checkpoint, EvalDevice};
use crate::codec::Codec;
use crate::error::{CliError, Context};
use crate::train::options::default_threads;

pub const ABOUT: &str = "\
Generate text from a checkpoint: the prompt is fed at once, then one token per step with a
KV cache, on the CPU, printed as it comes. Stops after --max-tokens, when the model's
context (its training sequence length) is full, or when it emits its tokenizer's end of
text (</s>, <|endoftext|>, ...; byte-level text has none). Temperature 0 is greedy; otherwise top-k,
then top-p, on the temperature-scaled distribution, drawn with --seed (the same seed gives
the same text on every machine and thread count).

Example:
  frugal sample runs/tiny --prompt 'Once upon a time' --max-tokens 100 --temperature 0.8 --top-p 0.95";

#[derive(Debug, clap::Args)]
pub struct SampleFlags {
    /// a .ckpt file, a step-N.shards folder, or a run folder (its newest checkpoint that verifies)
    pub checkpoint: PathBuf,
    /// the text to continue
    #[arg(long, value_name = "TEXT", conflicts_with = "prompt_tokens")]
    pub prompt: Option<String>,
    /// the prompt as token ids, separated by commas or spaces: "72,101,108"
    #[arg(long, value_name = "IDS")]
    pub prompt_tokens: Option<String>,
    /// the most tokens to generate
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub max_tokens: usize,
    /// softmax temperature; 0 = greedy (always the most likely token)
    #[arg(long, default_value_t = 0.8, value_name = "X")]
    pub temperature: f64,
    /// keep only the K most likely tokens (0 = all)
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// keep the fewest most likely tokens whose probability reaches P (1 = all)
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f64,
    /// the random seed of the draws
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// CPU threads (default: every core; the text does not depend on it)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// the tokenizer.json the model was trained with (default: the one beside the checkpoint, else byte-level)
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// print one JSON object at the end instead of streaming text
    #[arg(long)]
    pub json: bool,
    /// where to run: sampling runs on the CPU only
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: EvalDevice,
}

/// How the next token is chosen.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    pub temperature: f64,
    /// 0: no cut.
    pub top_k: usize,
    /// 1: no cut.
    pub top_p: f64,
}

/// The next token from `logits` (see the module docs); `rng` is drawn from
/// once unless greedy.
pub fn pick(logits: &[f32], s: Sampling, rng: &mut Rng) -> u32 {
    let greedy = || {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            // Strictly greater: a tie keeps the lower id.
            if x > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if s.temperature <= 0.0 {
        return greedy();
    }
    let inv_t = (1.0 / s.temperature) as f32;
    let max = fastmath::max(logits);
    // Most likely first, ties by id: a fixed order for the cuts and the sums.
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| f64::from(fastmath::exp((logits[i as usize] - max) * inv_t)))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut keep = weights.len();
    if s.top_p < 1.0 {
        let mut cum = 0.0;
        for (n, w) in weights.iter().enumerate() {
            cum += w / total;
            if cum >= s.top_p {
                keep = n + 1;
                break;
            }
        }
    }
    let kept: f64 = weights[..keep].iter().sum();
    let target = rng.next_f64() * kept;
    let mut cum = 0.0;
    for (n, w) in weights[..keep].iter().enumerate() {
        cum += w;
        if target < cum {
            return order[n];
        }
    }
    order[keep - 1]
}

/// The prompt's ids: --prompt through the codec, or --prompt-tokens as given.
fn prompt_ids(flags: &SampleFlags, codec: &Codec, vocab: usize) -> Result<Vec<u32>, CliError> {
    let ids = match (&flags.prompt, &flags.prompt_tokens) {
        (Some(text), _) => codec.encode(text)?,
        (None, Some(list)) => {
            let mut ids = Vec::new();
            for word in list.split([',', ' ']).filter(|w| !w.is_empty()) {
                let id: u32 = word.parse().map_err(|_| {
                    CliError::usage(format!(
                        "sample: --prompt-tokens: '{word}' is not a token id (give ids like 72,101,108)"
                    ))
                })?;
                if id as usize >= vocab {
                    return Err(CliError::usage(format!(
                        "sample: --prompt-tokens: id {id} is not below the model's vocabulary size {vocab}"
                    )));
                }
                ids.push(id);
            }
            ids
        }
        (None, None) => Vec::new(),
    };
    if ids.is_empty() {
        return Err(CliError::usage(
            "sample: the prompt is empty; give --prompt TEXT or --prompt-tokens IDS (the model has no start token)",
        ));
    }
    Ok(ids)
}

pub fn run(flags: SampleFlags) -> Result<(), CliError> {
    if flags.device != EvalDevice::Cpu {
        return Err(CliError::usage(
            "sample: sampling runs on the CPU (a KV-cache decoder of the f32 model); drop --device or pass --device cpu",
        ));
    }
    if flags.threads == Some(0) {
        return Err(CliError::usage("sample: --threads must be at least 1"));
    }
    if !(flags.temperature >= 0.0 && flags.temperature.is_finite()) {
        return Err(CliError::usage(format!(
            "sample: --temperature {} must be a finite number >= 0",
            flags.temperature
        )));
    }
    if !(flags.top_p > 0.0 && flags.top_p <= 1.0) {
        return Err(CliError::usage(format!(
            "sample: --top-p {} must be in (0, 1]",
            flags.top_p
        )));
    }
    let threads = flags.threads.unwrap_or_else(default_threads);
    let (path, ckpt) = resolve_checkpoint(&flags.checkpoint)?;
    let cfg = &ckpt.config;
    let codec = Codec::for_checkpoint(&path, flags.tokenizer.as_deref(), cfg.vocab_size)?;
    let prompt = prompt_ids(&flags, &codec, cfg.vocab_size)?;
    let context = cfg.seq_len;
    if prompt.len() > context {
        return Err(CliError::usage(format!(
            "sample: the prompt is {} tokens, longer than the model's context of {context} tokens \
             (its training sequence length); shorten it",
            prompt.len()
        )));
    }
    let mut decoder = KvDecoder::new(cfg, context, threads).context("the decoder")?;
    let sampling = Sampling {
        temperature: flags.temperature,
        top_k: flags.top_k,
        top_p: flags.top_p,
    };
    let mut rng = Rng::new(flags.seed);
    let mut out = std::io::stdout().lock();
    let mut text_out = codec.decoder();
    if !flags.json {
        let mut shown = codec.decoder();
        let mut s: String = prompt.iter().map(|&id| shown.push(id)).collect();
        s.push_str(&shown.finish());
        write!(out, "{s}").and_then(|()| out.flush()).ok();
    }
    let start = Instant::now();
    let mut logits = decoder
        .append(&ckpt.params, &prompt)
        .context("the prompt's forward")?
        .to_vec();
    let prefill_s = start.elapsed().as_secs_f64();
    let mut generated = Vec::new();
    let mut stop = "max-tokens";
    let end_ids = codec.end_ids();
    let decode_start = Instant::now();
    while generated.len() < flags.max_tokens {
        let id = pick(&logits, sampling, &mut rng);
        if end_ids.contains(&id) {
            stop = "end-of-text";
            break;
        }
        generated.push(id);
        let piece = text_out.push(id);
        if !flags.json {
            write!(out, "{piece}").and_then(|()| out.flush()).ok();
        }
        if generated.len() == flags.max_tokens {
            break;
        }
        if decoder.len() == context {
            stop = "context";
            break;
        }
        logits = decoder
            .append(&ckpt.params, &[id])
            .context("a decoding step")?
            .to_vec();
    }
    let rest = text_out.finish();
    let decode_s = decode_start.elapsed().as_secs_f64();
    // Steps after the first token: each one a forward of one token over the cache.
    let steps = generated.len().saturating_sub(1);
    let tokens_per_s = (steps > 0 && decode_s > 0.0).then(|| steps as f64 / decode_s);
    if flags.json {
        let obj = serde_json::json!({
            "checkpoint": path.display().to_string(),
            "checkpoint_step": ckpt.step,
            "prompt_tokens": prompt,
            "tokens": generated,
            "text": codec.decode(&generated)?,
            "stopped": stop,
            "seed": flags.seed,
            "temperature": flags.temperature,
            "top_k": flags.top_k,
            "top_p": flags.top_p,
            "prefill_s": prefill_s,
            "decode_tokens_per_s": tokens_per_s,
        });
        writeln!(out, "{obj}").ok();
    } else {
        writeln!(out, "{rest}").ok();
        if stop == "end-of-text" {
            eprintln!("stopped: the model ended the text (its tokenizer's end-of-text token)");
        }
        if stop == "context" {
            eprintln!(
                "stopped: the model's context of {context} tokens is full ({} prompt + {} generated)",
                prompt.len(),
                generated.len()
            );
        }
        let speed = tokens_per_s.map_or("n/a".to_string(), |v| format!("{v:.1} tokens/s"));
        eprintln!(
            "{} tokens generated; prompt {} tokens in {:.3} s; decoding {speed} ({threads} threads)",
            generated.len(),
            prompt.len(),
            prefill_s
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(temperature: f64, top_k: usize, top_p: f64) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
        }
    }

    #[test]
    fn greedy_takes_the_largest_logit_and_the_lowest_id_on_a_tie() {
        let mut rng = Rng::new(1);
        assert_eq!(pick(&[0.1, 3.0, -1.0, 3.0], s(0.0, 0, 1.0), &mut rng), 1);
        // top-k 1 and a tiny top-p keep only the most likely token.
        for _ in 0..20 {
            assert_eq!(pick(&[0.1, 3.0, -1.0, 3.0], s(1.0, 1, 1.0), &mut rng), 1);
            assert_eq!(pick(&[0.1, 3.0, -1.0, 2.9], s(5.0, 0, 1e-6), &mut rng), 1);
        }
    }

    #[test]
    fn draws_follow_the_distribution_within_the_cuts() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln(), -30.0];
        let mut rng = Rng::new(9);
        let mut counts = [0usize; 4];
        for _ in 0..60_000 {
            counts[pick(&logits, s(1.0, 0, 1.0), &mut rng) as usize] += 1;
        }
        // Probabilities 1/6, 2/6, 3/6 (and ~0).
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let got = counts[i] as f64 / 60_000.0;
            assert!((got - want).abs() < 0.01, "id {i}: {got} vs {want}");
        }
        // top-k 2 keeps ids 2 and 1 (3/5, 2/5); top-p 0.8 keeps the same two.
        for cut in [s(1.0, 2, 1.0), s(1.0, 0, 0.8)] {
            let mut counts = [0usize; 4];
            for _ in 0..20_000 {
                counts[pick(&logits, cut, &mut rng) as usize] += 1;
            }
            assert_eq!(counts[0] + counts[3], 0, "{cut:?}: {counts:?}");
            assert!(
                (counts[2] as f64 / 20_000.0 - 0.6).abs() < 0.02,
                "{counts:?}"
            );
        }
    }
}
