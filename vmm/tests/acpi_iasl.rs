//! The VMM's ACPI tables, read back by ACPICA's disassembler (`iasl`, package
//! `acpica-tools`): what a guest OS parses must be well-formed and say what we mean.

use std::path::PathBuf;
use std::process::Command;

use vmm::acpi::{self, MmioDevice};

fn iasl() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("iasl"))
        .find(|p| p.is_file())
}

#[test]
fn iasl_disassembles_the_tables_and_finds_the_devices() {
    let Some(iasl) = iasl() else {
        println!("SKIPPED: iasl not found (apt-get install acpica-tools)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("vnfhost-acpi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let devs = [
        MmioDevice {
            addr: 0xd000_0000,
            len: 0x1000,
            irq: 5,
        },
        MmioDevice {
            addr: 0xd000_1000,
            len: 0x1000,
            irq: 6,
        },
    ];
    let (base, bytes) = acpi::tables(0xe0000, 2, &devs, false);
    let mut text = String::new();
    for (sig, table) in acpi::walk(base, &bytes).unwrap() {
        let name = String::from_utf8_lossy(&sig).to_lowercase();
        let dat = dir.join(format!("{name}.dat"));
        std::fs::write(&dat, &table).unwrap();
        let out = Command::new(&iasl)
            .arg("-d")
            .arg(&dat)
            .current_dir(&dir)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "iasl -d {name}: {log}");
        let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
        assert!(!dsl.contains("Invalid"), "{name}: {dsl}");
        text += &dsl;
    }
    for want in [
        // The console, so that Linux maps its interrupt (hardware-reduced: no ISA IRQs).
        "Device (COM1)",
        "EisaId (\"PNP0501\")",
        "IO (Decode16,",
        "0x03F8,             // Range Minimum",
        "0x00000004,",
        "Device (V000)",
        "Device (V001)",
        "\"LNRO0005\"",
        "Memory32Fixed (ReadWrite,",
        "0xD0001000",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "0x00000006,",
        "Name (_S5, Package",
        "Hardware Reduced (V5) : 1",
        "Processor ID : 01",
        "I/O APIC",
        "PC-AT Compatibility : 0",
        "Sleep Control Register : [Generic Address Structure]",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
