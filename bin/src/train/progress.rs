//! A one-line progress indicator on stderr, redrawn in place, shown only when
//! stderr is a terminal (a log file or a pipe gets the plain step lines only).
//! The step lines go to stdout; before each one the indicator line is erased so
//! the two never interleave on one screen line.

use std::io::Write;
use std::time::Instant;

use super::metrics::duration;

/// Whether the indicator draws, decided once at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// stderr is a terminal: draw.
    Terminal,
    /// Anything else: stay silent.
    Off,
}

impl ProgressMode {
    /// [`ProgressMode::Terminal`] when stderr is a terminal.
    pub fn detect() -> ProgressMode {
        // SAFETY: isatty only inspects the file descriptor number; fd 2 may be
        // closed, in which case it returns 0, which we treat as "not a terminal".
        let tty = unsafe { libc::isatty(libc::STDERR_FILENO) } == 1;
        if tty {
            ProgressMode::Terminal
        } else {
            ProgressMode::Off
        }
    }
}

/// The indicator: steps done of the total, a bar, and the time left at the
/// recent pace.
pub struct Progress {
    mode: ProgressMode,
    first_step: usize,
    last_step: usize,
    start: Instant,
    drawn: bool,
}

const BAR_WIDTH: usize = 24;

impl Progress {
    /// An indicator for steps `first_step..last_step`.
    pub fn new(mode: ProgressMode, first_step: usize, last_step: usize) -> Progress {
        Progress {
            mode,
            first_step,
            last_step,
            start: Instant::now(),
            drawn: false,
        }
    }

    /// Erases the indicator line (call before printing a log line).
    pub fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            // A failed write to the terminal only loses the indicator.
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }

    /// Redraws for `done` steps finished, with a short note (e.g. the loss).
    pub fn draw(&mut self, done: usize, note: &str) {
        if self.mode == ProgressMode::Off {
            return;
        }
        let line = render(
            done,
            self.first_step,
            self.last_step,
            self.start.elapsed().as_secs_f64(),
            note,
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.drawn = true;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The indicator's text for `done` of `first..last` after `elapsed_s` seconds.
pub fn render(done: usize, first: usize, last: usize, elapsed_s: f64, note: &str) -> String {
    let span = last.saturating_sub(first).max(1);
    let finished = done.saturating_sub(first).min(span);
    let frac = finished as f64 / span as f64;
    let filled = (frac * BAR_WIDTH as f64).round() as usize;
    let bar: String = "#".repeat(filled) + &".".repeat(BAR_WIDTH - filled.min(BAR_WIDTH));
    let eta = if finished > 0 {
        duration(elapsed_s / finished as f64 * (span - finished) as f64)
    } else {
        "?".into()
    };
    format!(
        "[{bar}] {done}/{last} {:>3.0}% eta {eta} {note}",
        frac * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_fraction_and_eta() {
        let s = render(50, 0, 100, 10.0, "loss 3.2");
        assert!(s.contains("50/100"), "{s}");
        assert!(s.contains(" 50%"), "{s}");
        assert!(s.contains("eta 10.0s"), "{s}");
        assert!(s.ends_with("loss 3.2"));
        let resumed = render(60, 50, 100, 5.0, "");
        assert!(resumed.contains(" 20%"), "{resumed}");
        assert!(render(0, 0, 10, 0.0, "").contains("eta ?"));
    }
}
