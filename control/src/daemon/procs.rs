//! The processes the daemon starts (the switch, the pods' VMs): started in sessions of
//! their own, recognised by pid and start time, stopped with SIGTERM then SIGKILL.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Exit;

/// A process the daemon started, identified by pid and start time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRec {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
    /// Its arguments (after the program).
    pub args: Vec<String>,
}

/// Start time of `pid`, if it exists and is not a zombie.
pub(super) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split(' ');
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); field 22 is 19 further.
    f.nth(18)?.parse().ok()
}

/// The daemon's own children (for their exit status) and the rest, adopted.
#[derive(Default)]
pub(super) struct Procs {
    children: HashMap<i32, Child>,
    /// Helpers that end with their pod (console pumps), reaped by [`Procs::reap`].
    helpers: Vec<Child>,
}

impl Procs {
    /// `None` while `rec` runs; how it ended otherwise.
    pub(super) fn check(&mut self, rec: &ProcRec) -> Option<Exit> {
        if let Some(c) = self.children.get_mut(&rec.pid) {
            return match c.try_wait() {
                Ok(None) => None,
                Ok(Some(st)) => {
                    self.children.remove(&rec.pid);
                    Some(if st.success() {
                        Exit::Success
                    } else {
                        Exit::Failed(st.to_string())
                    })
                }
                Err(e) => Some(Exit::Failed(e.to_string())),
            };
        }
        match start_time(rec.pid) {
            Some(t) if t == rec.start_time => None,
            _ => Some(Exit::Unknown),
        }
    }

    /// Starts `exe args` in a session of its own, standard output to `out`, errors
    /// to `err`.
    pub(super) fn spawn(
        &mut self,
        exe: &Path,
        args: &[String],
        out: Stdio,
        err: Stdio,
    ) -> Result<ProcRec, String> {
        let child = spawn_in_session(exe, args, Stdio::null(), out, err)?;
        let pid = child.id() as i32;
        let t = start_time(pid).unwrap_or(0);
        self.children.insert(pid, child);
        Ok(ProcRec {
            pid,
            start_time: t,
            args: args.to_vec(),
        })
    }

    /// Starts a helper `exe args` (in a session of its own, reading `input`), which ends
    /// by itself; the daemon only reaps it.
    pub(super) fn spawn_helper(
        &mut self,
        exe: &Path,
        args: &[String],
        input: Stdio,
        log: &Path,
    ) -> Result<(), String> {
        self.reap();
        let child = spawn_in_session(exe, args, input, Stdio::null(), append(log)?)?;
        self.helpers.push(child);
        Ok(())
    }

    /// Reaps helpers that ended.
    pub(super) fn reap(&mut self) {
        self.helpers
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Only a process that is still the
    /// one recorded (pid and start time) is signalled.
    pub(super) fn stop(&mut self, rec: &ProcRec, grace: Duration) {
        if self.check(rec).is_some() {
            return;
        }
        // SAFETY: kill with a pid just checked to be our process.
        unsafe { libc::kill(rec.pid, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if self.check(rec).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.check(rec).is_none() {
            // SAFETY: as above.
            unsafe { libc::kill(rec.pid, libc::SIGKILL) };
            for _ in 0..100 {
                if self.check(rec).is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// `exe args` in a session of its own.
/// `path` opened for appending, as a child's output.
pub(super) fn append(path: &Path) -> Result<Stdio, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn spawn_in_session(
    exe: &Path,
    args: &[String],
    input: Stdio,
    out: Stdio,
    err: Stdio,
) -> Result<Child, String> {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(input).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe and the closure allocates nothing. The
    // child leaves the daemon's session, so signals to the daemon's terminal or
    // process group do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("{} {}: {e}", exe.display(), args.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_identifies_a_live_process() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own start time");
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(i32::MAX), None);
        let mut p = Procs::default();
        let rec = ProcRec {
            pid: me,
            start_time: t + 1,
            args: vec![],
        };
        // Same pid, other start time: not ours (a reused pid).
        assert_eq!(p.check(&rec), Some(Exit::Unknown));
    }
}
