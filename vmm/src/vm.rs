//! One KVM virtual machine: build it from a [`VmConfig`], run its vCPUs until the guest
//! powers off, resets or dies.

use std::fs::File;
use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi;
use crate::boot::{self, Entry};
use crate::bus::{Bus, NetDevice, VirtioDevice};
use crate::devices::block::Block;
use crate::devices::console::{self, Console};
use crate::devices::ioapic::{self, Ioapic};
use crate::devices::serial;
use crate::devices::vhost_net::{self, NetConfig, VhostNet};
use crate::devices::virtio_mmio::{reg, MmioTransport};
use crate::devices::Action;
use crate::layout::{self, *};
use crate::memory::{GuestRam, MemoryError};

/// Everything a VM is made of.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel: ELF (vmlinux-style, or with a PVH note) or bzImage.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub mem: u64,
    /// Virtual CPUs.
    pub vcpus: u8,
    /// Host CPUs the vCPU threads are pinned to (vCPU i on `cpus[i % len]`); empty: not
    /// pinned.
    pub cpus: Vec<usize>,
    /// Guest RAM on 2 MiB huge pages.
    pub hugepages: bool,
    /// Allocate all guest RAM before the guest starts.
    pub prealloc: bool,
    /// Network devices.
    pub nets: Vec<NetConfig>,
    /// Emulate the legacy 8254 PIT in KVM. Off by default: Linux keeps time with the
    /// local APIC timer and kvm-clock (the default command line has `no_timer_check`),
    /// and KVM's PIT costs a kernel thread per VM, about 10 ms of VM start and stop on
    /// the reference host. Turn it on for guests that need IRQ 0.
    pub pit: bool,
    /// Feed stdin to the serial console.
    pub console_input: bool,
    /// A Unix socket the VMM serves for the guest agent's virtio-serial port
    /// (`vnfhost.agent`).
    pub agent: Option<PathBuf>,
    /// Block devices (virtio-blk).
    pub disks: Vec<DiskConfig>,
    /// A virtio-balloon device with free page reporting: the guest hands back the RAM it
    /// freed (after boot: the kernel's decompression, the initramfs), and the host
    /// releases it (qemu backend).
    pub free_page_reporting: bool,
    /// A QMP socket QEMU serves (qemu backend): the pod VM's owner inflates and deflates
    /// the balloon through it once the guest has booted.
    pub qmp: Option<PathBuf>,
}

/// One `--disk` of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The file or block device.
    pub path: PathBuf,
    /// The serial number the guest sees (`/sys/block/vdX/serial`), at most 20 bytes.
    pub serial: String,
    /// The guest may not write to it.
    pub read_only: bool,
}

/// How the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// ACPI power-off (S5), or KVM reported a shutdown system event.
    PowerOff,
    /// A reset request (i8042, ACPI reset register, KVM reset event).
    Reset,
    /// SIGINT or SIGTERM stopped the VMM.
    Signal,
}

/// Why a VM could not be built or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The kernel or initrd cannot be loaded.
    #[error("{path}: {detail}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A KVM call failed.
    #[error("KVM: {0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// A network device.
    #[error(transparent)]
    Net(#[from] vhost_net::NetError),
    /// The agent's port.
    #[error(transparent)]
    Agent(#[from] console::ConsoleError),
    /// A disk cannot be opened.
    #[error("--disk {path}: {source}")]
    Disk {
        /// The file or block device.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another host error.
    #[error("{0}: {1}")]
    Os(&'static str, std::io::Error),
    /// The guest triple-faulted.
    #[error("vCPU {vcpu}: guest triple fault (shutdown) at rip {rip:#x}; the VM is stopped")]
    TripleFault {
        /// Which vCPU.
        vcpu: u8,
        /// Where.
        rip: u64,
    },
    /// KVM could not run the guest.
    #[error("vCPU {vcpu}: {what} at rip {rip:#x}; the VM is stopped")]
    Guest {
        /// Which vCPU.
        vcpu: u8,
        /// What KVM said.
        what: String,
        /// Where.
        rip: u64,
    },
}

/// Milestones of a VM's life, for the start-up benchmark and the log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Guest memory mapped and the kernel loaded.
    pub loaded: Option<Duration>,
    /// The first vCPU is about to enter the guest.
    pub first_entry: Option<Duration>,
}

/// A built VM, ready to run.
pub struct Vm {
    vm: Arc<VmFd>,
    vcpus: Vec<VcpuFd>,
    cpus: Vec<usize>,
    bus: Arc<Bus>,
    /// The network devices of `bus`, for their vhost-user monitors.
    nets: Vec<NetDevice>,
    ram: Arc<GuestRam>,
    stop: Arc<AtomicBool>,
    started: Instant,
    console_input: bool,
    /// Milestones.
    pub timings: Timings,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm(what, e)
}

fn image_err(path: &std::path::Path, detail: impl std::fmt::Display) -> VmError {
    VmError::Image {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// Checks a configuration before anything is created.
pub fn validate(cfg: &VmConfig) -> Result<(), VmError> {
    if cfg.vcpus == 0 || cfg.vcpus > 64 {
        return Err(VmError::Config(format!(
            "--vcpus {}: must be 1..=64",
            cfg.vcpus
        )));
    }
    if cfg.cmdline.len() >= CMDLINE_MAX {
        return Err(VmError::Config(format!(
            "the kernel command line is {} bytes; Linux on x86 takes at most {}",
            cfg.cmdline.len(),
            CMDLINE_MAX - 1
        )));
    }
    if cfg.cmdline.as_bytes().contains(&0) {
        return Err(VmError::Config(
            "the kernel command line contains a NUL byte".into(),
        ));
    }
    if cfg.nets.len() > VIRTIO_MMIO_SLOTS {
        return Err(VmError::Config(format!(
            "{} network devices; a VM has at most {VIRTIO_MMIO_SLOTS}",
            cfg.nets.len()
        )));
    }
    for d in &cfg.disks {
        if d.serial.len() > 20
            || !d
                .serial
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(VmError::Config(format!(
                "--disk {}: serial {:?} must be at most 20 of [A-Za-z0-9_-]",
                d.path.display(),
                d.serial
            )));
        }
        let md = std::fs::metadata(&d.path)
            .map_err(|e| VmError::Config(format!("--disk {}: {e}", d.path.display())))?;
        use std::os::unix::fs::FileTypeExt;
        if !(md.is_file() || md.file_type().is_block_device()) {
            return Err(VmError::Config(format!(
                "--disk {}: not a regular file or a block device",
                d.path.display()
            )));
        }
    }
    if cfg.nets.len() + cfg.disks.len() + usize::from(cfg.agent.is_some()) > VIRTIO_MMIO_SLOTS {
        return Err(VmError::Config(format!(
            "{} network devices, {} disks and {} agent port: a VM has {VIRTIO_MMIO_SLOTS} device slots",
            cfg.nets.len(),
            cfg.disks.len(),
            usize::from(cfg.agent.is_some())
        )));
    }
    crate::memory::check(cfg.mem, cfg.hugepages)?;
    let online = pmd::sched::online_cpus();
    if let Some(c) = cfg.cpus.iter().find(|&&c| c >= online) {
        return Err(VmError::Config(format!(
            "--cpus: CPU {c} does not exist (this host has {online})"
        )));
    }
    for (path, what) in
        std::iter::once((&cfg.kernel, "kernel")).chain(cfg.initrd.iter().map(|p| (p, "initrd")))
    {
        let md = std::fs::metadata(path).map_err(|e| image_err(path, format!("{what}: {e}")))?;
        if !md.is_file() || md.len() == 0 {
            return Err(image_err(
                path,
                format!("{what}: not a non-empty regular file"),
            ));
        }
    }
    Ok(())
}

impl Vm {
    /// Builds the VM: memory, kernel, devices, ACPI, vCPUs. Network backends are attached
    /// before this returns (server-mode sockets wait for their backend).
    pub fn new(cfg: &VmConfig, console: Box<dyn Write + Send>) -> Result<Vm, VmError> {
        let started = Instant::now();
        validate(cfg)?;
        if cfg.free_page_reporting || cfg.qmp.is_some() {
            return Err(VmError::Config(
                "free page reporting (--free-page-reporting) and QMP (--qmp) are QEMU's; use --hypervisor qemu".into(),
            ));
        }
        if cfg.nets.iter().any(|n| n.packed) {
            // Its virtio-net resumes a ring after a backend restart from the used index
            // in guest memory, which a packed ring does not have.
            return Err(VmError::Config(
                "packed virtqueues (--net ...,packed) are not supported by the kvm backend yet; use --hypervisor qemu".into(),
            ));
        }
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
        let ram = Arc::new(GuestRam::new(cfg.mem, cfg.hugepages, cfg.prealloc)?);
        for (slot, r) in ram.ranges().iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.gpa,
                memory_size: r.len,
                userspace_addr: r.host_addr,
            };
            // SAFETY: the mapping is owned by `ram`. Every holder of the VM fd keeps an
            // `Arc` of it too (`Vm`, and `Bus` for the IOAPIC's fd), so the memory stays
            // mapped while a vCPU can run. On the error paths of `Vm::new` the fd may
            // outlive the mapping briefly, but no vCPU has run and KVM only keeps the
            // address.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(kvm_err("set guest memory region"))?;
        }

        vm.set_tss_address(KVM_TSS_ADDR)
            .map_err(kvm_err("set TSS address"))?;
        let vm = Arc::new(vm);
        let ioapic = if cfg.pit {
            // KVM's PIT needs KVM's PIC and IOAPIC.
            vm.create_irq_chip().map_err(kvm_err("create IRQ chip"))?;
            let pit = kvm_pit_config {
                flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(kvm_err("create PIT"))?;
            None
        } else {
            let cap = kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                args: [ioapic::PINS as u64, 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap)
                .map_err(kvm_err("enable the split irqchip"))?;
            Some(Ioapic::new(Some(Arc::clone(&vm))))
        };
        tracing::debug!("{:?}: KVM VM created", started.elapsed());

        tracing::debug!("{:?}: guest memory registered", started.elapsed());
        let (entry, initrd) = load(cfg, &ram)?;
        let mut timings = Timings {
            loaded: Some(started.elapsed()),
            ..Default::default()
        };

        // Devices.
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Os("eventfd", e))?;
        vm.register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(kvm_err("register serial irqfd"))?;
        let console = serial::console(serial_irq, console);
        let mut virtio: Vec<VirtioDevice> = vec![];
        let mut nets: Vec<NetDevice> = vec![];
        let mut acpi_devs = vec![];
        // Slots in this order: NICs, the agent's port, disks.
        let mut slot = |queues: u32| -> Result<(EventFd, EventFd, Vec<EventFd>), VmError> {
            let n = acpi_devs.len();
            let base = layout::virtio_mmio_addr(n);
            let irq = VIRTIO_IRQ_BASE + n as u32;
            let (call, kicks) = slot_fds(&vm, base, irq, queues)?;
            let irq_fd = call.try_clone().map_err(|e| VmError::Os("eventfd", e))?;
            acpi_devs.push(acpi::MmioDevice {
                addr: base,
                len: VIRTIO_MMIO_SIZE as u32,
                irq,
            });
            Ok((call, irq_fd, kicks))
        };
        for net in &cfg.nets {
            let (call, irq_fd, kicks) = slot(2)?;
            let dev = VhostNet::new(
                net.clone(),
                Arc::clone(&ram),
                kicks,
                call,
                Duration::from_secs(5),
            )?;
            let dev = Arc::new(Mutex::new(MmioTransport::new(dev, irq_fd)));
            nets.push(Arc::clone(&dev));
            virtio.push(dev);
        }
        if let Some(path) = &cfg.agent {
            let (call, irq_fd, kicks) = slot(console::QUEUES as u32)?;
            let dev = Console::new(path.clone(), Arc::clone(&ram), kicks, call)?;
            virtio.push(Arc::new(Mutex::new(MmioTransport::new(dev, irq_fd))));
        }
        for disk in &cfg.disks {
            let (call, irq_fd, kicks) = slot(1)?;
            let kick = kicks
                .into_iter()
                .next()
                .ok_or(VmError::Config("no kick".into()))?;
            let dev = Block::new(disk.clone(), Arc::clone(&ram), kick, call).map_err(|e| {
                VmError::Disk {
                    path: disk.path.clone(),
                    source: e,
                }
            })?;
            virtio.push(Arc::new(Mutex::new(MmioTransport::new(dev, irq_fd))));
        }

        // Tables and boot information.
        let mem = ram.mem();
        let wr = |e: vm_memory::GuestMemoryError| {
            VmError::Config(format!("guest memory too small for the boot tables: {e}"))
        };
        boot::write_tables(mem).map_err(wr)?;
        let (rsdp, tables) = acpi::tables(ACPI_ADDR, cfg.vcpus, &acpi_devs, ioapic.is_none());
        if tables.len() as u64 > ACPI_END - ACPI_ADDR {
            return Err(VmError::Config("ACPI tables do not fit below 1 MiB".into()));
        }
        mem.write_slice(&tables, GuestAddress(ACPI_ADDR))
            .map_err(wr)?;
        let mut cmdline = cfg.cmdline.as_bytes().to_vec();
        cmdline.push(0);
        mem.write_slice(&cmdline, GuestAddress(CMDLINE_ADDR))
            .map_err(wr)?;
        let ranges: Vec<(u64, u64)> = ram.ranges().iter().map(|r| (r.gpa, r.len)).collect();
        let e820 = boot::e820(&ranges);
        match entry.0 {
            Entry::Long(_) => {
                boot::write_zero_page(mem, entry.1, cfg.cmdline.len(), initrd, &e820, rsdp)
                    .map_err(wr)?
            }
            Entry::Pvh(_) => boot::write_pvh_info(mem, initrd, &e820, rsdp).map_err(wr)?,
        }

        // vCPUs.
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let mut vcpus = vec![];
        for id in 0..cfg.vcpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create vCPU"))?;
            boot::patch_cpuid(&mut cpuid, id, cfg.vcpus);
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
            set_lint(&vcpu)?;
            if id == 0 {
                vcpu.set_regs(&boot::regs(entry.0))
                    .map_err(kvm_err("set registers"))?;
                let mut sregs = vcpu.get_sregs().map_err(kvm_err("get special registers"))?;
                boot::sregs(entry.0, &mut sregs);
                vcpu.set_sregs(&sregs)
                    .map_err(kvm_err("set special registers"))?;
                vcpu.set_fpu(&boot::fpu()).map_err(kvm_err("set FPU"))?;
            }
            vcpus.push(vcpu);
        }
        timings.first_entry = Some(started.elapsed());
        tracing::debug!("{:?}: vCPUs ready", started.elapsed());
        Ok(Vm {
            vm,
            vcpus,
            cpus: cfg.cpus.clone(),
            bus: Arc::new(Bus::new(console, virtio, ioapic, Arc::clone(&ram))),
            nets,
            ram,
            stop: Arc::new(AtomicBool::new(false)),
            started,
            console_input: cfg.console_input,
            timings,
        })
    }

    /// The device bus (tests and status read counters from it).
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// Guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// The KVM VM.
    pub fn fd(&self) -> &VmFd {
        &self.vm
    }

    /// Runs the vCPUs until the guest ends; returns how it ended.
    pub fn run(&mut self) -> Result<VmExit, VmError> {
        install_kick_handler();
        for d in &self.nets {
            let d = Arc::clone(d);
            let stop = Arc::clone(&self.stop);
            std::thread::Builder::new()
                .name("vhost-monitor".into())
                .spawn(move || vhost_net::monitor(d, stop))
                .map_err(|e| VmError::Os("spawn monitor thread", e))?;
        }
        if self.console_input {
            let bus = Arc::clone(&self.bus);
            std::thread::Builder::new()
                .name("console-in".into())
                .spawn(move || console_input(&bus))
                .map_err(|e| VmError::Os("spawn console thread", e))?;
        }
        let (tx, rx) = mpsc::channel();
        let isolated = pmd::sched::isolated_cpus();
        let mut threads = vec![];
        for (id, vcpu) in self.vcpus.drain(..).enumerate() {
            let cpu = (!self.cpus.is_empty()).then(|| self.cpus[id % self.cpus.len()]);
            if let Some(c) = cpu {
                if !isolated.contains(&c) {
                    tracing::warn!(
                        "vCPU {id} pinned to CPU {c}, which is not in the kernel's isolated set"
                    );
                }
            }
            let bus = Arc::clone(&self.bus);
            let stop = Arc::clone(&self.stop);
            let tx = tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    if let Some(c) = cpu {
                        core_affinity::set_for_current(core_affinity::CoreId { id: c });
                    }
                    let r = run_vcpu(id as u8, vcpu, &bus, &stop);
                    let _ = tx.send(r);
                })
                .map_err(|e| VmError::Os("spawn vCPU thread", e))?;
            threads.push(h);
        }
        drop(tx);
        let result = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => break r,
                Err(mpsc::RecvTimeoutError::Timeout) if STOP_SIGNAL.load(Ordering::Relaxed) => {
                    break Ok(VmExit::Signal)
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(VmError::Config("no vCPU ran".into()))
                }
            }
        };
        self.stop.store(true, Ordering::SeqCst);
        // Kick the other vCPUs out of KVM_RUN until they have all stopped: a kick sent just
        // before a vCPU enters KVM_RUN is lost, so kick again every millisecond.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last_kick: Option<Instant> = None;
        while threads.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            if last_kick.is_none_or(|t| t.elapsed() >= Duration::from_millis(1)) {
                for h in threads.iter().filter(|h| !h.is_finished()) {
                    // SAFETY: the thread is alive (not finished), so its pthread_t is valid.
                    unsafe { libc::pthread_kill(h.as_pthread_t(), kick_signal()) };
                }
                last_kick = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        let _ = self.bus.serial.lock().map(|mut s| s.writer_mut().flush());
        for d in &self.bus.virtio {
            d.lock().unwrap_or_else(|e| e.into_inner()).close();
        }
        let (pio, mmio) = (
            self.bus.unhandled_pio.load(Ordering::Relaxed),
            self.bus.unhandled_mmio.load(Ordering::Relaxed),
        );
        if pio + mmio > 0 {
            tracing::info!(
                "the guest made {pio} port and {mmio} MMIO accesses that no device answers \
                 (ignored; VNFHOST_LOG=debug shows them, rate-limited)"
            );
        }
        tracing::debug!("VM ran for {:?}", self.started.elapsed());
        result
    }
}

/// The irqfd of the virtio-mmio device at `base` on GSI `irq`, and an ioeventfd on its
/// `QueueNotify` for each of its `queues`.
fn slot_fds(
    vm: &VmFd,
    base: u64,
    irq: u32,
    queues: u32,
) -> Result<(EventFd, Vec<EventFd>), VmError> {
    let call = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Os("eventfd", e))?;
    vm.register_irqfd(&call, irq)
        .map_err(kvm_err("register virtio irqfd"))?;
    let mut kicks = vec![];
    for q in 0..queues {
        let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Os("eventfd", e))?;
        vm.register_ioevent(&kick, &IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY), q)
            .map_err(kvm_err("register queue ioeventfd"))?;
        kicks.push(kick);
    }
    Ok((call, kicks))
}

/// Feeds stdin to the serial console's receive FIFO until EOF.
fn console_input(bus: &Bus) {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while let Ok(n) = stdin.read(&mut buf) {
        if n == 0 {
            return;
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let took = bus
                .serial
                .lock()
                .map(|mut s| s.enqueue_raw_bytes(rest).unwrap_or(0))
                .unwrap_or(0);
            rest = &rest[took..];
            if !rest.is_empty() {
                // The 64-byte FIFO is full: let the guest read it.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Set by SIGINT/SIGTERM while a VM runs.
static STOP_SIGNAL: AtomicBool = AtomicBool::new(false);

extern "C" fn stop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP_SIGNAL.store(true, Ordering::Relaxed);
}

fn install_kick_handler() {
    // A no-op handler: the signal only makes KVM_RUN return EINTR.
    let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler);
    // SIGINT/SIGTERM end the VM in order (sockets removed, console flushed).
    let _ = vmm_sys_util::signal::register_signal_handler(libc::SIGINT, stop_handler);
    let _ = vmm_sys_util::signal::register_signal_handler(libc::SIGTERM, stop_handler);
}

/// Routes the local APIC's LINT0 to ExtINT (the 8259) and LINT1 to NMI, as a BIOS would.
fn set_lint(vcpu: &VcpuFd) -> Result<(), VmError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("get LAPIC"))?;
    for (off, mode) in [(0x350usize, 0x7u32), (0x360, 0x4)] {
        let b: [u8; 4] = std::array::from_fn(|i| lapic.regs[off + i] as u8);
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *x as libc::c_char;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm_err("set LAPIC"))
}

/// A loaded kernel: how to enter it, and a bzImage's setup header.
pub type Loaded = (Entry, Option<linux_loader::loader::bootparam::setup_header>);

/// Loads the kernel (ELF or bzImage) and the initrd into `ram`; returns the entry and the
/// initrd's `(address, length)`.
pub fn load(cfg: &VmConfig, ram: &GuestRam) -> Result<(Loaded, Option<(u64, u64)>), VmError> {
    let path = &cfg.kernel;
    let mut f = File::open(path).map_err(|e| image_err(path, e))?;
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut f, &mut magic)
        .map_err(|e| image_err(path, format!("too short: {e}")))?;
    let (loaded, kernel_end) = if magic == *b"\x7fELF" {
        let r = Elf::load(ram.mem(), None, &mut f, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| image_err(path, format!("bad ELF kernel: {e}")))?;
        let entry = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(a) => Entry::Pvh(a.0),
            _ => Entry::Long(r.kernel_load.0),
        };
        ((entry, None), r.kernel_end)
    } else {
        let r = BzImage::load(ram.mem(), None, &mut f, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| image_err(path, format!("neither an ELF nor a bzImage kernel: {e}")))?;
        // XLF_KERNEL_64: the image has the 64-bit entry at +0x200 this VMM jumps to.
        if r.setup_header.is_some_and(|h| h.xloadflags & 1 == 0) {
            return Err(image_err(
                path,
                "this bzImage has no 64-bit entry point (XLF_KERNEL_64)",
            ));
        }
        // The decompressor unpacks the kernel at its preferred address and needs
        // `init_size` bytes there: the initrd must stay clear of that, not just of the
        // compressed image.
        let runtime_end = r
            .setup_header
            .map(|h| {
                let (pref, init) = ({ h.pref_address }, u64::from(h.init_size));
                pref.max(HIMEM_START).saturating_add(init)
            })
            .unwrap_or(0);
        // The 64-bit entry of a bzImage is 0x200 past its protected-mode code.
        (
            (Entry::Long(r.kernel_load.0 + 0x200), r.setup_header),
            r.kernel_end.max(runtime_end),
        )
    };
    let initrd = match &cfg.initrd {
        None => None,
        Some(p) => {
            let data = std::fs::read(p).map_err(|e| image_err(p, e))?;
            let len = data.len() as u64;
            let top = ram.low_end();
            let addr = top
                .checked_sub(len)
                .map(|a| a & !0xfff)
                .filter(|&a| a >= kernel_end.max(HIMEM_START))
                .ok_or_else(|| {
                    image_err(
                        p,
                        format!(
                            "initrd of {len} bytes does not fit between the kernel (which needs memory \
                             up to {kernel_end:#x}) and the end of low memory ({top:#x}); give \
                             the VM more --mem"
                        ),
                    )
                })?;
            ram.mem()
                .write_slice(&data, GuestAddress(addr))
                .map_err(|e| image_err(p, e))?;
            Some((addr, len))
        }
    };
    Ok((loaded, initrd))
}

fn run_vcpu(id: u8, mut vcpu: VcpuFd, bus: &Bus, stop: &AtomicBool) -> Result<VmExit, VmError> {
    let rip = |vcpu: &VcpuFd| vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(VmExit::PowerOff);
        }
        let action = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => bus.pio_write(port, data),
            Ok(VcpuExit::IoIn(port, data)) => {
                bus.pio_read(port, data);
                Action::None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                bus.mmio_read(addr, data);
                Action::None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => bus.mmio_write(addr, data),
            Ok(VcpuExit::Hlt) => Action::None,
            Ok(VcpuExit::IoapicEoi(vector)) => {
                bus.ioapic_eoi(vector);
                Action::None
            }
            Ok(VcpuExit::Shutdown) => {
                return Err(VmError::TripleFault {
                    vcpu: id,
                    rip: rip(&vcpu),
                })
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Action::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => Action::Reset,
                other => {
                    return Err(VmError::Guest {
                        vcpu: id,
                        what: format!("KVM system event {other}"),
                        rip: rip(&vcpu),
                    })
                }
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(VmError::Guest {
                    vcpu: id,
                    what: format!(
                        "KVM could not enter the guest (reason {reason:#x}, host CPU {cpu})"
                    ),
                    rip: rip(&vcpu),
                })
            }
            Ok(VcpuExit::InternalError) => {
                return Err(VmError::Guest {
                    vcpu: id,
                    what: "KVM internal error (emulation failure: an instruction KVM cannot \
                           emulate, or a fault with no usable IDT)"
                        .into(),
                    rip: rip(&vcpu),
                })
            }
            Ok(other) => {
                return Err(VmError::Guest {
                    vcpu: id,
                    what: format!("unexpected KVM exit {other:?}"),
                    rip: rip(&vcpu),
                })
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Action::None,
            Err(e) => return Err(VmError::Kvm("KVM_RUN", e)),
        };
        match action {
            Action::None => {}
            Action::Reset => return Ok(VmExit::Reset),
            Action::PowerOff => return Ok(VmExit::PowerOff),
        }
    }
}
