//! `vnfhost switch` as a child process, the way a user runs it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `vnfhost switch`. Dropping it kills it.
pub struct SwitchProc {
    child: Option<Child>,
    log: PathBuf,
}

impl SwitchProc {
    /// Starts `vnfhost switch ARGS`, logging to `log`. When `wait_sockets` is not empty,
    /// waits until those sockets exist (server-mode ports).
    pub fn spawn(
        args: &[String],
        log: &Path,
        wait_sockets: &[PathBuf],
    ) -> Result<SwitchProc, String> {
        let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vnfhost"));
        cmd.arg("switch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        cmd.env("VNFHOST_LOG", "info");
        super::qemu::set_pdeathsig(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("spawn vnfhost: {e}"))?;
        let mut s = SwitchProc {
            child: Some(child),
            log: log.into(),
        };
        let t = Instant::now();
        while !wait_sockets.iter().all(|p| p.exists()) {
            if !s.is_running() {
                return Err(format!("vnfhost switch exited early:\n{}", s.log_text()));
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "vnfhost switch made no sockets in 10 s:\n{}",
                    s.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` and waits up to 10 s for the exit.
    pub fn stop(mut self, sig: i32) -> Result<ExitStatus, String> {
        let mut child = self.child.take().ok_or("already stopped")?;
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        unsafe { libc::kill(child.id() as i32, sig) };
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(st);
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "vnfhost switch ignored signal {sig} for 10 s:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SwitchProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Edits the spec a switch runs through its control socket: `GET /v1/config`, `f`, then
/// `PUT /v1/config` (which must be taken).
pub fn edit_config(sock: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let t = Duration::from_secs(5);
    let (st, body) = api::http::call(sock, "GET", "/v1/config", None, t).unwrap();
    assert_eq!(st, 200);
    let mut spec: serde_json::Value = serde_json::from_slice(&body).unwrap();
    f(&mut spec);
    let body = spec.to_string();
    let (st, r) = api::http::call(sock, "PUT", "/v1/config", Some(body.as_bytes()), t).unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&r));
}

/// `GET /v1/stats` of a switch's control socket.
pub fn stats(sock: &Path) -> serde_json::Value {
    let t = Duration::from_secs(5);
    let (_, body) = api::http::call(sock, "GET", "/v1/stats", None, t).unwrap();
    serde_json::from_slice(&body).unwrap()
}
