//! The host's side: a connection to a pod VM's agent through the Unix socket QEMU (or the
//! `kvm` backend) serves for the agent's virtio-serial port.
//!
//! One reader thread takes every frame: replies wake the request that waits for them;
//! output and exit statuses go to the process's [`Handler`], called on that thread
//! without any lock held. A handler that blocks (a FIFO nobody reads) holds back the
//! output of every process of the VM, never the replies already read.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{read_frame, write_frame, Create, Exec, Kind, Process, Stats, MAX_DATA};

/// What a process did.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Standard output (or the terminal's output).
    Stdout(&'a [u8]),
    /// Standard error.
    Stderr(&'a [u8]),
    /// No more standard output.
    StdoutEnd,
    /// No more standard error.
    StderrEnd,
    /// It ended with this status (0..=255; 128 + signal).
    Exit(i32),
}

/// Receives a process's [`Event`]s.
pub type Handler = Box<dyn FnMut(Event<'_>) + Send>;

#[derive(Default)]
struct State {
    replies: HashMap<u32, Result<Vec<u8>, String>>,
    handlers: HashMap<u32, Handler>,
    gone: Option<String>,
}

struct Shared {
    st: Mutex<State>,
    cv: Condvar,
}

/// A connection to one VM's agent.
pub struct Agent {
    out: Mutex<UnixStream>,
    shared: Arc<Shared>,
    next: AtomicU32,
    /// One request at a time: replies are matched by process number.
    request: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// Connects to the agent's socket (waiting for it to appear) and waits until the agent
    /// answers, up to `timeout` in all (a VM under emulation boots in seconds).
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Agent, String> {
        let t = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if t.elapsed() > timeout => {
                    return Err(format!("the agent's socket {}: {e}", socket.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let reader = stream
            .try_clone()
            .map_err(|e| format!("the agent's socket: {e}"))?;
        let shared = Arc::new(Shared {
            st: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let s2 = shared.clone();
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || read_loop(reader, &s2))
            .map_err(|e| format!("a thread: {e}"))?;
        let agent = Agent {
            out: Mutex::new(stream),
            shared,
            next: AtomicU32::new(1),
            request: Mutex::new(()),
        };
        // The guest may not be up yet: what is sent before it opens its port waits in the
        // socket; ask again now and then in case an early one was lost.
        loop {
            let left = timeout.saturating_sub(t.elapsed());
            if left.is_zero() {
                return Err(format!(
                    "the pod VM's agent did not answer within {} s",
                    timeout.as_secs()
                ));
            }
            match agent.request(Kind::Hello, 0, &[], left.min(Duration::from_secs(5))) {
                Ok(v) if v == crate::VERSION.as_bytes() => return Ok(agent),
                Ok(v) => {
                    return Err(format!(
                        "the agent speaks {:?}, not {:?}",
                        String::from_utf8_lossy(&v),
                        crate::VERSION
                    ))
                }
                Err(e) if e.contains("timed out") => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Why the connection ended, once it has.
    pub fn gone(&self) -> Option<String> {
        lock(&self.shared.st).gone.clone()
    }

    /// A new process number.
    fn new_proc(&self) -> u32 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request and waits for its answer.
    pub fn request(
        &self,
        kind: Kind,
        proc_id: u32,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let _one = lock(&self.request);
        {
            let mut st = lock(&self.shared.st);
            if let Some(g) = &st.gone {
                return Err(g.clone());
            }
            st.replies.remove(&proc_id);
        }
        write_frame(&mut *lock(&self.out), kind, proc_id, payload)
            .map_err(|e| format!("to the agent: {e}"))?;
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.st);
        loop {
            if let Some(r) = st.replies.remove(&proc_id) {
                return r;
            }
            if let Some(g) = &st.gone {
                return Err(g.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("the agent's answer to {kind:?} timed out"));
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, left)
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Makes a container (its root file system mounted, its process not started); returns
    /// its process number. `handler` gets that process's output and exit.
    pub fn create(&self, c: &Create, handler: Handler) -> Result<u32, String> {
        let p = self.new_proc();
        let body = serde_json::to_vec(c).map_err(|e| e.to_string())?;
        lock(&self.shared.st).handlers.insert(p, handler);
        match self.request(Kind::Create, p, &body, Duration::from_secs(60)) {
            Ok(_) => Ok(p),
            Err(e) => {
                lock(&self.shared.st).handlers.remove(&p);
                Err(e)
            }
        }
    }

    /// Starts a created container's process.
    pub fn start(&self, p: u32) -> Result<(), String> {
        self.request(Kind::Start, p, &[], Duration::from_secs(30))
            .map(drop)
    }

    /// Starts a further process in container `container`; returns its number.
    pub fn exec(&self, container: u32, process: &Process, handler: Handler) -> Result<u32, String> {
        let p = self.new_proc();
        let body = serde_json::to_vec(&Exec {
            container,
            process: process.clone(),
        })
        .map_err(|e| e.to_string())?;
        lock(&self.shared.st).handlers.insert(p, handler);
        match self.request(Kind::Exec, p, &body, Duration::from_secs(30)) {
            Ok(_) => Ok(p),
            Err(e) => {
                lock(&self.shared.st).handlers.remove(&p);
                Err(e)
            }
        }
    }

    /// Sends `signal` to process `p`.
    pub fn signal(&self, p: u32, signal: u32) -> Result<(), String> {
        self.request(
            Kind::Signal,
            p,
            &signal.to_le_bytes(),
            Duration::from_secs(10),
        )
        .map(drop)
    }

    /// Resizes process `p`'s terminal.
    pub fn resize(&self, p: u32, rows: u16, cols: u16) -> Result<(), String> {
        let mut b = rows.to_le_bytes().to_vec();
        b.extend_from_slice(&cols.to_le_bytes());
        self.request(Kind::Resize, p, &b, Duration::from_secs(10))
            .map(drop)
    }

    /// Writes to process `p`'s standard input (unanswered: the agent buffers it).
    pub fn stdin(&self, p: u32, data: &[u8]) -> Result<(), String> {
        let mut out = lock(&self.out);
        for chunk in data.chunks(MAX_DATA) {
            write_frame(&mut *out, Kind::Stdin, p, chunk)
                .map_err(|e| format!("to the agent: {e}"))?;
        }
        out.flush().map_err(|e| format!("to the agent: {e}"))
    }

    /// Ends process `p`'s standard input.
    pub fn close_stdin(&self, p: u32) -> Result<(), String> {
        self.request(Kind::CloseStdin, p, &[], Duration::from_secs(10))
            .map(drop)
    }

    /// Kills and unmounts the container whose first process is `p`.
    pub fn destroy(&self, p: u32) -> Result<(), String> {
        let r = self.request(Kind::Destroy, p, &[], Duration::from_secs(30));
        lock(&self.shared.st).handlers.remove(&p);
        r.map(drop)
    }

    /// The resource use of the container whose first process is `p`.
    pub fn stats(&self, p: u32) -> Result<Stats, String> {
        let b = self.request(Kind::Stats, p, &[], Duration::from_secs(10))?;
        serde_json::from_slice(&b).map_err(|e| format!("the agent's stats: {e}"))
    }

    /// Forgets process `p`'s handler (an exec that was waited for).
    pub fn forget(&self, p: u32) {
        lock(&self.shared.st).handlers.remove(&p);
    }
}

fn read_loop(mut r: UnixStream, shared: &Shared) {
    let why = loop {
        let f = match read_frame(&mut r) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break "the pod VM's agent connection closed (the VM ended?)".to_string()
            }
            Err(e) => break format!("the pod VM's agent: {e}"),
        };
        let p = f.proc_id;
        match f.kind {
            Kind::Ok | Kind::Error => {
                let r = if f.kind == Kind::Ok {
                    Ok(f.payload)
                } else {
                    Err(String::from_utf8_lossy(&f.payload).into_owned())
                };
                lock(&shared.st).replies.insert(p, r);
                shared.cv.notify_all();
            }
            Kind::Stdout | Kind::Stderr | Kind::Exit => {
                let ev = match f.kind {
                    Kind::Stdout if f.payload.is_empty() => Event::StdoutEnd,
                    Kind::Stdout => Event::Stdout(&f.payload),
                    Kind::Stderr if f.payload.is_empty() => Event::StderrEnd,
                    Kind::Stderr => Event::Stderr(&f.payload),
                    _ => {
                        let Ok(b) = <[u8; 4]>::try_from(&f.payload[..]) else {
                            continue;
                        };
                        Event::Exit(i32::from_le_bytes(b))
                    }
                };
                // Called without the lock; an event for an unknown process is dropped.
                let Some(mut h) = lock(&shared.st).handlers.remove(&p) else {
                    continue;
                };
                h(ev);
                // Kept after the exit too: output a background child still writes may
                // follow it, until the end of each stream.
                lock(&shared.st).handlers.entry(p).or_insert(h);
            }
            // Requests from the guest are not a thing: ignored.
            _ => {}
        }
    };
    lock(&shared.st).gone = Some(why);
    shared.cv.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    fn fake_guest(
        name: &str,
        serve: impl FnOnce(UnixStream) + Send + 'static,
    ) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("agent-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                serve(s);
            }
        });
        path
    }

    #[test]
    fn a_guest_that_speaks_garbage_is_an_error_not_a_hang_or_panic() {
        let p = fake_guest("garbage", |mut s| {
            let mut b = [0u8; 64];
            let _ = s.read(&mut b);
            let _ = s.write_all(&u32::MAX.to_le_bytes());
            std::thread::sleep(Duration::from_millis(200));
        });
        let e = Agent::connect(&p, Duration::from_secs(5)).err().unwrap();
        assert!(e.contains("frame length"), "{e}");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn replies_output_and_exits_reach_the_right_process() {
        let p = fake_guest("echo", |mut s| {
            let mut r = s.try_clone().unwrap();
            loop {
                let Ok(f) = read_frame(&mut r) else { return };
                match f.kind {
                    Kind::Hello => write_frame(&mut s, Kind::Ok, 0, crate::VERSION.as_bytes()),
                    Kind::Exec => {
                        // Output and exit for the process, an event for an unknown one,
                        // then the reply.
                        let _ = write_frame(&mut s, Kind::Stdout, 999, b"stray");
                        let _ = write_frame(&mut s, Kind::Stdout, f.proc_id, b"out");
                        let _ = write_frame(&mut s, Kind::Stderr, f.proc_id, b"err");
                        let _ = write_frame(&mut s, Kind::Exit, f.proc_id, &7i32.to_le_bytes());
                        write_frame(&mut s, Kind::Ok, f.proc_id, b"")
                    }
                    _ => write_frame(&mut s, Kind::Error, f.proc_id, b"no"),
                }
                .unwrap();
            }
        });
        let a = Agent::connect(&p, Duration::from_secs(5)).unwrap();
        let got = Arc::new(Mutex::new(Vec::<String>::new()));
        let g = got.clone();
        let proc_id = a
            .exec(
                1,
                &Process {
                    args: vec!["x".into()],
                    ..Default::default()
                },
                Box::new(move |ev| g.lock().unwrap().push(format!("{ev:?}"))),
            )
            .unwrap();
        assert_eq!(proc_id, 1);
        assert_eq!(
            *got.lock().unwrap(),
            [
                "Stdout([111, 117, 116])",
                "Stderr([101, 114, 114])",
                "Exit(7)"
            ]
        );
        assert_eq!(a.signal(proc_id, 9).unwrap_err(), "no");
        let _ = std::fs::remove_file(p);
    }
}
