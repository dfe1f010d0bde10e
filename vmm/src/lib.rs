//! The pod VM monitor of vnfhost.
//!
//! Not built yet: the KVM microVM monitor is the subject of a later issue. The guest
//! image builder used by the integration tests lives in `vmm/guest/`.
