//! Each host's report, `PREFIX/hosts/HOST`, published every second under
//! the host's lease (so a dead host's report goes with it): its per-pool
//! connection counters, which the shift leader sums to judge a shift on the
//! whole fleet's traffic, and its view of its backends' health, which
//! `status` compares with the other hosts' (hosts do not vote on health:
//! see docs/deploy.md, "Health across hosts").

use std::{collections::BTreeMap, net::SocketAddr, sync::atomic::Ordering};

use serde::{Deserialize, Serialize};

use super::store::{Fleet, StoreError};
use crate::shift::{CountersByHost, PoolCounters};

/// Per service, the blue and green counters of one host.
pub type HostCounters = BTreeMap<String, [PoolCounters; 2]>;
/// Per service, whether each checked backend's live check is up.
pub type HostHealth = BTreeMap<String, BTreeMap<SocketAddr, bool>>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub counters: HostCounters,
    pub health: HostHealth,
}

impl Fleet {
    /// Publishes this host's report under its lease, without waiting.
    pub fn publish(&self, report: &HostReport) {
        let lease = self.lease.load(Ordering::Relaxed);
        if lease == 0 {
            return;
        }
        let key = self.report_key(&self.host);
        let (etcd, value) = (
            self.etcd.clone(),
            serde_json::to_vec(report).expect("reports serialize"),
        );
        self.worker.detach(async move {
            if let Err(error) = etcd.put(&key, &value, lease).await {
                tracing::debug!(%error, "host report not published");
            }
        });
    }

    /// The other live hosts' reports, by host name (at most a second old).
    pub fn others(&self) -> Result<BTreeMap<String, HostReport>, StoreError> {
        self.answering()?;
        let (etcd, prefix) = (self.etcd.clone(), self.report_key(""));
        let kvs = self.call(async move { etcd.list(&prefix).await })?;
        let prefix = self.report_key("");
        Ok(kvs
            .into_iter()
            .filter_map(|kv| {
                let host = String::from_utf8(kv.key).ok()?.strip_prefix(&prefix)?.to_owned();
                let report = serde_json::from_slice(&kv.value).ok()?;
                (host != self.host).then_some((host, report))
            })
            .collect())
    }

    /// The other live hosts' counters of `service`, by host.
    pub fn others_counters(&self, service: &str) -> Result<CountersByHost, StoreError> {
        Ok(self
            .others()?
            .into_iter()
            .filter_map(|(host, report)| Some((host, *report.counters.get(service)?)))
            .collect())
    }

    /// The host's name in the fleet.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn report_key(&self, host: &str) -> String {
        format!("{}/hosts/{host}", self.prefix)
    }
}

/// Where another host's view of a backend this host checks differs from
/// this host's: `"web 10.0.1.11:8080: up here, down on lb2"`.
pub fn health_differences(own: &HostHealth, others: &BTreeMap<String, HostReport>) -> Vec<String> {
    let word = |up: bool| if up { "up" } else { "down" };
    let mut differences = Vec::new();
    for (service, backends) in own {
        for (backend, &up) in backends {
            for (host, report) in others {
                if let Some(&theirs) = report.health.get(service).and_then(|b| b.get(backend))
                    && theirs != up
                {
                    differences.push(format!(
                        "{service} {backend}: {} here, {} on {host}",
                        word(up),
                        word(theirs)
                    ));
                }
            }
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_seen_otherwise_by_another_host_is_named_with_both_views() {
        let a: SocketAddr = "10.0.1.11:8080".parse().unwrap();
        let b: SocketAddr = "10.0.1.12:8080".parse().unwrap();
        let own = HostHealth::from([("web".into(), BTreeMap::from([(a, true), (b, true)]))]);
        let report = |health: &[(SocketAddr, bool)]| HostReport {
            counters: HostCounters::new(),
            health: HostHealth::from([("web".into(), health.iter().copied().collect())]),
        };
        let others = BTreeMap::from([
            ("lb2".to_owned(), report(&[(a, false), (b, true)])),
            // A host that has not checked b yet says nothing of it.
            ("lb3".to_owned(), report(&[(a, true)])),
        ]);
        assert_eq!(
            health_differences(&own, &others),
            ["web 10.0.1.11:8080: up here, down on lb2"]
        );
        assert!(health_differences(&own, &BTreeMap::new()).is_empty());
    }
}
