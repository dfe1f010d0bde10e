//! A property-based fuzz harness over whole vhost-user conversations: sequences of
//! valid, mutated and random messages (any request code, flags, declared size, body,
//! file descriptors attached or not, set-up out of order, rings enabled or kicked
//! before they have addresses, GET_* with bogus flags, messages cut short, the
//! connection dropped midway) sent through a real Unix socket to a live vhost-user
//! port (pmd's backend), written with the spec-based frontend of `common/hostile.rs`.
//! Between messages the port is polled as a switch core would, over whatever rings the
//! sequence set up in random memory. After every sequence:
//! - the port has not crashed the process (a panic or a signal fails the run);
//! - a fresh honest frontend on the same socket negotiates and passes a frame both ways;
//! - no file descriptor leaked (`/proc/self/fd` counted before and after).
//!
//! `PROPTEST_CASES` bounds the run: scripts/test.sh runs a bounded number in CI; a long
//! run by hand:
//!
//! ```text
//! PROPTEST_CASES=1000000 cargo test --release -p vswitch --test fuzz_vhost_user -- --nocapture
//! ```

#[path = "common/hostile.rs"]
mod hostile;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use hostile::{encode, req, Memory, UADDR, VERSION};
use pmd::port::{LocalFrames, Port, RxBatch, TxSel};
use pmd::vhost_user::{VhostUserConfig, VhostUserPort};
use pmd::virtio_user::{VirtioUser, VirtioUserConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Guest memory of the fuzzed frontend: 64 KiB, refilled with random bytes per case.
const MEM: u64 = 0x10000;

/// Which file descriptor rides along.
#[derive(Clone, Copy, Debug)]
enum Fd {
    /// An eventfd (what kick/call/err want).
    Event,
    /// An eventfd loaded to its maximum.
    FullEvent,
    /// The 64 KiB guest memory memfd (what memory tables want).
    Mem,
    /// The write end of a pipe nobody drains.
    Pipe,
    /// /dev/null.
    Null,
    /// One end of a socket pair.
    Sock,
}

fn fd_kind() -> impl Strategy<Value = Fd> {
    prop_oneof![
        4 => Just(Fd::Event),
        1 => Just(Fd::FullEvent),
        4 => Just(Fd::Mem),
        1 => Just(Fd::Pipe),
        1 => Just(Fd::Null),
        1 => Just(Fd::Sock),
    ]
}

/// One message as sent: header fields (size possibly lying), body, fds, and possibly
/// only a prefix of its bytes.
#[derive(Clone, Debug)]
struct Msg {
    req: u32,
    flags: u32,
    body: Vec<u8>,
    size: Option<u32>,
    fds: Vec<Fd>,
    cut: Option<usize>,
}

impl Msg {
    fn new(req: u32, body: Vec<u8>, fds: Vec<Fd>) -> Msg {
        Msg {
            req,
            flags: VERSION,
            body,
            size: None,
            fds,
            cut: None,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = encode(self.req, self.flags, &self.body);
        if let Some(s) = self.size {
            b[8..12].copy_from_slice(&s.to_le_bytes());
        }
        if let Some(c) = self.cut {
            b.truncate(c % (b.len() + 1));
        }
        b
    }
}

/// Interesting u64s for features and addresses.
fn feature_word() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just((1u64 << 32) | (1 << 30)),
        Just((1u64 << 32) | (1 << 30) | (1 << 28) | (1 << 29) | (1 << 15)),
        Just((1u64 << 32) | (1 << 34) | (1 << 30)),
        Just(1u64 << 3),
        Just(0u64),
        any::<u64>(),
    ]
}

fn vring_index() -> impl Strategy<Value = u32> {
    prop_oneof![6 => 0u32..2, 1 => 2u32..4, 1 => any::<u32>()]
}

fn ring_num() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(256u32),
        Just(16),
        Just(0),
        Just(1),
        Just(3),
        Just(32768),
        Just(65536),
        any::<u32>()
    ]
}

/// A user address: in the region (where rings go), at its edges, or anywhere.
fn uaddr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..8).prop_map(|k| UADDR + k * 0x1000),
        1 => (0..MEM).prop_map(|o| UADDR + o),
        1 => Just(UADDR + MEM - 2),
        1 => Just(UADDR - 0x1000),
        1 => any::<u64>(),
    ]
}

fn region() -> impl Strategy<Value = (u64, u64, u64, u64)> {
    (
        prop_oneof![4 => Just(0u64), 1 => Just(1u64 << 32), 1 => any::<u64>()],
        prop_oneof![4 => Just(MEM), 1 => Just(MEM / 2), 1 => Just(MEM * 16), 1 => Just(0u64), 1 => any::<u64>()],
        prop_oneof![4 => Just(UADDR), 1 => any::<u64>()],
        prop_oneof![4 => Just(0u64), 1 => Just(0x1000u64), 1 => Just(1u64), 1 => any::<u64>()],
    )
}

/// A well-formed request of any kind the spec has (including some the port refuses).
fn valid_msg() -> impl Strategy<Value = Msg> {
    let empty = prop::sample::select(vec![
        req::GET_FEATURES,
        req::SET_OWNER,
        req::RESET_OWNER,
        req::GET_PROTOCOL_FEATURES,
        req::GET_QUEUE_NUM,
        req::RESET_DEVICE,
        req::GET_MAX_MEM_SLOTS,
    ])
    .prop_map(|r| Msg::new(r, vec![], vec![]));
    let u64s = (
        prop::sample::select(vec![
            req::SET_FEATURES,
            req::SET_PROTOCOL_FEATURES,
            req::SET_LOG_BASE,
            req::SEND_RARP,
        ]),
        feature_word(),
    )
        .prop_map(|(r, v)| Msg::new(r, v.to_le_bytes().to_vec(), vec![]));
    let state = (
        prop::sample::select(vec![
            req::SET_VRING_NUM,
            req::SET_VRING_BASE,
            req::GET_VRING_BASE,
            req::SET_VRING_ENABLE,
        ]),
        vring_index(),
        prop_oneof![ring_num(), 0u32..2],
    )
        .prop_map(|(r, i, n)| Msg::new(r, hostile::vring_state(i, n), vec![]));
    let addr =
        (vring_index(), 0u32..3, uaddr(), uaddr(), uaddr()).prop_map(|(i, flags, d, u, a)| {
            let mut b = hostile::vring_addr(i, d, u, a);
            b[4..8].copy_from_slice(&flags.to_le_bytes());
            Msg::new(req::SET_VRING_ADDR, b, vec![])
        });
    let vfd = (
        prop::sample::select(vec![
            req::SET_VRING_KICK,
            req::SET_VRING_CALL,
            req::SET_VRING_ERR,
            req::SET_LOG_FD,
        ]),
        vring_index(),
        prop::bool::weighted(0.15),
        prop::option::weighted(0.9, fd_kind()),
    )
        .prop_map(|(r, i, nofd, fd)| {
            let word = u64::from(i) | if nofd { 0x100 } else { 0 };
            Msg::new(r, word.to_le_bytes().to_vec(), fd.into_iter().collect())
        });
    let table = (
        prop::collection::vec(region(), 0..4),
        prop::option::weighted(0.2, 0usize..10),
    )
        .prop_map(|(regions, nfds)| {
            let n = nfds.unwrap_or(regions.len());
            Msg::new(
                req::SET_MEM_TABLE,
                hostile::mem_table(&regions),
                vec![Fd::Mem; n],
            )
        });
    let onereg = (
        prop::sample::select(vec![req::ADD_MEM_REG, req::REM_MEM_REG]),
        region(),
    )
        .prop_map(|(r, reg)| {
            // `{u64 padding, region}`.
            let mut b = 0u64.to_le_bytes().to_vec();
            b.extend_from_slice(&hostile::mem_table(&[reg])[8..]);
            let fds = if r == req::ADD_MEM_REG {
                vec![Fd::Mem]
            } else {
                vec![]
            };
            Msg::new(r, b, fds)
        });
    let config = (
        prop::sample::select(vec![req::GET_CONFIG, req::SET_CONFIG]),
        0u32..16,
        0u32..24,
        any::<u32>(),
    )
        .prop_map(|(r, off, size, flags)| {
            let mut b = off.to_le_bytes().to_vec();
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&flags.to_le_bytes());
            b.resize(12 + size as usize, 0);
            Msg::new(r, b, vec![])
        });
    prop_oneof![
        3 => empty,
        2 => u64s,
        4 => state,
        3 => addr,
        3 => vfd,
        2 => table,
        1 => onereg,
        1 => config,
    ]
    .prop_flat_map(|m| (Just(m), prop::bool::weighted(0.3)))
    .prop_map(|(mut m, ack)| {
        if ack {
            m.flags |= hostile::NEED_REPLY;
        }
        m
    })
}

/// A valid message, mutated: flags, declared size, body bytes, fds, cut short.
fn mutated_msg() -> impl Strategy<Value = Msg> {
    (
        valid_msg(),
        prop::option::weighted(0.3, any::<u32>()),
        prop::option::weighted(
            0.3,
            prop_oneof![0u32..64, Just(4096u32), Just(4097u32), any::<u32>()],
        ),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        prop::option::weighted(0.3, prop::collection::vec(fd_kind(), 0..10)),
        prop::option::weighted(0.15, any::<usize>()),
    )
        .prop_map(|(mut m, flags, size, flips, fds, cut)| {
            if let Some(f) = flags {
                m.flags = f;
            }
            m.size = size;
            if !m.body.is_empty() {
                for (i, v) in flips {
                    let n = m.body.len();
                    m.body[i.index(n)] = v;
                }
            }
            if let Some(f) = fds {
                m.fds = f;
            }
            m.cut = cut;
            m
        })
}

/// Anything: a random request code, random flags and body.
fn random_msg() -> impl Strategy<Value = Msg> {
    (
        prop_oneof![0u32..48, any::<u32>()],
        prop_oneof![Just(VERSION), any::<u32>()],
        prop::collection::vec(any::<u8>(), 0..96),
        prop::collection::vec(fd_kind(), 0..3),
    )
        .prop_map(|(r, flags, body, fds)| Msg {
            req: r,
            flags,
            body,
            size: None,
            fds,
            cut: None,
        })
}

/// The honest set-up, in order: so that sequences get far enough to run rings.
fn honest_prefix() -> Vec<Msg> {
    let f = (1u64 << 32) | (1 << 30) | (1 << 28);
    let mut v = vec![
        Msg::new(req::GET_FEATURES, vec![], vec![]),
        Msg::new(req::SET_FEATURES, f.to_le_bytes().to_vec(), vec![]),
        Msg::new(req::SET_OWNER, vec![], vec![]),
        Msg::new(
            req::SET_MEM_TABLE,
            hostile::mem_table(&[(0, MEM, UADDR, 0)]),
            vec![Fd::Mem],
        ),
    ];
    for r in 0..2u32 {
        let base = UADDR + u64::from(r) * 0x4000;
        v.push(Msg::new(
            req::SET_VRING_NUM,
            hostile::vring_state(r, 256),
            vec![],
        ));
        v.push(Msg::new(
            req::SET_VRING_ADDR,
            hostile::vring_addr(r, base, base + 0x2000, base + 0x1000),
            vec![],
        ));
        v.push(Msg::new(
            req::SET_VRING_KICK,
            u64::from(r).to_le_bytes().to_vec(),
            vec![Fd::Event],
        ));
        v.push(Msg::new(
            req::SET_VRING_CALL,
            u64::from(r).to_le_bytes().to_vec(),
            vec![Fd::Event],
        ));
        v.push(Msg::new(
            req::SET_VRING_ENABLE,
            hostile::vring_state(r, 1),
            vec![],
        ));
    }
    v
}

/// One conversation.
#[derive(Clone, Debug)]
struct Case {
    /// Start with the honest set-up (then the messages below disturb a running port).
    honest_first: bool,
    msgs: Vec<Msg>,
    /// Guest memory contents (rings and buffers), repeated over the 64 KiB.
    mem: Vec<u8>,
    /// Read what the port answered before hanging up.
    read_replies: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::bool::weighted(0.4),
        prop::collection::vec(
            prop_oneof![5 => valid_msg(), 3 => mutated_msg(), 1 => random_msg()],
            0..16,
        ),
        prop::collection::vec(any::<u8>(), 1..64),
        any::<bool>(),
    )
        .prop_map(|(honest_first, msgs, mem, read_replies)| Case {
            honest_first,
            msgs,
            mem,
            read_replies,
        })
}

/// The descriptors a case may attach, made once.
struct Fds {
    event: OwnedFd,
    full: OwnedFd,
    mem: Memory,
    pipe: (OwnedFd, OwnedFd),
    null: std::fs::File,
    sock: (UnixStream, UnixStream),
}

impl Fds {
    fn new() -> Fds {
        Fds {
            event: hostile::eventfd(0),
            full: hostile::eventfd(0xffff_ffff_ffff_fffe),
            mem: Memory::new(MEM, MEM as usize).expect("memfd"),
            pipe: hostile::pipe(),
            null: std::fs::File::open("/dev/null").expect("/dev/null"),
            sock: UnixStream::pair().expect("socketpair"),
        }
    }

    fn raw(&self, f: Fd) -> RawFd {
        match f {
            Fd::Event => self.event.as_raw_fd(),
            Fd::FullEvent => self.full.as_raw_fd(),
            Fd::Mem => self.mem.fd.as_raw_fd(),
            Fd::Pipe => self.pipe.1.as_raw_fd(),
            Fd::Null => self.null.as_raw_fd(),
            Fd::Sock => self.sock.0.as_raw_fd(),
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Polls the port as a switch core would: takes what its transmit ring offers and
/// transmits a frame into its receive ring.
fn poll(p: &VhostUserPort, frames: &LocalFrames) -> usize {
    let mut b = RxBatch::default();
    let mut got = 0;
    got += p.poll_rx(0, &mut b, &mut |_| {});
    let sel = [TxSel {
        idx: 0,
        edit: pmd::VlanEdit::Keep,
    }];
    p.tx_burst(0, frames.batch(), &sel);
    got
}

/// A fresh honest frontend negotiates on the same socket and passes a frame each way.
fn honest_check(
    p: &VhostUserPort,
    path: &std::path::Path,
    frames: &LocalFrames,
) -> Result<(), String> {
    let mut vu = VirtioUser::new(&VirtioUserConfig::new(path))
        .map_err(|e| format!("honest frontend could not connect: {e}"))?;
    let t = Instant::now();
    while !p.is_up() {
        if t.elapsed() > Duration::from_secs(5) {
            return Err("the port never came up for the honest frontend".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let f = hostile::frame(2, 1, 7, 64);
    if vu.send(0, &[&f]) != 1 {
        return Err("honest frontend could not post a frame".into());
    }
    let t = Instant::now();
    let mut got = 0;
    while got == 0 {
        if t.elapsed() > Duration::from_secs(5) {
            return Err("the honest frame never reached the port".into());
        }
        let mut b = RxBatch::default();
        got += p.poll_rx(0, &mut b, &mut |batch| {
            assert_eq!(
                batch.frame(0).to_vec(),
                f,
                "the honest frame arrived changed"
            );
        });
    }
    let sel = [TxSel {
        idx: 0,
        edit: pmd::VlanEdit::Keep,
    }];
    let t = Instant::now();
    while p.tx_burst(0, frames.batch(), &sel) == 0 {
        if t.elapsed() > Duration::from_secs(5) {
            return Err("the port never sent into the honest frontend".into());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    if vu.recv_wait(0, 1, Duration::from_secs(5)).is_empty() {
        return Err("the honest frontend never received the port's frame".into());
    }
    Ok(())
}

/// Waits until the open descriptors are back to `base` (the port lets go of a
/// connection's fds when its control thread sees the hang-up).
fn fds_settle(base: usize) -> Result<(), String> {
    let t = Instant::now();
    loop {
        let n = open_fds();
        if n <= base {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(3) {
            return Err(format!("{} file descriptors leaked", n - base));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Cases whose sequence left a ring running (so random ring memory was walked).
static UP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Messages the port took in (sent whole before it hung up).
static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn run_case(
    c: &Case,
    p: &VhostUserPort,
    path: &std::path::Path,
    fds: &Fds,
    frames: &LocalFrames,
    base_fds: usize,
) -> Result<(), TestCaseError> {
    let mem: Vec<u8> = c.mem.iter().copied().cycle().take(MEM as usize).collect();
    fds.mem.write(0, &mem);
    let s = UnixStream::connect(path).map_err(|e| TestCaseError::fail(format!("connect: {e}")))?;
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let pre = if c.honest_first {
        honest_prefix()
    } else {
        vec![]
    };
    for (k, m) in pre.iter().chain(&c.msgs).enumerate() {
        let raw: Vec<RawFd> = m.fds.iter().map(|&f| fds.raw(f)).collect();
        // The port may have hung up already: that is allowed, and ends the case.
        if hostile::send_raw(&s, &m.bytes(), &raw).is_err() {
            break;
        }
        SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if k % 4 == 3 {
            poll(p, frames);
        }
    }
    if c.read_replies {
        let mut b = [0u8; 4096];
        while matches!((&s).read(&mut b), Ok(n) if n > 0) {}
    }
    // Let the port apply what it got, polling its rings meanwhile.
    for _ in 0..4 {
        poll(p, frames);
        std::thread::sleep(Duration::from_micros(250));
    }
    if p.is_up() {
        UP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    drop(s);
    honest_check(p, path, frames).map_err(TestCaseError::fail)?;
    fds_settle(base_fds).map_err(TestCaseError::fail)?;
    Ok(())
}

#[test]
fn any_message_sequence_leaves_the_port_serving_the_next_frontend() {
    let d = std::env::temp_dir().join(format!("vswitch-fuzz-vu-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    let path = d.join("p.sock");
    let p = VhostUserPort::new(VhostUserConfig::new("fuzz", &path)).expect("port");
    let fds = Fds::new();
    let mut frames = LocalFrames::default();
    frames.push(&hostile::frame(1, 2, 9, 64));
    // One honest round first, so that whatever the port keeps for good is counted in
    // the baseline.
    honest_check(&p, &path, &frames).expect("the honest frontend works");
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    while p.is_up() && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let base_fds = open_fds();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let t = Instant::now();
    let r = runner.run(&case(), |c| {
        run_case(&c, &p, &path, &fds, &frames, base_fds)
    });
    eprintln!(
        "fuzz_vhost_user: {cases} sequences, {} messages in {:.1} s ({} left a ring \
         running), {} protocol errors counted, {} connections",
        SENT.load(std::sync::atomic::Ordering::Relaxed),
        t.elapsed().as_secs_f64(),
        UP.load(std::sync::atomic::Ordering::Relaxed),
        p.protocol_errors(),
        p.connections()
    );
    if let Err(e) = r {
        panic!("{e}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
