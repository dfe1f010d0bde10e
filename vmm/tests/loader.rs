//! The kernel loaders against a real kernel: Debian's cloud bzImage, as built into the
//! guest image by `vmm/guest/build-guest.sh` (run by `scripts/setup.sh`).

use std::path::PathBuf;
use std::process::Command;

use vmm::boot::Entry;
use vmm::memory::GuestRam;
use vmm::VmConfig;

fn guest_kernel() -> Result<(PathBuf, PathBuf), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/guest/build-guest.sh");
    let out = Command::new("bash")
        .args([script, "--print"])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(PathBuf::from)
            .filter(|p| p.is_file())
    };
    match (get("VNFHOST_GUEST_KERNEL="), get("VNFHOST_GUEST_INITRD=")) {
        (Some(k), Some(i)) if out.status.success() => Ok((k, i)),
        _ => Err(format!(
            "the guest image is not built (scripts/setup.sh builds it): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[test]
fn debian_bzimage_and_initramfs_load_where_linux_expects_them() {
    let (kernel, initrd) = match guest_kernel() {
        Ok(p) => p,
        Err(e) => {
            println!("SKIPPED: {e}");
            return;
        }
    };
    let cfg = VmConfig {
        kernel,
        initrd: Some(initrd.clone()),
        cmdline: String::new(),
        mem: 256 << 20,
        vcpus: 1,
        cpus: vec![],
        hugepages: false,
        prealloc: false,
        nets: vec![],
        pit: false,
        console_input: false,
        agent: None,
        disks: vec![],
        free_page_reporting: false,
        qmp: None,
    };
    let ram = GuestRam::new(cfg.mem, false, false).unwrap();
    let ((entry, header), initrd_at) = vmm::vm::load(&cfg, &ram).unwrap();
    // The protected-mode code of a bzImage loads at 1 MiB; its 64-bit entry is 0x200 in.
    assert_eq!(entry, Entry::Long(0x10_0200));
    let h = header.expect("a bzImage has a setup header");
    assert_eq!({ h.header }, 0x5372_6448, "HdrS");
    assert!({ h.version } >= 0x020c, "boot protocol {:#x}", {
        h.version
    });
    let (addr, len) = initrd_at.expect("initrd loaded");
    assert_eq!(len, std::fs::metadata(&initrd).unwrap().len());
    assert_eq!(addr % 4096, 0);
    assert!(addr + len <= 256 << 20);
}

#[test]
fn an_initrd_that_does_not_fit_is_refused_with_the_reason() {
    let (kernel, initrd) = match guest_kernel() {
        Ok(p) => p,
        Err(e) => {
            println!("SKIPPED: {e}");
            return;
        }
    };
    let cfg = VmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline: String::new(),
        mem: 16 << 20,
        vcpus: 1,
        cpus: vec![],
        hugepages: false,
        prealloc: false,
        nets: vec![],
        pit: false,
        console_input: false,
        free_page_reporting: false,
        qmp: None,
        agent: None,
        disks: vec![],
    };
    let ram = GuestRam::new(cfg.mem, false, false).unwrap();
    let e = vmm::vm::load(&cfg, &ram).unwrap_err().to_string();
    assert!(e.contains("does not fit") && e.contains("--mem"), "{e}");
}
