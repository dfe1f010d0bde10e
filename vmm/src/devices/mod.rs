//! Emulated devices: the serial console, the legacy reset and power ports, and the
//! virtio-mmio transport with its devices: virtio-net (a vhost-user frontend),
//! virtio-blk and virtio-console (served here).
//!
//! Devices sit on two buses (port I/O and MMIO) that the vCPU threads dispatch to. Each
//! device has its own lock; the data path of the network device never comes here: the
//! guest's queue kicks go to the switch through ioeventfds and the switch's interrupts
//! come back through irqfds, both inside KVM. virtio-blk and virtio-console have one
//! thread each ([`Worker`]), started when the driver sets DRIVER_OK: woken by the queues'
//! ioeventfds, they walk the rings ([`virtq`]) and interrupt through the device's irqfd,
//! without the vCPU threads or the transport's lock.

pub mod block;
pub mod console;
pub mod ioapic;
pub mod legacy;
pub mod serial;
pub mod vhost_net;
pub mod virtio_mmio;
pub mod virtq;

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

/// What a device asks of the VM after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// The guest asked for a reset (i8042 or ACPI reset register).
    Reset,
    /// The guest asked to power off (ACPI S5).
    PowerOff,
}

/// A device thread: started when the driver sets DRIVER_OK, stopped and joined when it
/// resets the device, so that the rings are no longer touched once the reset returns. The
/// thread hands back the state `S` it was given (a console's socket outlives a reset).
pub struct Worker<S> {
    stop: EventFd,
    handle: JoinHandle<S>,
}

impl<S: Send + 'static> Worker<S> {
    /// Runs `f` on a thread named `name`; `f` must return soon after its eventfd becomes
    /// readable.
    pub fn spawn(
        name: &str,
        f: impl FnOnce(&EventFd) -> S + Send + 'static,
    ) -> io::Result<Worker<S>> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let theirs = stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(&theirs))?;
        Ok(Worker { stop, handle })
    }

    /// Stops the thread and waits for it; its state back (`None` if it panicked).
    pub fn stop(self) -> Option<S> {
        let _ = self.stop.write(1);
        self.handle.join().ok()
    }
}

/// Listens on the Unix socket `path` for a device the VMM serves (a vhost-user server
/// port, the agent's port) with permissions `mode`: refuses a path that exists and is not
/// a socket, or where a server already listens (`busy` says what to do then); replaces a
/// stale socket of an earlier run. The error names the step that failed.
pub fn listen(
    path: &Path,
    mode: u32,
    busy: &str,
) -> Result<UnixListener, (&'static str, io::Error)> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err((
                "bind",
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket; refusing to replace it",
                ),
            ));
        }
    }
    if UnixStream::connect(path).is_ok() {
        return Err((
            "bind",
            io::Error::new(io::ErrorKind::AddrInUse, busy.to_string()),
        ));
    }
    // Nobody listens: a stale socket from an earlier run.
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| ("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ("chmod", e))?;
    Ok(l)
}
