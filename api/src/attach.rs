//! Attachments: switch ports the daemon makes on request of the CNI plugin (or the
//! containerd shim), one per (container, interface), on a network of the applied
//! topology: `PUT`, `GET` and `DELETE /v1/attachments/CONTAINER/IFNAME`,
//! `GET /v1/attachments`, `POST /v1/attachments/gc` ([`crate::daemon::GcRequest`]).
//!
//! An attachment is a `tap` (a kernel interface in the pod's network namespace) or a
//! `vhost-user` socket for a userspace driver in the pod ([`Kind`]). Errors carry CNI
//! error codes ([`AttachError`]), so the plugin passes them on as they are.

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
}

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
}
