//! The switch's control socket: HTTP/1.1 over a Unix socket (mode 0600), for the daemon.
//!
//! | request | reply |
//! |---|---|
//! | `GET /v1/config` | the [`SwitchSpec`] being followed |
//! | `PUT /v1/config` with a [`SwitchSpec`] | 200 [`ApplyReply`](api::switch::ApplyReply) (ports that failed to open are listed, and retried); 400 when the body is not a spec (the field named); 422 when the spec fails a check |
//! | `GET /v1/stats` | [`SwitchCounters`](api::switch::SwitchCounters) |
//!
//! A thread beside the server opens failed ports again when their back-off has passed,
//! and looks the tunnels' next hops up again: every half second, and at once when the
//! kernel announces a route or neighbour change (netlink).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use api::http::{self, json, Request, Response};
use api::switch::SwitchSpec;

use super::managed::Managed;

fn lock(m: &Mutex<Managed>) -> MutexGuard<'_, Managed> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Answers one request.
pub fn handle(m: &Mutex<Managed>, req: Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/stats") => json(&lock(m).counters()),
        ("GET", "/v1/config") => json(lock(m).spec()),
        ("PUT", "/v1/config") => {
            let de = &mut serde_json::Deserializer::from_slice(&req.body);
            match serde_path_to_error::deserialize::<_, SwitchSpec>(de) {
                Err(e) => {
                    let at = e.path().to_string();
                    Response::json(
                        400,
                        http::error_body(&format!("spec: {at}: {}", e.into_inner())),
                    )
                }
                Ok(spec) => match lock(m).apply(spec) {
                    Ok(reply) => json(&reply),
                    Err(e) => Response::json(422, http::error_body(&e)),
                },
            }
        }
        (_, "/v1/stats" | "/v1/config") => {
            Response::json(405, http::error_body("method not allowed"))
        }
        _ => Response::json(404, http::error_body("no such endpoint")),
    }
}

/// Binds the control socket and serves it on a thread; another thread retries failed
/// ports every half second until `stop` is set.
pub fn serve(path: &Path, m: Arc<Mutex<Managed>>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let l = bind_socket(path, 0o600)?;
    let m2 = m.clone();
    std::thread::Builder::new()
        .name("switch-ctl".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                http::serve_one(s, Duration::from_secs(5), |req| handle(&m2, req));
            }
        })
        .map_err(|e| format!("control thread: {e}"))?;
    std::thread::Builder::new()
        .name("switch-retry".into())
        .spawn(move || {
            // Route and neighbour changes wake it at once (a tunnel's next hop resolved
            // or moved); without the subscription, every half second.
            let watch = pmd::afpacket::RouteWatch::open()
                .map_err(|e| tracing::warn!("no netlink route watch ({e}); polling only"))
                .ok();
            while !stop.load(Ordering::Relaxed) {
                match &watch {
                    Some(w) => {
                        w.wait(500);
                    }
                    None => std::thread::sleep(Duration::from_millis(500)),
                }
                lock(&m).retry();
            }
        })
        .map_err(|e| format!("retry thread: {e}"))?;
    Ok(())
}

/// Binds a Unix socket with `mode`; a leftover socket nobody listens on is replaced,
/// one somebody listens on is an error.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, String> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{}: something already listens here",
            path.display()
        ));
    }
    if let Ok(md) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !md.file_type().is_socket() {
            return Err(format!("{}: exists and is not a socket", path.display()));
        }
        let _ = std::fs::remove_file(path);
    }
    // Bind inside a private directory (0700), set the mode, then move the socket into
    // place: it never exists reachable with a wider mode.
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".bind-{}-{:x}", std::process::id(), nonce()));
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    std::fs::create_dir(&tmp).map_err(fail)?;
    let bound = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
        let inner = tmp.join("s");
        let l = UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&inner, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    bound.map_err(fail)
}

/// A value that differs between calls in one process.
fn nonce() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
