//! The whole forwarding path allocates nothing per frame: two vhost-user ports, the
//! switch's polling core (receive burst, bridge, transmit), and our virtio-user
//! frontends on the other side. A counting global allocator watches every thread of
//! this process while 20 000 frames cross the switch; the measuring thread itself only
//! sends and receives (neither allocates), and the control threads are idle.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pmd::virtio_user::VirtioUser;

mod common;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards unchanged to `System`; counting touches one atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, as `System` needs.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `p` came from `System` with layout `l`.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn frame(dst: u8, src: u8, seq: u32) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, dst]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Sends `n` frames a → b (after b has spoken, so they are known unicast) and returns
/// how many arrived.
fn pump(a: &mut VirtioUser, b: &mut VirtioUser, frames: &[[u8; 64]]) -> usize {
    let (mut next, mut got) = (0usize, 0usize);
    let t = Instant::now();
    while got < frames.len() && t.elapsed() < Duration::from_secs(20) {
        if next < frames.len() && next - got < 256 {
            next += a.send(0, &frames[next..(next + 32).min(frames.len())]);
        }
        got += b.recv(0, 64, |_| {});
    }
    got
}

#[test]
fn forwarding_bursts_allocate_nothing() {
    let (sw, mut a, mut b) = common::two_port_switch("noalloc");
    std::thread::sleep(Duration::from_millis(300));
    // b speaks first so the switch knows where it is; then warm up.
    b.send(0, &[frame(0xa, 0xb, 0)]);
    let warm: Vec<[u8; 64]> = (0..2000).map(|i| frame(0xb, 0xa, i)).collect();
    assert_eq!(
        pump(&mut a, &mut b, &warm),
        warm.len(),
        "warm-up frames lost"
    );
    let frames: Vec<[u8; 64]> = (0..20_000).map(|i| frame(0xb, 0xa, i)).collect();
    let before = ALLOCS.load(Ordering::Relaxed);
    let got = pump(&mut a, &mut b, &frames);
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(got, frames.len(), "frames lost");
    assert_eq!(
        after - before,
        0,
        "{} heap allocations while 20 000 frames crossed the switch",
        after - before
    );
    drop(sw);
}
