//! Choosing the hypervisor backend.

use std::fmt;
use std::str::FromStr;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// `kvm` where the CPU has hardware virtualization, `qemu` otherwise.
    Auto,
    /// vnfhost's own KVM monitor.
    Kvm,
    /// QEMU `-M microvm`.
    Qemu,
}

/// The backend that runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// vnfhost's own KVM monitor.
    Kvm,
    /// QEMU `-M microvm`.
    Qemu,
}

impl FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Choice, String> {
        match s {
            "auto" => Ok(Choice::Auto),
            "kvm" => Ok(Choice::Kvm),
            "qemu" => Ok(Choice::Qemu),
            _ => Err(format!("--hypervisor {s:?}: expected auto, kvm or qemu")),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Kvm => "kvm",
            Backend::Qemu => "qemu",
        })
    }
}

/// Whether `/proc/cpuinfo` shows hardware virtualization (`vmx` or `svm`).
///
/// Only the first CPU's entry is read: the kernel formats `/proc/cpuinfo` one CPU at a
/// time, executing CPUID for each, which under a hypervisor costs a trap per leaf.
pub fn hardware_virtualization() -> bool {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open("/proc/cpuinfo") else {
        return false;
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| cpuinfo_has_virt(&l))
}

fn cpuinfo_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Resolves `choice`; the string says why, for the log.
pub fn resolve(choice: Choice) -> (Backend, String) {
    let hw = hardware_virtualization();
    match choice {
        Choice::Kvm if hw => (Backend::Kvm, "asked for".into()),
        Choice::Kvm => (
            Backend::Kvm,
            "asked for; this CPU has no vmx/svm, so KVM emulates every guest instruction".into(),
        ),
        Choice::Qemu => (Backend::Qemu, "asked for".into()),
        Choice::Auto if hw => (
            Backend::Kvm,
            "auto: the CPU has hardware virtualization".into(),
        ),
        Choice::Auto => (
            Backend::Qemu,
            "auto: no vmx/svm in /proc/cpuinfo, so QEMU with TCG".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_vmx_and_svm_flags_only() {
        assert!(cpuinfo_has_virt("flags\t\t: fpu vme vmx sse\n"));
        assert!(cpuinfo_has_virt("flags : svm\n"));
        assert!(!cpuinfo_has_virt(
            "flags\t\t: fpu vmxx svmz\nmodel name : vmx\n"
        ));
        assert_eq!("qemu".parse::<Choice>(), Ok(Choice::Qemu));
        assert!("xen".parse::<Choice>().is_err());
    }
}
