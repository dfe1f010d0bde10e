//! CNI attachments: ports the daemon makes on the switch for containers (ADD, DEL, GC),
//! and the checks of what a client may ask for.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use super::{Daemon, GcRequest, PodNetwork};
use crate::attach::{self, AttachError, AttachRequest, Attachment, Kind, NetnsId};

/// What became of a tap attachment's network namespace since its ADD.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NetnsNow {
    /// The path names the namespace it named at ADD (or an attachment from before
    /// identities were recorded, whose path exists).
    Same,
    /// Nothing is at the path any more.
    Gone,
    /// The path names another namespace now (a reused pid, a replaced bind mount).
    Replaced,
}

/// The identity of the namespace at `path`.
pub(super) fn netns_id(path: &str) -> Option<NetnsId> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    Some(NetnsId {
        dev: md.dev(),
        ino: md.ino(),
    })
}

/// Whether `a`'s namespace is still the one of its ADD (`Same` for a non-tap).
pub(super) fn netns_now(a: &Attachment) -> NetnsNow {
    if a.request.kind != Kind::Tap {
        return NetnsNow::Same;
    }
    match (a.request.netns.as_deref().and_then(netns_id), a.netns_id) {
        (None, _) => NetnsNow::Gone,
        (Some(now), Some(then)) if now != then => NetnsNow::Replaced,
        (Some(_), _) => NetnsNow::Same,
    }
}

impl Daemon {
    /// Drops tap attachments whose network namespace is gone (the pod went without a
    /// DEL) or is another one than at ADD (its path now names somebody else's namespace);
    /// returns whether any was dropped. Nothing is done in the namespace: the switch's
    /// tap went with the old namespace, and its port goes from the configuration.
    pub(super) fn prune_attachments(&mut self) -> bool {
        let stale: Vec<(String, NetnsNow)> = self
            .st
            .attachments
            .iter()
            .map(|(k, a)| (k.clone(), netns_now(a)))
            .filter(|(_, now)| *now != NetnsNow::Same)
            .collect();
        for (k, now) in &stale {
            if let Some(a) = self.st.attachments.remove(k) {
                self.remove_socket_dir(&a);
            }
            self.event(match now {
                NetnsNow::Replaced => format!(
                    "attachment {k}: its network namespace path names another namespace than \
                     at ADD (a reused pid or a replaced mount); dropped without touching it"
                ),
                _ => format!("attachment {k}: its network namespace is gone; dropped"),
            });
        }
        if !stale.is_empty() {
            self.persist();
        }
        !stale.is_empty()
    }

    /// After the switch started anew: its taps are new devices in the pods' namespaces,
    /// without MAC, address or route; give them theirs again.
    pub(super) fn reconfigure_taps(&mut self) {
        self.prune_attachments();
        let taps: Vec<Attachment> = self
            .st
            .attachments
            .values()
            .filter(|a| a.request.kind == Kind::Tap)
            .cloned()
            .collect();
        for a in taps {
            if netns_now(&a) != NetnsNow::Same {
                continue; // replaced since the prune: the next reconcile drops it
            }
            let ns = a.request.netns.clone().unwrap_or_default();
            if let Err(e) = attach::configure_tap(&a, &ns) {
                self.event(format!(
                    "attachment {}/{}: {}",
                    a.container, a.ifname, e.error
                ));
            }
        }
    }

    /// Pushes the configuration with the current attachments to the switch.
    pub(super) fn push_attachments(&mut self) -> Result<(), AttachError> {
        let (Some(t), Some(plan)) = (self.st.desired.clone(), self.plan.clone()) else {
            return Err(AttachError::new(11, "no topology is applied"));
        };
        if !self.switch_alive() {
            return Err(AttachError::new(11, "the switch is not running"));
        }
        self.prune_attachments();
        let full = self.full_switch(&t, &plan);
        self.set_switch_config(&full)
            .map_err(|e| AttachError::new(attach::CODE_SETUP, format!("switch: {e}")))
    }

    /// CNI ADD: a port on `req.network` for (`container`, `ifname`).
    pub(super) fn attach(
        &mut self,
        container: &str,
        ifname: &str,
        req: AttachRequest,
    ) -> Result<Attachment, AttachError> {
        attach::valid_key(container, ifname)?;
        // A namespace replaced since its ADD is not reused by an idempotent ADD either.
        self.prune_attachments();
        let key = format!("{container}/{ifname}");
        if let Some(a) = self.st.attachments.get(&key) {
            if a.request == req {
                return Ok(a.clone());
            }
            return Err(AttachError::new(
                7,
                format!("{key} is already attached with another configuration"),
            ));
        }
        if req.kind == Kind::Tap && req.netns.as_deref().unwrap_or("").is_empty() {
            return Err(AttachError::new(
                4,
                "a tap attachment needs the netns (CNI_NETNS)",
            ));
        }
        let ns_id = match (req.kind, req.netns.as_deref()) {
            (Kind::Tap, Some(ns)) => Some(check_netns(ns)?),
            _ => None,
        };
        if let Some(ns) = req.netns.as_deref().filter(|n| n.contains([',', '='])) {
            return Err(AttachError::new(
                4,
                format!("netns path {ns:?} contains ',' or '='"),
            ));
        }
        let t = self
            .st
            .desired
            .clone()
            .ok_or_else(|| AttachError::new(11, "no topology is applied"))?;
        let existing: Vec<&Attachment> = self.st.attachments.values().collect();
        // Tenancy and limits before anything is made: a refusal leaves no trace.
        attach::admit(&t, &existing, container, &req)?;
        let mut a = attach::allocate(&t, &existing, container, ifname, &req, &self.run)?;
        a.netns_id = ns_id;
        if let Some(sock) = &a.socket {
            if let Some(dir) = Path::new(sock).parent() {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750));
            }
        }
        self.st.attachments.insert(key.clone(), a.clone());
        let t0 = Instant::now();
        let mut r = self.push_attachments();
        let t_switch = t0.elapsed();
        if r.is_ok() {
            if let (Kind::Tap, Some(ns)) = (a.request.kind, a.request.netns.as_deref()) {
                r = attach::configure_tap(&a, ns);
            }
        }
        let t_all = t0.elapsed();
        if let Err(e) = r {
            // Undo: the port goes (the switch closes the tap, which removes it).
            self.st.attachments.remove(&key);
            let _ = self.push_attachments();
            self.remove_socket_dir(&a);
            return Err(e);
        }
        self.persist();
        self.event(format!(
            "attached {key} to {} as {} ({}) in {:.1} ms ({:.1} ms of it the switch)",
            a.request.network,
            a.address,
            a.port,
            t_all.as_secs_f64() * 1e3,
            t_switch.as_secs_f64() * 1e3
        ));
        Ok(a)
    }

    pub(super) fn remove_socket_dir(&self, a: &Attachment) {
        if let Some(dir) = a.socket.as_deref().and_then(|s| Path::new(s).parent()) {
            let _ = std::fs::remove_dir(dir); // only when empty: other interfaces stay
        }
    }

    /// CNI DEL: idempotent; `Ok(false)` when there was nothing to remove.
    pub(super) fn detach(&mut self, container: &str, ifname: &str) -> Result<bool, AttachError> {
        let key = format!("{container}/{ifname}");
        let Some(a) = self.st.attachments.remove(&key) else {
            return Ok(false);
        };
        if let Err(e) = self.push_attachments() {
            if self.switch_alive() {
                self.st.attachments.insert(key, a);
                return Err(e);
            }
            // No switch: its ports are gone with it; the record goes too.
        }
        self.remove_socket_dir(&a);
        self.persist();
        self.event(format!("detached {key} ({})", a.port));
        Ok(true)
    }

    /// CNI GC: removes attachments not in `valid` (of `network`, if given).
    pub(super) fn gc(&mut self, req: GcRequest) -> Result<Vec<String>, AttachError> {
        let stale: Vec<(String, String)> = self
            .st
            .attachments
            .values()
            .filter(|a| req.network.as_ref().is_none_or(|n| *n == a.request.network))
            .filter(|a| req.networks.is_empty() || req.networks.contains(&a.request.network))
            // The runtime lists (container, primary interface); every interface of a
            // listed container stays (extra networks, the VM runtime's port).
            .filter(|a| !req.valid.iter().any(|v| v.container == a.container))
            .map(|a| (a.container.clone(), a.ifname.clone()))
            .collect();
        let mut removed = Vec::new();
        for (c, i) in stale {
            if self.detach(&c, &i)? {
                removed.push(format!("{c}/{i}"));
            }
        }
        Ok(removed)
    }
}

/// A tap attachment's namespace must be a network namespace (an nsfs file, as
/// `/var/run/netns/NAME`, containerd's, or `/proc/PID/ns/net`), and not the daemon's own:
/// an API client may not put interfaces and routes into the host's namespace.
/// Returns the namespace's identity, recorded with the attachment.
fn check_netns(path: &str) -> Result<NetnsId, AttachError> {
    use std::os::unix::fs::MetadataExt;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let bad = |why: String| AttachError::new(4, format!("netns {path:?}: {why}"));
    let md = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    let c = std::ffi::CString::new(path).map_err(|e| bad(e.to_string()))?;
    // SAFETY: a zeroed statfs is a valid out-buffer; c is a NUL-terminated path.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statfs writes only into sfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut sfs) } != 0 {
        return Err(bad(std::io::Error::last_os_error().to_string()));
    }
    if sfs.f_type as i64 != NSFS_MAGIC {
        return Err(bad("not a namespace file".into()));
    }
    if let Ok(own) = std::fs::metadata("/proc/self/ns/net") {
        if own.dev() == md.dev() && own.ino() == md.ino() {
            return Err(bad("is the host's own network namespace".into()));
        }
    }
    Ok(NetnsId {
        dev: md.dev(),
        ino: md.ino(),
    })
}

/// The interface names extra networks get must be valid, distinct, and leave `eth0`
/// (the primary interface) alone.
pub(super) fn pod_network_names(v: &[PodNetwork]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (k, n) in v.iter().enumerate() {
        let name = n
            .interface
            .clone()
            .unwrap_or_else(|| format!("net{}", k + 1));
        attach::valid_key("pod", &name).map_err(|e| e.error)?;
        if name == "eth0" || !seen.insert(name.clone()) {
            return Err(format!("interface {name:?} is eth0 or used twice"));
        }
    }
    Ok(())
}
