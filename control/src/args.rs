//! What every command's option parser shares (a leaf: it uses no other module of the
//! crate, so the commands depend on it and not on each other or on `cli`).

/// What a command line asks for: run with these options, or show the command's help.
#[derive(Debug)]
pub enum Parsed<T> {
    /// Run with these options.
    Run(T),
    /// `--help` or `-h`: print this text on stdout and exit 0.
    Help(&'static str),
}

/// The error for an argument a command does not take, naming it and where the options
/// are listed.
pub fn unexpected(cmd: &str, arg: lexopt::Arg) -> String {
    format!(
        "{cmd}: {} (`vnfhost {cmd} --help` lists the options)",
        arg.unexpected()
    )
}

/// The value of option `flag`, as UTF-8.
pub fn value(p: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    p.value()
        .map_err(|e| format!("{flag}: {e}"))?
        .into_string()
        .map_err(|v| format!("{flag}: {v:?} is not UTF-8"))
}

/// `s` as a number for option `flag`.
pub fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{flag}: {s:?} is not a number"))
}
