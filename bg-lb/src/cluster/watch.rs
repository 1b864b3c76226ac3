//! Following the fleet state: the etcd thread reads its key every
//! [`POLL`] and hands each new revision to the daemon's event loop.
//!
//! A poll rather than an etcd watch stream: the state is one small key, a
//! read every 200 ms costs etcd nothing, and a poll has no stream to resume
//! after etcd restarts or compacts, where a watch must reconnect from the
//! right revision. Either way a host applies a change well within 1 s.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use super::etcd::Etcd;

pub const POLL: Duration = Duration::from_millis(200);

/// The fleet state as etcd holds it at `revision` (the key's mod revision);
/// revision 0 and no value when someone deleted the key.
#[derive(Debug)]
pub struct FleetUpdate {
    pub revision: i64,
    pub value: Vec<u8>,
}

/// Polls `key` until the daemon stops listening. Logs when etcd stops and
/// starts answering (the hosts forward on with their last state meanwhile),
/// and keeps `answers` for `status`.
pub async fn run(etcd: Etcd, key: String, updates: mpsc::UnboundedSender<FleetUpdate>, answers: Arc<AtomicBool>) {
    let mut seen = None;
    let mut reachable = true;
    loop {
        match etcd.get(&key).await {
            Ok((_, kv)) => {
                if !reachable {
                    tracing::info!(etcd = %etcd.endpoints(), "etcd answers again: fleet changes are accepted");
                    reachable = true;
                }
                let (revision, value) = kv.map_or((0, Vec::new()), |kv| (kv.mod_revision, kv.value));
                if seen.unwrap_or(0) != revision && updates.send(FleetUpdate { revision, value }).is_err() {
                    return;
                }
                seen = Some(revision);
            }
            Err(error) if reachable => {
                tracing::warn!(
                    %error,
                    "forwarding goes on with the last fleet state; changes are refused until etcd answers"
                );
                reachable = false;
            }
            Err(_) => {}
        }
        answers.store(reachable, Ordering::Relaxed);
        if updates.is_closed() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}
