//! Attachments: switch ports the daemon makes on request of the CNI plugin (or the
//! containerd shim), one per (container, interface), on a network of the applied
//! topology: `PUT`, `GET` and `DELETE /v1/attachments/CONTAINER/IFNAME`,
//! `GET /v1/attachments`, `POST /v1/attachments/gc` ([`crate::daemon::GcRequest`]),
//! `POST /v1/attachments/CONTAINER/IFNAME/vm` ([`HandOverRequest`]).
//!
//! An attachment is a `tap` (a kernel interface in the pod's network namespace) or a
//! `vhost-user` socket for a userspace driver in the pod ([`Kind`]). Errors carry CNI
//! error codes ([`AttachError`]), so the plugin passes them on as they are.
//!
//! A VM pod's sandbox gets its CNI attachment as a tap, with the pod IP Kubernetes
//! reports; the VM runtime then hands that attachment over to the VM
//! ([`hand_over_to_vm`]): the same port, MAC and address, now a vhost-user socket the VM
//! connects to, and no tap left in the sandbox's namespace.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The kind of interface an attachment gives the pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A kernel interface in the pod's network namespace.
    #[default]
    Tap,
    /// A vhost-user socket for a userspace driver in the pod.
    VhostUser,
}

/// `PUT /v1/attachments/CONTAINER/IFNAME`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The topology network.
    pub network: String,
    /// The pod's network namespace (a path); needed for `tap`.
    #[serde(default)]
    pub netns: Option<String>,
    /// Interface kind.
    #[serde(default)]
    pub kind: Kind,
    /// `K8S_POD_NAMESPACE/K8S_POD_NAME`, for status.
    #[serde(default)]
    pub pod: Option<String>,
    /// Whether the interface gets the default route via the network's gateway (the
    /// primary interface does, extra ones do not).
    #[serde(default = "yes")]
    pub default_route: bool,
}

fn yes() -> bool {
    true
}

/// An attachment as the daemon keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// Container (sandbox) id.
    pub container: String,
    /// Interface name in the pod.
    pub ifname: String,
    /// What was asked.
    pub request: AttachRequest,
    /// Switch port name.
    pub port: String,
    /// MAC of the pod's interface.
    pub mac: String,
    /// Address with prefix length.
    pub address: String,
    /// The network's IPv4 gateway.
    pub gateway: Option<String>,
    /// The interface's MTU when it is not 1500: on a VXLAN network, the uplink's less
    /// the encapsulation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The tap's name, in the pod's namespace (`tap`).
    pub tap: Option<String>,
    /// The vhost-user socket (`vhost-user`).
    pub socket: Option<String>,
    /// Which namespace `request.netns` named at ADD (`tap`). A path such as
    /// `/proc/PID/ns/net` may later name another namespace (the pid reused, a bind mount
    /// replaced); the daemon compares this before every later use of the path and drops
    /// the attachment, touching nothing, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<NetnsId>,
    /// Handed over to the sandbox's VM ([`HandOverRequest`]): the port is the vhost-user
    /// `socket` (the switch listens, the VM connects), `tap` is `None` and no interface
    /// is left in the namespace; port, MAC, address and gateway are those of the CNI
    /// ADD. `request` stays what CNI asked (a `tap`), so a repeated ADD, CHECK, DEL and
    /// GC treat it as the pod's CNI attachment, and the namespace is still watched as
    /// the sandbox's lifetime.
    #[serde(default, skip_serializing_if = "is_false")]
    pub vm: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Attachment {
    /// The kind of port it is now: its request's, or `vhost-user` once handed over to
    /// the sandbox's VM.
    pub fn kind(&self) -> Kind {
        if self.vm {
            Kind::VhostUser
        } else {
            self.request.kind
        }
    }
}

/// `POST /v1/attachments/CONTAINER/IFNAME/vm`: hands a sandbox's `tap` attachment over to
/// the sandbox's VM. The reply is the [`Attachment`] as it is then ([`Attachment::vm`]:
/// its vhost-user `socket`, for QEMU `-netdev vhost-user,…` as client, or `vnfhost vm
/// run --net vhost-user=SOCKET,client,mac=MAC`; the same `mac`, `address`, `gateway`).
///
/// The daemon replaces the tap port by a vhost-user port of the same name on the switch
/// (same VLAN, port security on the same MAC and address), makes sure no interface with
/// that MAC is left in the sandbox's namespace, and records it in `state.json`, so a
/// daemon or switch restart makes the vhost-user port again, never the tap. If any step
/// fails, the tap attachment is put back as it was (the tap is made and configured
/// again if the switch had closed it) and the error says what failed. Handing over an
/// attachment already handed over returns it unchanged. CNI DEL removes it as any other
/// attachment: the port goes, the socket with it, and the address is free again.
///
/// Errors ([`AttachError`] bodies): 404 with [`CODE_UNKNOWN_CONTAINER`] when there is no
/// such attachment (or its namespace is gone or replaced since ADD, which drops it);
/// 409 with [`CODE_NOT_A_TAP`] for an attachment CNI made as `vhost-user`; 422 with code
/// 11 when no topology is applied or the switch is not running (nothing changed), with
/// [`CODE_SETUP`] when the switch or the namespace step failed (rolled back); 400 for a
/// body that is not this request.
///
/// It has no fields yet: the body may be empty or `{}`. Unknown fields are refused, so a
/// client that asks for an option this daemon does not know learns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandOverRequest {}

/// A namespace's identity: device and inode of its nsfs file (what `stat` on
/// `/proc/PID/ns/net` or a bind mount of it gives; equal exactly when it is the same
/// namespace).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetnsId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// An error with a CNI error code (spec: 4 invalid environment, 7 invalid network
/// configuration, 11 try again later, 100+ plugin specific).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachError {
    /// CNI error code.
    pub code: u32,
    /// What went wrong.
    pub error: String,
}

impl AttachError {
    /// An error with `code`.
    pub fn new(code: u32, error: impl Into<String>) -> AttachError {
        AttachError {
            code,
            error: error.into(),
        }
    }
}

/// Code: no free address in the network's pool.
pub const CODE_POOL_EXHAUSTED: u32 = 100;
/// Code: the network is not in the applied topology.
pub const CODE_UNKNOWN_NETWORK: u32 = 101;
/// Code: setting up the interface failed.
pub const CODE_SETUP: u32 = 102;
/// Code: the pod may not join this network (another tenant's, not opened to its
/// namespace).
pub const CODE_FORBIDDEN_NETWORK: u32 = 103;
/// Code: the pod or its namespace has as many ports as it may have.
pub const CODE_PORT_LIMIT: u32 = 104;
/// Code (the CNI spec's "container unknown or does not exist"): no such attachment.
pub const CODE_UNKNOWN_CONTAINER: u32 = 3;
/// Code: only a `tap` attachment can be handed over to a VM ([`HandOverRequest`]).
pub const CODE_NOT_A_TAP: u32 = 105;

/// How long [`hand_over_to_vm`] waits for each of its two requests (a hand-over
/// reconfigures the switch, which may wait for a busy polling core).
pub const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Hands the pod network of VM sandbox `sandbox` over to its VM, through the daemon's API
/// at `api_socket` (usually [`crate::daemon::default_api_socket`]).
///
/// Finds the sandbox's CNI attachment (`container == sandbox`, asked for as a `tap`; of
/// several, the primary one, which has the default route) and hands it over
/// ([`HandOverRequest`]). Returns:
///
/// - `Ok(Some(a))`: `a.socket` is the vhost-user socket for the VM's NIC (the VM is the
///   client), with `a.mac`, `a.address` (`ADDR/PREFIX`, the pod IP) and `a.gateway`;
///   calling it again returns the same.
/// - `Ok(None)`: the sandbox has no vnfhost tap attachment (a host-network pod, or one
///   another CNI plugin set up); the VM gets no NIC from vnfhost.
/// - `Err`: the daemon cannot be reached or refused (its message, e.g. the switch is not
///   running); the attachment is then still the sandbox's tap.
///
/// Extra networks of the pod (annotation) stay taps in the sandbox's namespace.
pub fn hand_over_to_vm(api_socket: &Path, sandbox: &str) -> Result<Option<Attachment>, String> {
    let call = |method: &str, path: &str, body: Option<&[u8]>| {
        crate::http::call(api_socket, method, path, body, HAND_OVER_TIMEOUT)
            .map_err(|e| format!("vnfhost daemon: {e}"))
    };
    let error = |status: u16, body: &[u8]| match serde_json::from_slice::<AttachError>(body) {
        Ok(e) => e.error,
        Err(_) => format!(
            "the vnfhost daemon answered {status}: {}",
            String::from_utf8_lossy(body).trim()
        ),
    };
    let (st, body) = call("GET", "/v1/attachments", None)?;
    if st != 200 {
        return Err(format!("listing attachments: {}", error(st, &body)));
    }
    let all: Vec<Attachment> =
        serde_json::from_slice(&body).map_err(|e| format!("listing attachments: {e}"))?;
    let taps: Vec<&Attachment> = all
        .iter()
        .filter(|a| a.container == sandbox && a.request.kind == Kind::Tap)
        .collect();
    let Some(a) = taps
        .iter()
        .find(|a| a.request.default_route)
        .or(taps.first())
    else {
        return Ok(None);
    };
    let req = serde_json::to_vec(&HandOverRequest::default()).map_err(|e| e.to_string())?;
    let (st, body) = call(
        "POST",
        &format!("/v1/attachments/{}/{}/vm", a.container, a.ifname),
        Some(&req),
    )?;
    let what = format!("handing {}/{} over to the VM", a.container, a.ifname);
    if st != 200 {
        return Err(format!("{what}: {}", error(st, &body)));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| format!("{what}: bad reply: {e}"))
}

/// Whether a container id or interface name is acceptable (they end up in paths and
/// interface names).
pub fn valid_key(container: &str, ifname: &str) -> Result<(), AttachError> {
    let ok_id = container.len() <= 128
        && container.starts_with(|c: char| c.is_ascii_alphanumeric())
        && container
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok_id {
        return Err(AttachError::new(
            4,
            format!(
                "container id {container:?}: 1-128 of [A-Za-z0-9._-], starting with a letter \
                 or digit"
            ),
        ));
    }
    let ok_if = !ifname.is_empty()
        && ifname.len() <= 15
        && ifname != "."
        && ifname != ".."
        && ifname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok_if {
        return Err(AttachError::new(
            4,
            format!("interface name {ifname:?}: 1-15 of [A-Za-z0-9._-]"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_would_escape_a_path_or_an_interface_name_are_refused() {
        assert_eq!(valid_key("abc-1.x_y", "eth0"), Ok(()));
        for (c, i) in [
            ("../x", "eth0"),
            ("", "eth0"),
            (".c", "eth0"),
            ("c/d", "eth0"),
            ("c", ""),
            ("c", ".."),
            ("c", "a-very-long-interface"),
            ("c", "eth/0"),
        ] {
            assert_eq!(valid_key(c, i).unwrap_err().code, 4, "{c:?} {i:?}");
        }
        assert!(valid_key(&"c".repeat(129), "eth0").is_err());
    }

    fn tap(container: &str, ifname: &str, primary: bool) -> Attachment {
        Attachment {
            container: container.into(),
            ifname: ifname.into(),
            request: AttachRequest {
                network: "n".into(),
                netns: Some("/var/run/netns/x".into()),
                kind: Kind::Tap,
                pod: None,
                default_route: primary,
            },
            port: format!("cni-{container}-{ifname}"),
            mac: "02:76:6e:00:00:01".into(),
            address: "10.0.0.1/24".into(),
            gateway: Some("10.0.0.254".into()),
            mtu: None,
            tap: Some(ifname.into()),
            socket: None,
            netns_id: None,
            vm: false,
        }
    }

    /// A daemon that lists `list` and answers every hand-over with `reply`; returns its
    /// socket and the paths it was asked for.
    fn fake_daemon(
        tag: &str,
        list: Vec<Attachment>,
        reply: (u16, Vec<u8>),
    ) -> (std::path::PathBuf, std::sync::mpsc::Receiver<String>) {
        let dir = std::env::temp_dir().join(format!("vnfhost-api-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (list, reply, tx) = (list.clone(), reply.clone(), tx.clone());
                crate::http::serve_one(s, Duration::from_secs(5), move |r| {
                    let _ = tx.send(format!("{} {}", r.method, r.path));
                    if r.method == "GET" {
                        return crate::http::json(&list);
                    }
                    match serde_json::from_slice::<HandOverRequest>(&r.body) {
                        Ok(_) => crate::http::Response::json(reply.0, reply.1),
                        Err(e) => crate::http::Response::json(400, e.to_string().into_bytes()),
                    }
                });
            }
        });
        (sock, rx)
    }

    #[test]
    fn the_client_hands_over_the_sandboxs_primary_tap_or_says_there_is_none() {
        let mut done = tap("sb", "eth0", true);
        done.vm = true;
        done.tap = None;
        done.socket = Some("/run/vnfhost/cni/x/eth0.sock".into());
        let list = vec![
            tap("other", "eth0", true),
            tap("sb", "eth0", true),
            tap("sb", "net1", false),
        ];
        let ok = (200, serde_json::to_vec(&done).unwrap());
        let (sock, asked) = fake_daemon("ok", list.clone(), ok);
        let a = hand_over_to_vm(&sock, "sb")
            .unwrap()
            .expect("an attachment");
        assert_eq!(a, done);
        assert_eq!(a.kind(), Kind::VhostUser);
        assert_eq!(
            asked.try_iter().collect::<Vec<_>>(),
            ["GET /v1/attachments", "POST /v1/attachments/sb/eth0/vm"]
        );
        // No tap of its own (a host-network pod): nothing is asked for.
        assert_eq!(hand_over_to_vm(&sock, "hostnet"), Ok(None));
        assert_eq!(asked.try_iter().count(), 1);

        let refusal = AttachError::new(11, "the switch is not running");
        let no = (422, serde_json::to_vec(&refusal).unwrap());
        let (sock2, _) = fake_daemon("no", list, no);
        let e = hand_over_to_vm(&sock2, "sb").unwrap_err();
        assert!(
            e.contains("sb/eth0") && e.contains("the switch is not running"),
            "{e}"
        );
        for s in [sock, sock2] {
            let _ = std::fs::remove_dir_all(s.parent().unwrap());
        }
        let e = hand_over_to_vm(Path::new("/nonexistent/api.sock"), "sb").unwrap_err();
        assert!(e.contains("vnfhost daemon"), "{e}");
    }

    #[test]
    fn a_hand_over_request_is_empty_and_strict() {
        let r: HandOverRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r, HandOverRequest::default());
        assert!(serde_json::from_str::<HandOverRequest>(r#"{"queues":2}"#).is_err());
        // Older records (no `vm`) read as not handed over; a tap does not write it.
        let a = tap("c", "eth0", true);
        let text = serde_json::to_string(&a).unwrap();
        assert!(!text.contains("\"vm\""), "{text}");
        assert_eq!(serde_json::from_str::<Attachment>(&text).unwrap(), a);
        assert_eq!(a.kind(), Kind::Tap);
    }
}
