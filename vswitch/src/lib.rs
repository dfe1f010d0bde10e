//! Switching logic of vnfhost.
