//! Text to token ids for `frugal data`: a file is cut into pieces of about
//! [`PIECE_BYTES`] at places where the tokenizers in use would split words
//! anyway, and the pieces are encoded in parallel batches, so that a large
//! file never becomes one giant `Encoding` (the crate keeps strings and
//! offsets per token, some hundred bytes each).

use std::path::Path;

use crate::codec::{self, Codec, Specials};
use crate::error::CliError;

/// Target size of one piece of text encoded at once.
pub const PIECE_BYTES: usize = 64 << 10;
/// Pieces encoded in one parallel batch: bounds the memory of the encodings.
const BATCH_PIECES: usize = 64;

/// `bytes` (read from `path`) as text, or an error naming the file and the
/// byte where it stops being UTF-8.
///
/// # Errors
/// [`CliError::Tokenizer`] (exit 1) for bytes that are not UTF-8.
pub fn as_text<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, CliError> {
    std::str::from_utf8(bytes).map_err(|e| CliError::Tokenizer {
        path: path.to_path_buf(),
        why: format!(
            "byte {} is not UTF-8 text; a tokenizer encodes text: convert the file to UTF-8, \
             or leave out --tokenizer/--train-tokenizer for byte-level tokens",
            e.valid_up_to()
        ),
    })
}

/// Cuts `text` into pieces of about `target` bytes whose concatenation is
/// `text`. A cut goes, by preference: after a newline that is followed by a
/// character that is not white space (both GPT-2's regex and sentencepiece
/// split there); else just before the last white space that precedes a word
/// (`" word"` stays whole, as the regex keeps it); else at a character
/// boundary. It is looked for from `target` bytes on, up to `16 × target`;
/// a rest shorter than that with no such place stays whole.
pub fn pieces(text: &str, target: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > target {
        let cut = cut_point(rest, target);
        let (piece, tail) = rest.split_at(cut);
        out.push(piece);
        rest = tail;
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

/// Where to cut `rest` (longer than `target`): a byte index in
/// `target..=rest.len()` on a character boundary (see [`pieces`]).
fn cut_point(rest: &str, target: usize) -> usize {
    let limit = target.saturating_mul(16).min(rest.len());
    let mut start = target;
    while !rest.is_char_boundary(start) {
        start += 1;
    }
    let window = &rest[start..limit.max(start)];
    let mut after_space = None;
    let mut prev: Option<(usize, char)> = None;
    for (i, c) in window.char_indices() {
        if let Some((pi, p)) = prev {
            if !c.is_whitespace() {
                if p == '\n' {
                    return start + i;
                }
                if p.is_whitespace() && after_space.is_none() {
                    after_space = Some(start + pi);
                }
            }
        }
        prev = Some((i, c));
    }
    match after_space {
        // Never a zero-length piece: the space must not sit at the piece's start.
        Some(cut) if cut > 0 => cut,
        // No good place before the end: the rest (at most 16 × target) stays whole.
        _ if limit == rest.len() => rest.len(),
        _ => start.max(1),
    }
}

/// The ids of `text` (the contents of `path`), encoded piece by piece with
/// the tokenizer's special tokens (e.g. LLaMA's `<s>`) added once, before the
/// first piece.
///
/// # Errors
/// The tokenizer's failure, naming the file.
pub fn encode_text(codec: &Codec, path: &Path, text: &str) -> Result<Vec<u32>, CliError> {
    let all = pieces(text, PIECE_BYTES);
    let in_file = |e: CliError| CliError::In {
        context: format!("encoding {}", path.display()),
        source: Box::new(e),
    };
    let mut ids = codec.encode_with(all[0], Specials::Add).map_err(in_file)?;
    for batch in all[1..].chunks(BATCH_PIECES) {
        for piece in codec
            .encode_pieces(batch, Specials::Omit)
            .map_err(in_file)?
        {
            ids.extend_from_slice(&piece);
        }
    }
    // Shards are checked against V when trained on; a tokenizer that emits an
    // id past its own vocabulary is refused here, where the cause is known.
    let vocab = codec.vocab_size();
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(CliError::Tokenizer {
            path: codec.path().unwrap_or(path).to_path_buf(),
            why: format!(
                "encoding {} gave id {bad}, past the tokenizer's vocabulary of {vocab} ids; \
                 the tokenizer file is inconsistent",
                path.display()
            ),
        });
    }
    Ok(ids)
}

/// Trains a byte-level BPE of at most `vocab` ids on `texts` (cut into the
/// same pieces as they are encoded in) and returns its `tokenizer.json` bytes.
///
/// # Errors
/// A usage error for a `vocab` too small to hold the bytes; the trainer's failure.
pub fn train(texts: &[&str], vocab: usize) -> Result<Vec<u8>, CliError> {
    let all: Vec<&str> = texts.iter().flat_map(|t| pieces(t, PIECE_BYTES)).collect();
    if vocab < 257 {
        return Err(CliError::usage(format!(
            "data: --vocab {vocab} is too small for a byte-level BPE: it needs 257 ids or more \
             (the {} special token and the 256 bytes), and merges on top",
            codec::TRAINED_SPECIAL
        )));
    }
    codec::train_byte_level_bpe(&all, vocab).map_err(|why| CliError::Tokenizer {
        path: Path::new(codec::TOKENIZER_FILE).to_path_buf(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_rebuild_the_text_and_cut_before_words() {
        let text = "alpha beta\ngamma  delta\n\nepsilon ζήτα 😀 end\n".repeat(50);
        for target in [1, 7, 40, 100, 5000] {
            let p = pieces(&text, target);
            assert_eq!(p.concat(), text, "target {target}");
            assert!(p.iter().all(|s| !s.is_empty()));
            // Every piece but the last starts a word or a line, never inside one.
            for w in p.windows(2) {
                let next = w[1].chars().next().unwrap();
                let last = w[0].chars().last().unwrap();
                assert!(
                    last == '\n' || (next.is_whitespace() && !last.is_whitespace()) || target < 8,
                    "target {target}: {:?} | {:?}",
                    &w[0][w[0].len().saturating_sub(10)..],
                    &w[1][..w[1].len().min(10)]
                );
            }
        }
        // No white space at all: cut at a character boundary, pieces of about target.
        let solid = "ж".repeat(1000);
        let p = pieces(&solid, 101);
        assert_eq!(p.concat(), solid);
        assert!(p.len() > 1);
        assert_eq!(pieces("", 10), vec![""]);
    }
}
