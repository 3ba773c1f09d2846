//! Softmax cross-entropy over the vocabulary, fused with its gradient.
//! Shapes: logits, dlogits (N, V); targets (N); row_loss (N).
//! Rows whose target is [`IGNORE_INDEX`] have loss 0 and gradient 0.
//! With `count` counted rows, the loss is Σ row_loss / count and
//! dlogits = (softmax − onehot(target)) · scale / count (overwrites dlogits).

use super::{fastmath, par};
use crate::IGNORE_INDEX;

/// row_loss[i] = logsumexp(logits_i) − logits_i[target_i], 0 for ignored rows;
/// when `dlogits` is given as (buffer, scale), also writes the scaled gradient.
pub fn cross_entropy(
    row_loss: &mut [f32],
    dlogits: Option<(&mut [f32], f32)>,
    logits: &[f32],
    targets: &[u32],
    v: usize,
    threads: usize,
) {
    let rows = targets.len();
    let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    // Per row: max, then exp(z − max) written into the gradient row (or a
    // scratch row) and summed; loss = max + ln Σ − z[target].
    let per_row = |row: usize, loss: &mut f32, e: &mut [f32], grad_scale: Option<f32>| {
        let z = &logits[row * v..(row + 1) * v];
        let target = targets[row];
        if target == IGNORE_INDEX {
            *loss = 0.0;
            e.iter_mut().for_each(|x| *x = 0.0);
            return;
        }
        let max = fastmath::max(z);
        e.copy_from_slice(z);
        let sum = fastmath::exp_shifted_sum(e, max);
        *loss = max + sum.ln() - z[target as usize];
        if let Some(scale) = grad_scale {
            let k = scale / count as f32 / sum;
            e.iter_mut().for_each(|x| *x *= k);
            e[target as usize] -= scale / count as f32;
        }
    };
    match dlogits {
        Some((dl, scale)) => par::split2(threads, rows, row_loss, 1, dl, v, |range, loss, dl| {
            for (i, row) in range.enumerate() {
                per_row(row, &mut loss[i], &mut dl[i * v..(i + 1) * v], Some(scale));
            }
        }),
        None => par::split1(threads, rows, row_loss, 1, |range, loss| {
            let mut e = vec![0.0f32; v];
            for (i, row) in range.enumerate() {
                per_row(row, &mut loss[i], &mut e, None);
            }
        }),
    }
}

/// Mean of the per-row losses over counted rows, summed in f64 in row order
/// (0 when no row counts).
pub fn mean_loss(row_loss: &[f32], targets: &[u32]) -> f32 {
    let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    if count == 0 {
        return 0.0;
    }
    (row_loss.iter().map(|&l| l as f64).sum::<f64>() / count as f64) as f32
}
