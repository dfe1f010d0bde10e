//! A small HTTP/1.1 server and client over Unix sockets, for vnfhost's local APIs: the
//! daemon's (`/run/vnfhost/api.sock`) and the switch's control socket.
//!
//! Why not axum or hyper: every client of these APIs (the CLI, the CNI plugin, the switch
//! process) is synchronous and short-lived, and the CNI plugin has a 10 ms budget; one
//! request per connection over a local socket needs none of an async runtime. The server
//! side treats every peer as hostile: the request head and body are bounded, the whole
//! request (head and body) must arrive within one deadline (not a timeout per read, which
//! a client sending a byte at a time would renew forever), and a malformed request gets a
//! 400 rather than a panic. How many connections a server serves at once is the server's
//! to bound ([`ConnLimit`]).
//!
//! Each connection carries one request and one response (`Connection: close`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest request or response head.
pub const MAX_HEAD: usize = 16 << 10;
/// Largest request or response body.
pub const MAX_BODY: usize = 8 << 20;

/// A request as the server sees it.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `PUT`, `POST`, `DELETE`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    /// The body (empty without `Content-Length`).
    pub body: Vec<u8>,
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads a head (start line and headers) up to the empty line, bounded by [`MAX_HEAD`];
/// returns the start line and the `Content-Length`.
fn read_head(r: &mut impl BufRead) -> io::Result<(String, usize)> {
    let mut total = 0;
    let mut start = String::new();
    let mut length = 0usize;
    let mut first = true;
    loop {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(bad("connection closed inside the head"));
        }
        total += n;
        if total > MAX_HEAD || !line.ends_with(b"\n") {
            return Err(bad(format!("head longer than {MAX_HEAD} bytes")));
        }
        let line = std::str::from_utf8(&line)
            .map_err(|_| bad("head is not UTF-8"))?
            .trim_end_matches(['\r', '\n']);
        if first {
            start = line.to_string();
            first = false;
            continue;
        }
        if line.is_empty() {
            return Ok((start, length));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("malformed header {line:?}")))?;
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {value:?}")))?;
            if length > MAX_BODY {
                return Err(bad(format!("body of {length} bytes; at most {MAX_BODY}")));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked bodies are not accepted; send Content-Length"));
        }
    }
}

fn read_body(r: &mut impl Read, length: usize) -> io::Result<Vec<u8>> {
    let mut body = vec![0u8; length];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Reads one request from a connection.
pub fn read_request(s: impl Read) -> io::Result<Request> {
    let mut r = BufReader::new(s);
    let (start, length) = read_head(&mut r)?;
    let mut parts = start.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("malformed request line {start:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("unsupported protocol {version:?}")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        body: read_body(&mut r, length)?,
    })
}

/// Writes a response.
pub fn write_response(mut s: impl Write, r: &Response) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(&r.body)?;
    s.flush()
}

/// A stream whose reads can time out: a Unix or a TCP socket.
pub trait TimedStream {
    /// `set_read_timeout` of the socket.
    fn read_timeout(&self, d: Duration) -> io::Result<()>;
}

impl TimedStream for UnixStream {
    fn read_timeout(&self, d: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(d))
    }
}

impl TimedStream for std::net::TcpStream {
    fn read_timeout(&self, d: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(d))
    }
}

/// A reader of a stream that must be done by a deadline: every read waits at most for
/// what is left of it, and none starts after it.
struct Deadline<'a, S> {
    s: &'a S,
    until: Instant,
}

impl<S: TimedStream> Read for Deadline<'_, S>
where
    for<'b> &'b S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let late = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the request did not arrive within its deadline",
            )
        };
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        self.s.read_timeout(left)?;
        let mut s = self.s;
        // The socket's timeout is what was left of the deadline: its expiry is the
        // deadline's.
        s.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => late(),
            _ => e,
        })
    }
}

/// Reads one request from `s`, head and body within `deadline` of now in total.
pub fn read_request_within<S: TimedStream>(s: &S, deadline: Duration) -> io::Result<Request>
where
    for<'b> &'b S: Read,
{
    read_request(Deadline {
        s,
        until: Instant::now() + deadline,
    })
}

/// Serves one connection with `handler`: reads the request (all of it within `deadline`),
/// answers 400 to a malformed or late one; the response must be taken within `deadline`
/// too.
pub fn serve_one(s: UnixStream, deadline: Duration, handler: impl FnOnce(Request) -> Response) {
    let _ = s.set_write_timeout(Some(deadline));
    let resp = match read_request_within(&s, deadline) {
        Ok(req) => handler(req),
        Err(e) => Response::json(400, error_body(&format!("bad request: {e}"))),
    };
    let _ = write_response(&s, &resp);
}

/// A bound on the connections a server serves at once: [`ConnLimit::try_take`] gives a
/// slot, held until its [`ConnSlot`] drops, or `None` when all are taken (the server then
/// refuses the connection at once instead of starting a thread for it).
#[derive(Clone, Debug)]
pub struct ConnLimit {
    busy: Arc<AtomicUsize>,
    max: usize,
}

/// One connection's slot of a [`ConnLimit`].
#[derive(Debug)]
pub struct ConnSlot(Arc<AtomicUsize>);

impl ConnLimit {
    /// At most `max` at once.
    pub fn new(max: usize) -> ConnLimit {
        ConnLimit {
            busy: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, or `None` when `max` are taken.
    pub fn try_take(&self) -> Option<ConnSlot> {
        let mut n = self.busy.load(Ordering::Acquire);
        loop {
            if n >= self.max {
                return None;
            }
            match self
                .busy
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(ConnSlot(self.busy.clone())),
                Err(now) => n = now,
            }
        }
    }

    /// Slots taken now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refuses a connection over a server's [`ConnLimit`] without waiting on the client: a
/// 503 is written if the socket takes it at once, and the connection is closed.
pub fn refuse_busy(s: UnixStream) {
    refuse(s, 503, "too many connections at once; try again shortly");
}

/// Answers `status` with `{"error": msg}` without reading the request or waiting on the
/// client (the reply is written only if the socket takes it at once), and closes.
pub fn refuse(s: UnixStream, status: u16, msg: &str) {
    let _ = s.set_nonblocking(true);
    let _ = write_response(&s, &Response::json(status, error_body(msg)));
}

/// `{"error": msg}`.
pub fn error_body(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": msg })).unwrap_or_default()
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nobody listens on the socket.
    #[error("{path}: {why}")]
    Connect {
        /// The socket.
        path: String,
        /// Why (with a hint).
        why: String,
    },
    /// The exchange failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Sends one request to the server on `sock`; returns the status and the body.
pub fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), CallError> {
    let s = UnixStream::connect(sock).map_err(|e| CallError::Connect {
        path: sock.display().to_string(),
        why: match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                format!("{e} (is the daemon running? start it with `vnfhost daemon`)")
            }
            io::ErrorKind::PermissionDenied => {
                format!("{e} (the API socket is for root and the vnfhost group)")
            }
            _ => e.to_string(),
        },
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: vnfhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // A server that refuses a request before reading it (403 to a stranger) answers and
    // closes: the write then fails with a broken pipe, but the answer is there to read.
    let sent = (&s)
        .write_all(head.as_bytes())
        .and_then(|()| (&s).write_all(body));
    match sent {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        r => r?,
    }
    let mut r = BufReader::new(&s);
    let (start, length) = read_head(&mut r)?;
    let status = start
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("malformed status line {start:?}")))?;
    Ok((status, read_body(&mut r, length)?))
}

/// A 200 response with `v` as JSON.
pub fn json<T: serde::Serialize>(v: &T) -> Response {
    Response::json(200, serde_json::to_vec(v).unwrap_or_default())
}

/// Sends one request and decodes a 200 reply as `T`; any other status is an error
/// carrying the reply's `error` text.
pub fn request<T: for<'de> serde::Deserialize<'de>>(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<T, String> {
    request_within(sock, method, path, body, Duration::from_secs(10))
}

/// [`request`] with a timeout of its own for each read and write.
pub fn request_within<T: for<'de> serde::Deserialize<'de>>(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<T, String> {
    let (status, body) = call(sock, method, path, body, timeout).map_err(|e| e.to_string())?;
    if status != 200 {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(msg);
    }
    serde_json::from_slice(&body).map_err(|e| format!("bad reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(raw: &[u8]) -> io::Result<Request> {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(raw).unwrap();
        drop(a);
        read_request(&b)
    }

    #[test]
    fn a_request_with_a_body_is_read() {
        let r =
            roundtrip(b"PUT /v1/topology?dry=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("PUT", "/v1/topology")
        );
        assert_eq!(r.query, "dry=1");
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn an_answer_before_the_request_was_read_is_not_lost_to_a_broken_pipe() {
        let dir = std::env::temp_dir().join(format!("http-refuse-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("s");
        let _ = std::fs::remove_file(&sock);
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            // Answer and close without reading a byte of the request.
            let _ = (&s).write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 29\r\n\r\n{\"error\":\"permission denied\"}",
            );
        });
        std::thread::sleep(Duration::from_millis(50));
        // A body big enough that the write cannot finish into a closed socket's buffer.
        let big = vec![b'x'; 1 << 20];
        let (status, body) = call(&sock, "PUT", "/x", Some(&big), Duration::from_secs(5)).unwrap();
        assert_eq!(status, 403);
        assert!(String::from_utf8_lossy(&body).contains("permission denied"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hostile_requests_are_errors_not_panics() {
        for raw in [
            &b"GET / HTTP/1.1\r\n"[..],                               // no end of head
            b"GET /\r\n\r\n",                                         // no version
            b"GET / SPDY/3\r\n\r\n",                                  // not HTTP
            b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n",           // bad length
            b"PUT / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", // too big
            b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",     // short body
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",  // chunked
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",                    // bad header
            b"\xff\xfe / HTTP/1.1\r\n\r\n",                           // not UTF-8
        ] {
            assert!(
                roundtrip(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let long = [
            b"GET / HTTP/1.1\r\nX: ".as_slice(),
            &[b'a'; MAX_HEAD],
            b"\r\n\r\n",
        ]
        .concat();
        assert!(roundtrip(&long).is_err());
    }

    #[test]
    fn a_request_must_arrive_whole_within_its_deadline() {
        // One byte at a time, each well within any per-read timeout: the deadline for the
        // whole request still ends it.
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            for &c in b"GET / HTTP/1.1\r\nX-Slow: yes\r\n"
                .iter()
                .cycle()
                .take(100)
            {
                if (&a).write_all(&[c]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let t0 = Instant::now();
        let e = read_request_within(&b, Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        drop(b);
        t.join().unwrap();
        // In time, it is read.
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"GET /x HTTP/1.1\r\n\r\n").unwrap();
        let r = read_request_within(&b, Duration::from_secs(1)).unwrap();
        assert_eq!(r.path, "/x");
    }

    #[test]
    fn a_conn_limit_gives_at_most_max_slots() {
        let l = ConnLimit::new(2);
        let a = l.try_take().unwrap();
        let _b = l.try_take().unwrap();
        assert!(l.try_take().is_none());
        assert_eq!(l.busy(), 2);
        drop(a);
        assert!(l.try_take().is_some());
    }

    #[test]
    fn call_and_serve_talk() {
        let dir = std::env::temp_dir().join(format!("vnfhost-http-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("s");
        let _ = std::fs::remove_file(&sock);
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            serve_one(s, Duration::from_secs(2), |r| {
                Response::json(200, format!("{{\"len\":{}}}", r.body.len()).into_bytes())
            });
        });
        let (st, body) = call(&sock, "PUT", "/x", Some(b"abc"), Duration::from_secs(2)).unwrap();
        t.join().unwrap();
        assert_eq!((st, body.as_slice()), (200, &b"{\"len\":3}"[..]));
        let e = call(&dir.join("none"), "GET", "/", None, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("vnfhost daemon"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
