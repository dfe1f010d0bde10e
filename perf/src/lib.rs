//! The forwarding benchmark harness of vnfhost.
//!
//! Not built yet: the harness (generator, RFC 2544 search, peers) is a later issue.
