//! The protocol between the host (the containerd shim, `vnfhost run`) and the agent in a
//! vnfhost pod VM (`vnfhost-init`), over a dedicated virtio-serial port named
//! [`PORT_NAME`]. The console stays a console: no container argument is ever typed into a
//! shell.
//!
//! # Frames
//!
//! ```text
//! u32 LE  length of what follows (5 + payload, at most MAX_FRAME)
//! u8      kind (Kind)
//! u32 LE  process number, chosen by the host: 0 is the agent itself
//! ...     payload
//! ```
//!
//! Requests go host → guest and are answered by [`Kind::Ok`] or [`Kind::Error`] on the same
//! process number, one request per process at a time. Output, end of output and exit
//! status go guest → host unasked. Control payloads are JSON ([`Create`], [`Exec`]); data is
//! raw bytes; numbers are little-endian.
//!
//! | kind | way | payload |
//! |---|---|---|
//! | `Hello` | → | none; the reply carries [`VERSION`] as text |
//! | `Create` | → | [`Create`]: mounts the container's root file system, makes its process (not started) |
//! | `Start` | → | none: starts a created container's process |
//! | `Exec` | → | [`Exec`]: a further process in a running container, started at once |
//! | `Signal` | → | u32 signal number, to the process |
//! | `Resize` | → | u16 rows, u16 columns, of the process's terminal |
//! | `Stdin` | → | bytes for the process's standard input |
//! | `CloseStdin` | → | none: end of its standard input |
//! | `Destroy` | → | none: the container (by its first process) is killed and unmounted |
//! | `Stats` | → | none; the reply is [`Stats`] of the container |
//! | `Stdout`/`Stderr` | ← | bytes; an empty payload is the end of that stream |
//! | `Exit` | ← | i32 exit status (0..=255, 128 + signal) |
//!
//! A process that cannot be started (its executable missing) exits 127 (126 when it is not
//! executable), with the reason on its standard error, as with runc.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

#[cfg(feature = "host")]
pub mod client;

/// The virtio-serial port's name (`/sys/class/virtio-ports/*/name` in the guest).
pub const PORT_NAME: &str = "vnfhost.agent";
/// Protocol version, answered to [`Kind::Hello`].
pub const VERSION: &str = "vnfhost-agent 1";
/// Largest frame (after the length field).
pub const MAX_FRAME: usize = 1 << 20;
/// Largest data payload a sender puts in one frame.
pub const MAX_DATA: usize = 64 << 10;
/// The serial number of the disk that carries the container image in slot `i`
/// (`/sys/block/vdX/serial` in the guest).
pub fn slot_serial(i: usize) -> String {
    format!("vnfslot{i}")
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Is the agent there, and which protocol does it speak.
    Hello = 1,
    /// Make a container.
    Create = 2,
    /// Start a created container's process.
    Start = 3,
    /// Start a further process in a container.
    Exec = 4,
    /// Signal a process.
    Signal = 5,
    /// Resize a process's terminal.
    Resize = 6,
    /// Standard input.
    Stdin = 7,
    /// End of standard input.
    CloseStdin = 8,
    /// Remove a container.
    Destroy = 9,
    /// A container's resource use.
    Stats = 10,
    /// A request succeeded (payload: the answer, if any).
    Ok = 32,
    /// A request failed (payload: the reason, UTF-8).
    Error = 33,
    /// Standard output.
    Stdout = 34,
    /// Standard error.
    Stderr = 35,
    /// The process ended.
    Exit = 36,
}

impl Kind {
    /// The kind with this number.
    pub fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        Some(match b {
            1 => Hello,
            2 => Create,
            3 => Start,
            4 => Exec,
            5 => Signal,
            6 => Resize,
            7 => Stdin,
            8 => CloseStdin,
            9 => Destroy,
            10 => Stats,
            32 => Ok,
            33 => Error,
            34 => Stdout,
            35 => Stderr,
            36 => Exit,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: Kind,
    /// The process it is about.
    pub proc_id: u32,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// A frame as bytes.
pub fn encode(kind: Kind, proc_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(9 + payload.len());
    b.extend_from_slice(&((5 + payload.len()) as u32).to_le_bytes());
    b.push(kind as u8);
    b.extend_from_slice(&proc_id.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// Writes one frame (one `write_all`, so frames of one writer never interleave).
pub fn write_frame(w: &mut impl Write, kind: Kind, proc_id: u32, payload: &[u8]) -> io::Result<()> {
    if payload.len() + 5 > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    w.write_all(&encode(kind, proc_id, payload))?;
    w.flush()
}

/// Why bytes are not a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below 5 or above [`MAX_FRAME`]: the stream cannot be resynchronised.
    BadLength(u32),
    /// An unknown kind (the frame is skipped).
    UnknownKind(u8),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadLength(n) => write!(f, "frame length {n} outside 5..={MAX_FRAME}"),
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
        }
    }
}

/// Cuts frames out of a byte stream read in pieces (a non-blocking reader).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds bytes that were read.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if there is one. After [`FrameError::BadLength`] the stream
    /// is unusable; after [`FrameError::UnknownKind`] the next call goes on with the
    /// frame after it.
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if !(5..=MAX_FRAME as u32).contains(&len) {
            return Some(Err(FrameError::BadLength(len)));
        }
        let len = len as usize;
        if self.buf.len() < 4 + len {
            return None;
        }
        let frame: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
        let Some(kind) = Kind::from_u8(frame[0]) else {
            return Some(Err(FrameError::UnknownKind(frame[0])));
        };
        Some(Ok(Frame {
            kind,
            proc_id: u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]),
            payload: frame[5..].to_vec(),
        }))
    }
}

/// Reads one frame from a blocking reader.
pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = u32::from_le_bytes(len);
    if !(5..=MAX_FRAME as u32).contains(&n) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::BadLength(n).to_string(),
        ));
    }
    let mut body = vec![0u8; n as usize];
    r.read_exact(&mut body)?;
    let kind = Kind::from_u8(body[0]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::UnknownKind(body[0]).to_string(),
        )
    })?;
    Ok(Frame {
        kind,
        proc_id: u32::from_le_bytes([body[1], body[2], body[3], body[4]]),
        payload: body[5..].to_vec(),
    })
}

/// A process to run (the OCI `process` that matters inside the guest).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// The executable and its arguments, never parsed by a shell. The executable is
    /// looked up in the `PATH` of `env` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` strings.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the container (default `/`).
    #[serde(default)]
    pub cwd: String,
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// A terminal for its standard input, output and error (output comes as `Stdout`).
    #[serde(default)]
    pub terminal: bool,
    /// Whether it has a standard input (else `/dev/null`).
    #[serde(default)]
    pub stdin: bool,
    /// The terminal's first size, rows and columns.
    #[serde(default)]
    pub size: Option<(u16, u16)>,
}

/// A file put into the container's root before its process starts (`/etc/hosts`,
/// `/etc/resolv.conf`, `/etc/hostname`, small files carried from the host).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Absolute path inside the container.
    pub path: String,
    /// Content.
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// A disk mounted into the container (a topology pod's volume).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The disk's serial number.
    pub disk: String,
    /// Absolute path inside the container.
    pub path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// `Create`: a container whose root file system is the image on disk `disk`, under an
/// overlay with a tmpfs upper layer, in its own mount, UTS and IPC namespaces. Its
/// process is `process`, started by `Start`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Create {
    /// The container's id (for messages).
    pub id: String,
    /// Serial number of the disk with the image (an ext4 or erofs file system).
    pub disk: String,
    /// Its process.
    pub process: Process,
    /// Host name (the pod's).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Files to put in.
    #[serde(default)]
    pub files: Vec<File>,
    /// Disks to mount.
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

/// `Exec`: a further process in the container whose first process is `container`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// The container's first process number.
    pub container: u32,
    /// The process.
    pub process: Process,
}

/// A container's resource use, as the guest measures it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// CPU time of its processes (user + system), nanoseconds.
    pub cpu_ns: u64,
    /// Resident memory of its processes, bytes.
    pub rss_bytes: u64,
    /// Processes.
    pub pids: u64,
    /// Bytes in its writable (tmpfs) layer.
    pub rw_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut all = encode(Kind::Stdout, 7, b"hello");
        all.extend(encode(Kind::Exit, 7, &3i32.to_le_bytes()));
        let mut d = Decoder::default();
        let mut got = vec![];
        for (i, b) in all.iter().enumerate() {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame() {
                got.push((i, f.unwrap()));
            }
        }
        // Each frame comes out exactly when its last byte is in, not before.
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 4 + 5 + 5 - 1);
        assert_eq!(got[1].0, all.len() - 1);
        let f = &got[0].1;
        assert_eq!(
            (f.kind, f.proc_id, &f.payload[..]),
            (Kind::Stdout, 7, &b"hello"[..])
        );
        assert_eq!(got[1].1.kind, Kind::Exit);
        assert_eq!(got[1].1.payload, 3i32.to_le_bytes());
        let f = read_frame(&mut &encode(Kind::Hello, 0, b"")[..]).unwrap();
        assert_eq!(f.kind, Kind::Hello);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut d = Decoder::default();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Some(Err(FrameError::BadLength(0))));
        let mut d = Decoder::default();
        d.push(&u32::MAX.to_le_bytes());
        assert!(matches!(
            d.next_frame(),
            Some(Err(FrameError::BadLength(_)))
        ));
        let mut d = Decoder::default();
        d.push(&[5, 0, 0, 0, 200, 1, 0, 0, 0]);
        d.push(&encode(Kind::Hello, 1, b""));
        assert_eq!(d.next_frame(), Some(Err(FrameError::UnknownKind(200))));
        assert_eq!(d.next_frame().unwrap().unwrap().kind, Kind::Hello);
        assert!(read_frame(&mut &[1u8, 0, 0][..]).is_err());
        assert!(read_frame(&mut &[9u8, 0, 0, 0, 1][..]).is_err());
        assert!(write_frame(&mut Vec::new(), Kind::Stdin, 1, &vec![0; MAX_FRAME]).is_err());
    }

    #[test]
    fn control_payloads_refuse_unknown_fields() {
        let c: Create = serde_json::from_str(
            r#"{"id":"c","disk":"vnfslot0","process":{"args":["/bin/true"]}}"#,
        )
        .unwrap();
        assert_eq!(c.process.cwd, "");
        assert!(serde_json::from_str::<Create>(
            r#"{"id":"c","disk":"d","process":{"args":[]},"privileged":true}"#
        )
        .is_err());
    }
}
