//! What every command's flags are built from: the value parsers that keep
//! frugal's own messages (a value that is not text, a number that does not
//! parse) and [`UsageError`], a usage mistake found after parsing. A leaf: it
//! knows clap and std only, so each command's flags can use it without
//! knowing the command line they are part of.

use std::ffi::OsStr;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

/// A command-line mistake found after clap parsed the words: printed with the
/// subcommand's usage hint, exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A flag value parsed as `T` from text, with frugal's messages: the command
/// and the flag named, and why the value is refused.
pub struct Text<T>(PhantomData<fn() -> T>);

impl<T> Clone for Text<T> {
    fn clone(&self) -> Self {
        Text(PhantomData)
    }
}

/// The value parser of a flag that takes `T`.
pub fn text<T>() -> Text<T> {
    Text(PhantomData)
}

impl<T> TypedValueParser for Text<T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let command = command_path(cmd);
        let flag = arg.and_then(|a| a.get_long()).unwrap_or_default();
        let refuse = |m: String| clap::Error::raw(ErrorKind::ValueValidation, format!("{m}\n"));
        let Some(s) = value.to_str() else {
            return Err(refuse(format!(
                "{command}: --{flag} '{}' is not valid UTF-8; this flag takes text",
                value.to_string_lossy()
            )));
        };
        s.parse()
            .map_err(|e| refuse(format!("{command}: --{flag} '{s}' is not valid: {e}")))
    }
}

/// The value parser of a flag that names a file: any bytes, empty included
/// (each command says what an empty one lacks).
pub fn path() -> impl TypedValueParser<Value = std::path::PathBuf> {
    clap::builder::OsStringValueParser::new().map(std::path::PathBuf::from)
}

/// How messages name a (sub)command: its words after `frugal` ("bench matmul"),
/// known once clap has built the command line, else its own name.
pub fn command_path(cmd: &clap::Command) -> &str {
    cmd.get_bin_name()
        .and_then(|b| b.strip_prefix("frugal "))
        .unwrap_or_else(|| cmd.get_name())
}
