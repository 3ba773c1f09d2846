//! How often a periodic action of the loop runs: `--ckpt-every` and
//! `--val-every` take a number of steps, `0` (only after the last step) or
//! `never`. `never` is for measuring: a sweep's runs want neither the time a
//! checkpoint or a validation takes nor the disk a checkpoint fills.

use std::fmt;
use std::str::FromStr;

/// When a periodic action runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Every {
    /// After every N-th step (N >= 1) and after the last step.
    Steps(usize),
    /// Only after the last step (`0`).
    AtEnd,
    /// Not at all, not even after the last step (`never`).
    Never,
}

impl Every {
    /// Whether the action runs after step `done` (1-based); `is_last` when
    /// the run ends after it (its last step, or a stop).
    pub fn falls_on(self, done: usize, is_last: bool) -> bool {
        match self {
            Every::Never => false,
            Every::AtEnd => is_last,
            Every::Steps(n) => is_last || done.is_multiple_of(n),
        }
    }

    /// The value as `run.json` records it: the number of steps (0 for
    /// `AtEnd`), or the string "never".
    pub fn json(self) -> serde_json::Value {
        match self {
            Every::Steps(n) => n.into(),
            Every::AtEnd => 0.into(),
            Every::Never => "never".into(),
        }
    }

    /// One number per value, for the check that every rank of a job runs
    /// with the same flags (`never` is the one value no step count can be).
    pub fn bits(self) -> u64 {
        match self {
            Every::Steps(n) => n as u64,
            Every::AtEnd => 0,
            Every::Never => u64::MAX,
        }
    }
}

impl fmt::Display for Every {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Every::Steps(n) => write!(f, "{n}"),
            Every::AtEnd => f.write_str("0"),
            Every::Never => f.write_str("never"),
        }
    }
}

impl FromStr for Every {
    type Err = String;

    fn from_str(s: &str) -> Result<Every, String> {
        match s {
            "never" => Ok(Every::Never),
            _ => match s.parse::<usize>() {
                Ok(0) => Ok(Every::AtEnd),
                Ok(n) => Ok(Every::Steps(n)),
                Err(_) => Err(
                    "expected a number of steps N, 0 (only after the last step) or 'never'"
                        .to_string(),
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps_zero_and_never_and_refuses_the_rest() {
        assert_eq!("5".parse::<Every>(), Ok(Every::Steps(5)));
        assert_eq!("0".parse::<Every>(), Ok(Every::AtEnd));
        assert_eq!("never".parse::<Every>(), Ok(Every::Never));
        for bad in ["nevr", "Never", "-1", "", "1.5", "never "] {
            let e = bad.parse::<Every>().unwrap_err();
            assert!(e.contains("'never'"), "{bad}: {e}");
        }
        for e in [Every::Steps(7), Every::AtEnd, Every::Never] {
            assert_eq!(e.to_string().parse::<Every>(), Ok(e));
        }
    }

    #[test]
    fn falls_on_its_period_and_the_last_step_unless_never() {
        let on = |e: Every| -> Vec<usize> { (1..=6).filter(|&d| e.falls_on(d, d == 6)).collect() };
        assert_eq!(on(Every::Steps(4)), [4, 6]);
        assert_eq!(on(Every::Steps(2)), [2, 4, 6]);
        assert_eq!(on(Every::AtEnd), [6]);
        assert_eq!(on(Every::Never), Vec::<usize>::new());
        assert_ne!(Every::Never.bits(), Every::AtEnd.bits());
        assert_eq!(Every::Never.json(), serde_json::json!("never"));
        assert_eq!(Every::Steps(3).json(), serde_json::json!(3));
    }
}
