//! Guest payloads assembled from `vmm/payload/*.s` at build time.

/// The start-up payload: PVH entry, one serial byte, then reset.
pub const HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello.elf"));
/// The virtio-net payload: 64-bit entry, drives a virtio-mmio NIC (see `net.s`).
pub const NET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/net.elf"));

/// The idle payload: PVH entry, one serial byte, then halts for ever (see `idle.s`).
pub const IDLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/idle.elf"));
/// The echo payload: PVH entry, copies serial input to output until `q` (see `echo.s`).
pub const ECHO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo.elf"));
/// The power-off payload: PVH entry, one serial byte, ACPI S5 (see `poweroff.s`).
pub const POWEROFF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/poweroff.elf"));
/// The fault payload: 64-bit entry, prints `F`, then triple-faults (see `fault.s`).
pub const FAULT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fault.elf"));

/// Names of the payloads.
pub const NAMES: [&str; 6] = ["hello", "idle", "echo", "poweroff", "net", "fault"];

/// A payload by name (see [`NAMES`]).
pub fn by_name(name: &str) -> Option<&'static [u8]> {
    match name {
        "hello" => Some(HELLO),
        "idle" => Some(IDLE),
        "echo" => Some(ECHO),
        "poweroff" => Some(POWEROFF),
        "net" => Some(NET),
        "fault" => Some(FAULT),
        _ => None,
    }
}
