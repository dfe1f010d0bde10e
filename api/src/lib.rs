//! vnfhost's typed API: what crosses a process boundary, and nothing else.
//!
//! - [`values`]: MAC, VLAN id and VLAN mode, IP prefixes; each parses and prints in one
//!   text form, and a bad value is refused when it is deserialized.
//! - [`switch`]: the switch's typed spec ([`switch::SwitchSpec`]), what the daemon (or
//!   `vnfhost switch` on the command line) gives the switch, and its counters and per-port
//!   state.
//!
//! Every structure refuses unknown fields, so a misspelt field is an error that names it,
//! never a silently ignored setting.
#![forbid(unsafe_code)]

pub mod switch;
pub mod values;

pub use values::{Mac, Prefix, VlanId, VlanMode, VlanRange};
