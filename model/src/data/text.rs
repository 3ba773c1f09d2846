//! Plain text as byte-level tokens: token = byte value, so V ≥ 256. The file
//! stays open and windows are read from it as needed; its last
//! [`super::VAL_FRACTION`] is validation.

use std::fs::File;
use std::path::Path;

use super::{val_tokens, Source, TokenWidth, Tokens};
use crate::error::ModelError;

/// Byte-level tokens need ids 0..=255.
pub const BYTE_VOCAB: usize = 256;

/// Maps a text file as byte-level tokens.
///
/// # Errors
/// [`ModelError::VocabTooSmall`] when `vocab_size` < 256, [`ModelError::Io`].
pub(crate) fn open(path: &Path, vocab_size: usize) -> Result<Source, ModelError> {
    if vocab_size < BYTE_VOCAB {
        return Err(ModelError::VocabTooSmall {
            source: format!(
                "{} (read as byte-level text: no shard header)",
                path.display()
            ),
            vocab_size,
            needed: BYTE_VOCAB,
        });
    }
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_bytes = file.metadata().map_err(io)?.len();
    let n = file_bytes as usize;
    let val = val_tokens(n);
    Ok(Source {
        tokens: Tokens::File {
            file,
            path: path.to_path_buf(),
            offset: 0,
            width: TokenWidth::Byte,
            len: n,
            file_bytes,
        },
        train: 0..n - val,
        val: n - val..n,
    })
}
