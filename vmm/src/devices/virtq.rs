//! Split virtqueues of the devices the VMM serves itself (virtio-blk, virtio-console).
//!
//! Unlike virtio-net, whose queues the switch serves over vhost-user, these queues are
//! walked here, by a device thread. Every access to guest memory goes through
//! `vm-memory` (bounds-checked, no `unsafe`), and the guest is not trusted:
//!
//! - a queue is accepted at DRIVER_OK only if its size is a power of two no larger than
//!   the device's maximum and its three rings are aligned and lie in guest RAM;
//! - each descriptor is read once into a [`Desc`]; what the device does is decided on
//!   those copies, never on guest memory read again;
//! - a chain is at most the queue size long, its indices are below the queue size, and
//!   no readable descriptor may follow a writable one; an available index that runs more
//!   than a queue's worth ahead of the device, an indirect descriptor (not offered) or a
//!   broken chain is a [`QueueError`]: the device stops that queue and needs a reset.
//!
//! Buffer addresses are not checked here: the device checks each against guest RAM when
//! it uses it, and fails that request alone (virtio-blk answers `IOERR`).
//!
//! No `VIRTIO_RING_F_EVENT_IDX`: the device interrupts after each batch unless the driver
//! set `VRING_AVAIL_F_NO_INTERRUPT`.

use std::sync::atomic::{fence, Ordering};

use pmd::virtio::{self, AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use vm_memory::endian::{Le16, Le32, Le64};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::virtio_mmio::QueueConfig;
use crate::memory::GuestRam;

/// One descriptor of a chain, as read from the guest once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// The device writes it (the driver reads it).
    pub write: bool,
}

/// A queue the guest broke; the device stops it until the driver resets the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The available index is more than a queue's worth ahead of the device.
    #[error("the driver's available index is {0} entries ahead in a queue of {1}")]
    AvailOverrun(u16, u16),
    /// A descriptor index at or above the queue size.
    #[error("descriptor index {0} in a queue of {1}")]
    BadIndex(u16, u16),
    /// A chain longer than the queue (a loop).
    #[error("a descriptor chain longer than the queue ({0})")]
    ChainTooLong(u16),
    /// An indirect descriptor, which the device did not offer.
    #[error("an indirect descriptor (not offered)")]
    Indirect,
    /// A device-readable descriptor after a device-writable one.
    #[error("a device-readable descriptor after a device-writable one")]
    ReadAfterWrite,
    /// A ring access outside guest RAM (the rings were checked at DRIVER_OK, so only a
    /// broken invariant leads here).
    #[error("a ring access at {0:#x} is outside guest RAM")]
    Memory(u64),
}

/// The descriptor layout in guest memory (little-endian).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawDesc {
    addr: Le64,
    len: Le32,
    flags: Le16,
    next: Le16,
}

// SAFETY: `RawDesc` is `repr(C)` made only of byte-valued integers with no padding
// (8 + 4 + 2 + 2 bytes), so every bit pattern is a valid value.
unsafe impl ByteValued for RawDesc {}

/// A split virtqueue the device walks.
#[derive(Debug)]
pub struct Queue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

impl Queue {
    /// Checks what the driver configured for queue `index`: ready, size a power of two up
    /// to `max`, rings aligned and in guest RAM.
    pub fn new(index: usize, q: &QueueConfig, max: u16, ram: &GuestRam) -> Result<Queue, String> {
        if !q.ready {
            return Err(format!("queue {index} is not ready"));
        }
        if q.size == 0 || !q.size.is_power_of_two() || q.size > max {
            return Err(format!(
                "queue {index}: size {} is not a power of two in 1..={max}",
                q.size
            ));
        }
        let size = u64::from(q.size);
        for (addr, align, len, what) in [
            (q.desc, 16, size * virtio::DESC_SIZE, "descriptor table"),
            (q.avail, 2, virtio::avail_ring_bytes(q.size), "driver ring"),
            (q.used, 4, virtio::used_ring_bytes(q.size), "device ring"),
        ] {
            if addr % align != 0 {
                return Err(format!(
                    "queue {index}: the {what} at {addr:#x} is not {align}-byte aligned"
                ));
            }
            if ram.host_addr(addr, len).is_none() {
                return Err(format!(
                    "queue {index}: the {what} at {addr:#x} ({len} bytes) is not in guest RAM"
                ));
            }
        }
        Ok(Queue {
            size: q.size,
            desc: q.desc,
            avail: q.avail,
            used: q.used,
            next_avail: 0,
            next_used: 0,
        })
    }

    /// Entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    fn avail_idx(&self, mem: &GuestMemoryMmap) -> Result<u16, QueueError> {
        // Acquire: the ring entries and descriptors the driver wrote before it moved the
        // index are visible after this load.
        mem.load::<u16>(GuestAddress(self.avail + 2), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|_| QueueError::Memory(self.avail + 2))
    }

    /// Chains the driver made available that the device has not taken yet.
    pub fn pending(&self, mem: &GuestMemoryMmap) -> Result<u16, QueueError> {
        let n = self.avail_idx(mem)?.wrapping_sub(self.next_avail);
        if n > self.size {
            return Err(QueueError::AvailOverrun(n, self.size));
        }
        Ok(n)
    }

    /// Takes the next available chain: its descriptors go into `descs` (cleared first),
    /// its head index is returned. `None`: nothing available.
    pub fn pop(
        &mut self,
        mem: &GuestMemoryMmap,
        descs: &mut Vec<Desc>,
    ) -> Result<Option<u16>, QueueError> {
        descs.clear();
        if self.pending(mem)? == 0 {
            return Ok(None);
        }
        let at = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        let head: u16 = mem
            .read_obj::<Le16>(GuestAddress(at))
            .map_err(|_| QueueError::Memory(at))?
            .into();
        self.next_avail = self.next_avail.wrapping_add(1);
        let mut idx = head;
        let mut writing = false;
        for _ in 0..self.size {
            if idx >= self.size {
                return Err(QueueError::BadIndex(idx, self.size));
            }
            let at = self.desc + virtio::DESC_SIZE * u64::from(idx);
            let d: RawDesc = mem
                .read_obj(GuestAddress(at))
                .map_err(|_| QueueError::Memory(at))?;
            let flags = u16::from(d.flags);
            if flags & DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect);
            }
            let write = flags & DESC_F_WRITE != 0;
            if writing && !write {
                return Err(QueueError::ReadAfterWrite);
            }
            writing = write;
            descs.push(Desc {
                addr: d.addr.into(),
                len: d.len.into(),
                write,
            });
            if flags & DESC_F_NEXT == 0 {
                return Ok(Some(head));
            }
            idx = d.next.into();
        }
        Err(QueueError::ChainTooLong(self.size))
    }

    /// Gives the driver back an unused chain taken by [`Queue::pop`] (the device could
    /// not use it yet): the next pop returns it again.
    pub fn undo_pop(&mut self) {
        self.next_avail = self.next_avail.wrapping_sub(1);
    }

    /// Returns chain `head` to the driver with `len` bytes written into it.
    pub fn push_used(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        let at = self.used + 4 + 8 * u64::from(self.next_used % self.size);
        let elem = [u32::from(head).to_le(), len.to_le()];
        mem.write_obj(elem, GuestAddress(at))
            .map_err(|_| QueueError::Memory(at))?;
        self.next_used = self.next_used.wrapping_add(1);
        // Release: the element is visible before the index that publishes it.
        mem.store(
            self.next_used.to_le(),
            GuestAddress(self.used + 2),
            Ordering::Release,
        )
        .map_err(|_| QueueError::Memory(self.used + 2))
    }

    /// Whether the driver wants an interrupt for what was just published (it did not set
    /// `VRING_AVAIL_F_NO_INTERRUPT`).
    pub fn wants_interrupt(&self, mem: &GuestMemoryMmap) -> bool {
        // The used index must be visible before the flags are read, or a driver that
        // clears the flag after looking at the used ring would miss this interrupt.
        fence(Ordering::SeqCst);
        mem.load::<u16>(GuestAddress(self.avail), Ordering::Relaxed)
            .map(|f| u16::from_le(f) & AVAIL_F_NO_INTERRUPT == 0)
            .unwrap_or(true)
    }
}

/// A test driver: lays out a queue in guest memory and posts chains, as a guest's
/// virtio driver does. Used by the device tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A queue of `size` entries at `base` (descriptor table, then driver ring at +0x1000,
    /// then device ring at +0x2000), and a bump allocator for buffers from `base +
    /// 0x10000`.
    pub struct Driver {
        pub cfg: QueueConfig,
        next_desc: u16,
        avail_idx: u16,
        used_seen: u16,
        next_buf: u64,
    }

    impl Driver {
        pub fn new(base: u64, size: u16) -> Driver {
            Driver {
                cfg: QueueConfig {
                    size,
                    ready: true,
                    desc: base,
                    avail: base + 0x1000,
                    used: base + 0x2000,
                },
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
                next_buf: base + 0x10000,
            }
        }

        /// A buffer of `len` bytes holding `data` (zero-padded).
        pub fn buf(&mut self, mem: &GuestMemoryMmap, data: &[u8], len: u32) -> u64 {
            let at = self.next_buf;
            self.next_buf += u64::from(len).next_multiple_of(64).max(64);
            let mut v = data.to_vec();
            v.resize(len as usize, 0);
            mem.write_slice(&v, GuestAddress(at)).unwrap();
            at
        }

        /// Writes raw descriptor `i`.
        pub fn write_desc(
            &self,
            mem: &GuestMemoryMmap,
            i: u16,
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        ) {
            let d = RawDesc {
                addr: addr.into(),
                len: len.into(),
                flags: flags.into(),
                next: next.into(),
            };
            mem.write_obj(d, GuestAddress(self.cfg.desc + 16 * u64::from(i)))
                .unwrap();
        }

        /// Posts a chain of `(addr, len, device-writable)` buffers; returns its head.
        pub fn post(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
            let head = self.next_desc;
            for (k, &(addr, len, w)) in bufs.iter().enumerate() {
                let i = (head + k as u16) % self.cfg.size;
                let last = k + 1 == bufs.len();
                let flags = if w { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
                self.write_desc(mem, i, addr, len, flags, (i + 1) % self.cfg.size);
            }
            self.next_desc = (head + bufs.len() as u16) % self.cfg.size;
            self.make_available(mem, head);
            head
        }

        /// Puts `head` in the driver ring and moves its index.
        pub fn make_available(&mut self, mem: &GuestMemoryMmap, head: u16) {
            let slot = u64::from(self.avail_idx % self.cfg.size);
            mem.write_obj(
                Le16::from(head),
                GuestAddress(self.cfg.avail + 4 + 2 * slot),
            )
            .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.set_avail_idx(mem, self.avail_idx);
        }

        /// Sets the driver ring's index as a (possibly hostile) driver would.
        pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
            mem.write_obj(Le16::from(idx), GuestAddress(self.cfg.avail + 2))
                .unwrap();
        }

        /// The next used element the device returned: `(head, len)`.
        pub fn used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
            let idx: u16 = mem
                .read_obj::<Le16>(GuestAddress(self.cfg.used + 2))
                .unwrap()
                .into();
            if idx == self.used_seen {
                return None;
            }
            let at = self.cfg.used + 4 + 8 * u64::from(self.used_seen % self.cfg.size);
            let e: [u32; 2] = mem.read_obj(GuestAddress(at)).unwrap();
            self.used_seen = self.used_seen.wrapping_add(1);
            Some((u32::from_le(e[0]) as u16, u32::from_le(e[1])))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Driver;
    use super::*;

    fn ram() -> GuestRam {
        GuestRam::new(32 << 20, false, false).unwrap()
    }

    #[test]
    fn chains_are_read_once_in_order() {
        let ram = ram();
        let mem = ram.mem();
        let mut d = Driver::new(0x10_0000, 8);
        let mut q = Queue::new(0, &d.cfg, 256, &ram).unwrap();
        let mut descs = vec![];
        assert_eq!(q.pop(mem, &mut descs), Ok(None));
        let head = d.post(mem, &[(0x20_0000, 16, false), (0x20_1000, 512, true)]);
        assert_eq!(q.pending(mem), Ok(1));
        assert_eq!(q.pop(mem, &mut descs), Ok(Some(head)));
        assert_eq!(
            descs,
            vec![
                Desc {
                    addr: 0x20_0000,
                    len: 16,
                    write: false
                },
                Desc {
                    addr: 0x20_1000,
                    len: 512,
                    write: true
                }
            ]
        );
        q.push_used(mem, head, 513).unwrap();
        assert_eq!(d.used(mem), Some((head, 513)));
        assert!(q.wants_interrupt(mem));
        // Popped but not usable yet: handed back.
        let h2 = d.post(mem, &[(0x20_2000, 8, true)]);
        assert_eq!(q.pop(mem, &mut descs), Ok(Some(h2)));
        q.undo_pop();
        assert_eq!(q.pop(mem, &mut descs), Ok(Some(h2)));
    }

    #[test]
    fn rings_outside_ram_or_misaligned_are_refused() {
        let ram = ram();
        let mut d = Driver::new(0x10_0000, 8);
        d.cfg.used = (32 << 20) - 8;
        assert!(Queue::new(0, &d.cfg, 256, &ram)
            .unwrap_err()
            .contains("not in guest RAM"));
        let mut d = Driver::new(0x10_0000, 8);
        d.cfg.desc += 8;
        assert!(Queue::new(0, &d.cfg, 256, &ram)
            .unwrap_err()
            .contains("aligned"));
        let mut d = Driver::new(0x10_0000, 12);
        assert!(Queue::new(0, &d.cfg, 256, &ram).is_err());
        d.cfg.size = 512;
        assert!(Queue::new(0, &d.cfg, 256, &ram).is_err());
        d.cfg.size = 8;
        d.cfg.ready = false;
        assert!(Queue::new(0, &d.cfg, 256, &ram).is_err());
        d.cfg.ready = true;
        d.cfg.desc = u64::MAX - 15;
        assert!(Queue::new(0, &d.cfg, 256, &ram).is_err());
    }

    #[test]
    fn hostile_chains_stop_the_queue() {
        let ram = ram();
        let mem = ram.mem();
        let mut descs = vec![];

        // A loop: descriptor 0 -> 1 -> 0.
        let mut d = Driver::new(0x10_0000, 8);
        let mut q = Queue::new(0, &d.cfg, 256, &ram).unwrap();
        d.write_desc(mem, 0, 0x20_0000, 8, DESC_F_NEXT, 1);
        d.write_desc(mem, 1, 0x20_0000, 8, DESC_F_NEXT, 0);
        d.make_available(mem, 0);
        assert_eq!(q.pop(mem, &mut descs), Err(QueueError::ChainTooLong(8)));
        assert!(descs.len() <= 8);

        // A next index past the queue, a head past the queue.
        let mut d = Driver::new(0x10_0000, 8);
        let mut q = Queue::new(0, &d.cfg, 256, &ram).unwrap();
        d.write_desc(mem, 0, 0x20_0000, 8, DESC_F_NEXT, 9);
        d.make_available(mem, 0);
        assert_eq!(q.pop(mem, &mut descs), Err(QueueError::BadIndex(9, 8)));
        d.make_available(mem, 200);
        assert_eq!(q.pop(mem, &mut descs), Err(QueueError::BadIndex(200, 8)));

        // Indirect, and readable after writable.
        let mut d = Driver::new(0x10_0000, 8);
        let mut q = Queue::new(0, &d.cfg, 256, &ram).unwrap();
        d.write_desc(mem, 0, 0x20_0000, 16, DESC_F_INDIRECT, 0);
        d.make_available(mem, 0);
        assert_eq!(q.pop(mem, &mut descs), Err(QueueError::Indirect));
        d.write_desc(mem, 1, 0x20_0000, 16, DESC_F_WRITE | DESC_F_NEXT, 2);
        d.write_desc(mem, 2, 0x20_0000, 16, 0, 0);
        d.make_available(mem, 1);
        assert_eq!(q.pop(mem, &mut descs), Err(QueueError::ReadAfterWrite));

        // An available index far ahead of the device.
        let d = Driver::new(0x10_0000, 8);
        let mut q = Queue::new(0, &d.cfg, 256, &ram).unwrap();
        d.set_avail_idx(mem, 9);
        assert_eq!(q.pop(mem, &mut descs), Err(QueueError::AvailOverrun(9, 8)));
    }
}
