//! Several hosts, one operator state (`[cluster]`).
//!
//! Ratio, weights, enabled backends and shifts live in one etcd key,
//! `PREFIX/state`: `bg-lb ctl` on any host writes it through its daemon
//! (a compare-and-swap on the revision that host last saw, so two hosts
//! changing at once cannot lose a change silently), and every daemon polls
//! it and applies a new revision within a second. Each host keeps a copy
//! in its `state_dir` to start from when etcd is away; `ctl node drain` is
//! the host's own and stays there.
//!
//! Without `[cluster]` the same [`store::StateStore`] keeps the state in
//! `state_dir` alone, so the operator path is the same code on one host and
//! on many.
//!
//! - [`etcd`]: the etcd v3 client (JSON gateway over hyper, and why).
//! - [`worker`]: the thread the etcd calls run on.
//! - [`store`]: the state store seam: local file or fleet in etcd.
//! - [`watch`]: following the fleet key.
//! - [`lead`]: the host's lease and the shift lead.
//! - [`report`]: each host's counters and health view, published for the
//!   others.

pub mod etcd;
pub mod lead;
pub mod report;
pub mod store;
pub mod watch;
pub mod worker;
