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

/// Starts this `vnfhost` binary with `args` in a session of its own (so it outlives the
/// command that starts it: the daemon for `up`, a pod's keeper for `run`), stdin from
/// /dev/null, stdout and stderr to `log`.
pub fn spawn_detached(
    args: &[&std::ffi::OsStr],
    log: std::fs::File,
) -> Result<std::process::Child, String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| e.to_string())
}
