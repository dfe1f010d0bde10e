//! The 16550 serial console (vm-superio) on COM1, interrupt through an irqfd.

use std::io::{self, Write};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// First I/O port of COM1.
pub const COM1: u16 = 0x3f8;

/// Raises the serial interrupt by writing the irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The console output: it flushes after every line so a reader sees output as it comes.
pub struct ConsoleOut {
    out: Box<dyn Write + Send>,
    /// Bytes written by the guest.
    pub bytes: u64,
}

impl ConsoleOut {
    /// Wraps a writer.
    pub fn new(out: Box<dyn Write + Send>) -> ConsoleOut {
        ConsoleOut { out, bytes: 0 }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes += buf.len() as u64;
        let n = self.out.write(buf)?;
        // One byte per port write: flush on newlines and on the very first byte (the
        // start-up benchmark waits for it).
        if buf.contains(&b'\n') || self.bytes == buf.len() as u64 {
            self.out.flush()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// COM1.
pub type Console = Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>;

/// Creates the console with `irq` as its interrupt.
pub fn console(irq: EventFd, out: Box<dyn Write + Send>) -> Console {
    Serial::new(IrqTrigger(irq), ConsoleOut::new(out))
}
