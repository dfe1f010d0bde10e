//! Latency under load for vnfhost.
//!
//! Not built yet: percentiles at fractions of the zero-loss rate are a later issue.
