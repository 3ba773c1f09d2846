//! NVTX ranges for Nsight: around data, forward, each layer's backward, comm and
//! optimizer. Ranges are recorded only when enabled (the `cuda` backend enables
//! them) and the NVTX library is present; otherwise they cost one branch.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::dylib;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns ranges on when the NVTX library can be loaded; returns whether they are on.
pub fn enable() -> bool {
    let on = dylib::nvtx_present();
    ENABLED.store(on, Ordering::Relaxed);
    on
}

/// Turns ranges off.
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// True when ranges are being recorded.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An open range; it ends when dropped.
#[must_use = "the range ends when this guard is dropped"]
pub struct Range(Option<cudarc::nvtx::Range>);

impl Range {
    /// True when this range is being recorded.
    pub fn is_recorded(&self) -> bool {
        self.0.is_some()
    }
}

/// Opens a range named `name` (e.g. "forward", "layer3.backward", "allreduce").
pub fn range(name: &str) -> Range {
    if !enabled() {
        return Range(None);
    }
    // cudarc loads NVTX lazily and would panic if it vanished between the probe
    // and here; a missing range is not worth stopping a training run for.
    match std::panic::catch_unwind(|| cudarc::nvtx::scoped_range(name)) {
        Ok(r) => Range(Some(r)),
        Err(_) => {
            disable();
            Range(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_ranges_are_no_ops() {
        disable();
        let r = range("forward");
        assert!(!r.is_recorded());
    }
}
