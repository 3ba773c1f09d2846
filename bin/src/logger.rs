//! A minimal stderr logger for the `log` facade, so warnings from the library
//! crates (a refused peer, a skipped checkpoint) reach the person running
//! frugal. Level from `FRUGAL_LOG` (error, warn, info, debug, trace; default
//! warn); an unknown value falls back to the default and says so.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let tag = match record.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            eprintln!("{tag}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger once, at the start of `main`.
pub fn init() {
    let (level, bad) = match std::env::var("FRUGAL_LOG") {
        Err(_) => (LevelFilter::Warn, None),
        Ok(v) => match v.parse::<LevelFilter>() {
            Ok(l) => (l, None),
            Err(_) => (LevelFilter::Warn, Some(v)),
        },
    };
    let logger = Box::leak(Box::new(StderrLogger { level }));
    // A second call (only possible in tests) keeps the first logger.
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
    if let Some(v) = bad {
        log::warn!("FRUGAL_LOG='{v}' is not a level (error, warn, info, debug, trace); using warn");
    }
}
