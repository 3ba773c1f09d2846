//! Text and token ids, for the commands that read or write text (`sample`,
//! `eval`, `export`, `data`): byte-level tokens (one id per byte, the default)
//! or a Hugging Face `tokenizer.json` (GPT-2-style byte-level BPE, LLaMA- and
//! Mistral-style sentencepiece BPE with byte fallback, or any other model the
//! `tokenizers` crate reads), loaded from the file alone: nothing is fetched.
//!
//! A run that trained on a tokenizer's shards keeps a copy of the tokenizer as
//! [`TOKENIZER_FILE`] in its run folder, beside its checkpoints, so a
//! checkpoint finds its tokenizer without being told ([`Codec::for_checkpoint`]).
//! A tokenizer is known by the SHA-256 of its file's bytes ([`sha256_hex`]):
//! the copies are byte for byte the same, so shards, run folders and exports
//! name the same hash.
//!
//! Pre-tokenizer regexes run on `fancy-regex` (pure Rust, no Oniguruma): it has
//! the look-ahead of GPT-2's `\s+(?!\S)` and the `\p{L}`/`\p{N}` classes and
//! `(?i:...)` groups of LLaMA 3's split pattern; LLaMA 1/2 and Mistral
//! tokenizers use no regex (a `Metaspace` pre-tokenizer or a `Prepend` +
//! `Replace` normalizer).

// `sample` and `eval` (other branches of issue 17) call the decoding half;
// on this branch only `data` and the tests do. Remove once they are merged.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::{decoders, pre_tokenizers, processors, AddedToken, Tokenizer};

use crate::error::CliError;

/// The tokenizer's file name in a run folder, a shard folder and an export.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The special token a trained byte-level BPE reserves (id 0), as GPT-2's
/// end of text; nothing inserts it, but a model or a sampler may use it.
pub const TRAINED_SPECIAL: &str = "<|endoftext|>";

/// How text becomes token ids and back.
pub enum Codec {
    /// One token per byte: ids 0..=255.
    Bytes,
    /// A Hugging Face `tokenizer.json`.
    Hf(Box<HfCodec>),
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokenizer's own Debug prints its whole vocabulary.
        write!(f, "Codec({}, V {})", self.describe(), self.vocab_size())
    }
}

/// A loaded `tokenizer.json` and what identifies it.
pub struct HfCodec {
    tokenizer: Tokenizer,
    path: PathBuf,
    sha256: String,
    /// One past the largest id, added tokens included.
    vocab: usize,
}

impl Codec {
    /// The codec of the checkpoint at `ckpt` (a `.ckpt` file or a `.shards`
    /// folder): `explicit` when given, else [`TOKENIZER_FILE`] beside the
    /// checkpoint, else byte-level. `vocab` is the checkpoint's V; a tokenizer
    /// whose ids do not fit in it is refused.
    ///
    /// # Errors
    /// A tokenizer that cannot be read (naming the file), or ids that do not
    /// fit in `vocab` (a usage error naming both sizes).
    pub fn for_checkpoint(
        ckpt: &Path,
        explicit: Option<&Path>,
        vocab: usize,
    ) -> Result<Codec, CliError> {
        let codec = match explicit
            .map(Path::to_path_buf)
            .or_else(|| tokenizer_beside(ckpt))
        {
            Some(path) => Codec::from_file(&path)?,
            None => Codec::Bytes,
        };
        codec.check_fits(vocab)?;
        Ok(codec)
    }

    /// Loads the Hugging Face tokenizer file at `path`.
    ///
    /// # Errors
    /// [`CliError::Io`] when it cannot be read, [`CliError::Tokenizer`] when
    /// the `tokenizers` crate cannot parse it; both name the file.
    pub fn from_file(path: &Path) -> Result<Codec, CliError> {
        let bytes = std::fs::read(path).map_err(|source| CliError::Io {
            action: "read the tokenizer",
            path: path.to_path_buf(),
            source,
        })?;
        Codec::from_json(&bytes, path)
    }

    /// A tokenizer from the bytes of a `tokenizer.json`; `path` is where they
    /// came from (or will be written), for messages.
    ///
    /// # Errors
    /// [`CliError::Tokenizer`] naming `path` when the bytes are not a tokenizer.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Codec, CliError> {
        let mut tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| CliError::Tokenizer {
            path: path.to_path_buf(),
            why: format!(
                "not a Hugging Face tokenizer.json the tokenizers crate can read ({e}); \
                 give the tokenizer.json of a model, or train one with \
                 'frugal data --train-tokenizer --vocab N'"
            ),
        })?;
        // A tokenizer.json may carry the truncation and padding of a model's
        // inputs (e.g. 512 tokens); text for shards or a prompt is encoded whole.
        tokenizer
            .with_truncation(None)
            .map_err(|e| CliError::Tokenizer {
                path: path.to_path_buf(),
                why: format!("cannot turn its truncation off: {e}"),
            })?;
        tokenizer.with_padding(None);
        let most = tokenizer
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        // The post-processor's special tokens (a TemplateProcessing's BOS) carry
        // ids of their own, which a damaged file may put past the vocabulary.
        let specials = tokenizer
            .encode("", true)
            .map(|e| e.get_ids().iter().max().map_or(0, |&m| m as usize + 1))
            .unwrap_or(0);
        let vocab = most.max(specials).max(tokenizer.get_vocab_size(true));
        if vocab == 0 {
            return Err(CliError::Tokenizer {
                path: path.to_path_buf(),
                why: "the tokenizer has an empty vocabulary".into(),
            });
        }
        Ok(Codec::Hf(Box::new(HfCodec {
            tokenizer,
            path: path.to_path_buf(),
            sha256: sha256_hex(bytes),
            vocab,
        })))
    }

    /// Ids this codec can produce: 256 for bytes, one past the largest id of a
    /// tokenizer (its added tokens included).
    pub fn vocab_size(&self) -> usize {
        match self {
            Codec::Bytes => 256,
            Codec::Hf(h) => h.vocab,
        }
    }

    /// The SHA-256 of the tokenizer file (hex), `None` for byte-level.
    pub fn sha256(&self) -> Option<&str> {
        match self {
            Codec::Bytes => None,
            Codec::Hf(h) => Some(&h.sha256),
        }
    }

    /// The tokenizer file, `None` for byte-level.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Codec::Bytes => None,
            Codec::Hf(h) => Some(&h.path),
        }
    }

    /// What the codec is, for messages: "byte-level" or the tokenizer's path
    /// and the start of its hash.
    pub fn describe(&self) -> String {
        match self {
            Codec::Bytes => "byte-level".to_string(),
            Codec::Hf(h) => format!("{} (sha256 {})", h.path.display(), short_hash(&h.sha256)),
        }
    }

    /// Refuses a codec whose ids do not fit in a model of `vocab` tokens.
    ///
    /// # Errors
    /// A usage error naming both sizes.
    pub fn check_fits(&self, vocab: usize) -> Result<(), CliError> {
        if self.vocab_size() > vocab {
            return Err(CliError::usage(format!(
                "the {} tokenizer has {} ids but the model's vocabulary is {vocab}: \
                 give the tokenizer the model was trained with (--tokenizer FILE)",
                self.describe(),
                self.vocab_size()
            )));
        }
        Ok(())
    }

    /// The ids of `text`, with the tokenizer's special tokens added as its
    /// post-processor says (a LLaMA tokenizer's `<s>` first; none for GPT-2).
    ///
    /// # Errors
    /// Text the tokenizer cannot encode (naming the tokenizer).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, CliError> {
        self.encode_with(text, Specials::Add)
    }

    /// As [`Codec::encode`], choosing whether special tokens are added (a
    /// long text encoded in pieces adds them to its first piece only).
    ///
    /// # Errors
    /// Text the tokenizer cannot encode (naming the tokenizer).
    pub fn encode_with(&self, text: &str, specials: Specials) -> Result<Vec<u32>, CliError> {
        match self {
            Codec::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Codec::Hf(h) => h
                .tokenizer
                .encode(text, specials == Specials::Add)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| h.failed("encode text", e)),
        }
    }

    /// The ids of each of `pieces`, in order, encoded in parallel; special
    /// tokens as [`Codec::encode_with`].
    ///
    /// # Errors
    /// Text the tokenizer cannot encode (naming the tokenizer).
    pub fn encode_pieces(
        &self,
        pieces: &[&str],
        specials: Specials,
    ) -> Result<Vec<Vec<u32>>, CliError> {
        match self {
            Codec::Bytes => Ok(pieces
                .iter()
                .map(|p| p.bytes().map(u32::from).collect())
                .collect()),
            Codec::Hf(h) => h
                .tokenizer
                .encode_batch(pieces.to_vec(), specials == Specials::Add)
                .map(|es| es.iter().map(|e| e.get_ids().to_vec()).collect())
                .map_err(|e| h.failed("encode text", e)),
        }
    }

    /// The text of `ids`, all at once (a tokenizer's special tokens left out;
    /// incomplete UTF-8 as U+FFFD).
    ///
    /// # Errors
    /// The tokenizer's decoder failed (naming the tokenizer).
    pub fn decode(&self, ids: &[u32]) -> Result<String, CliError> {
        match self {
            Codec::Bytes => {
                let bytes: Vec<u8> = ids.iter().filter_map(|&id| u8::try_from(id).ok()).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Codec::Hf(h) => h.decode(ids),
        }
    }

    /// The ids that end a text (`</s>`, `<|endoftext|>`, `<|end_of_text|>`, `<|eot_id|>`,
    /// `<eos>`) that this tokenizer has: `sample` stops when the model emits one. None for
    /// byte-level text, which has no end marker.
    pub fn end_ids(&self) -> Vec<u32> {
        match self {
            Codec::Bytes => Vec::new(),
            Codec::Hf(h) => END_TOKENS
                .iter()
                .filter_map(|t| h.tokenizer.token_to_id(t))
                .collect(),
        }
    }

    /// A decoder for a stream of ids, one at a time (`sample` prints as it goes).
    pub fn decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            codec: self,
            pending: Vec::new(),
            ids: Vec::new(),
            prefix: String::new(),
            prefix_ids: 0,
        }
    }
}

/// The end-of-text tokens of the common tokenizer families: LLaMA 1/2 and Mistral,
/// GPT-2 (and [`TRAINED_SPECIAL`]), LLaMA 3's base and instruct ends, Gemma.
const END_TOKENS: [&str; 5] = [
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<eos>",
];

/// Whether encoding adds the tokenizer's special tokens (BOS and the like).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Specials {
    Add,
    Omit,
}

impl HfCodec {
    fn decode(&self, ids: &[u32]) -> Result<String, CliError> {
        // Special tokens (BOS, EOS, control tokens) are not text: left out, as
        // a chat or a generation shows them; their ids say where they fell.
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| self.failed("decode ids", e))
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> CliError {
        CliError::Tokenizer {
            path: self.path.clone(),
            why: format!("cannot {what}: {e}"),
        }
    }
}

/// Turns ids into text as they come. Byte-level: holds back bytes that do not
/// yet make whole UTF-8 characters. A tokenizer: decodes a short window of
/// recent ids and emits only the text past what was already emitted, once it
/// does not end in U+FFFD (an incomplete character, e.g. the first of the
/// byte tokens of an emoji); the window keeps the last emitted ids as context
/// so that decoders that strip a leading space at the start of a text
/// (LLaMA's, Mistral's) do not strip it mid-stream.
pub struct StreamDecoder<'a> {
    codec: &'a Codec,
    /// Byte-level: bytes of an incomplete character.
    pending: Vec<u8>,
    /// Tokenizer: the window of ids; the first `prefix_ids` decode to `prefix`,
    /// already emitted.
    ids: Vec<u32>,
    prefix: String,
    prefix_ids: usize,
}

impl StreamDecoder<'_> {
    /// The text that `id` completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        match self.codec {
            // Ids above 255 (a model with a larger V that was trained on bytes) print nothing.
            Codec::Bytes => {
                if let Ok(b) = u8::try_from(id) {
                    self.pending.push(b);
                }
                take_complete_utf8(&mut self.pending)
            }
            Codec::Hf(h) => {
                self.ids.push(id);
                // A decoder error (none is known for the decoders in use) holds the ids back;
                // finish() says it with U+FFFD rather than failing a sample half-way.
                let Ok(text) = h.decode(&self.ids) else {
                    return String::new();
                };
                if text.ends_with(char::REPLACEMENT_CHARACTER) {
                    return String::new();
                }
                let new = new_text(&self.prefix, &text);
                if new.is_empty() {
                    return new;
                }
                // Keep the ids just emitted as the next window's context.
                self.ids.drain(..self.prefix_ids);
                self.prefix_ids = self.ids.len();
                self.prefix = h.decode(&self.ids).unwrap_or_default();
                new
            }
        }
    }

    /// What is left at the end, with an incomplete character as U+FFFD.
    pub fn finish(&mut self) -> String {
        match self.codec {
            Codec::Bytes => {
                let rest = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                rest
            }
            Codec::Hf(h) => {
                let rest = if self.ids.len() > self.prefix_ids {
                    let text = h
                        .decode(&self.ids)
                        .unwrap_or_else(|_| char::REPLACEMENT_CHARACTER.to_string());
                    new_text(&self.prefix, &text)
                } else {
                    String::new()
                };
                self.ids.clear();
                self.prefix.clear();
                self.prefix_ids = 0;
                rest
            }
        }
    }
}

/// The part of `text` after `prefix`. A decoder whose text for more ids does
/// not start with its text for fewer (none of the known ones) gives what
/// follows the longest common start, cut at a character boundary.
fn new_text(prefix: &str, text: &str) -> String {
    if let Some(rest) = text.strip_prefix(prefix) {
        return rest.to_string();
    }
    let mut common = prefix
        .bytes()
        .zip(text.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    while !text.is_char_boundary(common) {
        common -= 1;
    }
    text[common..].to_string()
}

/// Removes and returns the longest prefix of `bytes` that is complete UTF-8;
/// invalid sequences become U+FFFD, an incomplete tail stays.
fn take_complete_utf8(bytes: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                bytes.clear();
                return out;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&bytes[..good]));
                match e.error_len() {
                    // Incomplete at the end: wait for more bytes.
                    None => {
                        bytes.drain(..good);
                        return out;
                    }
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        bytes.drain(..good + bad);
                    }
                }
            }
        }
    }
}

/// [`TOKENIZER_FILE`] in the folder that holds the checkpoint `ckpt`, when present.
pub fn tokenizer_beside(ckpt: &Path) -> Option<PathBuf> {
    let dir = ckpt.parent()?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let path = dir.join(TOKENIZER_FILE);
    path.is_file().then_some(path)
}

/// The SHA-256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first 12 hex digits of a hash, for messages.
pub fn short_hash(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// Trains a GPT-2-style byte-level BPE of at most `vocab` ids on `pieces` and
/// returns its `tokenizer.json` bytes. Deterministic: the trainer breaks ties
/// between equally frequent pairs by the pair's ids, and the initial alphabet
/// (all 256 byte symbols) is sorted, so the same text gives the same bytes.
/// Id 0 is [`TRAINED_SPECIAL`]; ids 1..=256 are the bytes; merges follow, of
/// pairs seen at least twice (a small text may give fewer than `vocab` ids).
///
/// # Errors
/// `vocab` below 257, or the trainer's failure, as a message.
pub fn train_byte_level_bpe(pieces: &[&str], vocab: usize) -> Result<Vec<u8>, String> {
    let alphabet = pre_tokenizers::byte_level::ByteLevel::alphabet();
    if vocab < alphabet.len() + 1 {
        return Err(format!(
            "a byte-level BPE needs at least {} ids (the special token and 256 bytes), not {vocab}",
            alphabet.len() + 1
        ));
    }
    let byte_level = pre_tokenizers::byte_level::ByteLevel::new(false, true, true);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer
        .with_pre_tokenizer(Some(byte_level))
        .with_decoder(Some(decoders::byte_level::ByteLevel::default()))
        .with_post_processor(Some(processors::byte_level::ByteLevel::new(
            false, true, true,
        )));
    let trainer = BpeTrainer::builder()
        .vocab_size(vocab)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(alphabet.into_iter().collect())
        .special_tokens(vec![AddedToken::from(TRAINED_SPECIAL, true)])
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer
        .train(&mut trainer, pieces.iter())
        .map_err(|e| format!("training the tokenizer failed: {e}"))?;
    let json = tokenizer
        .to_string(true)
        .map_err(|e| format!("cannot serialize the trained tokenizer: {e}"))?;
    Ok(json.into_bytes())
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
