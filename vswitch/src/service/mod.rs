//! The switch as a service, configured by one typed [`api::switch::SwitchSpec`].
//!
//! - [`spec`]: checks a spec and turns it into the runtime's types; refusals name the
//!   field in the spec's words.
//! - [`managed`]: [`Managed`](managed::Managed) follows a spec on a running
//!   [`Switch`](crate::switch::Switch), applying only what changed, opening each port on
//!   its own (a port that cannot open is reported and retried, the rest applied).
//! - [`args`]: `vnfhost switch` options, a front end that produces the same spec.
//! - [`control`]: the control socket the daemon configures the switch through.
//!
//! The daemon's switch (`vnfhost switch --control SOCK`, configured over its control
//! socket) and the foreground `vnfhost switch --port …` take the same path: a spec,
//! [`Managed::apply`](managed::Managed::apply).

pub mod args;
pub mod control;
pub mod managed;
pub mod spec;
