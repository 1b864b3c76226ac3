//! The host's etcd lease, and the shift lead that hangs on it.
//!
//! `PREFIX/shift-lead/SERVICE` names the host that drives the service's
//! shift. A host takes it with a create-if-absent transaction under its
//! lease (etcd's own election recipe); when the leader dies its lease
//! expires [`LEASE_TTL`] later, the key goes, and the next host to ask takes
//! over from the step recorded in the fleet state. The host's report
//! ([`super::report`]) hangs on the same lease.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use super::{
    etcd::Etcd,
    store::{Fleet, StoreError},
};

/// A dead host's lead and report outlive it by at most this.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// Grants the host's lease and keeps it alive; `lease` holds its id, 0
/// while there is none (never granted yet, or expired while etcd was
/// away: what hung on it is gone, and a new one is granted).
pub async fn keep_lease(etcd: Etcd, lease: Arc<AtomicI64>) {
    loop {
        let id = lease.load(Ordering::Relaxed);
        let next = if id == 0 {
            etcd.grant(LEASE_TTL).await.ok()
        } else {
            match etcd.keep_alive(id).await {
                Ok(true) => Some(id),
                Ok(false) => {
                    tracing::warn!(
                        lease = id,
                        "this host's etcd lease expired: its shift lead, if any, is lost"
                    );
                    Some(0)
                }
                Err(_) => None,
            }
        };
        if let Some(next) = next {
            lease.store(next, Ordering::Relaxed);
        }
        tokio::time::sleep(LEASE_TTL / 3).await;
    }
}

impl Fleet {
    /// Whether this host leads `service`'s shift now, taking the lead if no
    /// host has it.
    pub fn lead(&self, service: &str) -> Result<bool, StoreError> {
        self.answering()?;
        let lease = self.lease.load(Ordering::Relaxed);
        if lease == 0 {
            return Ok(false);
        }
        let (etcd, key, host) = (self.etcd.clone(), self.lead_key(service), self.host.clone());
        self.call(async move { etcd.create_or_hold(&key, host.as_bytes(), lease).await })
    }

    /// Gives up the lead of `service`'s shift (its shift is over), if held.
    pub fn step_down(&self, service: &str) {
        let (etcd, key, host) = (self.etcd.clone(), self.lead_key(service), self.host.clone());
        self.worker.detach(async move {
            if let Err(error) = etcd.delete_if_value(&key, host.as_bytes()).await {
                tracing::warn!(%error, key, "shift lead not released; it goes with this host's lease");
            }
        });
    }

    fn lead_key(&self, service: &str) -> String {
        format!("{}/shift-lead/{service}", self.prefix)
    }
}
