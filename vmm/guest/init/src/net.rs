//! Interface configuration with the classic ioctls (`SIOCSIFADDR`, `SIOCSIFNETMASK`,
//! `SIOCSIFFLAGS`, `SIOCADDRT`): enough for a pod's one NIC, no netlink needed.

use std::io;
use std::net::Ipv4Addr;

struct Sock(libc::c_int);

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: closing the socket this struct owns.
        unsafe { libc::close(self.0) };
    }
}

fn sock() -> Result<Sock, String> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", io::Error::last_os_error()));
    }
    Ok(Sock(fd))
}

fn ifreq(name: &str) -> Result<libc::ifreq, String> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= r.ifr_name.len() {
        return Err(format!("interface name {name} too long"));
    }
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as the
    // family says.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(s: &Sock, req: libc::Ioctl, arg: *mut libc::c_void, what: &str) -> Result<(), String> {
    // SAFETY: `arg` points to a live ifreq or rtentry of the type `req` expects.
    if unsafe { libc::ioctl(s.0, req, arg) } < 0 {
        return Err(format!("{what}: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets `IFF_UP` on `name`.
pub fn link_up(name: &str) -> Result<(), String> {
    let s = sock()?;
    let mut r = ifreq(name)?;
    ioctl(
        &s,
        libc::SIOCGIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        name,
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(
        &s,
        libc::SIOCSIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        name,
    )
}

/// Gives `name` the address `addr/prefix` and brings it up.
pub fn configure(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), String> {
    let s = sock()?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_addr = sockaddr(addr);
    ioctl(
        &s,
        libc::SIOCSIFADDR,
        (&mut r as *mut libc::ifreq).cast(),
        "set address",
    )?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    ioctl(
        &s,
        libc::SIOCSIFNETMASK,
        (&mut r as *mut libc::ifreq).cast(),
        "set netmask",
    )?;
    link_up(name)
}

/// Adds the default route via `gw`.
pub fn default_route(gw: Ipv4Addr) -> Result<(), String> {
    let s = sock()?;
    // SAFETY: rtentry is plain old data; all zeroes is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gw);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    ioctl(
        &s,
        libc::SIOCADDRT,
        (&mut rt as *mut libc::rtentry).cast(),
        "add default route",
    )
}
