//! llm.c token shards: a header of 256 little-endian int32 (magic, version,
//! token count N, the rest unused), then N little-endian tokens. Two formats,
//! as llm.c's `dev/data/data_common.py` writes them ([`Format`]):
//! - magic 20240520, version 1: uint16 tokens (GPT-2's 50,257 ids);
//! - magic 20240801, version 7: uint32 tokens (vocabularies above 65,536 ids,
//!   e.g. LLaMA 3's 128,256).
//!
//! Opening costs one pass over the tokens (checking every id against V); a
//! batch costs one positioned read per window.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use super::{read_at, val_tokens, Source, TokenWidth, Tokens};
use crate::error::ModelError;

/// The first int32 of every uint16 shard.
pub const MAGIC: i32 = 20240520;
/// The uint16 format's version.
pub const VERSION: i32 = 1;
/// The first int32 of every uint32 shard.
pub const MAGIC_U32: i32 = 20240801;
/// The uint32 format's version.
pub const VERSION_U32: i32 = 7;
/// 256 int32.
pub const HEADER_BYTES: usize = 1024;

/// How a shard stores its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Magic 20240520, version 1, little-endian uint16 tokens.
    U16,
    /// Magic 20240801, version 7, little-endian uint32 tokens.
    U32,
}

impl Format {
    /// The narrowest format that holds every id of a vocabulary of `vocab_size`:
    /// uint16 up to 65,536 ids (0..=65535), uint32 above.
    pub fn for_vocab(vocab_size: usize) -> Format {
        if vocab_size <= 1 << 16 {
            Format::U16
        } else {
            Format::U32
        }
    }

    /// Bytes per token: 2 or 4.
    pub fn token_bytes(self) -> usize {
        match self {
            Format::U16 => 2,
            Format::U32 => 4,
        }
    }

    /// The header's first int32.
    pub fn magic(self) -> i32 {
        match self {
            Format::U16 => MAGIC,
            Format::U32 => MAGIC_U32,
        }
    }

    /// The header's second int32.
    pub fn version(self) -> i32 {
        match self {
            Format::U16 => VERSION,
            Format::U32 => VERSION_U32,
        }
    }

    fn by_magic(magic: i32) -> Option<Format> {
        match magic {
            MAGIC => Some(Format::U16),
            MAGIC_U32 => Some(Format::U32),
            _ => None,
        }
    }

    fn width(self) -> TokenWidth {
        match self {
            Format::U16 => TokenWidth::U16,
            Format::U32 => TokenWidth::U32,
        }
    }
}

/// True when `path` is to be read as a shard: its extension is `.bin`, or it
/// starts with either shard magic. (A `.bin` file without the magic is then a
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
    Ok(Format::by_magic(i32::from_le_bytes(head)).is_some())
}

/// Checks a shard's header against the file's length; the token count.
///
/// # Errors
/// As [`parse_header_format`].
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<usize, ModelError> {
    parse_header_format(path, bytes).map(|(count, _)| count)
}

/// Checks a shard's header against the file's length; the token count and
/// the format the magic names.
///
/// # Errors
/// [`ModelError::ShardTooShort`], [`ModelError::ShardMagic`],
/// [`ModelError::ShardVersion`] (a version that is not its magic's),
/// [`ModelError::ShardLength`].
pub fn parse_header_format(path: &Path, bytes: &[u8]) -> Result<(usize, Format), ModelError> {
    let head = &bytes[..bytes.len().min(HEADER_BYTES)];
    check_header(path, head, bytes.len() as u64)
}

/// As [`parse_header_format`], given the file's first `min(1024, file_bytes)`
/// bytes and its length, so the tokens need not be in memory.
fn check_header(path: &Path, bytes: &[u8], file_bytes: u64) -> Result<(usize, Format), ModelError> {
    let int = |i: usize| {
        i32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    let format = if bytes.len() >= 4 {
        match Format::by_magic(int(0)) {
            Some(f) => Some(f),
            None => {
                return Err(ModelError::ShardMagic {
                    path: path.to_path_buf(),
                    offset: 0,
                    found: int(0),
                })
            }
        }
    } else {
        None
    };
    let Some(format) = format.filter(|_| bytes.len() >= HEADER_BYTES) else {
        return Err(ModelError::ShardTooShort {
            path: path.to_path_buf(),
            file_bytes,
        });
    };
    if int(1) != format.version() {
        return Err(ModelError::ShardVersion {
            path: path.to_path_buf(),
            offset: 4,
            found: int(1),
        });
    }
    let count = int(2);
    let expected_bytes = HEADER_BYTES as u64 + format.token_bytes() as u64 * count.max(0) as u64;
    if count < 0 || expected_bytes != file_bytes {
        return Err(ModelError::ShardLength {
            path: path.to_path_buf(),
            offset: 8,
            header_tokens: count as i64,
            expected_bytes,
            file_bytes,
        });
    }
    Ok((count as usize, format))
}

/// The first uint16 token not below `vocab_size`, as (byte offset in `bytes`,
/// token).
pub fn find_out_of_range(bytes: &[u8], vocab_size: usize) -> Option<(usize, u32)> {
    find_out_of_range_in(bytes, Format::U16, vocab_size)
}

/// The first token of `format` not below `vocab_size`, as (byte offset in
/// `bytes`, token). Scans in blocks whose maximum is compared once, so the
/// common case (no bad token) is a vectorizable max over the whole shard.
pub fn find_out_of_range_in(
    bytes: &[u8],
    format: Format,
    vocab_size: usize,
) -> Option<(usize, u32)> {
    const BLOCK: usize = 8192;
    let w = format.token_bytes();
    for (b, block) in bytes.chunks(w * BLOCK).enumerate() {
        if (block_max(block, format) as usize) >= vocab_size {
            for (i, t) in tokens_of(block, format).enumerate() {
                if t as usize >= vocab_size {
                    return Some((b * w * BLOCK + w * i, t));
                }
            }
        }
    }
    None
}

/// The whole tokens of `format` in `bytes`, widened to u32.
fn tokens_of(bytes: &[u8], format: Format) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(format.token_bytes())
        .map(move |p| match format {
            Format::U16 => u16::from_le_bytes([p[0], p[1]]) as u32,
            Format::U32 => u32::from_le_bytes([p[0], p[1], p[2], p[3]]),
        })
}

/// The largest token in `bytes` (0 when there is none).
fn block_max(bytes: &[u8], format: Format) -> u32 {
    // One loop per width, so each is a plain vectorizable max.
    match format {
        Format::U16 => bytes
            .chunks_exact(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .max()
            .unwrap_or(0) as u32,
        Format::U32 => bytes
            .chunks_exact(4)
            .map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
            .max()
            .unwrap_or(0),
    }
}

/// Bytes read per call while checking a shard's tokens (a multiple of 4:
/// whole tokens of either width).
const SCAN_BYTES: usize = 1 << 20;

/// Opens and checks one shard and keeps it open for reading windows; its tail
/// ([`super::VAL_FRACTION`]) is validation until the caller decides the split
/// by file names.
///
/// # Errors
/// As [`parse_header_format`], plus [`ModelError::Io`],
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
    let (count, format) = check_header(path, &head, file_bytes)?;
    check_tokens(&file, path, file_bytes, format, vocab_size)?;
    let val = val_tokens(count);
    Ok(Source {
        tokens: Tokens::File {
            file,
            path: path.to_path_buf(),
            offset: HEADER_BYTES as u64,
            width: format.width(),
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
    format: Format,
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
            bad = find_out_of_range_in(block, format, vocab_size)
                .map(|(off, t)| (at + off as u64, t));
        }
        if bad.is_some() {
            // Only on failure: the largest token from here on (every earlier
            // one is below the bad one), so the message names a vocabulary
            // that fits the whole file, not just this token.
            max_token = max_token.max(block_max(block, format));
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

/// The bytes of a uint16 shard holding `tokens`.
pub fn encode(tokens: &[u16]) -> Vec<u8> {
    let mut out = header(Format::U16, tokens.len(), 2);
    for t in tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out
}

/// The bytes of a shard of `format` holding `tokens`, or the first token
/// that `format` cannot hold (above 65,535 for uint16).
///
/// # Errors
/// The index and value of a token too wide for `format`.
pub fn encode_as(tokens: &[u32], format: Format) -> Result<Vec<u8>, (usize, u32)> {
    let mut out = header(format, tokens.len(), format.token_bytes());
    match format {
        Format::U16 => {
            for (i, &t) in tokens.iter().enumerate() {
                let t16 = u16::try_from(t).map_err(|_| (i, t))?;
                out.extend_from_slice(&t16.to_le_bytes());
            }
        }
        Format::U32 => {
            for t in tokens {
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
    }
    Ok(out)
}

/// A header for `count` tokens of `format`, with room reserved for them.
fn header(format: Format, count: usize, token_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + token_bytes * count);
    let mut header = [0i32; 256];
    header[0] = format.magic();
    header[1] = format.version();
    // Writers refuse more than i32::MAX tokens before calling this.
    header[2] = count.min(i32::MAX as usize) as i32;
    for h in header {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out
}

/// Writes a uint16 shard of `tokens` to `path` (created or replaced), flushed to disk.
///
/// # Errors
/// [`ModelError::Io`]; [`ModelError::LoaderArgs`] for more than 2^31 − 1 tokens,
/// which the header's int32 count cannot hold.
pub fn write(path: &Path, tokens: &[u16]) -> Result<(), ModelError> {
    check_count(path, tokens.len())?;
    write_bytes(path, &encode(tokens))
}

/// Writes a shard of `format` holding `tokens` to `path` (created or
/// replaced), flushed to disk.
///
/// # Errors
/// [`ModelError::Io`]; [`ModelError::LoaderArgs`] for more than 2^31 − 1
/// tokens, or a token above 65,535 in a uint16 shard (its index and value named).
pub fn write_as(path: &Path, tokens: &[u32], format: Format) -> Result<(), ModelError> {
    check_count(path, tokens.len())?;
    let bytes = encode_as(tokens, format).map_err(|(i, t)| ModelError::LoaderArgs {
        what: format!(
            "{}: token {i} is {t}, which a uint16 shard cannot hold; write a uint32 shard",
            path.display()
        ),
    })?;
    write_bytes(path, &bytes)
}

fn check_count(path: &Path, count: usize) -> Result<(), ModelError> {
    if count > i32::MAX as usize {
        return Err(ModelError::LoaderArgs {
            what: format!(
                "{}: {count} tokens do not fit one shard (at most 2^31 - 1)",
                path.display(),
            ),
        });
    }
    Ok(())
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::io::BufWriter::new(File::create(path).map_err(io)?);
    file.write_all(bytes).map_err(io)?;
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataSpec, Dataset, Split};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("frugal-shard-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn uint32_shards_round_trip_ids_above_65535() {
        let dir = temp_dir("u32");
        let v = 128_256; // LLaMA 3's vocabulary
        let tokens: Vec<u32> = (0..5000u32).map(|i| (i * 7919) % v as u32).collect();
        assert!(tokens.iter().any(|&t| t > 65_535));
        let path = dir.join("wide.bin");
        write_as(&path, &tokens, Format::U32).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // llm.c's dev/data/data_common.py "llama-3" header: magic, version, count.
        assert_eq!(&bytes[0..4], &20240801i32.to_le_bytes());
        assert_eq!(&bytes[4..8], &7i32.to_le_bytes());
        assert_eq!(&bytes[8..12], &5000i32.to_le_bytes());
        assert_eq!(bytes.len(), HEADER_BYTES + 4 * tokens.len());
        assert_eq!(
            parse_header_format(&path, &bytes).unwrap(),
            (5000, Format::U32)
        );
        assert!(looks_like_shard(&path).unwrap());

        // Read back whole, through the loader's positioned reads.
        let ds = Dataset::open(&DataSpec::Path(path.clone()), v).unwrap();
        assert_eq!(
            ds.split_tokens(Split::Train) + ds.split_tokens(Split::Val),
            5000
        );
        let src = &ds.inner.sources[0];
        let mut got = vec![0u32; tokens.len()];
        src.tokens.read_to(0, &mut got, &mut Vec::new()).unwrap();
        assert_eq!(got, tokens);

        // The per-id check against V: the first id not below V, with its byte offset.
        let max = *tokens.iter().max().unwrap();
        let first_bad = tokens.iter().position(|&t| t >= 100_000).unwrap();
        match Dataset::open(&DataSpec::Path(path.clone()), 100_000) {
            Err(ModelError::DataTokenOutOfRange {
                offset,
                token,
                max_token,
                ..
            }) => {
                assert_eq!(offset, (HEADER_BYTES + 4 * first_bad) as u64);
                assert_eq!(token, tokens[first_bad]);
                assert_eq!(max_token, max);
            }
            other => panic!("expected an out-of-range token, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn uint16_writes_refuse_wide_ids_and_formats_are_chosen_by_vocab() {
        assert_eq!(Format::for_vocab(65_536), Format::U16);
        assert_eq!(Format::for_vocab(65_537), Format::U32);
        assert_eq!(
            encode_as(&[1, 65_535, 65_536], Format::U16),
            Err((2, 65_536))
        );
        let narrow = encode_as(&[1, 2, 65_535], Format::U16).unwrap();
        assert_eq!(narrow, encode(&[1, 2, 65_535]));
    }

    #[test]
    fn out_of_range_scan_finds_the_first_bad_uint32_across_blocks() {
        for pos in [0usize, 8191, 8192, 20000] {
            let mut toks = vec![70_000u32; 20001];
            toks[pos] = 90_000;
            if pos + 1 < toks.len() {
                toks[pos + 1] = 95_000;
            }
            let bytes: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
            assert_eq!(
                find_out_of_range_in(&bytes, Format::U32, 80_000),
                Some((4 * pos, 90_000)),
                "pos {pos}"
            );
            assert_eq!(find_out_of_range_in(&bytes, Format::U32, 95_001), None);
        }
    }

    #[test]
    fn a_version_that_is_not_its_magics_is_refused() {
        let mut bytes = encode_as(&[1, 2, 3], Format::U32).unwrap();
        bytes[4..8].copy_from_slice(&1i32.to_le_bytes()); // the uint16 format's version
        let e = parse_header_format(Path::new("x.bin"), &bytes).unwrap_err();
        assert!(
            matches!(e, ModelError::ShardVersion { found: 1, .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("version 7 after magic 20240801"),
            "{e}"
        );
    }
}
