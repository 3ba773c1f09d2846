//! Plain text as byte-level tokens: token = byte value, so V ≥ 256. The file is
//! memory-mapped; its last [`super::VAL_FRACTION`] is validation.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::{val_tokens, Source, Tokens};
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
    let len = file.metadata().map_err(io)?.len() as usize;
    let tokens = if len == 0 {
        // An empty file cannot be mapped on every platform; it holds no tokens anyway.
        Tokens::Owned(Arc::new(Vec::new()))
    } else {
        // SAFETY: the map is read-only and frugal never writes a file it reads;
        // another process rewriting it during training is unsupported.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Tokens::Bytes { map }
    };
    let n = tokens.len();
    let val = val_tokens(n);
    Ok(Source {
        tokens,
        train: 0..n - val,
        val: n - val..n,
    })
}
