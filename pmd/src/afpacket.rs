//! The uplink: a port on a host interface through an `AF_PACKET` socket, which shares
//! the interface with the kernel instead of taking it away. The node keeps its address,
//! ARP and routes (a VPP- or DPDK-owned NIC takes them all with it); the socket sees
//! only what a classic BPF filter lets through, the overlay's UDP datagrams to the
//! node's tunnel address, and sends whole frames past the kernel's qdisc.
//!
//! - **Receive:** a `TPACKET_V3` ring mapped into the switch. The kernel fills blocks
//!   of variable-size frames and hands a block over when it is full or after
//!   [`BLOCK_TIMEOUT_MS`]; a burst takes frames straight from the ring (no copy, no
//!   system call) and gives blocks back once the burst is over. The timeout is the cost
//!   of V3 at low rates: a lone frame waits up to 1 ms for its block.
//! - **Transmit:** one `sendmmsg` per burst, each frame gathered by the kernel from the
//!   pieces (a prebuilt prefix such as a tunnel header, the switch's head copy, the rest
//!   in the sender's memory), so no user-space copy is made.
//! - **The kernel's side:** a UDP socket bound to the tunnel address and port with a
//!   filter that drops everything, so the kernel neither queues the datagrams it also
//!   sees nor answers them with ICMP port unreachable.
//! - **Offloads:** the socket asks for a `virtio_net_hdr` before each frame
//!   (`PACKET_VNET_HDR`). A frame that never crossed a wire (a veth underlay, a sender
//!   on this host) may carry a checksum the kernel left for the hardware to finish: the
//!   driver finishes it in the ring before the switch sees the frame. A segmentation
//!   offload super-frame (GSO) cannot be forwarded as one frame and is dropped, counted
//!   as `rx_too_big`; frames from a NIC never are one (the kernel does not aggregate
//!   plain UDP).
//!
//! `unsafe` here: the ring's mapping and the reads of its headers (block and frame
//! headers the kernel wrote, bounds-checked against the block before use), and the
//! socket calls, each with its reason.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::mem::Mapping;
use crate::port::{
    edited_len, edited_pieces, Port, PortDrop, PortStats, QueueCounters, RxBatch, TxSel, BURST,
    PREFIX_MAX,
};
use crate::sync::QueueCell;

/// Bytes of one ring block.
pub const BLOCK_SIZE: u32 = 1 << 18;
/// Blocks in the receive ring (4 MiB).
pub const BLOCKS: u32 = 16;
/// How long the kernel keeps a block that is not full before handing it over, ms.
pub const BLOCK_TIMEOUT_MS: u32 = 1;

const TPACKET_V3: libc::c_int = 2;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VNET_HDR: libc::c_int = 15;
/// `struct virtio_net_hdr`, before each frame in both directions.
const VNET_HDR: usize = 10;
const VNET_F_NEEDS_CSUM: u8 = 1;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const ETH_P_IP: u16 = 0x0800;
/// Offsets in `struct tpacket_block_desc` (version, offset_to_priv, then `tpacket_hdr_v1`).
const BLK_STATUS: usize = 8;
const BLK_NUM_PKTS: usize = 12;
const BLK_FIRST: usize = 16;
/// Offsets in `struct tpacket3_hdr`.
const PKT_NEXT: usize = 0;
const PKT_SNAPLEN: usize = 12;
const PKT_LEN: usize = 16;
const PKT_MAC: usize = 24;
const PKT_HDR: usize = 48;

/// Errors opening an uplink.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// No such interface in this network namespace.
    #[error("interface {0:?} does not exist in this network namespace")]
    NoInterface(String),
    /// The tunnel address is not one of the interface's.
    #[error("{addr} is not an address of interface {ifname} (it has {have})")]
    NotLocal {
        /// The interface.
        ifname: String,
        /// The address asked for.
        addr: Ipv4Addr,
        /// What it has.
        have: String,
    },
    /// A system call failed.
    #[error("uplink {ifname}: {what}: {source}")]
    Os {
        /// The interface.
        ifname: String,
        /// The step.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What an uplink is opened with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkConfig {
    /// The port's name (counters, logs).
    pub name: String,
    /// The host interface.
    pub ifname: String,
    /// The node's tunnel address: received datagrams must be to it, and it must be an
    /// address of the interface.
    pub local: Ipv4Addr,
    /// The overlay's UDP port (VXLAN: 4789).
    pub udp_port: u16,
}

/// Facts about a host interface, read when the uplink opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Its index.
    pub index: u32,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Its IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
}

/// Reads `ifname`'s index, MAC, MTU and IPv4 addresses in the calling thread's
/// network namespace.
pub fn interface_info(ifname: &str) -> Result<InterfaceInfo, UplinkError> {
    let os = |what, source| UplinkError::Os {
        ifname: ifname.into(),
        what,
        source,
    };
    if ifname.is_empty() || ifname.len() > 15 {
        return Err(UplinkError::NoInterface(ifname.into()));
    }
    let c = CString::new(ifname).map_err(|_| UplinkError::NoInterface(ifname.into()))?;
    // SAFETY: reads a NUL-terminated name we own.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(UplinkError::NoInterface(ifname.into()));
    }
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(|e| os("socket", e))?;
    let mut req = IfReq::new(ifname);
    ioctl(&sock, libc::SIOCGIFHWADDR, &mut req).map_err(|e| os("SIOCGIFHWADDR", e))?;
    let mut mac = [0u8; 6];
    // The hardware address is a sockaddr: family (2 bytes), then the address.
    mac.copy_from_slice(&req.data[2..8]);
    let mut req = IfReq::new(ifname);
    ioctl(&sock, libc::SIOCGIFMTU, &mut req).map_err(|e| os("SIOCGIFMTU", e))?;
    let mtu = u32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]);
    Ok(InterfaceInfo {
        index,
        mac,
        mtu,
        ipv4: ipv4_addresses(ifname).map_err(|e| os("getifaddrs", e))?,
    })
}

/// The IPv4 addresses of `ifname`, in the kernel's order.
pub fn ipv4_addresses(ifname: &str) -> std::io::Result<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: p is a node of the list getifaddrs made, alive until freeifaddrs; its
        // name is NUL-terminated and its address, when set, is a sockaddr of the family
        // it says (sockaddr_in for AF_INET).
        unsafe {
            let ifa = &*p;
            if !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
                && std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() == ifname.as_bytes()
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            p = ifa.ifa_next;
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// `struct ifreq`: a name and 24 bytes of union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(ifname: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        let n = ifname.len().min(15);
        r.name[..n].copy_from_slice(&ifname.as_bytes()[..n]);
        r
    }
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, r: &mut IfReq) -> std::io::Result<()> {
    // SAFETY: the SIOCGIF* requests used here read and write a struct ifreq (40 bytes),
    // which IfReq lays out; fd is a socket we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, r as *mut IfReq) } < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) creates a descriptor, which we own from here on.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &T) -> std::io::Result<()> {
    // SAFETY: passes a pointer to a live T and its size; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

fn attach_filter(fd: RawFd, prog: &[SockFilter]) -> std::io::Result<()> {
    let f = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &f)
}

const fn ins(code: u16, jt: u8, jf: u8, k: u32) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// The uplink's filter: untagged IPv4, to `local`, UDP, not a fragment, to `port`.
fn tunnel_filter(local: Ipv4Addr, port: u16) -> [SockFilter; 13] {
    const LDH_ABS: u16 = 0x28;
    const LDW_ABS: u16 = 0x20;
    const LDB_ABS: u16 = 0x30;
    const JEQ: u16 = 0x15;
    const JSET: u16 = 0x45;
    const LDX_MSH: u16 = 0xb1;
    const LDH_IND: u16 = 0x48;
    const RET: u16 = 0x06;
    [
        ins(LDH_ABS, 0, 0, 12),           // 0: ethertype
        ins(JEQ, 0, 10, 0x0800),          // 1: IPv4, else drop (12)
        ins(LDW_ABS, 0, 0, 30),           // 2: destination address
        ins(JEQ, 0, 8, u32::from(local)), // 3
        ins(LDB_ABS, 0, 0, 23),           // 4: protocol
        ins(JEQ, 0, 6, 17),               // 5: UDP
        ins(LDH_ABS, 0, 0, 20),           // 6: flags and fragment offset
        ins(JSET, 4, 0, 0x3fff),          // 7: a fragment: drop
        ins(LDX_MSH, 0, 0, 14),           // 8: X = IP header length
        ins(LDH_IND, 0, 0, 16),           // 9: UDP destination port
        ins(JEQ, 0, 1, u32::from(port)),  // 10
        ins(RET, 0, 0, u32::MAX),         // 11: the whole frame
        ins(RET, 0, 0, 0),                // 12: drop
    ]
}

/// Where receive stands in the ring.
struct RxCursor {
    /// The block being read.
    block: u32,
    /// Whether it has been taken from the kernel.
    open: bool,
    /// Frames left in it, and the offset of the next one.
    left: u32,
    off: u32,
}

/// An `AF_PACKET` uplink port; see the module docs.
pub struct AfPacketPort {
    name: String,
    ifname: String,
    info: InterfaceInfo,
    sock: OwnedFd,
    ring: Mapping,
    rx: QueueCell<RxCursor>,
    tx_lock: QueueCell<()>,
    rx_ctr: QueueCounters,
    tx_ctr: QueueCounters,
    /// Keeps the tunnel port bound so that the kernel neither queues nor refuses it.
    _guard: OwnedFd,
}

impl AfPacketPort {
    /// Opens the uplink on `cfg.ifname` in the calling thread's network namespace.
    pub fn open(cfg: &UplinkConfig) -> Result<AfPacketPort, UplinkError> {
        let ifname = cfg.ifname.clone();
        let os = |what, source| UplinkError::Os {
            ifname: ifname.clone(),
            what,
            source,
        };
        let info = interface_info(&cfg.ifname)?;
        if !info.ipv4.contains(&cfg.local) {
            return Err(UplinkError::NotLocal {
                ifname: cfg.ifname.clone(),
                addr: cfg.local,
                have: if info.ipv4.is_empty() {
                    "no IPv4 address".into()
                } else {
                    info.ipv4
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        }
        // The kernel's side first: if the port is taken (a kernel vxlan device), fail
        // before anything else is set up.
        let guard = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(|e| os("socket", e))?;
        attach_filter(guard.as_raw_fd(), &[ins(0x06, 0, 0, 0)])
            .map_err(|e| os("filter the guard socket", e))?;
        // A switch that reopens its uplink binds again before the old guard is closed
        // (the old one closes once every core has let go of it); a kernel vxlan
        // device's socket does not share the port, so it is still refused.
        setsockopt(
            guard.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &1i32,
        )
        .map_err(|e| os("SO_REUSEADDR", e))?;
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: cfg.udp_port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(cfg.local).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: binds our socket to a sockaddr_in on the stack, its size given.
        if unsafe {
            libc::bind(
                guard.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        } < 0
        {
            return Err(os(
                "bind the tunnel port (is a kernel vxlan device using it?)",
                std::io::Error::last_os_error(),
            ));
        }
        // Protocol 0: the socket receives nothing until it is bound, below, after the
        // filter and the ring are in place.
        let sock = socket(libc::AF_PACKET, libc::SOCK_RAW, 0).map_err(|e| os("socket", e))?;
        let fd = sock.as_raw_fd();
        attach_filter(fd, &tunnel_filter(cfg.local, cfg.udp_port))
            .map_err(|e| os("SO_ATTACH_FILTER", e))?;
        setsockopt(fd, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V3)
            .map_err(|e| os("PACKET_VERSION", e))?;
        // Before the ring: the kernel refuses it after.
        setsockopt(fd, libc::SOL_PACKET, PACKET_VNET_HDR, &1i32)
            .map_err(|e| os("PACKET_VNET_HDR", e))?;
        // Our own transmissions are not for us (kernel 4.20+; older ones see them and the
        // filter drops them: their destination is the remote node).
        let _ = setsockopt(fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1i32);
        // Frames go straight to the driver; the switch has its own queues.
        let _ = setsockopt(fd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &1i32);
        let req = [
            BLOCK_SIZE,
            BLOCKS,
            2048,
            BLOCK_SIZE / 2048 * BLOCKS,
            BLOCK_TIMEOUT_MS,
            0,
            0,
        ];
        setsockopt(fd, libc::SOL_PACKET, PACKET_RX_RING, &req)
            .map_err(|e| os("PACKET_RX_RING", e))?;
        let ring = Mapping::map_fd(fd, u64::from(BLOCK_SIZE * BLOCKS), 0)
            .map_err(|e| os("mmap the ring", std::io::Error::other(e.to_string())))?;
        let sll = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: ETH_P_IP.to_be(),
            sll_ifindex: info.index as i32,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: binds our socket to a sockaddr_ll on the stack, its size given.
        if unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        } < 0
        {
            return Err(os("bind", std::io::Error::last_os_error()));
        }
        Ok(AfPacketPort {
            name: cfg.name.clone(),
            ifname: cfg.ifname.clone(),
            info,
            sock,
            ring,
            rx: QueueCell::new(RxCursor {
                block: 0,
                open: false,
                left: 0,
                off: 0,
            }),
            tx_lock: QueueCell::new(()),
            rx_ctr: QueueCounters::default(),
            tx_ctr: QueueCounters::default(),
            _guard: guard,
        })
    }

    /// The interface as it was when the port opened.
    pub fn info(&self) -> &InterfaceInfo {
        &self.info
    }

    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The status word of block `b`.
    fn status(&self, b: u32) -> &AtomicU32 {
        let off = (b * BLOCK_SIZE) as usize + BLK_STATUS;
        // SAFETY: b < BLOCKS, so the word lies inside the ring; it is 4-aligned (blocks
        // are page-aligned); the kernel and we access it only as a 32-bit word.
        unsafe { &*(self.ring.as_ptr().add(off) as *const AtomicU32) }
    }

    /// A 32-bit field of the ring at byte `off`, which the caller checked lies inside.
    fn word(&self, off: usize) -> u32 {
        debug_assert!(off + 4 <= self.ring.len());
        // SAFETY: in bounds (checked by the callers against the block), read unaligned:
        // the kernel wrote it before handing the block over (acquire on its status).
        unsafe { std::ptr::read_unaligned(self.ring.as_ptr().add(off) as *const u32) }
    }

    /// Transmits the selected frames of `src`, each behind its prefix (`prefix[k]` for
    /// `sel[k]`, `prefix_len` bytes of it), in one `sendmmsg`. Returns how many were
    /// sent; the others are counted as drops (a frame too big for the interface as
    /// `frame_too_big`, a full queue as `no_rx_buffer`).
    pub fn tx_prefixed(
        &self,
        src: &RxBatch,
        sel: &[TxSel],
        prefix: &[[u8; PREFIX_MAX]],
        prefix_len: usize,
    ) -> usize {
        let plen = prefix_len.min(PREFIX_MAX);
        let _g = self.tx_lock.lock();
        let mut n = sel.len().min(BURST);
        if plen > 0 {
            n = n.min(prefix.len());
        }
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iov = [[empty; 6]; BURST];
        // No offload asked of the kernel: every frame is whole and checksummed.
        let vnet = [0u8; VNET_HDR];
        // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
        let mut msgs: [libc::mmsghdr; BURST] = unsafe { std::mem::zeroed() };
        let mut tags = [[0u8; 4]; BURST];
        let mut bytes = [0u64; BURST];
        for k in 0..n {
            let s = sel[k];
            let (head, tail) = src.parts(usize::from(s.idx));
            let flen = head.len() + tail.len();
            let (pieces, m) = edited_pieces(head, tail, s.edit, &mut tags[k]);
            iov[k][0] = libc::iovec {
                iov_base: vnet.as_ptr() as *mut _,
                iov_len: VNET_HDR,
            };
            let mut c = 1;
            if plen > 0 {
                iov[k][1] = libc::iovec {
                    iov_base: prefix[k].as_ptr() as *mut _,
                    iov_len: plen,
                };
                c = 2;
            }
            for p in &pieces[..m] {
                if p.is_empty() {
                    continue;
                }
                let (b, l) = p.raw();
                iov[k][c] = libc::iovec {
                    iov_base: b as *mut _,
                    iov_len: l,
                };
                c += 1;
            }
            bytes[k] = (plen + edited_len(flen, s.edit)) as u64;
            msgs[k].msg_hdr.msg_iov = iov[k].as_mut_ptr();
            msgs[k].msg_hdr.msg_iovlen = c;
        }
        let (mut sent, mut nbytes, mut at) = (0usize, 0u64, 0usize);
        while at < n {
            // SAFETY: msgs[at..n] describe live iovecs of live bytes (the prefixes, our
            // tag copies and head copies, guest bytes a GuestSlice vouches for, all
            // borrowed for this call), which the kernel only reads; the socket is bound,
            // so no address is needed.
            let r = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    msgs[at..].as_mut_ptr(),
                    (n - at) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                let r = r as usize;
                nbytes += bytes[at..at + r].iter().sum::<u64>();
                sent += r;
                at += r;
                continue;
            }
            // The frame at `at` failed: drop it and go on with the next, unless the
            // queue is full, which drops the rest of the burst.
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EMSGSIZE) => {
                    self.tx_ctr.drop_n(PortDrop::FrameTooBig, 1);
                    at += 1;
                }
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                    self.tx_ctr.drop_n(PortDrop::NoRxBuffer, (n - at) as u64);
                    break;
                }
                _ => {
                    self.tx_ctr.drop_n(PortDrop::NotReady, 1);
                    at += 1;
                }
            }
        }
        self.tx_ctr.add(sent as u64, nbytes);
        sent
    }
}

/// A netlink socket subscribed to the kernel's IPv4 route and neighbour changes, so that
/// the tunnels' next hops are looked up again when they change rather than on a timer
/// alone. What changed is not parsed: any message means "look again".
pub struct RouteWatch {
    sock: OwnedFd,
}

const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;

impl RouteWatch {
    /// Subscribes in the calling thread's network namespace.
    pub fn open() -> std::io::Result<RouteWatch> {
        let sock = socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )?;
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value to fill in.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE;
        // SAFETY: binds our socket to a sockaddr_nl on the stack, its size given.
        if unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RouteWatch { sock })
    }

    /// Waits up to `ms` for a change; true when one (or more) came, all of them read.
    pub fn wait(&self, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, its count given.
        if unsafe { libc::poll(&mut p, 1, ms) } <= 0 {
            return false;
        }
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: reads at most buf.len() bytes into our buffer; non-blocking.
            let n =
                unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                // EAGAIN: drained. ENOBUFS (messages lost): a change all the same.
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                    any = true;
                    continue;
                }
                return any;
            }
            any = true;
        }
    }
}

/// Completes a partial checksum: the field at `at` holds the pseudo-header's sum, and
/// the one's-complement sum of `frame[start..]` (that field included) is written there.
fn finish_checksum(frame: &mut [u8], start: usize, at: usize) {
    let mut sum: u64 = 0;
    let mut words = frame[start..].chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

impl Port for AfPacketPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn queue_pairs(&self) -> u16 {
        1
    }

    fn is_up(&self) -> bool {
        true
    }

    fn poll_rx(&self, q: u16, batch: &mut RxBatch, f: &mut dyn FnMut(&mut RxBatch)) -> usize {
        if q != 0 {
            return 0;
        }
        let Some(mut cur) = self.rx.try_lock() else {
            return 0;
        };
        batch.clear();
        let bs = BLOCK_SIZE as usize;
        // Blocks fully read during this burst, given back after it.
        let mut done = 0u32;
        let mut bytes = 0u64;
        while !batch.is_full() {
            if !cur.open {
                if self.status(cur.block).load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                    break;
                }
                let base = (cur.block * BLOCK_SIZE) as usize;
                cur.left = self.word(base + BLK_NUM_PKTS);
                cur.off = self.word(base + BLK_FIRST);
                cur.open = true;
            }
            let base = (cur.block * BLOCK_SIZE) as usize;
            let off = cur.off as usize;
            if cur.left == 0 || off < BLK_FIRST || off + PKT_HDR > bs {
                // Read whole (or a header the kernel could not have written: skip the
                // rest of the block rather than read outside it).
                cur.open = false;
                cur.block = (cur.block + 1) % BLOCKS;
                done += 1;
                if done == BLOCKS {
                    break;
                }
                continue;
            }
            let h = base + off;
            let snap = self.word(h + PKT_SNAPLEN) as usize;
            let len = self.word(h + PKT_LEN) as usize;
            let mac = usize::from(self.word(h + PKT_MAC) as u16);
            let next = self.word(h + PKT_NEXT) as usize;
            cur.left -= 1;
            cur.off = if next == 0 {
                u32::MAX
            } else {
                (off + next) as u32
            };
            if cur.left == 0 {
                cur.off = u32::MAX;
            }
            if off + mac + snap > bs || snap < 14 {
                self.rx_ctr.drop_n(PortDrop::RxRunt, 1);
                continue;
            }
            if snap < len || mac < PKT_HDR + VNET_HDR {
                self.rx_ctr.drop_n(PortDrop::RxTooBig, 1);
                continue;
            }
            let frame = h + mac;
            let mut v = [0u8; VNET_HDR];
            // SAFETY: the header lies right before the frame, inside the block
            // (mac >= PKT_HDR + VNET_HDR).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.ring.as_ptr().add(frame - VNET_HDR),
                    v.as_mut_ptr(),
                    VNET_HDR,
                )
            };
            if v[1] != 0 {
                // A GSO super-frame.
                self.rx_ctr.drop_n(PortDrop::RxTooBig, 1);
                continue;
            }
            if v[0] & VNET_F_NEEDS_CSUM != 0 {
                let start = usize::from(u16::from_le_bytes([v[6], v[7]]));
                let at = start + usize::from(u16::from_le_bytes([v[8], v[9]]));
                if at + 2 > snap {
                    self.rx_ctr.drop_n(PortDrop::RxRunt, 1);
                    continue;
                }
                // SAFETY: frame..frame + snap lies inside the block we hold; nothing else
                // reads or writes it meanwhile (the kernel handed the block over).
                let bytes =
                    unsafe { std::slice::from_raw_parts_mut(self.ring.as_ptr().add(frame), snap) };
                finish_checksum(bytes, start, at);
            }
            bytes += snap as u64;
            // SAFETY: the frame lies inside block `cur.block` (checked above), which we
            // hold (status USER) until it is given back after `f` returns, and the batch
            // is cleared before that.
            unsafe { batch.push(self.ring.as_ptr().add(h + mac), snap as u32) };
        }
        let n = batch.len();
        if n > 0 {
            f(batch);
        }
        batch.clear();
        // Give back the blocks read whole, oldest first.
        let first = (cur.block + BLOCKS - done % BLOCKS) % BLOCKS;
        for k in 0..done {
            self.status((first + k) % BLOCKS)
                .store(TP_STATUS_KERNEL, Ordering::Release);
        }
        self.rx_ctr.add(n as u64, bytes);
        n
    }

    fn tx_burst(&self, _q: u16, src: &RxBatch, sel: &[TxSel]) -> usize {
        self.tx_prefixed(src, sel, &[], 0)
    }

    fn tx_burst_prefixed(
        &self,
        _q: u16,
        src: &RxBatch,
        sel: &[TxSel],
        prefix: &[[u8; PREFIX_MAX]],
        prefix_len: usize,
    ) -> usize {
        self.tx_prefixed(src, sel, prefix, prefix_len)
    }

    fn stats(&self) -> PortStats {
        crate::port::stats_of(&self.rx_ctr, &self.tx_ctr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_checksum_verifies() {
        // An IPv4 header whose checksum field holds 0 (no pseudo-header part): finished,
        // the one's-complement sum of the whole header is 0xffff.
        let mut h = [
            0x45u8, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 1, 0, 1, 10, 1, 0, 64,
        ];
        finish_checksum(&mut h, 0, 10);
        let sum: u32 = h
            .chunks_exact(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
        // Odd lengths pad with a zero byte.
        let mut o = [1u8, 2, 3, 0, 0];
        finish_checksum(&mut o, 0, 3);
        assert_eq!(u16::from_be_bytes([o[3], o[4]]), !(0x0102u16 + 0x0300));
    }

    #[test]
    fn a_route_change_wakes_the_watch() {
        let ns = format!("vnfh-rw{}", std::process::id());
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        if !ip(&["netns", "add", &ns]) {
            println!("SKIPPED: cannot make a network namespace (ip netns add)");
            return;
        }
        let path = format!("/var/run/netns/{ns}");
        let watch = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("netns");
            crate::sys::setns_net(std::os::fd::AsFd::as_fd(&f)).expect("setns");
            let w = RouteWatch::open().expect("netlink");
            let quiet = w.wait(200);
            (quiet, w)
        })
        .join()
        .expect("thread");
        assert!(!watch.0, "no change yet");
        assert!(ip(&["-n", &ns, "link", "set", "lo", "up"]));
        assert!(ip(&["-n", &ns, "route", "add", "10.9.9.0/24", "dev", "lo"]));
        let woke = watch.1.wait(2000);
        let _ = ip(&["netns", "del", &ns]);
        assert!(woke, "a route added in the namespace woke the watch");
    }

    #[test]
    fn a_missing_interface_is_named() {
        let e = AfPacketPort::open(&UplinkConfig {
            name: "u".into(),
            ifname: "vnfh-nope0".into(),
            local: Ipv4Addr::new(192, 0, 2, 1),
            udp_port: 4789,
        })
        .err()
        .expect("refused");
        assert!(e.to_string().contains("vnfh-nope0"), "{e}");
    }
}
