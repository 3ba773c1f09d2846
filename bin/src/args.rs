//! The flag parser of the commands clap does not parse yet (`bench`, `arena`):
//! clap hands them their words untouched and they take their flags from an
//! [`Args`] and then call [`Args::finish`], so an unknown flag, a flag given
//! twice or a bad value is an error with exit code 2 instead of being silently
//! ignored. [`UsageError`] is every command's usage mistake.
//!
//! Words are kept as the operating system gave them ([`OsString`]):
//! [`Args::string`] and [`Args::value`] (names, numbers, choices) turn a value
//! that is not UTF-8 into a usage error naming the flag, never a panic.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
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
}

#[derive(Debug, Clone)]
enum Item {
    /// `--name` with the value that followed it, if the next word was not a flag.
    Flag {
        name: String,
        value: Option<OsString>,
        inline: bool,
    },
    /// `--name` whose name is not UTF-8: no flag can match it, so it is
    /// reported by [`Args::finish`].
    NotTextFlag(OsString),
    Positional(OsString),
}

impl Args {
    /// As [`Args::parse_os`], for words that are text (what tests build).
    #[cfg(test)]
    pub fn parse(command: &str, words: &[String]) -> Args {
        let words: Vec<OsString> = words.iter().map(OsString::from).collect();
        Args::parse_os(command, &words)
    }

    /// Splits raw words, as the OS gives them (`std::env::args_os`), into
    /// flags and positionals. `command` names the subcommand in error messages.
    pub fn parse_os(command: &str, words: &[OsString]) -> Args {
        let mut items = VecDeque::new();
        let mut i = 0;
        while i < words.len() {
            let w = words[i].as_bytes();
            if let Some(body) = w.strip_prefix(b"--") {
                let (name, inline_value) = match body.iter().position(|&c| c == b'=') {
                    Some(eq) => (&body[..eq], Some(OsStr::from_bytes(&body[eq + 1..]))),
                    None => (body, None),
                };
                let Ok(name) = std::str::from_utf8(name) else {
                    items.push_back(Item::NotTextFlag(words[i].clone()));
                    i += 1;
                    continue;
                };
                if let Some(value) = inline_value {
                    items.push_back(Item::Flag {
                        name: name.to_string(),
                        value: Some(value.to_os_string()),
                        inline: true,
                    });
                } else {
                    // The next word is this flag's value unless it is itself a
                    // flag; a negative number such as `--seed -1` is a value.
                    let next = words.get(i + 1).filter(|n| {
                        !n.as_bytes().starts_with(b"--")
                            || n.to_str().is_some_and(|s| s.parse::<f64>().is_ok())
                    });
                    if next.is_some() {
                        i += 1;
                    }
                    items.push_back(Item::Flag {
                        name: name.to_string(),
                        value: next.cloned(),
                        inline: false,
                    });
                }
            } else if w == b"-h" {
                items.push_back(Item::Flag {
                    name: "help".into(),
                    value: None,
                    inline: false,
                });
            } else {
                items.push_back(Item::Positional(words[i].clone()));
            }
            i += 1;
        }
        Args {
            command: command.to_string(),
            items,
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
        let taken = self.items.remove(pos);
        self.refuse_repeat(name, None)?;
        match taken {
            Some(Item::Flag {
                value: Some(v),
                inline: true,
                ..
            }) => Err(UsageError(format!(
                "{}: --{name} takes no value (got '{}')",
                self.command,
                v.to_string_lossy()
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

    /// Takes `--name VALUE` as text, if present.
    ///
    /// # Errors
    /// The flag has no value, is given twice, or its value is not UTF-8.
    pub fn string(&mut self, name: &str) -> Result<Option<String>, UsageError> {
        let value = self.take_once(name)?;
        value.map(|v| self.text(name, v)).transpose()
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

    /// Takes the positionals that are text, in order. One that is not UTF-8 is
    /// left for [`Args::finish`] to report.
    pub fn positionals(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        self.items.retain(|it| match it {
            Item::Positional(p) => match p.to_str() {
                Some(s) => {
                    out.push(s.to_string());
                    false
                }
                None => true,
            },
            _ => true,
        });
        out
    }

    /// Fails on anything not taken: an unknown flag or a stray word.
    pub fn finish(self) -> Result<(), UsageError> {
        let cmd = &self.command;
        match self.items.front() {
            None => Ok(()),
            Some(Item::Flag { name, .. }) => Err(UsageError(format!(
                "{cmd}: unknown flag --{name}; see 'frugal {cmd} --help'"
            ))),
            Some(Item::NotTextFlag(w)) => Err(UsageError(format!(
                "{cmd}: unknown flag '{}' (its name is not valid UTF-8); see 'frugal {cmd} --help'",
                w.to_string_lossy()
            ))),
            Some(Item::Positional(p)) => match p.to_str() {
                Some(p) => Err(UsageError(format!(
                    "{cmd}: unexpected argument '{p}'; see 'frugal {cmd} --help'"
                ))),
                None => Err(UsageError(format!(
                    "{cmd}: unexpected argument '{}' (not valid UTF-8); see 'frugal {cmd} --help'",
                    p.to_string_lossy()
                ))),
            },
        }
    }

    /// Takes the value of a flag that may be given once.
    fn take_once(&mut self, name: &str) -> Result<Option<OsString>, UsageError> {
        let value = self.take_value(name)?;
        if value.is_some() {
            self.refuse_repeat(name, value.as_deref())?;
        }
        Ok(value)
    }

    /// Takes the first `--name` and its value; a flag without a value is an error.
    fn take_value(&mut self, name: &str) -> Result<Option<OsString>, UsageError> {
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

    /// After the first `--name` was taken: an error if another is left, since
    /// the flag would otherwise be reported as unknown (or silently win).
    fn refuse_repeat(&self, name: &str, first: Option<&OsStr>) -> Result<(), UsageError> {
        let others: Vec<Option<&OsString>> = self
            .items
            .iter()
            .filter_map(|it| match it {
                Item::Flag { name: n, value, .. } if n == name => Some(value.as_ref()),
                _ => None,
            })
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let times = match others.len() + 1 {
            2 => "twice".to_string(),
            n => format!("{n} times"),
        };
        let values = match (first, others[0]) {
            (Some(a), Some(b)) => format!(
                " ('{}', then '{}')",
                a.to_string_lossy(),
                b.to_string_lossy()
            ),
            _ => String::new(),
        };
        Err(UsageError(format!(
            "{}: --{name} given {times}{values}; give it once",
            self.command
        )))
    }

    /// A flag's value as text, or an error naming the flag.
    fn text(&self, name: &str, value: OsString) -> Result<String, UsageError> {
        value.into_string().map_err(|v| {
            UsageError(format!(
                "{}: --{name} '{}' is not valid UTF-8; this flag takes text",
                self.command,
                v.to_string_lossy()
            ))
        })
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
    use std::os::unix::ffi::OsStringExt;

    fn args(s: &str) -> Args {
        let words: Vec<String> = s.split_whitespace().map(String::from).collect();
        Args::parse("train", &words)
    }

    /// Words where `\xff` stands for the byte 0xff (not valid UTF-8 anywhere).
    fn os_args(s: &str) -> Args {
        let words: Vec<OsString> = s
            .split_whitespace()
            .map(|w| {
                let parts: Vec<&[u8]> = w.split("\\xff").map(str::as_bytes).collect();
                OsString::from_vec(parts.join(&0xffu8))
            })
            .collect();
        Args::parse_os("train", &words)
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
    fn a_flag_given_twice_is_named() {
        let mut a = args("--steps 5 --steps 6");
        let e = a.value::<usize>("steps").unwrap_err().0;
        assert!(e.contains("--steps given twice ('5', then '6')"), "{e}");
        let mut a = args("--dry-run --dry-run");
        let e = a.switch("dry-run").unwrap_err().0;
        assert!(e.contains("--dry-run given twice"), "{e}");
        let mut a = args("--out a --out=b --out c");
        let e = a.string("out").unwrap_err().0;
        assert!(e.contains("--out given 3 times"), "{e}");
    }

    #[test]
    fn text_flags_refuse_bytes_that_are_not_utf8() {
        let mut a = os_args("--model \\xff");
        let e = a.string("model").unwrap_err().0;
        assert!(
            e.contains("--model") && e.contains("not valid UTF-8"),
            "{e}"
        );
        a.finish().unwrap();

        let mut a = os_args("--steps \\xff");
        assert!(a.value::<usize>("steps").unwrap_err().0.contains("--steps"));

        // A flag name or a stray word that is not text is reported, not dropped.
        let a = os_args("--\\xff 1");
        assert!(a.finish().unwrap_err().0.contains("unknown flag"));
        let mut a = os_args("a \\xff.txt");
        assert_eq!(a.positionals(), ["a"]);
        assert!(a.finish().unwrap_err().0.contains("not valid UTF-8"));
    }
}
