//! The state store: where operator decisions are kept. One seam for the
//! daemon's operator path, with two implementations: this host's
//! `state_dir` alone, or the fleet's key in etcd (with the `state_dir` copy
//! as a cache and the home of what is the host's own: `node drain`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
};

use tokio::sync::mpsc;

use super::{
    etcd::{Etcd, EtcdError},
    lead,
    watch::{self, FleetUpdate},
    worker::Worker,
};
use crate::{
    config::ClusterConfig,
    protocol::FleetStatus,
    state_file::{self, OperatorState, ServiceState, StateError},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Local(#[from] StateError),
    #[error("{0}; every host keeps forwarding with its last state, and changes are refused until etcd answers")]
    Etcd(#[source] EtcdError),
    #[error(
        "another host changed the fleet state in etcd at the same moment; this change was not applied: see `ctl \
         status` and retry"
    )]
    Conflict,
    #[error(
        "this host has not read the fleet state from etcd ({endpoints}) since it started; changes are refused until \
         etcd answers"
    )]
    NotRead { endpoints: String },
    #[error("etcd ({endpoints}) did not answer this host's last read")]
    Away { endpoints: String },
    #[error("the etcd thread is gone")]
    WorkerGone,
    #[error("etcd key {key} holds no bg-lb fleet state ({cause}); fix or delete it")]
    Corrupt { key: String, cause: serde_json::Error },
}

pub enum StateStore {
    /// `state_dir` alone: one host (no `[cluster]`).
    Local(PathBuf),
    Fleet(Box<Fleet>),
}

impl StateStore {
    /// The store for this config and the state to start from.
    pub fn open(state_dir: &Path, cluster: Option<&ClusterConfig>) -> Result<(Self, OperatorState), StoreError> {
        let local = state_file::load(state_dir)?;
        match cluster {
            None => Ok((StateStore::Local(state_dir.to_owned()), local)),
            Some(cluster) => {
                let (fleet, state) = Fleet::open(cluster, state_dir, local)?;
                Ok((StateStore::Fleet(Box::new(fleet)), state))
            }
        }
    }

    /// Persists `state`: with a fleet, its services go to etcd first (a
    /// refusal there changes nothing anywhere).
    pub fn save(&mut self, state: &OperatorState) -> Result<(), StoreError> {
        match self {
            StateStore::Local(dir) => Ok(state_file::save(dir, state)?),
            StateStore::Fleet(fleet) => fleet.save(state),
        }
    }

    pub fn fleet(&self) -> Option<&Fleet> {
        match self {
            StateStore::Local(_) => None,
            StateStore::Fleet(fleet) => Some(fleet),
        }
    }

    pub fn fleet_mut(&mut self) -> Option<&mut Fleet> {
        match self {
            StateStore::Local(_) => None,
            StateStore::Fleet(fleet) => Some(fleet),
        }
    }
}

/// The fleet's state in etcd, as this host last read or wrote it.
pub struct Fleet {
    pub(super) etcd: Etcd,
    pub(super) worker: Worker,
    pub(super) host: String,
    pub(super) prefix: String,
    /// The host's etcd lease (see [`lead::keep_lease`]); 0 while none.
    pub(super) lease: Arc<AtomicI64>,
    /// Whether etcd answered the watcher's last read.
    answers: Arc<AtomicBool>,
    key: String,
    state_dir: PathBuf,
    /// The key's mod revision this host last read or wrote; `None` until
    /// the first read (a change before it could undo others' changes).
    revision: Option<i64>,
    /// The key's value at `revision`: a save that does not change it (a
    /// node drain) does not write to etcd.
    stored: Vec<u8>,
    updates: Option<mpsc::UnboundedReceiver<FleetUpdate>>,
}

impl Fleet {
    /// Reads the fleet state, or seeds etcd with this host's if the fleet
    /// has none yet. If etcd is unreachable the host starts from its last
    /// copy and takes the fleet's state when etcd answers.
    pub fn open(
        cluster: &ClusterConfig,
        state_dir: &Path,
        local: OperatorState,
    ) -> Result<(Self, OperatorState), StoreError> {
        let worker = Worker::spawn().map_err(|e| {
            StoreError::Local(StateError::Io {
                path: state_dir.to_owned(),
                cause: e,
            })
        })?;
        let etcd = Etcd::new(&cluster.etcd);
        let key = format!("{}/state", cluster.prefix);
        let (tx, updates) = mpsc::unbounded_channel();
        let answers = Arc::new(AtomicBool::new(true));
        worker.detach(watch::run(etcd.clone(), key.clone(), tx, answers.clone()));
        let lease = Arc::new(AtomicI64::new(0));
        worker.detach(lead::keep_lease(etcd.clone(), lease.clone()));
        let mut fleet = Fleet {
            etcd,
            worker,
            host: cluster.host.clone(),
            prefix: cluster.prefix.clone(),
            lease,
            answers,
            key,
            state_dir: state_dir.to_owned(),
            revision: None,
            stored: Vec::new(),
            updates: Some(updates),
        };
        let mut state = local;
        match fleet.read_or_seed(&state) {
            Ok(Some(services)) => {
                state.services = services;
                state_file::save(state_dir, &state)?;
                tracing::info!(etcd = %fleet.etcd.endpoints(), key = %fleet.key, "fleet state read from etcd");
            }
            Ok(None) => tracing::info!(key = %fleet.key, "etcd had no fleet state: seeded it with this host's"),
            Err(StoreError::Etcd(error)) => tracing::warn!(
                %error,
                "starting from this host's last copy of the fleet state; the fleet's is applied once etcd answers"
            ),
            Err(e) => return Err(e),
        }
        Ok((fleet, state))
    }

    /// The fleet's services from etcd, or `None` after seeding etcd with
    /// `local`'s (the first host of a fleet).
    fn read_or_seed(&mut self, local: &OperatorState) -> Result<Option<BTreeMap<String, ServiceState>>, StoreError> {
        let etcd = self.etcd.clone();
        let key = self.key.clone();
        let (_, kv) = self.call(async move { etcd.get(&key).await })?;
        if let Some(kv) = kv {
            let services = self.decode(&kv.value)?;
            self.revision = Some(kv.mod_revision);
            self.stored = kv.value;
            return Ok(Some(services));
        }
        self.revision = Some(0);
        match self.save(local) {
            Ok(()) => Ok(None),
            // Another host seeded it first: take its.
            Err(StoreError::Conflict) => {
                self.revision = None;
                self.read_or_seed(local)
            }
            Err(e) => Err(e),
        }
    }

    fn save(&mut self, state: &OperatorState) -> Result<(), StoreError> {
        let value = fleet_value(state);
        if value != self.stored {
            let revision = self.revision.ok_or_else(|| StoreError::NotRead {
                endpoints: self.etcd.endpoints(),
            })?;
            let (etcd, key, bytes) = (self.etcd.clone(), self.key.clone(), value.clone());
            match self.call(async move { etcd.put_if_unchanged(&key, &bytes, revision).await })? {
                Some(written) => {
                    self.revision = Some(written);
                    self.stored = value;
                }
                None => return Err(StoreError::Conflict),
            }
        }
        // The host's copy: what it starts from while etcd is away.
        Ok(state_file::save(&self.state_dir, state)?)
    }

    /// The daemon's end of the watch; taken once.
    pub fn take_updates(&mut self) -> Option<mpsc::UnboundedReceiver<FleetUpdate>> {
        self.updates.take()
    }

    /// The fleet's services in `update` if it is newer than what this host
    /// has (its own writes come back too, and are skipped).
    pub fn accept(&mut self, update: FleetUpdate) -> Result<Option<BTreeMap<String, ServiceState>>, StoreError> {
        if update.revision == 0 {
            // Deleted: the hosts keep their state, and the next change
            // creates the key again.
            tracing::warn!(key = %self.key, "the fleet state was deleted from etcd; the next change writes it again");
            self.revision = Some(0);
            self.stored = Vec::new();
            return Ok(None);
        }
        if self.revision.is_some_and(|seen| update.revision <= seen) {
            return Ok(None);
        }
        let services = self.decode(&update.value)?;
        self.revision = Some(update.revision);
        self.stored = update.value;
        Ok(Some(services))
    }

    /// Fails at once while the watcher finds etcd away: the calls made
    /// every second (shift leads, counters) must not hold up the daemon's
    /// loop for a timeout each. An operator's change still tries etcd.
    pub(super) fn answering(&self) -> Result<(), StoreError> {
        if self.answers.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(StoreError::Away {
                endpoints: self.etcd.endpoints(),
            })
        }
    }

    /// What `status` shows; `leads`: the shifts this host drives;
    /// `health_differs`: backends other hosts see otherwise.
    pub fn status(&self, leads: Vec<String>, health_differs: Vec<String>) -> FleetStatus {
        FleetStatus {
            host: self.host.clone(),
            etcd: self.etcd.endpoints(),
            etcd_answers: self.answers.load(Ordering::Relaxed),
            revision: self.revision,
            leads,
            health_differs,
        }
    }

    /// Keeps the host's copy in line with a state taken from the fleet.
    pub fn cache(&self, state: &OperatorState) -> Result<(), StoreError> {
        Ok(state_file::save(&self.state_dir, state)?)
    }

    /// Runs an etcd call on the etcd thread and waits for it.
    pub(super) fn call<T: Send + 'static>(
        &self,
        call: impl Future<Output = Result<T, EtcdError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.worker
            .wait(call)
            .ok_or(StoreError::WorkerGone)?
            .map_err(StoreError::Etcd)
    }

    fn decode(&self, value: &[u8]) -> Result<BTreeMap<String, ServiceState>, StoreError> {
        serde_json::from_slice::<OperatorState>(value)
            .map(|state| state.services)
            .map_err(|cause| StoreError::Corrupt {
                key: self.key.clone(),
                cause,
            })
    }
}

/// What the fleet shares of `state`: its services, not the host's drain.
fn fleet_value(state: &OperatorState) -> Vec<u8> {
    let fleet = OperatorState {
        services: state.services.clone(),
        node_drained: false,
    };
    serde_json::to_vec(&fleet).expect("state serializes")
}
