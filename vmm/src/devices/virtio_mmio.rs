//! The virtio-mmio transport (version 2, virtio 1.x "modern" layout).
//!
//! One 4 KiB window per device: the common registers below 0x100, the device's
//! configuration space from 0x100. The transport keeps what the driver negotiated
//! (features, queue sizes and addresses, status) and hands it to the device when the driver
//! sets DRIVER_OK. Queue notifications normally never reach it: the VM registers an
//! ioeventfd on `QueueNotify` per queue, so KVM signals the device's kick eventfd directly.
//! A guest that accesses registers badly (wrong width, unknown offset, writes to read-only
//! registers) is ignored and counted, never trusted.

use std::sync::atomic::{AtomicU64, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// `MagicValue`: "virt".
pub const MAGIC: u32 = 0x7472_6976;

/// Register offsets.
pub mod reg {
    #![allow(missing_docs)]
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    #![allow(missing_docs)]
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status: a used buffer was returned.
pub const INT_VRING: u32 = 1;
/// Interrupt status: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// What the driver configured for one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Entries (a power of two up to the maximum).
    pub size: u16,
    /// Whether the driver set `QueueReady`.
    pub ready: bool,
    /// Descriptor table (guest-physical).
    pub desc: u64,
    /// Driver (available) ring.
    pub avail: u64,
    /// Device (used) ring.
    pub used: u64,
}

/// A device behind the transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (1 = network).
    fn device_type(&self) -> u32;
    /// Features offered to the driver.
    fn features(&self) -> u64;
    /// Number of queues.
    fn num_queues(&self) -> usize;
    /// Largest queue size.
    fn queue_max(&self) -> u16;
    /// Reads the configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space (most devices ignore it).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with what the driver negotiated.
    fn activate(&mut self, acked: u64, queues: &[QueueConfig]) -> Result<(), String>;
    /// Stops the device (driver reset).
    fn reset(&mut self);
    /// A queue notification that reached the transport (no ioeventfd).
    fn notify(&mut self, queue: u16);
    /// Whether the device is in an error state the driver must reset.
    fn needs_reset(&self) -> bool;
    /// The VM is ending: close connections, remove sockets the device listens on.
    fn close(&mut self) {}
}

/// A virtio-mmio window on the bus, whatever the device behind it.
pub trait MmioSlot: Send {
    /// A guest read at `offset` in the window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write at `offset` in the window.
    fn write(&mut self, offset: u64, data: &[u8]);
    /// The VM is ending ([`VirtioDevice::close`]).
    fn close(&mut self);
}

impl<D: VirtioDevice> MmioSlot for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
    fn close(&mut self) {
        self.dev.close()
    }
}

/// Answers a read of `data.len()` bytes at `offset` of a configuration space whose bytes
/// are `cfg`; bytes past its end read as 0.
pub fn read_config_bytes(cfg: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| cfg.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// The transport of one device.
pub struct MmioTransport<D> {
    dev: D,
    irq: EventFd,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    interrupt_status: u32,
    config_generation: u32,
    active: bool,
    bad_accesses: AtomicU64,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `dev`; `irq` is the device's irqfd (used for configuration interrupts).
    pub fn new(dev: D, irq: EventFd) -> MmioTransport<D> {
        let n = dev.num_queues();
        MmioTransport {
            dev,
            irq,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked: 0,
            queue_sel: 0,
            queues: vec![QueueConfig::default(); n],
            interrupt_status: 0,
            config_generation: 0,
            active: false,
            bad_accesses: AtomicU64::new(0),
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, mutably (the vhost-user monitor updates it on reconnect).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Whether the driver set DRIVER_OK and the device started.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Accesses the guest got wrong.
    pub fn bad_accesses(&self) -> u64 {
        self.bad_accesses.load(Ordering::Relaxed)
    }

    /// Tells the driver the configuration (or the device state) changed.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt_status |= INT_CONFIG;
        let _ = self.irq.write(1);
    }

    fn bad(&self) {
        self.bad_accesses.fetch_add(1, Ordering::Relaxed);
    }

    fn queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Handles a read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.dev.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            self.bad();
            data.fill(0);
            return;
        }
        let v: u32 = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.dev.device_type(),
            reg::VENDOR_ID => 0x554d_4551, // "QEMU": what guests expect of virtio-mmio
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.dev.features() as u32,
                1 => (self.dev.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => {
                if (self.queue_sel as usize) < self.queues.len() {
                    u32::from(self.dev.queue_max())
                } else {
                    0
                }
            }
            reg::QUEUE_READY => self.queue().map(|q| u32::from(q.ready)).unwrap_or(0),
            // A vhost-user device cannot tell which interrupt its backend raised: claim a
            // used buffer whenever the device runs, so the driver looks at its rings.
            reg::INTERRUPT_STATUS => {
                self.interrupt_status | if self.active { INT_VRING } else { 0 }
            }
            reg::STATUS => {
                self.status
                    | if self.dev.needs_reset() {
                        status::NEEDS_RESET
                    } else {
                        0
                    }
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                self.bad();
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Handles a write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.dev.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.bad();
            return;
        };
        let v = u32::from_le_bytes(bytes);
        // Queue and feature set-up is only allowed before DRIVER_OK.
        let setting_up = self.status & status::DRIVER_OK == 0;
        let set_lo = |x: &mut u64, v: u32| *x = (*x & !0xffff_ffff) | u64::from(v);
        let set_hi = |x: &mut u64, v: u32| *x = (*x & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES if setting_up && self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => set_lo(&mut self.acked, v),
                    1 => set_hi(&mut self.acked, v),
                    _ => self.bad(),
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if setting_up => {
                let max = self.dev.queue_max();
                match self.queue() {
                    Some(q) if v > 0 && v <= u32::from(max) && v.is_power_of_two() => {
                        q.size = v as u16
                    }
                    _ => self.bad(),
                }
            }
            reg::QUEUE_READY if setting_up => match self.queue() {
                Some(q) => q.ready = v == 1,
                None => self.bad(),
            },
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH
                if setting_up =>
            {
                let Some(q) = self.queue() else {
                    self.bad();
                    return;
                };
                match offset {
                    reg::QUEUE_DESC_LOW => set_lo(&mut q.desc, v),
                    reg::QUEUE_DESC_HIGH => set_hi(&mut q.desc, v),
                    reg::QUEUE_DRIVER_LOW => set_lo(&mut q.avail, v),
                    reg::QUEUE_DRIVER_HIGH => set_hi(&mut q.avail, v),
                    reg::QUEUE_DEVICE_LOW => set_lo(&mut q.used, v),
                    _ => set_hi(&mut q.used, v),
                }
            }
            reg::QUEUE_NOTIFY => {
                if (v as usize) < self.queues.len() && self.active {
                    self.dev.notify(v as u16);
                } else {
                    self.bad();
                }
            }
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.set_status(v),
            _ => self.bad(),
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            if self.active {
                self.dev.reset();
            }
            let n = self.queues.len();
            self.queues = vec![QueueConfig::default(); n];
            self.status = 0;
            self.acked = 0;
            self.interrupt_status = 0;
            self.device_features_sel = 0;
            self.driver_features_sel = 0;
            self.queue_sel = 0;
            self.active = false;
            return;
        }
        let mut v = v & !status::NEEDS_RESET;
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            // Refuse features that were not offered: FEATURES_OK stays clear.
            if self.acked & !self.dev.features() != 0 {
                v &= !status::FEATURES_OK;
            }
        }
        if v & status::DRIVER_OK != 0 && !self.active {
            if v & status::FEATURES_OK == 0 {
                self.bad();
                return;
            }
            self.status = v;
            match self.dev.activate(self.acked, &self.queues) {
                Ok(()) => self.active = true,
                Err(e) => {
                    tracing::warn!("virtio device type {}: {e}", self.dev.device_type());
                    self.status |= status::NEEDS_RESET;
                    self.config_changed();
                }
            }
            return;
        }
        self.status = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        activated: Option<(u64, Vec<QueueConfig>)>,
        resets: u32,
        fail: bool,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            1
        }
        fn features(&self) -> u64 {
            (1 << 32) | (1 << 5)
        }
        fn num_queues(&self) -> usize {
            2
        }
        fn queue_max(&self) -> u16 {
            256
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0xaa);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, acked: u64, queues: &[QueueConfig]) -> Result<(), String> {
            if self.fail {
                return Err("nope".into());
            }
            self.activated = Some((acked, queues.to_vec()));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated = None;
        }
        fn notify(&mut self, _queue: u16) {}
        fn needs_reset(&self) -> bool {
            false
        }
    }

    fn w(t: &mut MmioTransport<Fake>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }
    fn r(t: &mut MmioTransport<Fake>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn bring_up(t: &mut MmioTransport<Fake>, features_hi: u32) {
        w(t, reg::STATUS, 0);
        w(t, reg::STATUS, 3);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, features_hi);
        w(t, reg::STATUS, 11);
        for q in 0..2 {
            w(t, reg::QUEUE_SEL, q);
            w(t, reg::QUEUE_NUM, 64);
            w(t, reg::QUEUE_DESC_LOW, 0x1000 * (q + 1));
            w(t, reg::QUEUE_READY, 1);
        }
        w(t, reg::STATUS, 15);
    }

    #[test]
    fn negotiation_reaches_the_device() {
        let mut t = MmioTransport::new(Fake::default(), EventFd::new(0).unwrap());
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        bring_up(&mut t, 1);
        let (acked, queues) = t.device().activated.clone().unwrap();
        assert_eq!(acked, 1 << 32);
        assert_eq!(queues[1].size, 64);
        assert_eq!(queues[1].desc, 0x2000);
        assert!(queues[1].ready);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
        // Set-up registers are frozen once running.
        w(&mut t, reg::QUEUE_NUM, 8);
        assert_eq!(t.bad_accesses(), 1);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(t.device().resets, 1);
        assert!(!t.active());
    }

    #[test]
    fn features_not_offered_are_refused() {
        let mut t = MmioTransport::new(Fake::default(), EventFd::new(0).unwrap());
        bring_up(&mut t, 1 | 2);
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        assert!(t.device().activated.is_none());
    }

    #[test]
    fn hostile_accesses_are_counted_not_trusted() {
        let mut t = MmioTransport::new(Fake::default(), EventFd::new(0).unwrap());
        let mut b = [0u8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        w(&mut t, reg::QUEUE_SEL, 7);
        w(&mut t, reg::QUEUE_NUM, 64);
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_NUM, 100); // not a power of two
        w(&mut t, reg::QUEUE_NUM, 4096); // above the maximum
        w(&mut t, 0x0c8, 1);
        assert_eq!(t.bad_accesses(), 5);
    }

    #[test]
    fn failed_activation_needs_reset() {
        let dev = Fake {
            fail: true,
            ..Default::default()
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(dev, irq.try_clone().unwrap());
        bring_up(&mut t, 1);
        assert_ne!(r(&mut t, reg::STATUS) & status::NEEDS_RESET, 0);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(irq.read().unwrap(), 1);
    }
}
