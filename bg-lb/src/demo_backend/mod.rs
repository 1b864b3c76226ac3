//! The reference backend: a tiny HTTP/1.1 app server for bg-lb's demo, its
//! end-to-end tests and anyone trying bg-lb out.
//!
//! It follows the datacenter blue-green convention: every app instance serves
//! `GET /live` and `GET /standby`; exactly one of them answers 200 (the other
//! 500), and `POST /enable/live` / `POST /enable/standby` switch which.
//!
//! # Boundary
//! A reference app, not part of the load balancer: it uses nothing of bg-lb
//! beyond what any real backend sees (TCP connections and HTTP requests), and
//! bg-lb uses nothing of it beyond [`DemoBackendArgs`] and [`run`], which the
//! `demo-backend` subcommand calls.
//!
//! # Layout
//! - `args`: the command line, the [`Role`] and the app config they give.
//! - `app`: the HTTP endpoints and the role state they share.
//! - `serve`: the accept loop, serving one connection, graceful shutdown.
//! - `echo`: the optional raw TCP echo port.
//! - `fault`: fault injection (resetting a share of HTTP connections).
//!
//! # Endpoints
//! Every response carries `X-Backend: NAME`, so a client behind the load
//! balancer can tell which instance answered.
//! - `GET /`: 200 with one line of JSON,
//!   `{"name":…,"version":…,"role":"live"|"standby","requests":N}`, where N
//!   counts the requests this process has served on any endpoint, this one
//!   included.
//! - `GET /live`, `GET /standby`: 200 when the instance has that role, else
//!   500; the body is the current role either way (`live\n` or `standby\n`).
//! - `POST /enable/live`, `POST /enable/standby`: switch the role; the body
//!   is the new role.
//! - `GET /slow?ms=N`: the JSON of `/` after N milliseconds (at most ten
//!   minutes), for exercising connection draining. A bad or missing `ms` is a
//!   400.
//! - Unknown paths are 404; a known path with the wrong method is 405 (`GET`
//!   endpoints also accept `HEAD`).
//!
//! # Echo port
//! With `--echo-listen`, a raw TCP port echoes every byte back until the
//! client closes: a long-lived connection whose pinning to one backend a test
//! can watch across ratio changes.
//!
//! # Fault injection
//! `--fail-percent P` resets P% of accepted HTTP connections (SO_LINGER 0,
//! then close) instead of serving them, so rollout tests can watch a bad
//! release fail its way out.
//!
//! # Shutdown
//! When shutdown begins the listeners close at once, so new connections are
//! refused. Idle keep-alive connections close; one in the middle of a request
//! finishes that response and then closes. `serve` returns when the last
//! one has, or after `GRACE_PERIOD` (30 s), whichever is first. Echo connections
//! are not drained: they keep echoing until the client closes or the process
//! exits, which is the point of a long-lived test connection.

mod app;
mod args;
mod echo;
mod fault;
mod serve;
#[cfg(test)]
mod test_client;

pub use args::{DemoBackendArgs, Role};
pub use serve::run;
