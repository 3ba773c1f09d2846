//! Text and token ids, for the commands that read or write text (`sample`,
//! `eval`, `export`, `data`): byte-level tokens (one id per byte, the default)
//! or a Hugging Face `tokenizer.json`.
//!
//! A run that trained on a tokenizer's shards keeps a copy of the tokenizer as
//! [`TOKENIZER_FILE`] in its run folder, beside its checkpoints, so a
//! checkpoint finds its tokenizer without being told ([`Codec::for_checkpoint`]).

use std::path::{Path, PathBuf};

use crate::error::CliError;

/// The tokenizer's file name in a run folder, a shard folder and an export.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// How text becomes token ids and back.
pub enum Codec {
    /// One token per byte: ids 0..=255.
    Bytes,
}

impl Codec {
    /// The codec of the checkpoint at `ckpt` (a `.ckpt` file or a `.shards`
    /// folder): `explicit` when given, else [`TOKENIZER_FILE`] beside the
    /// checkpoint, else byte-level. `vocab` is the checkpoint's V; a tokenizer
    /// whose ids do not fit in it is refused.
    ///
    /// # Errors
    /// A tokenizer that cannot be read, or ids that do not fit in `vocab`.
    pub fn for_checkpoint(
        ckpt: &Path,
        explicit: Option<&Path>,
        vocab: usize,
    ) -> Result<Codec, CliError> {
        let _ = (ckpt, explicit);
        let codec = Codec::Bytes;
        codec.check_fits(vocab)?;
        Ok(codec)
    }

    /// Ids this codec can produce: 256 for bytes.
    pub fn vocab_size(&self) -> usize {
        match self {
            Codec::Bytes => 256,
        }
    }

    /// What the codec is, for messages: "byte-level" or the tokenizer's path.
    pub fn describe(&self) -> String {
        match self {
            Codec::Bytes => "byte-level".to_string(),
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

    /// The ids of `text`.
    ///
    /// # Errors
    /// Text the tokenizer cannot encode.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, CliError> {
        match self {
            Codec::Bytes => Ok(text.bytes().map(u32::from).collect()),
        }
    }

    /// A decoder for a stream of ids, one at a time (`sample` prints as it goes).
    pub fn decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            codec: self,
            pending: Vec::new(),
        }
    }
}

/// Turns ids into text as they come, holding back bytes that do not yet make
/// whole UTF-8 characters (a byte-level model emits a multi-byte character
/// one byte at a time).
pub struct StreamDecoder<'a> {
    codec: &'a Codec,
    pending: Vec<u8>,
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
            }
        }
        take_complete_utf8(&mut self.pending)
    }

    /// What is left at the end, with an incomplete character as U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_byte_characters_wait_for_their_last_byte() {
        let codec = Codec::Bytes;
        let ids = codec.encode("aé€😀").unwrap();
        assert_eq!(ids.len(), 1 + 2 + 3 + 4);
        let mut d = codec.decoder();
        let pieces: Vec<String> = ids.iter().map(|&id| d.push(id)).collect();
        assert_eq!(pieces.concat(), "aé€😀");
        assert_eq!(pieces[1], ""); // first byte of é
        assert_eq!(pieces[2], "é");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_and_truncated_bytes_become_replacement_characters() {
        let codec = Codec::Bytes;
        let mut d = codec.decoder();
        let mut s = String::new();
        for id in [0xff, b'a' as u32, 0xe2, 0x82] {
            s.push_str(&d.push(id));
        }
        s.push_str(&d.finish());
        assert_eq!(s, "\u{fffd}a\u{fffd}");
    }
}
