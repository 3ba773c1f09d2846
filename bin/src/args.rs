//! A small flag parser for the command line: `--name value`, `--name=value`,
//! and switches. Every subcommand takes its flags from an [`Args`] and then
//! calls [`Args::finish`], so an unknown flag or a bad value is an error with
//! exit code 2 instead of being silently ignored.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

/// A command-line mistake: printed with the subcommand's usage hint, exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The arguments of one subcommand, consumed flag by flag.
#[derive(Debug, Clone)]
pub struct Args {
    command: String,
    items: VecDeque<Item>,
    /// Everything after a bare `--`, untouched (for `frugal launch -- train ...`).
    pub rest: Vec<String>,
}

#[derive(Debug, Clone)]
enum Item {
    /// `--name` with the value that followed it, if the next word was not a flag.
    Flag {
        name: String,
        value: Option<String>,
        inline: bool,
    },
    Positional(String),
}

impl Args {
    /// Splits raw words into flags and positionals. `command` names the
    /// subcommand in error messages.
    pub fn parse(command: &str, words: &[String]) -> Args {
        let mut items = VecDeque::new();
        let mut rest = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = &words[i];
            if w == "--" {
                rest = words[i + 1..].to_vec();
                break;
            }
            if let Some(body) = w.strip_prefix("--") {
                if let Some((name, value)) = body.split_once('=') {
                    items.push_back(Item::Flag {
                        name: name.to_string(),
                        value: Some(value.to_string()),
                        inline: true,
                    });
                } else {
                    let next = words
                        .get(i + 1)
                        .filter(|n| !n.starts_with("--") || n.parse::<f64>().is_ok());
                    if let Some(n) = next {
                        items.push_back(Item::Flag {
                            name: body.to_string(),
                            value: Some(n.clone()),
                            inline: false,
                        });
                        i += 1;
                    } else {
                        items.push_back(Item::Flag {
                            name: body.to_string(),
                            value: None,
                            inline: false,
                        });
                    }
                }
            } else if w == "-h" {
                items.push_back(Item::Flag {
                    name: "help".into(),
                    value: None,
                    inline: false,
                });
            } else {
                items.push_back(Item::Positional(w.clone()));
            }
            i += 1;
        }
        Args {
            command: command.to_string(),
            items,
            rest,
        }
    }

    /// True when `--help` or `-h` was given.
    pub fn wants_help(&self) -> bool {
        self.items
            .iter()
            .any(|it| matches!(it, Item::Flag { name, .. } if name == "help"))
    }

    /// Takes a switch such as `--dry-run`. A value glued to it with `=` is an error;
    /// a word after it that is not a flag is left as a positional.
    pub fn switch(&mut self, name: &str) -> Result<bool, UsageError> {
        let Some(pos) = self.position(name) else {
            return Ok(false);
        };
        match self.items.remove(pos) {
            Some(Item::Flag {
                value: Some(v),
                inline: true,
                ..
            }) => Err(UsageError(format!(
                "{}: --{name} takes no value (got '{v}')",
                self.command
            ))),
            Some(Item::Flag {
                value: Some(v),
                inline: false,
                ..
            }) => {
                self.items.insert(pos, Item::Positional(v));
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// Takes `--name VALUE` as a string, if present.
    pub fn string(&mut self, name: &str) -> Result<Option<String>, UsageError> {
        let Some(pos) = self.position(name) else {
            return Ok(None);
        };
        match self.items.remove(pos) {
            Some(Item::Flag { value: Some(v), .. }) => Ok(Some(v)),
            _ => Err(UsageError(format!(
                "{}: --{name} needs a value",
                self.command
            ))),
        }
    }

    /// Takes `--name VALUE` parsed as `T`, if present.
    pub fn value<T: FromStr>(&mut self, name: &str) -> Result<Option<T>, UsageError>
    where
        T::Err: fmt::Display,
    {
        match self.string(name)? {
            None => Ok(None),
            Some(s) => s.parse::<T>().map(Some).map_err(|e| {
                UsageError(format!(
                    "{}: --{name} '{s}' is not valid: {e}",
                    self.command
                ))
            }),
        }
    }

    /// Takes `--name VALUE`, or `default` when absent.
    pub fn value_or<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, UsageError>
    where
        T::Err: fmt::Display,
    {
        Ok(self.value(name)?.unwrap_or(default))
    }

    /// Takes every value given for a repeatable flag, e.g. `--text a --text b`.
    pub fn strings(&mut self, name: &str) -> Result<Vec<String>, UsageError> {
        let mut out = Vec::new();
        while let Some(v) = self.string(name)? {
            out.push(v);
        }
        Ok(out)
    }

    /// Takes the positionals, in order.
    pub fn positionals(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.items.retain(|it| match it {
            Item::Positional(p) => {
                out.push(p.clone());
                false
            }
            _ => true,
        });
        out
    }

    /// Fails on anything not taken: an unknown flag or a stray word.
    pub fn finish(self) -> Result<(), UsageError> {
        match self.items.front() {
            None => Ok(()),
            Some(Item::Flag { name, .. }) => Err(UsageError(format!(
                "{}: unknown flag --{name}; see 'frugal {} --help'",
                self.command, self.command
            ))),
            Some(Item::Positional(p)) => Err(UsageError(format!(
                "{}: unexpected argument '{p}'; see 'frugal {} --help'",
                self.command, self.command
            ))),
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.items
            .iter()
            .position(|it| matches!(it, Item::Flag { name: n, .. } if n == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        let words: Vec<String> = s.split_whitespace().map(String::from).collect();
        Args::parse("train", &words)
    }

    #[test]
    fn flags_values_and_switches() {
        let mut a = args("--steps 10 --lr=3e-4 --dry-run --seed -1");
        assert_eq!(a.value::<usize>("steps").unwrap(), Some(10));
        assert_eq!(a.value::<f64>("lr").unwrap(), Some(3e-4));
        assert!(a.switch("dry-run").unwrap());
        assert_eq!(a.value::<i64>("seed").unwrap(), Some(-1));
        a.finish().unwrap();
    }

    #[test]
    fn unknown_flags_and_bad_values_are_errors() {
        let a = args("--stepz 10");
        assert!(a.finish().unwrap_err().0.contains("unknown flag --stepz"));
        let mut a = args("--steps ten");
        assert!(a.value::<usize>("steps").unwrap_err().0.contains("'ten'"));
        let mut a = args("--steps");
        assert!(a.value::<usize>("steps").is_err());
    }

    #[test]
    fn rest_after_double_dash() {
        let words: Vec<String> = "--nproc 2 -- train --steps 5"
            .split(' ')
            .map(String::from)
            .collect();
        let mut a = Args::parse("launch", &words);
        assert_eq!(a.value::<usize>("nproc").unwrap(), Some(2));
        assert_eq!(a.rest, vec!["train", "--steps", "5"]);
        a.finish().unwrap();
    }
}
