//! What hosts share besides the operator state, all tied to each host's
//! etcd lease so that it vanishes [`LEASE_TTL`] after the host does:
//!
//! - `PREFIX/shift-lead/SERVICE`: the host that drives the service's
//!   shift. A host takes it with a create-if-absent transaction under its
//!   lease (etcd's own election recipe); when the leader dies its lease
//!   expires, the key goes, and the next host to ask takes over from the
//!   step recorded in the fleet state.
//! - `PREFIX/hosts/HOST/counters`: the host's per-pool connection counters,
//!   so the leader judges a shift on the whole fleet's traffic.

use std::{
    collections::BTreeMap,
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
use crate::shift::PoolCounters;

/// A dead host's lead and counters outlive it by at most this.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// Per service, the blue and green counters of one host.
pub type HostCounters = BTreeMap<String, [PoolCounters; 2]>;

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

    /// Publishes this host's counters under its lease, without waiting.
    pub fn publish(&self, counters: &HostCounters) {
        let lease = self.lease.load(Ordering::Relaxed);
        if lease == 0 {
            return;
        }
        let key = format!("{}/hosts/{}/counters", self.prefix, self.host);
        let (etcd, value) = (
            self.etcd.clone(),
            serde_json::to_vec(counters).expect("counters serialize"),
        );
        self.worker.detach(async move {
            if let Err(error) = etcd.put(&key, &value, lease).await {
                tracing::debug!(%error, "counters not published");
            }
        });
    }

    /// The other hosts' counters of `service`, summed (theirs as last
    /// published: at most a second old).
    pub fn others_counters(&self, service: &str) -> Result<[PoolCounters; 2], StoreError> {
        self.answering()?;
        let (etcd, prefix) = (self.etcd.clone(), format!("{}/hosts/", self.prefix));
        let kvs = self.call(async move { etcd.list(&prefix).await })?;
        let own = format!("{}/hosts/{}/counters", self.prefix, self.host);
        let mut sum = [PoolCounters::default(); 2];
        let others = kvs
            .iter()
            .filter(|kv| kv.key.ends_with(b"/counters") && kv.key != own.as_bytes())
            .filter_map(|kv| serde_json::from_slice::<HostCounters>(&kv.value).ok());
        for host in others {
            for (total, pool) in sum.iter_mut().zip(host.get(service).into_iter().flatten()) {
                *total = total.plus(pool);
            }
        }
        Ok(sum)
    }

    fn lead_key(&self, service: &str) -> String {
        format!("{}/shift-lead/{service}", self.prefix)
    }
}
