//! Just enough rtnetlink to configure a pod's interface in its network namespace: set
//! its MAC, bring it up, give it an address and a default route; and to remove one
//! (what a tap handed over to a VM may leave). Each step is one request answered by an
//! acknowledgement; a non-zero error in the acknowledgement is returned as the OS error
//! it names.
//!
//! This replaces running `ip` and `nsenter` (four processes, tens of milliseconds) on
//! the CNI ADD path. The steps inside the pod's namespace run on a short-lived thread that
//! enters it with `setns`, so no other thread of the daemon changes namespace.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const NLMSG_ERROR: u16 = 2;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

/// One netlink request being built: header, fixed part, attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(ty: u16, flags: u16) -> Msg {
        let mut b = vec![0u8; 16];
        b[4..6].copy_from_slice(&ty.to_ne_bytes());
        let f = flags | libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16;
        b[6..8].copy_from_slice(&f.to_ne_bytes());
        Msg(b)
    }

    fn align(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    /// The fixed part of the message (ifinfomsg, ifaddrmsg, rtmsg).
    fn body(mut self, bytes: &[u8]) -> Msg {
        self.0.extend_from_slice(bytes);
        self.align();
        self
    }

    fn attr(mut self, ty: u16, data: &[u8]) -> Msg {
        let len = (4 + data.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.align();
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }
}

/// `struct ifinfomsg` for link `index`, changing `flags` under `change`.
fn ifinfo(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// A NETLINK_ROUTE socket in the calling thread's network namespace.
struct Sock {
    fd: OwnedFd,
    seq: u32,
}

impl Sock {
    fn open() -> io::Result<Sock> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a socket we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Sock { fd, seq: 1 })
    }

    /// Sends `m` and waits for its acknowledgement.
    fn request(&mut self, m: Msg) -> io::Result<()> {
        self.seq += 1;
        let buf = m.finish(self.seq);
        // The kernel is the destination when the address is all zeros.
        // SAFETY: a zeroed sockaddr_nl is valid; family set below.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: buf and to are valid for the call and their lengths are given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 4096];
        loop {
            // SAFETY: reply is a writable buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    reply.as_mut_ptr().cast(),
                    reply.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let msg = &reply[..n as usize];
            if msg.len() < 20 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "short netlink reply",
                ));
            }
            let ty = u16::from_ne_bytes([msg[4], msg[5]]);
            let seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
            if ty != NLMSG_ERROR || seq != self.seq {
                continue; // not our acknowledgement
            }
            let err = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
            return if err == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-err))
            };
        }
    }
}

fn index_of(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {name:?}"),
        ))
    } else {
        Ok(i)
    }
}

/// What a pod's interface gets.
pub struct PodInterface<'a> {
    /// Its name in the pod.
    pub ifname: &'a str,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its address and prefix length.
    pub address: (Ipv4Addr, u8),
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Its MTU, when the network's is not 1500 (a VXLAN network's).
    pub mtu: Option<u32>,
}

/// Runs `f` on a short-lived thread that has entered the network namespace at `netns`,
/// so no other thread of the daemon changes namespace. With `expect` (the namespace
/// file's device and inode recorded earlier), the namespace opened must be that one:
/// checked on the open file, so a path that changes between the check and the use
/// cannot redirect it.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    expect: Option<(u64, u64)>,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let ns = File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    if let Some(want) = expect {
        use std::os::unix::fs::MetadataExt;
        let md = ns
            .metadata()
            .map_err(|e| format!("{}: {e}", netns.display()))?;
        if (md.dev(), md.ino()) != want {
            return Err(format!(
                "{} names another network namespace than at ADD; not touching it",
                netns.display()
            ));
        }
    }
    let inside = std::thread::spawn(move || -> Result<T, String> {
        // SAFETY: setns on this thread only (it ends after `f`); ns is an open network
        // namespace file.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", io::Error::last_os_error()));
        }
        f()
    });
    inside
        .join()
        .map_err(|_| "the namespace thread panicked".to_string())?
}

/// Configures `p.ifname`, which exists in the namespace at `netns`: MAC, up, address,
/// default route. With `expect` (the namespace file's device and inode recorded
/// earlier), the namespace opened must be that one: checked on the open file, so a path
/// that changes between the check and the use cannot redirect it. With `again`, an
/// address or default route that exists already is not an error (the interface may be
/// configured already).
pub fn configure_in(
    p: &PodInterface<'_>,
    netns: &Path,
    expect: Option<(u64, u64)>,
    again: bool,
) -> Result<(), String> {
    let (ifname, mac, (addr, len), gw) = (p.ifname.to_string(), p.mac, p.address, p.gateway);
    let mtu = p.mtu;
    // EEXIST from an address or route request: already there.
    let done = move |r: io::Result<()>| match r {
        Err(e) if again && e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    };
    in_netns(netns, expect, move || {
        let index = index_of(&ifname).map_err(|e| e.to_string())?;
        let mut s = Sock::open().map_err(|e| format!("netlink: {e}"))?;
        s.request(
            Msg::new(libc::RTM_NEWLINK, 0)
                .body(&ifinfo(index, 0, 0))
                .attr(IFLA_ADDRESS, &mac),
        )
        .map_err(|e| format!("{ifname} MAC: {e}"))?;
        if let Some(mtu) = mtu {
            s.request(
                Msg::new(libc::RTM_NEWLINK, 0)
                    .body(&ifinfo(index, 0, 0))
                    .attr(IFLA_MTU, &mtu.to_ne_bytes()),
            )
            .map_err(|e| format!("{ifname} MTU {mtu}: {e}"))?;
        }
        let up = libc::IFF_UP as u32;
        s.request(Msg::new(libc::RTM_NEWLINK, 0).body(&ifinfo(index, up, up)))
            .map_err(|e| format!("{ifname} up: {e}"))?;
        let excl = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        let mut ifa = [0u8; 8];
        ifa[0] = libc::AF_INET as u8;
        ifa[1] = len;
        ifa[4..8].copy_from_slice(&index.to_ne_bytes());
        done(
            s.request(
                Msg::new(libc::RTM_NEWADDR, excl)
                    .body(&ifa)
                    .attr(IFA_LOCAL, &addr.octets())
                    .attr(IFA_ADDRESS, &addr.octets()),
            ),
        )
        .map_err(|e| format!("{ifname} address {addr}/{len}: {e}"))?;
        if let Some(gw) = gw {
            let rt = [
                libc::AF_INET as u8,
                0, // dst_len: default route
                0,
                0,
                libc::RT_TABLE_MAIN,
                libc::RTPROT_BOOT,
                libc::RT_SCOPE_UNIVERSE,
                libc::RTN_UNICAST,
                0,
                0,
                0,
                0,
            ];
            done(
                s.request(
                    Msg::new(libc::RTM_NEWROUTE, excl)
                        .body(&rt)
                        .attr(RTA_GATEWAY, &gw.octets())
                        .attr(RTA_OIF, &index.to_ne_bytes()),
                ),
            )
            .map_err(|e| format!("{ifname} default route via {gw}: {e}"))?;
        }
        Ok(())
    })
}

/// The MAC of interface `name` in the calling thread's namespace.
fn mac_of(name: &str) -> io::Result<[u8; 6]> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a socket we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data (a name and a union of plain data); all zeros is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // At most 15 bytes: the name stays NUL-terminated.
    for (d, b) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = b as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads `ifr_name` and writes the hardware address into `req`,
    // which is a valid, writable ifreq for the duration of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl succeeded, so the union holds `ifru_hwaddr` (a sockaddr, plain
    // data whichever member was written).
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// Deletes interface `ifname` in the namespace at `netns` (checked against `expect` as
/// for [`configure_in`]) if it is there with MAC `mac`; returns whether it was. An
/// interface of that name with another MAC is not touched.
pub fn remove_in(
    ifname: &str,
    mac: [u8; 6],
    netns: &Path,
    expect: Option<(u64, u64)>,
) -> Result<bool, String> {
    let ifname = ifname.to_string();
    in_netns(netns, expect, move || {
        let index = match index_of(&ifname) {
            Ok(i) => i,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        match mac_of(&ifname) {
            Ok(m) if m == mac => {}
            Ok(_) => return Ok(false),
            // Gone between the two looks.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(false),
            Err(e) => return Err(format!("{ifname} MAC: {e}")),
        }
        let mut s = Sock::open().map_err(|e| format!("netlink: {e}"))?;
        match s.request(Msg::new(libc::RTM_DELLINK, 0).body(&ifinfo(index, 0, 0))) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(format!("removing {ifname}: {e}")),
        }
    })
}
