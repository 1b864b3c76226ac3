//! Health checks: a rise/fall state machine (HAProxy semantics) and the TCP,
//! HTTP and UDP probes that feed it. Probes are sourced from the SNAT address so
//! they take the same path as forwarded traffic (and keep the backends'
//! neighbour entries resolved, which the XDP fast path needs).

//! # Layout
//! - `outcome`: what one check found ([`Outcome`], [`Failure`]).
//! - `tracker`: rise/fall tracking that turns outcomes into up or down.
//! - `probe`: the probe task, its identity ([`CheckKey`]) and what it
//!   reports, and the TCP connect.
//! - `http`: the HTTP check's request and how its response is judged.
//! - `udp`: the UDP check's request datagram and how its reply is judged.

mod http;
mod outcome;
mod probe;
mod tracker;
mod udp;

pub(crate) use http::get as http_get;
pub use http::judge_response;
pub use outcome::{Failure, Outcome};
pub use probe::{CheckKey, Listener, Report, first_check_delay, spawn_probe};
pub use tracker::{Tracker, Transition};
