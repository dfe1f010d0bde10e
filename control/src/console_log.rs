//! A log on disk, bounded — a pod's console, its VMM's log, the switch's log:
//! `vnfhost console-log --max BYTES FILE` copies its standard input (the VM's serial
//! console, or a process's output, through a pipe) to `FILE`, and when `FILE`
//! would pass `BYTES` it is renamed to `FILE.1` (the one before is dropped) and a new
//! `FILE` begins. A guest that prints without pause so takes at most twice `BYTES` of the
//! run directory, which is RAM, and the newest output is always kept.
//!
//! Why a process of its own: a pod's VM outlives the daemon (restarts, upgrades), so what
//! reads its console must too; the daemon starts this one in a session of its own next to
//! the VM, and it ends when the VM (every writer of the pipe) is gone. It never stops
//! reading, so the VM never blocks on its console, whatever happens to the file: a write
//! that fails (the directory removed) drops that output and is tried again on the next.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Usage of `vnfhost console-log`.
pub const USAGE: &str = "\
usage: vnfhost console-log --max BYTES FILE

Copies standard input to FILE; when FILE would pass BYTES (e.g. 4Mi) it becomes FILE.1
(the one before is dropped) and a new FILE begins. The daemon runs it for each pod's
console and VMM log, and for the switch's log.

options:
  --max BYTES   size of FILE at which it is rotated (4Ki..1Gi)
";

/// A log file that is rotated to `PATH.1` at `max` bytes.
pub struct RotatingLog {
    path: PathBuf,
    max: u64,
    file: Option<File>,
    len: u64,
}

impl RotatingLog {
    /// Appends to `path` (its present size counts).
    pub fn open(path: &Path, max: u64) -> RotatingLog {
        let mut l = RotatingLog {
            path: path.into(),
            max: max.max(1),
            file: None,
            len: 0,
        };
        l.reopen();
        l
    }

    /// The previous file.
    pub fn old(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        p.into()
    }

    fn reopen(&mut self) {
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.len = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
    }

    fn rotate(&mut self) {
        self.file = None;
        let _ = std::fs::rename(&self.path, Self::old(&self.path));
        // A file renamed by someone else, or a path that cannot be renamed: start anew
        // rather than grow it.
        let _ = std::fs::remove_file(&self.path);
        self.reopen();
    }

    /// Writes all of `buf`, rotating as often as it takes; output that cannot be written
    /// is dropped.
    pub fn write(&mut self, mut buf: &[u8]) {
        // Only the newest `max` bytes of a chunk can be in the file after it.
        if buf.len() as u64 > self.max {
            let skip = buf.len() - self.max as usize;
            buf = &buf[skip..];
            self.rotate();
        }
        while !buf.is_empty() {
            if self.len >= self.max {
                self.rotate();
            }
            let room = (self.max - self.len).min(buf.len() as u64) as usize;
            if self.file.is_none() {
                self.reopen();
            }
            let Some(f) = self.file.as_mut() else {
                return; // the directory is gone: drop it
            };
            if f.write_all(&buf[..room]).is_err() {
                self.file = None;
                return;
            }
            self.len += room as u64;
            buf = &buf[room..];
        }
    }
}

/// Copies `input` to `path` with rotation at `max` bytes until `input` ends.
pub fn pump(mut input: impl Read, path: &Path, max: u64) -> io::Result<()> {
    let mut log = RotatingLog::open(path, max);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => log.write(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `vnfhost console-log`.
pub fn main(args: Vec<OsString>) -> Result<i32, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let (mut max, mut file) = (None, None);
    while let Some(a) = p.next().map_err(|e| e.to_string())? {
        match a {
            Long("max") => {
                let v = p.value().map_err(|e| e.to_string())?;
                let v = v.to_string_lossy();
                max = Some(crate::topology::parse_memory(&v).map_err(|e| format!("--max: {e}"))?);
            }
            Long("help") | Short('h') => {
                print!("{USAGE}");
                return Ok(0);
            }
            Value(v) if file.is_none() => file = Some(PathBuf::from(v)),
            other => return Err(format!("console-log: {}\n{USAGE}", other.unexpected())),
        }
    }
    let (Some(max), Some(file)) = (max, file) else {
        return Err(format!("console-log: --max and FILE are needed\n{USAGE}"));
    };
    if !(4 << 10..=1 << 30).contains(&max) {
        return Err(format!("--max {max}: not in 4Ki..1Gi"));
    }
    pump(io::stdin().lock(), &file, max).map_err(|e| format!("console-log: stdin: {e}"))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_rotates_at_its_size_and_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("vnfhost-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let mut l = RotatingLog::open(&path, 100);
        for i in 0..1000u32 {
            l.write(format!("line {i:04}\n").as_bytes());
        }
        let now = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(RotatingLog::old(&path)).unwrap();
        assert!(
            now.len() <= 100 && old.len() == 100,
            "{} {}",
            now.len(),
            old.len()
        );
        assert!(now.ends_with("line 0999\n"), "{now}");
        assert!(format!("{old}{now}").contains("line 0990\nline 0991\n"));
        // A chunk bigger than the whole file: its tail is kept.
        l.write(&[b'x'; 1000]);
        assert_eq!(std::fs::read(&path).unwrap(), vec![b'x'; 100]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
