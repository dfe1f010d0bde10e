//! Malformed vhost-user messages against the backend port over a real socket. A bad
//! frontend is disconnected and counted; the port then serves the next one normally.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use pmd::port::{Port, RxBatch};
use pmd::vhost_user::{VhostUserConfig, VhostUserPort};
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};

const VERSION: u32 = 1;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;

fn port(tag: &str) -> (VhostUserPort, std::path::PathBuf) {
    let d = std::env::temp_dir().join(format!("pmd-proto-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    let path = d.join("s.sock");
    let p = VhostUserPort::new(VhostUserConfig::new(tag, &path)).expect("port");
    (p, path)
}

fn header(req: u32, flags: u32, size: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&req.to_le_bytes());
    h.extend_from_slice(&(flags | VERSION).to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h
}

/// Sends `bytes` with `fds` attached (SCM_RIGHTS).
fn send_with_fds(s: &UnixStream, bytes: &[u8], fds: &[i32]) {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: msghdr and the control buffer are set up per cmsg(3); the buffer holds
    // CMSG_SPACE for up to 8 fds, more than any test sends.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let len = std::mem::size_of_val(fds) as u32;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(len) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(len) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
        let r = libc::sendmsg(s.as_raw_fd(), &msg, 0);
        assert_eq!(r, bytes.len() as isize, "sendmsg");
    }
}

/// True when the port closes the connection within 5 s.
fn closed_by_port(mut s: UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // a reply; keep reading until the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// After the bad frontend, a good one connects and its frames arrive.
fn serves_next_frontend(p: &VhostUserPort, path: &std::path::Path) {
    let mut vu =
        VirtioUser::new(&VirtioUserConfig::new(path)).expect("good frontend after bad one");
    let t = Instant::now();
    while !p.is_up() {
        assert!(t.elapsed() < Duration::from_secs(5), "port never came up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let f = vec![0x11u8; 64];
    assert_eq!(vu.send(0, &[&f]), 1);
    let mut got = 0;
    let mut b = RxBatch::default();
    let t = Instant::now();
    while got == 0 && t.elapsed() < Duration::from_secs(5) {
        got += p.poll_rx(0, &mut b, &mut |_| {});
    }
    assert_eq!(got, 1);
}

#[test]
fn unknown_request_drops_the_connection() {
    let (p, path) = port("unknown");
    let mut s = UnixStream::connect(&path).expect("connect");
    s.write_all(&header(9999, 0, 0)).expect("write");
    assert!(closed_by_port(s));
    assert!(p.protocol_errors() >= 1);
    serves_next_frontend(&p, &path);
}

#[test]
fn wrong_payload_size_drops_the_connection() {
    let (p, path) = port("size");
    let mut s = UnixStream::connect(&path).expect("connect");
    let mut m = header(SET_OWNER, 0, 8);
    m.extend_from_slice(&[0; 8]);
    s.write_all(&m).expect("write");
    assert!(closed_by_port(s));
    serves_next_frontend(&p, &path);
}

#[test]
fn oversized_and_truncated_messages_drop_the_connection() {
    let (p, path) = port("huge");
    let mut s = UnixStream::connect(&path).expect("connect");
    // Claims a 1 MiB body.
    s.write_all(&header(SET_MEM_TABLE, 0, 1 << 20))
        .expect("write");
    assert!(closed_by_port(s));
    // Half a header, then silence: the port must not wait forever.
    let mut s = UnixStream::connect(&path).expect("connect");
    s.write_all(&[1, 0, 0]).expect("write");
    assert!(closed_by_port(s));
    serves_next_frontend(&p, &path);
}

fn mem_table(nregions: u32, size: u64) -> Vec<u8> {
    mem_table_at(nregions, size, 0)
}

fn mem_table_at(nregions: u32, size: u64, mmap_offset: u64) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&nregions.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for i in 0..u64::from(nregions) {
        body.extend_from_slice(&(i << 32).to_le_bytes()); // guest phys
        body.extend_from_slice(&size.to_le_bytes()); // size
        body.extend_from_slice(&(0x7000_0000_0000 + (i << 32)).to_le_bytes()); // user addr
        body.extend_from_slice(&mmap_offset.to_le_bytes()); // mmap offset
    }
    let mut m = header(SET_MEM_TABLE, 0, body.len() as u32);
    m.extend(body);
    m
}

#[test]
fn too_many_regions_or_missing_fds_drop_the_connection() {
    let (p, path) = port("regions");
    let memfd = pmd::mem::SharedRegion::new("t", 1 << 16, false).expect("memfd");
    let fd = memfd.file().as_raw_fd();
    // Nine regions with nine fds: above the eight a SET_MEM_TABLE may carry.
    let s = UnixStream::connect(&path).expect("connect");
    send_with_fds(&s, &mem_table(9, 1 << 16), &[fd; 8]);
    assert!(closed_by_port(s));
    // One region and no fd.
    let s = UnixStream::connect(&path).expect("connect");
    send_with_fds(&s, &mem_table(1, 1 << 16), &[]);
    assert!(closed_by_port(s));
    serves_next_frontend(&p, &path);
}

#[test]
fn an_fd_that_cannot_be_mapped_is_refused_without_harm() {
    let (p, path) = port("badfd");
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) fills two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let s = UnixStream::connect(&path).expect("connect");
    send_with_fds(&s, &mem_table(1, 1 << 16), &fds[..1]);
    // A pipe cannot be mmapped: the table is refused. Without REPLY_ACK the frontend is
    // not told, but nothing is mapped and the port stays down.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!p.is_up());
    drop(s);
    // SAFETY: closing the pipe fds we created.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    serves_next_frontend(&p, &path);
}

/// Sets up ring 1 (the frontend's transmit ring) at user addresses `base..` and kicks it.
fn start_ring_at(s: &UnixStream, base: u64) {
    let mut num = header(8, 0, 8); // SET_VRING_NUM
    num.extend_from_slice(&1u32.to_le_bytes());
    num.extend_from_slice(&256u32.to_le_bytes());
    send_with_fds(s, &num, &[]);
    let mut addr = header(9, 0, 40); // SET_VRING_ADDR
    addr.extend_from_slice(&1u32.to_le_bytes());
    addr.extend_from_slice(&0u32.to_le_bytes());
    for a in [base, base + 0x2000, base + 0x1000, 0] {
        addr.extend_from_slice(&a.to_le_bytes());
    }
    send_with_fds(s, &addr, &[]);
    let efd = vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd");
    let mut kick = header(12, 0, 8); // SET_VRING_KICK
    kick.extend_from_slice(&1u64.to_le_bytes());
    send_with_fds(s, &kick, &[efd.as_raw_fd()]);
}

#[test]
fn a_region_past_the_end_of_its_file_is_refused() {
    // 64 KiB memfd described as 1 GiB: mapping it would fault (SIGBUS) on touch.
    let (p, path) = port("pastend");
    let memfd = pmd::mem::SharedRegion::new("t", 1 << 16, false).expect("memfd");
    let s = UnixStream::connect(&path).expect("connect");
    send_with_fds(&s, &mem_table(1, 1 << 30), &[memfd.file().as_raw_fd()]);
    start_ring_at(&s, 0x7000_0000_0000 + (1 << 20));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !p.is_up(),
        "a ring in memory past the end of the file started"
    );
    assert!(p.protocol_errors() >= 1);
    drop(s);
    serves_next_frontend(&p, &path);
}

#[test]
fn a_misaligning_mmap_offset_never_starts_a_queue() {
    // The ring's user address is aligned, but mmap_offset 1 misaligns the host pointer.
    let (p, path) = port("misalign");
    let memfd = pmd::mem::SharedRegion::new("t", 1 << 16, false).expect("memfd");
    let s = UnixStream::connect(&path).expect("connect");
    send_with_fds(&s, &mem_table_at(1, 0x8000, 1), &[memfd.file().as_raw_fd()]);
    start_ring_at(&s, 0x7000_0000_0000);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!p.is_up(), "a ring at a misaligned host address started");
    drop(s);
    serves_next_frontend(&p, &path);
}

#[test]
fn a_memory_region_smaller_than_its_rings_never_starts_a_queue() {
    // A frontend whose rings lie outside the memory it shared: ring set-up fails and
    // is counted; the port never touches that memory.
    let (p, path) = port("rings");
    let memfd = pmd::mem::SharedRegion::new("t", 1 << 16, false).expect("memfd");
    let fd = memfd.file().as_raw_fd();
    let s = UnixStream::connect(&path).expect("connect");
    send_with_fds(&s, &mem_table(1, 1 << 16), &[fd]);
    let mut num = header(8, 0, 8); // SET_VRING_NUM
    num.extend_from_slice(&1u32.to_le_bytes());
    num.extend_from_slice(&256u32.to_le_bytes());
    send_with_fds(&s, &num, &[]);
    let mut addr = header(9, 0, 40); // SET_VRING_ADDR, rings far outside the region
    addr.extend_from_slice(&1u32.to_le_bytes());
    addr.extend_from_slice(&0u32.to_le_bytes());
    for a in [0x9000_0000_0000u64, 0x9000_0001_0000, 0x9000_0002_0000, 0] {
        addr.extend_from_slice(&a.to_le_bytes());
    }
    send_with_fds(&s, &addr, &[]);
    let efd = vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd");
    let mut kick = header(12, 0, 8); // SET_VRING_KICK
    kick.extend_from_slice(&1u64.to_le_bytes());
    send_with_fds(&s, &kick, &[efd.as_raw_fd()]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!p.is_up(), "a ring outside shared memory must not start");
    assert!(p.protocol_errors() >= 1);
    drop(s);
    serves_next_frontend(&p, &path);
}

const SET_VRING_CALL: u32 = 13;

/// SET_VRING_CALL for vring 0 with `fd`.
fn set_call(s: &UnixStream, fd: i32) {
    let mut m = header(SET_VRING_CALL, 0, 8);
    m.extend_from_slice(&0u64.to_le_bytes());
    send_with_fds(s, &m, &[fd]);
}

#[test]
fn a_call_fd_that_is_not_an_eventfd_is_refused() {
    // A pipe nobody drains would block the polling core's notification for good.
    let (p, path) = port("callpipe");
    let s = UnixStream::connect(&path).expect("connect");
    (&s).write_all(&header(SET_OWNER, 0, 0)).expect("owner");
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) fills the two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    set_call(&s, fds[1]);
    assert!(closed_by_port(s), "a pipe was taken as the call fd");
    assert!(p.protocol_errors() >= 1);
    // SAFETY: closing the pipe this test made.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    serves_next_frontend(&p, &path);
}

#[test]
fn a_call_eventfd_is_made_non_blocking() {
    // An eventfd whose counter is near its maximum blocks a blocking write: the port
    // makes the descriptor non-blocking, so the polling core's write fails instead.
    let (p, path) = port("callblock");
    let s = UnixStream::connect(&path).expect("connect");
    (&s).write_all(&header(SET_OWNER, 0, 0)).expect("owner");
    // SAFETY: eventfd(2) with no flags: a blocking eventfd.
    let efd = unsafe { libc::eventfd(0, 0) };
    assert!(efd >= 0);
    // SAFETY: fcntl on our own descriptor.
    let flags = || unsafe { libc::fcntl(efd, libc::F_GETFL) };
    assert_eq!(flags() & libc::O_NONBLOCK, 0);
    set_call(&s, efd);
    let t = Instant::now();
    while flags() & libc::O_NONBLOCK == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the call eventfd stayed blocking"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(p.protocol_errors(), 0);
    drop(s);
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(efd) };
}

#[test]
fn a_memory_table_larger_than_the_ports_cap_drops_the_connection() {
    // A 64 GiB sparse memfd costs the frontend nothing; every page of it the switch
    // touches would be allocated on the switch's account. The default cap is 16 GiB.
    let (p, path) = port("bigmem");
    let memfd = pmd::mem::SharedRegion::new("t", 64 << 30, false).expect("sparse memfd");
    let s = UnixStream::connect(&path).expect("connect");
    send_with_fds(&s, &mem_table(1, 64 << 30), &[memfd.file().as_raw_fd()]);
    assert!(closed_by_port(s), "a 64 GiB memory table was taken");
    assert!(p.protocol_errors() >= 1);
    serves_next_frontend(&p, &path);
}

#[test]
fn a_frontend_that_shrinks_its_memory_is_dropped_and_the_process_survives() {
    // Truncating the memfd after SET_MEM_TABLE turns every later access to the lost
    // pages into SIGBUS. The port recovers the fault, drops the frontend and serves
    // the next one; without the recovery this test process dies.
    let (p, path) = port("shrink");
    let memfd = pmd::mem::SharedRegion::new("t", 1 << 16, false).expect("memfd");
    let s = UnixStream::connect(&path).expect("connect");
    send_with_fds(&s, &mem_table(1, 1 << 16), &[memfd.file().as_raw_fd()]);
    start_ring_at(&s, 0x7000_0000_0000);
    let t = Instant::now();
    while !p.is_up() {
        assert!(t.elapsed() < Duration::from_secs(5), "ring never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    memfd.file().set_len(0).expect("truncate");
    // The data path reads the ring's index from the lost page: SIGBUS, recovered.
    let mut b = RxBatch::default();
    assert_eq!(p.poll_rx(0, &mut b, &mut |_| {}), 0);
    assert!(
        closed_by_port(s),
        "the frontend that shrank its memory stayed"
    );
    assert!(p.protocol_errors() >= 1);
    serves_next_frontend(&p, &path);
}
