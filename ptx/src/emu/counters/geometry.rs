//! The memory model the counters apply to one warp-level request: which 32-byte sectors its
//! lanes' byte ranges touch, and how many wavefronts a shared-memory access or an `ldmatrix`
//! takes under the 32-bank model (see the note of `counters`).

/// Size of a global sector, a shared bank word, and the number of banks.
const SECTOR_BYTES: u64 = 32;
const WORD_BYTES: u64 = 4;
const BANKS: usize = 32;

/// The distinct 32-byte sectors the byte ranges `(address, bytes)` touch, written to the
/// front of `out` (room for two per range: a range of at most 32 bytes spans at most two);
/// returns how many.
pub(super) fn distinct_sectors(ranges: &[(u64, u32)], out: &mut [u64; 64]) -> usize {
    let mut n = 0;
    for &(addr, bytes) in ranges.iter().take(32) {
        if bytes == 0 {
            continue;
        }
        let first = addr / SECTOR_BYTES;
        let last = addr.saturating_add(u64::from(bytes.min(32)) - 1) / SECTOR_BYTES;
        for s in first..=last {
            out[n] = s;
            n += 1;
        }
    }
    out[..n].sort_unstable();
    let mut kept = 0;
    for i in 0..n {
        if kept == 0 || out[kept - 1] != out[i] {
            out[kept] = out[i];
            kept += 1;
        }
    }
    kept
}

/// How many distinct bytes the ranges `(address, bytes)` cover (the size of their union).
pub(super) fn distinct_bytes(ranges: &[(u64, u32)]) -> u64 {
    let mut spans = [(0u64, 0u64); 32];
    let mut n = 0;
    for &(addr, bytes) in ranges.iter().take(32) {
        if bytes > 0 {
            spans[n] = (addr, addr.saturating_add(u64::from(bytes)));
            n += 1;
        }
    }
    let spans = &mut spans[..n];
    spans.sort_unstable();
    let (mut total, mut covered_to) = (0u64, 0u64);
    for &(start, end) in spans.iter() {
        let from = start.max(covered_to);
        if end > from {
            total += end - from;
            covered_to = end;
        }
    }
    total
}

/// Lanes per phase of a shared access of `bytes` bytes per lane: the whole warp up to 4
/// bytes, half-warps for 8, quarter-warps for 16 (128 bytes per wavefront).
fn lanes_per_phase(bytes: u32) -> usize {
    match bytes {
        0..=4 => 32,
        5..=8 => 16,
        _ => 8,
    }
}

/// Wavefronts one phase needs: the largest number of distinct 4-byte words any bank serves
/// (lanes on the same word share it). `addrs` are the phase's lanes' addresses, `bytes` each.
fn phase_wavefronts(addrs: &[u64], bytes: u32) -> u64 {
    // At most 8 lanes × 4 words or 32 lanes × 1 word (4 bytes or less, unaligned: 2 words).
    let mut words = [0u64; 64];
    let mut n = 0;
    for &a in addrs {
        let first = a / WORD_BYTES;
        let last = a.saturating_add(u64::from(bytes.clamp(1, 16)) - 1) / WORD_BYTES;
        for word in first..=last {
            if n < words.len() {
                words[n] = word;
                n += 1;
            }
        }
    }
    let words = &mut words[..n];
    words.sort_unstable();
    let mut per_bank = [0u64; BANKS];
    let mut previous = None;
    for &word in words.iter() {
        if previous != Some(word) {
            per_bank[(word % BANKS as u64) as usize] += 1;
            previous = Some(word);
        }
    }
    per_bank.iter().copied().max().unwrap_or(0).max(1)
}

/// Wavefronts and conflict-free wavefronts of one shared request: `lanes` holds each active
/// lane's (lane index, address), each access `bytes` bytes.
pub(super) fn shared_wavefronts(lanes: &[(usize, u64)], bytes: u32) -> (u64, u64) {
    let per_phase = lanes_per_phase(bytes);
    let (mut wavefronts, mut ideal) = (0, 0);
    for phase in 0..32 / per_phase {
        let mut addrs = [0u64; 32];
        let mut n = 0;
        for &(lane, addr) in lanes {
            if lane / per_phase == phase {
                addrs[n] = addr;
                n += 1;
            }
        }
        if n > 0 {
            wavefronts += phase_wavefronts(&addrs[..n], bytes);
            ideal += 1;
        }
    }
    (wavefronts, ideal)
}

/// Wavefronts of an `ldmatrix` of `num` 8×8 matrices: matrix j's 8 rows (16 bytes each, at
/// `rows[8j..8j+8]`) are one phase.
pub(super) fn ldmatrix_wavefronts(num: usize, rows: &[u64; 32]) -> u64 {
    rows.chunks(8)
        .take(num.min(4))
        .map(|matrix| phase_wavefronts(matrix, 16))
        .sum()
}

/// Wavefronts of one core matrix of a wgmma operand: its 8 rows of 16 bytes at `rows`, served
/// like one `ldmatrix` matrix.
pub(super) fn core_matrix_wavefronts(rows: &[u64; 8]) -> u64 {
    phase_wavefronts(rows, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes_at(addr: impl Fn(usize) -> u64) -> Vec<(usize, u64)> {
        (0..32).map(|l| (l, addr(l))).collect()
    }

    #[test]
    fn four_byte_shared_accesses() {
        // Consecutive words: one per bank.
        assert_eq!(shared_wavefronts(&lanes_at(|l| 4 * l as u64), 4), (1, 1));
        // Stride 32 words: every lane in bank 0, 32 distinct words.
        assert_eq!(shared_wavefronts(&lanes_at(|l| 128 * l as u64), 4), (32, 1));
        // Stride 2 words: banks 0, 2, .., 30 each hold two distinct words.
        assert_eq!(shared_wavefronts(&lanes_at(|l| 8 * l as u64), 4), (2, 1));
        // Everyone on one word: a broadcast.
        assert_eq!(shared_wavefronts(&lanes_at(|_| 64), 4), (1, 1));
        // Two-byte accesses, two lanes per word: still one word per bank.
        assert_eq!(shared_wavefronts(&lanes_at(|l| 2 * l as u64), 2), (1, 1));
    }

    #[test]
    fn wide_shared_accesses_go_by_phases() {
        // 8 bytes, consecutive: two half-warps of 128 bytes, conflict-free.
        assert_eq!(shared_wavefronts(&lanes_at(|l| 8 * l as u64), 8), (2, 2));
        // 16 bytes, consecutive: four quarter-warps.
        assert_eq!(shared_wavefronts(&lanes_at(|l| 16 * l as u64), 16), (4, 4));
        // 16 bytes, stride 128 bytes: each quarter-warp's 8 lanes hit banks 0-3, 8 words each.
        assert_eq!(
            shared_wavefronts(&lanes_at(|l| 128 * l as u64), 16),
            (32, 4)
        );
        // Only lanes 0-7 active with 16 bytes: one phase.
        let first_quarter: Vec<_> = (0..8).map(|l| (l, 16 * l as u64)).collect();
        assert_eq!(shared_wavefronts(&first_quarter, 16), (1, 1));
    }

    #[test]
    fn core_matrices_are_one_wavefront_unless_rows_share_banks() {
        // Contiguous (no swizzle), and 128-byte rows with the 128B swizzle's chunk XOR.
        assert_eq!(
            core_matrix_wavefronts(&std::array::from_fn(|r| 16 * r as u64)),
            1
        );
        let swizzled = std::array::from_fn(|r| 128 * r as u64 + 16 * (r as u64 ^ 3));
        assert_eq!(core_matrix_wavefronts(&swizzled), 1);
        // 128-byte rows without the XOR: all 8 rows in banks 0-3.
        assert_eq!(
            core_matrix_wavefronts(&std::array::from_fn(|r| 128 * r as u64)),
            8
        );
    }

    #[test]
    fn ldmatrix_rows_conflict_by_pitch() {
        // A 64-byte pitch puts rows 0, 2, 4, 6 on banks 0-3: 4 wavefronts per matrix.
        let mut rows = [0u64; 32];
        for (l, r) in rows.iter_mut().enumerate() {
            *r = (l as u64 % 16) * 64 + (l as u64 / 16) * 16;
        }
        assert_eq!(ldmatrix_wavefronts(4, &rows), 16);
        // An 80-byte pitch walks the 8 rows over all 32 banks.
        for (l, r) in rows.iter_mut().enumerate() {
            *r = (l as u64 % 16) * 80 + (l as u64 / 16) * 16;
        }
        assert_eq!(ldmatrix_wavefronts(4, &rows), 4);
        assert_eq!(ldmatrix_wavefronts(1, &rows), 1);
    }

    #[test]
    fn sectors_are_distinct_per_request() {
        let mut out = [0u64; 64];
        let coalesced: Vec<_> = (0..32).map(|l| (4 * l as u64, 4)).collect();
        assert_eq!(distinct_sectors(&coalesced, &mut out), 4);
        let strided: Vec<_> = (0..32).map(|l| (128 * l as u64, 4)).collect();
        assert_eq!(distinct_sectors(&strided, &mut out), 32);
        // A misaligned 16-byte range spans two sectors.
        assert_eq!(distinct_sectors(&[(24, 16)], &mut out), 2);
        // Ideal sectors count each byte once: a broadcast needs one sector, not 32 lanes' worth.
        let broadcast: Vec<_> = (0..32).map(|_| (64u64, 4u32)).collect();
        assert_eq!(distinct_bytes(&broadcast), 4);
        assert_eq!(distinct_bytes(&coalesced), 128);
        assert_eq!(distinct_bytes(&[(0, 8), (4, 8), (100, 4), (0, 0)]), 16);
    }
}
