//! Token embedding lookup. Shapes: table (V, C), tokens (N), x (N, C).
//! Forward overwrites x with table rows. Backward adds each row of dx into the
//! table gradient at its token, rows in order (serial: O(N·C), cheap, and a
//! token repeated in the batch is summed in a fixed order).

use super::par;

/// x[i] = table[tokens[i]]; tokens must already be checked against V.
pub fn embedding_forward(x: &mut [f32], table: &[f32], tokens: &[u32], c: usize, threads: usize) {
    par::split1(threads, tokens.len(), x, c, |range, x| {
        for (i, row) in range.enumerate() {
            let tok = tokens[row] as usize;
            x[i * c..(i + 1) * c].copy_from_slice(&table[tok * c..(tok + 1) * c]);
        }
    });
}

/// dtable[tokens[i]] += dx[i] for i in order.
pub fn embedding_backward(dtable: &mut [f32], dx: &[f32], tokens: &[u32], c: usize) {
    for (i, &tok) in tokens.iter().enumerate() {
        let tok = tok as usize;
        for (d, g) in dtable[tok * c..(tok + 1) * c]
            .iter_mut()
            .zip(&dx[i * c..(i + 1) * c])
        {
            *d += g;
        }
    }
}
