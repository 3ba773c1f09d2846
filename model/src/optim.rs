//! AdamW with decoupled weight decay and bias correction, and the global
//! gradient norm used for clipping. All state is f32 except the step count;
//! the update is element-wise, so it is deterministic.

/// AdamW (Loshchilov & Hutter): with g the gradient and t the 1-based step,
/// `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
/// `p ← p − lr·(m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + ε) − lr·λ·p` where λ applies only
/// where the decay mask is true (matrices; not norms or embeddings).
///
/// Element-wise, and nothing depends on the length: a sharded run gives each rank
/// an `AdamW::new(shard_len, ..)` (or [`AdamW::from_state`] with its slice of the
/// moments) and updates `params[shard]`, with the same bits as the whole vector.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    m: Vec<f32>,
    v: Vec<f32>,
    step: u64,
}

impl AdamW {
    /// Zero moments for `n` parameters, step 0.
    pub fn new(n: usize, beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> AdamW {
        AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        }
    }

    /// Restores state saved from [`AdamW::m`], [`AdamW::v`], [`AdamW::step`].
    /// Returns `None` when `m` and `v` differ in length.
    pub fn from_state(
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        m: Vec<f32>,
        v: Vec<f32>,
        step: u64,
    ) -> Option<AdamW> {
        if m.len() != v.len() {
            return None;
        }
        Some(AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            m,
            v,
            step,
        })
    }

    /// First moment, one per parameter.
    pub fn m(&self) -> &[f32] {
        &self.m
    }

    /// Second moment, one per parameter.
    pub fn v(&self) -> &[f32] {
        &self.v
    }

    /// Updates taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Number of parameters the state covers.
    pub fn len(&self) -> usize {
        self.m.len()
    }

    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }

    /// One AdamW step over all parameters, on one thread, gradients as they are.
    ///
    /// # Panics
    /// If `params`, `grads` or `decay_mask` differ in length from the state
    /// (a programming error: all come from the same [`crate::config::ParamLayout`]).
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f32, decay_mask: &[bool]) {
        self.update_with(params, grads, 1.0, lr, decay_mask, 1);
    }

    /// One AdamW step over all parameters with each gradient multiplied by
    /// `grad_scale` first (the clip factor, [`clip_scale`]), on up to `threads` threads.
    ///
    /// Bits: element-wise, so the same for any thread count; `g·grad_scale` is the one
    /// multiplication that scaling the gradients in place beforehand would do (and
    /// `g·1` is `g`), so this equals scaling then [`AdamW::update`] bit for bit, without
    /// another pass over the gradients (which stay unscaled).
    ///
    /// # Panics
    /// As [`AdamW::update`].
    pub fn update_with(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        grad_scale: f32,
        lr: f32,
        decay_mask: &[bool],
        threads: usize,
    ) {
        assert_eq!(params.len(), self.m.len(), "params vs optimizer state");
        assert_eq!(grads.len(), self.m.len(), "grads vs optimizer state");
        assert_eq!(
            decay_mask.len(),
            self.m.len(),
            "decay mask vs optimizer state"
        );
        self.step += 1;
        // Bias corrections in f64: β2ᵗ for t in the millions underflows nothing
        // in f64 and keeps 1−β2ᵗ exact enough for small t.
        let t = self.step as i32;
        let bc1 = (1.0 - (self.beta1 as f64).powi(t)) as f32;
        let bc2 = (1.0 - (self.beta2 as f64).powi(t)) as f32;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let decay = lr * self.weight_decay;
        // Few, large chunks: the update streams ~30 bytes per parameter from memory,
        // which one core does not saturate.
        let items = params.len();
        let threads = threads.min(items.div_ceil(UPDATE_MIN_CHUNK)).max(1);
        crate::cpu::par::split3(
            threads,
            items,
            (params, 1),
            (&mut self.m, 1),
            (&mut self.v, 1),
            |range, params, ms, vs| {
                let k = Consts {
                    b1,
                    b2,
                    eps,
                    bc1,
                    bc2,
                    lr,
                    decay,
                    grad_scale,
                };
                let n = params.len();
                let (grads, mask) = (&grads[range.clone()][..n], &decay_mask[range][..n]);
                update_chunk(params, &mut ms[..n], &mut vs[..n], grads, mask, k);
            },
        );
    }
}

/// The scalars of one update.
#[derive(Clone, Copy)]
struct Consts {
    b1: f32,
    b2: f32,
    eps: f32,
    bc1: f32,
    bc2: f32,
    lr: f32,
    decay: f32,
    grad_scale: f32,
}

/// The update of one chunk. A function of its own, not inlined: its slice arguments
/// are then known not to overlap, and the loop vectorises (inlined into the threads'
/// closure, it did not, and ran ~4× slower).
#[inline(never)]
fn update_chunk(
    params: &mut [f32],
    ms: &mut [f32],
    vs: &mut [f32],
    grads: &[f32],
    mask: &[bool],
    k: Consts,
) {
    let n = params.len();
    let (ms, vs, grads, mask) = (&mut ms[..n], &mut vs[..n], &grads[..n], &mask[..n]);
    for i in 0..n {
        let g = grads[i] * k.grad_scale;
        let m = k.b1 * ms[i] + (1.0 - k.b1) * g;
        let v = k.b2 * vs[i] + (1.0 - k.b2) * g * g;
        ms[i] = m;
        vs[i] = v;
        let mhat = m / k.bc1;
        let vhat = v / k.bc2;
        let mut p = params[i];
        if mask[i] {
            p -= k.decay * p;
        }
        params[i] = p - k.lr * mhat / (vhat.sqrt() + k.eps);
    }
}

/// Parameters below which a thread is not worth waking for [`AdamW::update_with`].
const UPDATE_MIN_CHUNK: usize = 1 << 16;

/// Elements summed per block in [`grad_norm`]; fixed, so the result does not
/// depend on threads or chunking anywhere else. A sharded run aligns its shard
/// boundaries to it, so each rank's [`norm_block_sums`] are whole blocks of the
/// full vector's and the norm comes out with the same bits.
pub const NORM_BLOCK: usize = 4096;

/// The global L2 norm √(Σ g²): squares summed in f64 within blocks of
/// [`NORM_BLOCK`] elements, block sums added in order. Deterministic for a given
/// vector; exactly `norm_from_block_sums(&norm_block_sums(grads))`.
pub fn grad_norm(grads: &[f32]) -> f64 {
    // The same two steps without the vector of block sums in between.
    root_of_sum(grads.chunks(NORM_BLOCK).map(block_sum))
}

/// [`grad_norm`] on up to `threads` threads (the model's pool where one is current),
/// with the same bits: the blocks' sums are computed in parallel, four blocks at a
/// time on each thread (four independent chains of additions, where one block's
/// four lanes wait on each other's latency), then added in order.
pub fn grad_norm_threads(grads: &[f32], threads: usize) -> f64 {
    let blocks = grads.len().div_ceil(NORM_BLOCK);
    let threads = threads.min(grads.len().div_ceil(UPDATE_MIN_CHUNK)).max(1);
    let mut sums = vec![0.0f64; blocks];
    crate::cpu::par::split1(threads, blocks, &mut sums, 1, |range, sums| {
        let part = &grads[range.start * NORM_BLOCK..(range.end * NORM_BLOCK).min(grads.len())];
        block_sums_into(part, sums);
    });
    norm_from_block_sums(&sums)
}

/// `sums[b]` = [`block_sum`] of block b of `part` (one per block, the last may be
/// shorter): runs of four whole blocks at once, then the rest alone.
fn block_sums_into(part: &[f32], sums: &mut [f64]) {
    let fours = sums.len().min(part.len() / NORM_BLOCK) / 4;
    for (s, four) in sums
        .chunks_exact_mut(4)
        .zip(part.chunks_exact(4 * NORM_BLOCK))
        .take(fours)
    {
        let b: [&[f32]; 4] = std::array::from_fn(|i| &four[i * NORM_BLOCK..][..NORM_BLOCK]);
        s.copy_from_slice(&four_block_sums(b));
    }
    let done = 4 * fours;
    for (s, block) in sums[done..]
        .iter_mut()
        .zip(part[done * NORM_BLOCK..].chunks(NORM_BLOCK))
    {
        *s = block_sum(block);
    }
}

/// Sets every gradient to zero on up to `threads` threads (the model's pool where one
/// is current): a step's first pass over them, which one core's stores do not
/// saturate the memory with.
pub fn zero_grads(grads: &mut [f32], threads: usize) {
    let threads = threads.min(grads.len().div_ceil(UPDATE_MIN_CHUNK)).max(1);
    crate::cpu::par::split1(threads, grads.len(), grads, 1, |_, part| part.fill(0.0));
}

/// Σ g² of each block of [`NORM_BLOCK`] elements (the last may be shorter), in f64,
/// in order. For a vector split at multiples of `NORM_BLOCK`, the pieces' block sums
/// concatenated are the whole's, so ranks owning such pieces can gather these and
/// get [`grad_norm`]'s bits from [`norm_from_block_sums`].
pub fn norm_block_sums(grads: &[f32]) -> Vec<f64> {
    let mut sums = vec![0.0f64; grads.len().div_ceil(NORM_BLOCK)];
    block_sums_into(grads, &mut sums);
    sums
}

/// √ of the block sums added in order from 0 (the order [`grad_norm`] uses).
pub fn norm_from_block_sums(block_sums: &[f64]) -> f64 {
    root_of_sum(block_sums.iter().copied())
}

/// The one summation both paths share: from 0, in order, then √.
fn root_of_sum(block_sums: impl Iterator<Item = f64>) -> f64 {
    let mut total = 0.0f64;
    for b in block_sums {
        total += b;
    }
    total.sqrt()
}

/// Σ g² of one block in f64.
fn block_sum(block: &[f32]) -> f64 {
    // Four independent f64 lanes let the compiler vectorise; their order is fixed.
    let mut lanes = [0.0f64; 4];
    let mut quads = block.chunks_exact(4);
    for q in &mut quads {
        for j in 0..4 {
            lanes[j] += q[j] as f64 * q[j] as f64;
        }
    }
    for (j, &g) in quads.remainder().iter().enumerate() {
        lanes[j] += g as f64 * g as f64;
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}

/// [`block_sum`] of four whole blocks at once: each block's four lanes in the same
/// order, so the same bits, with the four blocks' additions independent of each other.
fn four_block_sums(blocks: [&[f32]; 4]) -> [f64; 4] {
    let mut lanes = [[0.0f64; 4]; 4];
    for i in (0..NORM_BLOCK).step_by(4) {
        for (lane, block) in lanes.iter_mut().zip(&blocks) {
            let q: &[f32; 4] = block[i..i + 4].try_into().expect("four floats");
            for j in 0..4 {
                lane[j] += q[j] as f64 * q[j] as f64;
            }
        }
    }
    lanes.map(|l| (l[0] + l[1]) + (l[2] + l[3]))
}

/// The factor to multiply gradients by so their norm is at most `max_norm`:
/// `max_norm / norm` when `norm > max_norm`, else 1. A non-positive `max_norm`
/// disables clipping; a NaN norm gives 1 (the caller must check finiteness).
pub fn clip_scale(norm: f64, max_norm: f64) -> f32 {
    if max_norm > 0.0 && norm > max_norm {
        (max_norm / norm) as f32
    } else {
        1.0
    }
}
