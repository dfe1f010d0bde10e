//! Assembles the guest payloads in `payload/` with binutils (`as`, `ld`), which every Rust
//! toolchain on Linux already needs for linking.

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{shown} failed: {s}"),
        Err(e) => panic!("cannot run {shown}: {e} (install binutils)"),
    }
}

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=payload/link.ld");
    for name in ["hello", "idle", "echo", "poweroff", "net", "fault"] {
        let src = format!("payload/{name}.s");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.o"));
        let elf = out.join(format!("{name}.elf"));
        run(Command::new("as").args(["--64", "-o"]).arg(&obj).arg(&src));
        run(Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-nostdlib",
                "-static",
                "--build-id=none",
            ])
            .args(["-T", "payload/link.ld", "-o"])
            .arg(&elf)
            .arg(&obj));
    }
}
