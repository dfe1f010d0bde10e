//! Poll-mode drivers and the core runtime of vnfhost.
pub mod frame;
pub use frame::VlanEdit;
