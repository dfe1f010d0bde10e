//! A small HTTP/1.1 server and client over Unix sockets, for vnfhost's local APIs: the
//! daemon's (`/run/vnfhost/api.sock`) and the switch's control socket.
//!
//! Why not axum or hyper: every client of these APIs (the CLI, the CNI plugin, the switch
//! process) is synchronous and short-lived, and the CNI plugin has a 10 ms budget; one
//! request per connection over a local socket needs none of an async runtime. The server
//! side treats every peer as hostile: the request head and body are bounded, reads time
//! out, and a malformed request gets a 400 rather than a panic.
//!
//! Each connection carries one request and one response (`Connection: close`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

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

/// Serves one connection with `handler`: reads the request (within `timeout`), answers
/// 400 to a malformed one.
pub fn serve_one(s: UnixStream, timeout: Duration, handler: impl FnOnce(Request) -> Response) {
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let resp = match read_request(&s) {
        Ok(req) => handler(req),
        Err(e) => Response::json(400, error_body(&format!("bad request: {e}"))),
    };
    let _ = write_response(&s, &resp);
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
    (&s).write_all(head.as_bytes())?;
    (&s).write_all(body)?;
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
