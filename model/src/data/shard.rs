//! llm.c token shards: a header of 256 little-endian int32 (magic 20240520,
//! version 1, token count N, the rest unused), then N little-endian uint16
//! tokens. Opening costs one pass over the tokens (checking every id against
//! V); a batch costs one positioned read per window.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use super::{read_at, val_tokens, Source, TokenWidth, Tokens};
use crate::error::ModelError;

/// The first int32 of every shard.
pub const MAGIC: i32 = 20240520;
/// The only version: uint16 tokens.
pub const VERSION: i32 = 1;
/// 256 int32.
pub const HEADER_BYTES: usize = 1024;

/// True when `path` is to be read as a shard: its extension is `.bin`, or it
/// starts with the shard magic. (A `.bin` file without the magic is then a
/// bad shard, reported as such, rather than silently read as text.)
///
/// # Errors
/// [`ModelError::Io`] when the file cannot be opened or read.
pub fn looks_like_shard(path: &Path) -> Result<bool, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("bin"))
    {
        return Ok(true);
    }
    let mut file = File::open(path).map_err(io)?;
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = file.read(&mut head[got..]).map_err(io)?;
        if n == 0 {
            return Ok(false);
        }
        got += n;
    }
    Ok(i32::from_le_bytes(head) == MAGIC)
}

/// Checks a shard's header against the file's length.
///
/// # Errors
/// [`ModelError::ShardTooShort`], [`ModelError::ShardMagic`],
/// [`ModelError::ShardVersion`], [`ModelError::ShardLength`].
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<usize, ModelError> {
    let head = &bytes[..bytes.len().min(HEADER_BYTES)];
    check_header(path, head, bytes.len() as u64)
}

/// As [`parse_header`], given the file's first `min(1024, file_bytes)` bytes
/// and its length, so the tokens need not be in memory.
fn check_header(path: &Path, bytes: &[u8], file_bytes: u64) -> Result<usize, ModelError> {
    let int = |i: usize| {
        i32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    if bytes.len() >= 4 && int(0) != MAGIC {
        return Err(ModelError::ShardMagic {
            path: path.to_path_buf(),
            offset: 0,
            found: int(0),
        });
    }
    if bytes.len() < HEADER_BYTES {
        return Err(ModelError::ShardTooShort {
            path: path.to_path_buf(),
            file_bytes,
        });
    }
    if int(1) != VERSION {
        return Err(ModelError::ShardVersion {
            path: path.to_path_buf(),
            offset: 4,
            found: int(1),
        });
    }
    let count = int(2);
    let expected_bytes = HEADER_BYTES as u64 + 2 * count.max(0) as u64;
    if count < 0 || expected_bytes != file_bytes {
        return Err(ModelError::ShardLength {
            path: path.to_path_buf(),
            offset: 8,
            header_tokens: count as i64,
            expected_bytes,
            file_bytes,
        });
    }
    Ok(count as usize)
}

/// The first token not below `vocab_size`, as (byte offset in `bytes`, token).
/// Scans in blocks whose maximum is compared once, so the common case (no bad
/// token) is a vectorizable max over the whole shard.
pub fn find_out_of_range(bytes: &[u8], vocab_size: usize) -> Option<(usize, u32)> {
    if vocab_size > u16::MAX as usize {
        return None;
    }
    const BLOCK: usize = 8192;
    for (b, block) in bytes.chunks(2 * BLOCK).enumerate() {
        let max = block
            .chunks_exact(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .max()
            .unwrap_or(0);
        if (max as usize) >= vocab_size {
            for (i, p) in block.chunks_exact(2).enumerate() {
                let t = u16::from_le_bytes([p[0], p[1]]);
                if t as usize >= vocab_size {
                    return Some((b * 2 * BLOCK + 2 * i, t as u32));
                }
            }
        }
    }
    None
}

/// Bytes read per call while checking a shard's tokens (even: whole tokens).
const SCAN_BYTES: usize = 1 << 20;

/// Opens and checks one shard and keeps it open for reading windows; its tail
/// ([`super::VAL_FRACTION`]) is validation until the caller decides the split
/// by file names.
///
/// # Errors
/// As [`parse_header`], plus [`ModelError::Io`],
/// [`ModelError::DataFileShrunk`] and [`ModelError::DataTokenOutOfRange`]
/// (byte offset in the file).
pub(crate) fn open(path: &Path, vocab_size: usize) -> Result<Source, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_bytes = file.metadata().map_err(io)?.len();
    let mut head = vec![0u8; file_bytes.min(HEADER_BYTES as u64) as usize];
    read_at(&file, path, 0, &mut head, file_bytes)?;
    let count = check_header(path, &head, file_bytes)?;
    check_tokens(&file, path, file_bytes, vocab_size)?;
    let val = val_tokens(count);
    Ok(Source {
        tokens: Tokens::File {
            file,
            path: path.to_path_buf(),
            offset: HEADER_BYTES as u64,
            width: TokenWidth::U16,
            len: count,
            file_bytes,
        },
        train: 0..count - val,
        val: count - val..count,
    })
}

/// Reads every token of a shard whose header was checked, in blocks of
/// [`SCAN_BYTES`], and fails on the first not below `vocab_size`.
///
/// # Errors
/// [`ModelError::DataTokenOutOfRange`] with the token's byte offset in the file
/// and the file's largest token; the read errors of [`read_at`].
fn check_tokens(
    file: &File,
    path: &Path,
    file_bytes: u64,
    vocab_size: usize,
) -> Result<(), ModelError> {
    let mut buf = vec![0u8; SCAN_BYTES.min(file_bytes as usize)];
    let mut bad: Option<(u64, u32)> = None;
    let mut max_token = 0u32;
    let mut at = HEADER_BYTES as u64;
    while at < file_bytes {
        let block = &mut buf[..(file_bytes - at).min(SCAN_BYTES as u64) as usize];
        read_at(file, path, at, block, file_bytes)?;
        if bad.is_none() {
            bad = find_out_of_range(block, vocab_size).map(|(off, t)| (at + off as u64, t));
        }
        if bad.is_some() {
            // Only on failure: the largest token from here on (every earlier
            // one is below the bad one), so the message names a vocabulary
            // that fits the whole file, not just this token.
            let block_max = block
                .chunks_exact(2)
                .map(|p| u16::from_le_bytes([p[0], p[1]]) as u32)
                .max()
                .unwrap_or(0);
            max_token = max_token.max(block_max);
        }
        at += block.len() as u64;
    }
    match bad {
        None => Ok(()),
        Some((offset, token)) => Err(ModelError::DataTokenOutOfRange {
            path: path.to_path_buf(),
            offset,
            token,
            vocab_size,
            max_token,
        }),
    }
}

/// The bytes of a shard holding `tokens`.
pub fn encode(tokens: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + 2 * tokens.len());
    let mut header = [0i32; 256];
    header[0] = MAGIC;
    header[1] = VERSION;
    header[2] = tokens.len() as i32;
    for h in header {
        out.extend_from_slice(&h.to_le_bytes());
    }
    for t in tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out
}

/// Writes a shard of `tokens` to `path` (created or replaced), flushed to disk.
///
/// # Errors
/// [`ModelError::Io`]; [`ModelError::LoaderArgs`] for more than 2^31 − 1 tokens,
/// which the header's int32 count cannot hold.
pub fn write(path: &Path, tokens: &[u16]) -> Result<(), ModelError> {
    if tokens.len() > i32::MAX as usize {
        return Err(ModelError::LoaderArgs {
            what: format!(
                "{}: {} tokens do not fit one shard (at most 2^31 - 1)",
                path.display(),
                tokens.len()
            ),
        });
    }
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::io::BufWriter::new(File::create(path).map_err(io)?);
    file.write_all(&encode(tokens)).map_err(io)?;
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}
