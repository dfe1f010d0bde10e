//! vnfhost's typed API: what crosses a process boundary, and nothing else.
//!
//! - [`values`]: MAC, VLAN id and VLAN mode, IP prefixes; each parses and prints in one
//!   text form, and a bad value is refused when it is deserialized.
//! - [`switch`]: the switch's typed spec ([`switch::SwitchSpec`]), what the daemon (or
//!   `vnfhost switch` on the command line) gives the switch, and its counters and per-port
//!   state.
//! - [`http`]: the small HTTP/1.1 over Unix sockets that the daemon's API and the switch's
//!   control socket speak; [`http::call`] is the synchronous client.
//! - [`daemon`]: the daemon's API: its socket, the bodies of its requests and replies
//!   (topology, status, pod networks); [`attach`]: its attachments (CNI ports).
//!
//! Every structure refuses unknown fields, so a misspelt field is an error that names it,
//! never a silently ignored setting.
#![forbid(unsafe_code)]

pub mod switch;
pub mod values;

pub mod attach;
pub mod daemon;
pub mod http;

pub use values::{Mac, Prefix, VlanId, VlanMode, VlanRange};
