//! Learning-rate schedule: linear warm-up to `max_lr`, then a half cosine down
//! to `min_lr` at `total_steps`, constant `min_lr` after.

/// Cosine decay with linear warm-up. Steps count from 0.
#[derive(Clone, Debug, PartialEq)]
pub struct CosineSchedule {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl CosineSchedule {
    /// The learning rate of step `step` (0-based).
    ///
    /// Warm-up: `max_lr · (step + 1) / warmup_steps` for `step < warmup_steps`, so
    /// step 0 already moves the weights and the last warm-up step reaches
    /// `max_lr`. Decay: with `r = (step − warmup) / (total − warmup)` clamped to
    /// [0, 1], `min_lr + (max_lr − min_lr) · (1 + cos(π r)) / 2`; so
    /// `lr(warmup) = max_lr` and `lr(total) = min_lr`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.max_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps);
        if decay_steps == 0 {
            return self.max_lr;
        }
        let r = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * r).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}
