//! The two ways a guest ends itself: the i8042 controller's reset line (what Firecracker
//! guests use with `reboot=k`) and the ACPI power port described in the FADT (sleep
//! control: `_S5` powers off; reset register).

use super::Action;
use crate::acpi;

/// The i8042 command port.
pub const I8042_CMD: u16 = 0x64;
/// The i8042 data port.
pub const I8042_DATA: u16 = 0x60;

/// Handles a write to the i8042 ports.
pub fn i8042_write(port: u16, value: u8) -> Action {
    if port == I8042_CMD && value == 0xfe {
        Action::Reset
    } else {
        Action::None
    }
}

/// Reads from the i8042 ports: an empty controller, no keyboard.
pub fn i8042_read(_port: u16) -> u8 {
    0
}

/// Handles a write to the ACPI power port.
pub fn power_write(value: u8) -> Action {
    if value == acpi::RESET_VALUE {
        return Action::Reset;
    }
    if value & acpi::SLP_EN != 0 && (value >> 2) & 0x7 == acpi::S5_SLP_TYP {
        return Action::PowerOff;
    }
    Action::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_and_poweroff_values() {
        assert_eq!(i8042_write(I8042_CMD, 0xfe), Action::Reset);
        assert_eq!(i8042_write(I8042_CMD, 0xad), Action::None);
        assert_eq!(i8042_write(I8042_DATA, 0xfe), Action::None);
        assert_eq!(power_write(5 << 2 | acpi::SLP_EN), Action::PowerOff);
        assert_eq!(power_write(5 << 2), Action::None);
        assert_eq!(power_write(acpi::RESET_VALUE), Action::Reset);
    }
}
