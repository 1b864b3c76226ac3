//! Flow-table housekeeping, judged without the kernel: which flows have
//! expired (closed and idle ones, with their reverse-NAT entries), which
//! entries are orphans of a NAT state that came apart, and how many flows
//! each backend still has, open or embryonic, which is what "drained"
//! means. [`crate::dataplane::sweep`] reads the maps a slice at a time,
//! asks [`judge`] about each slice, and removes what it returns.
//!
//! One NAT state: a flow and the reverse-NAT entry of its (backend, SNAT
//! port) belong together. FLOWS is an LRU, so a flow may be evicted and
//! leave its reverse entry behind; a service removed, or a backend id that
//! now names another backend (its generation changed), leaves flows that
//! can no longer be forwarded. The sweep removes both kinds of orphan,
//! except reverse entries of backends still in the data plane: those are
//! the data plane's to reuse ([`bg_lb_common::port_reuse`]), which treats
//! an entry whose flow is gone as a free port. It changes such an entry by
//! a compare-and-swap, which a delete from here could undo under it (a
//! delete after a re-check still races a takeover between the two), so the
//! sweep never deletes an entry the data plane may be taking over. A `dsr`
//! flow has no reverse entry (nor SNAT address): it is never one. A UDP
//! flow's entry goes with it, and a UDP orphan goes whatever its backend:
//! the UDP path claims only free pairs, so nothing else would free them.
//! (A TCP connection may take a UDP orphan over between the re-check and
//! the delete; it then claims its pair again on its next packet, as the
//! sweep moves the NAT epoch.)

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use bg_lb_common::{
    flow_state::{BACKEND_CLOSED_FIRST, FlowPhase, GUARDS_TIME_WAIT, has_ended, phase},
    maps::{BackendOf, FlowKeyOf, FlowOf, IPPROTO_UDP, NatKeyOf, Service, WireAddr},
    port_reuse::{TIME_WAIT_NS, newer_flow_guards},
};
use nix::time::{ClockId, clock_gettime};

use super::wire::Wire;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// An established flow with no packet for this long is gone.
    pub established_idle: Duration,
    /// An ended flow (FIN both ways or RST) lingers this long for stragglers.
    pub closing: Duration,
    /// A flow whose client has not completed the handshake.
    pub syn: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Closed,
    Idle,
    HandshakeTimedOut,
}

/// Whether `flow` should be removed at `now_ns` (CLOCK_MONOTONIC, the clock
/// of `bpf_ktime_get_ns`). A closed flow whose backend closed first stays
/// until its backend's TIME_WAIT is surely over, whatever `closing` says:
/// it records what that TIME_WAIT accepts, so that its port goes only to a
/// SYN the backend accepts (`port_reuse`), and a new connection takes its
/// port over as soon as one does, which removes it.
pub fn expiry<A: WireAddr>(flow: &FlowOf<A>, now_ns: u64, timeouts: &FlowTimeouts) -> Option<Expiry> {
    if guards(flow, now_ns) {
        return None;
    }
    let idle = Duration::from_nanos(now_ns.saturating_sub(flow.last_seen_ns));
    let (timeout, expiry) = match phase(flow.state) {
        FlowPhase::Closed if flow.state & BACKEND_CLOSED_FIRST != 0 => {
            (timeouts.closing.max(Duration::from_nanos(TIME_WAIT_NS)), Expiry::Closed)
        }
        FlowPhase::Closed => (timeouts.closing, Expiry::Closed),
        FlowPhase::Embryonic => (timeouts.syn, Expiry::HandshakeTimedOut),
        FlowPhase::Established | FlowPhase::Closing => (timeouts.established_idle, Expiry::Idle),
    };
    (idle >= timeout).then_some(expiry)
}

/// Whether `flow` is an ended flow that still keeps an older pair of its
/// 5-tuple from being taken over (`flow_state::GUARDS_TIME_WAIT`): it stays
/// until [`newer_flow_guards`] says that pair's TIME_WAIT is over, whether
/// it expired or a new connection took its own pair over.
fn guards<A: WireAddr>(flow: &FlowOf<A>, now_ns: u64) -> bool {
    has_ended(flow.state) && flow.state & GUARDS_TIME_WAIT != 0 && newer_flow_guards(flow, now_ns)
}

/// Whether a UDP flow of `service` should be removed at `now_ns`: it has
/// seen no datagram either way for the service's `udp_idle`. UDP has no
/// end the data plane could see, so this is how every UDP flow ends.
pub fn udp_expiry<A: WireAddr>(flow: &FlowOf<A>, now_ns: u64, service: &Service) -> Option<Expiry> {
    let idle = Duration::from_nanos(now_ns.saturating_sub(flow.last_seen_ns));
    (idle >= Duration::from_secs(service.udp_idle_s.into())).then_some(Expiry::Idle)
}

pub fn monotonic_now_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Flow-table entries after a sweep, per backend id (and per service id).
#[derive(Debug, Default)]
pub struct FlowCensus {
    /// Established or closing: connections a drain waits for.
    pub open: HashMap<u32, u64>,
    /// Handshake not completed by the client.
    pub embryonic: HashMap<u32, u64>,
    /// Every entry that stays, closed ones included.
    pub total: HashMap<u32, u64>,
    /// Every entry that stays, per service id.
    pub per_service: HashMap<u32, u64>,
    /// SNAT (address, port) pairs the flows that stay hold, per backend
    /// address: its reverse-NAT entries. A backend in two services (or
    /// behind a VIP and a standby VIP) has one budget of pairs.
    pub snat_pairs: HashMap<SocketAddr, u64>,
    pub expired: u64,
    /// Flows and reverse-NAT entries removed as orphans.
    pub orphans: u64,
}

impl FlowCensus {
    pub fn open_of(&self, backend_id: u32) -> u64 {
        self.open.get(&backend_id).copied().unwrap_or(0)
    }

    pub fn embryonic_of(&self, backend_id: u32) -> u64 {
        self.embryonic.get(&backend_id).copied().unwrap_or(0)
    }

    pub fn total_of(&self, backend_id: u32) -> u64 {
        self.total.get(&backend_id).copied().unwrap_or(0)
    }

    pub fn snat_pairs_of(&self, backend: SocketAddr) -> u64 {
        self.snat_pairs.get(&backend).copied().unwrap_or(0)
    }

    pub fn total_of_service(&self, service_id: u32) -> u64 {
        self.per_service.get(&service_id).copied().unwrap_or(0)
    }

    /// Adds `other`'s counts: a sweep judges its table a slice at a time.
    pub fn absorb(&mut self, other: FlowCensus) {
        // Destructured, so a new field cannot be forgotten here.
        let FlowCensus {
            open,
            embryonic,
            total,
            per_service,
            snat_pairs,
            expired,
            orphans,
        } = other;
        for (mine, theirs) in [
            (&mut self.open, open),
            (&mut self.embryonic, embryonic),
            (&mut self.total, total),
            (&mut self.per_service, per_service),
        ] {
            for (id, n) in theirs {
                *mine.entry(id).or_default() += n;
            }
        }
        for (backend, n) in snat_pairs {
            *self.snat_pairs.entry(backend).or_default() += n;
        }
        self.expired += expired;
        self.orphans += orphans;
    }
}

/// A flow to remove, as judged: it is removed only if the map still holds
/// this flow (a client may have reused the 5-tuple meanwhile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRemoval<A: WireAddr> {
    pub key: FlowKeyOf<A>,
    pub flow: FlowOf<A>,
    /// Its reverse-NAT entry, removed with it if it still names the flow:
    /// when its service is gone, or it is a UDP flow (the data plane never
    /// takes a UDP pair over, so nothing else frees it). `None` when the
    /// flow does not own one, or it is a TCP flow whose backend is still in
    /// the data plane, which reuses the port (see the module docs).
    pub reverse: Option<NatKeyOf<A>>,
    pub why: Removal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    Expired(Expiry),
    /// Its service is no longer in the data plane.
    ServiceGone,
    /// Its backend id is free or names another backend now.
    BackendGone,
    /// Its (backend, SNAT port) is not its own: the reverse entry is gone or
    /// names another flow.
    NatLost,
    /// It has ended and a new connection took its SNAT port over: the
    /// normal end of a closed flow, not an orphan.
    PortReused,
}

/// What a sweep decided.
#[derive(Debug)]
pub struct Sweep<A: WireAddr> {
    pub census: FlowCensus,
    pub flows: Vec<FlowRemoval<A>>,
    /// Reverse-NAT entries of backends no longer in the data plane whose
    /// flow is gone or pinned elsewhere, with the owner they named: removed
    /// only if that still holds when re-checked ([`owns`]).
    pub orphan_reverse: Vec<(NatKeyOf<A>, FlowKeyOf<A>)>,
}

impl<A: WireAddr> Default for Sweep<A> {
    fn default() -> Self {
        Self {
            census: FlowCensus::default(),
            flows: Vec::new(),
            orphan_reverse: Vec::new(),
        }
    }
}

/// The (backend, SNAT address and port) `flow` was pinned to, if its backend id still
/// names the backend it was pinned to.
pub fn pinned_nat<A: WireAddr>(flow: &FlowOf<A>, backend: Option<&BackendOf<A>>) -> Option<NatKeyOf<A>> {
    backend
        .filter(|b| b.generation == flow.backend_gen && !b.is_free())
        .map(|b| flow.nat_key(b))
}

/// Whether `flow` (with its backend id's current entry) owns `nat`: the
/// re-check before an orphan reverse entry is removed.
pub fn owns<A: WireAddr>(flow: Option<&FlowOf<A>>, backend: Option<&BackendOf<A>>, nat: &NatKeyOf<A>) -> bool {
    flow.is_some_and(|flow| pinned_nat(flow, backend).as_ref() == Some(nat))
}

/// Who owns each reverse-NAT entry: REVERSE_NAT as one walk read it,
/// before the flows, corrected where a lookup found it stale
/// ([`slice_owners`]), or a slice's part of it. foldhash, not the default
/// SipHash (a fifth of the sweeper's time): keys the kernel wrote need no
/// flood resistance.
pub type Owners<A> = HashMap<NatKeyOf<A>, FlowKeyOf<A>, foldhash::fast::RandomState>;

/// The owners of the pairs a slice of flows is pinned to.
#[derive(Debug, PartialEq, Eq)]
pub struct SliceOwners<A: WireAddr> {
    /// Each pinned pair's entry, for [`judge`].
    pub reverse: Vec<(NatKeyOf<A>, FlowKeyOf<A>)>,
    /// The pairs a flow of the slice owns: no orphans.
    pub owned: Vec<NatKeyOf<A>>,
}

/// The owners of the pairs `slice`'s flows are pinned to: `snapshot`'s
/// where it names the flow itself, else what `lookup` (the map now)
/// answers, which also corrects `snapshot` before any flow of the slice
/// reads it. Two flows of a slice may name one pair: an ended flow, and the
/// flow that took its pair over after the snapshot. Both must be judged by
/// the pair's owner now, or the live one would seem to have lost its pair
/// and be removed. A stale entry that names the flow itself (its pair
/// taken over since by a flow of a later slice) only keeps an ended flow
/// one sweep longer, and every removal re-checks the map.
pub fn slice_owners<A: Wire, E>(
    slice: &[(FlowKeyOf<A>, FlowOf<A>)],
    backends: &HashMap<u32, BackendOf<A>>,
    snapshot: &mut Owners<A>,
    mut lookup: impl FnMut(&NatKeyOf<A>) -> Result<Option<FlowKeyOf<A>>, E>,
) -> Result<SliceOwners<A>, E> {
    let pinned: Vec<(FlowKeyOf<A>, NatKeyOf<A>)> = slice
        .iter()
        .filter_map(|(key, flow)| pinned_nat(flow, backends.get(&flow.backend_id)).map(|nat| (*key, nat)))
        .collect();
    // Looked up in this slice already: as fresh as the map.
    let mut fresh = HashSet::new();
    for (key, nat) in &pinned {
        if snapshot.get(nat) != Some(key) && fresh.insert(*nat) {
            match lookup(nat)? {
                Some(owner) => snapshot.insert(*nat, owner),
                None => snapshot.remove(nat),
            };
        }
    }
    let mut owners = SliceOwners {
        reverse: Vec::with_capacity(pinned.len()),
        owned: Vec::new(),
    };
    for (key, nat) in pinned {
        if let Some(owner) = snapshot.get(&nat) {
            owners.reverse.push((nat, *owner));
            if *owner == key {
                owners.owned.push(nat);
            }
        }
    }
    Ok(owners)
}

/// Judges every flow and reverse-NAT entry at `now_ns`. `flows` must be read
/// before `reverse` and `backends` (a flow's reverse entry and backend exist
/// before it does), and `services` are the services in the data plane by id.
pub fn judge<A: Wire>(
    flows: impl IntoIterator<Item = (FlowKeyOf<A>, FlowOf<A>)>,
    reverse: impl IntoIterator<Item = (NatKeyOf<A>, FlowKeyOf<A>)>,
    backends: &HashMap<u32, BackendOf<A>>,
    services: &HashMap<u32, Service>,
    now_ns: u64,
    timeouts: &FlowTimeouts,
) -> Sweep<A> {
    let owners: Owners<A> = reverse.into_iter().collect();
    let mut sweep = Sweep::default();
    // Every judged flow's own (backend, SNAT port), kept or not: their
    // reverse entries are no orphans (a removal takes them along).
    let mut owned: HashMap<FlowKeyOf<A>, NatKeyOf<A>, foldhash::fast::RandomState> = HashMap::default();
    for (key, flow) in flows {
        let nat = pinned_nat(&flow, backends.get(&flow.backend_id));
        let owns_nat = nat.is_some_and(|nat| owners.get(&nat) == Some(&key));
        if owns_nat && let Some(nat) = nat {
            owned.insert(key, nat);
        }
        let service = services.get(&flow.service_id);
        let why = if service.is_none() {
            Some(Removal::ServiceGone)
        } else if nat.is_none() {
            Some(Removal::BackendGone)
        } else if !owns_nat && flow.has_reply_path() {
            // Another flow owns the port: after this one ended, a new
            // connection took it over.
            let reused = has_ended(flow.state) && nat.is_some_and(|nat| owners.contains_key(&nat));
            match (reused, guards(&flow, now_ns)) {
                (true, true) => None,
                (true, false) => Some(Removal::PortReused),
                _ => Some(Removal::NatLost),
            }
        } else {
            match service {
                Some(service) if key.proto == IPPROTO_UDP => udp_expiry(&flow, now_ns, service),
                _ => expiry(&flow, now_ns, timeouts),
            }
            .map(Removal::Expired)
        };
        if let Some(why) = why {
            let reverse = nat.filter(|_| owns_nat && (why == Removal::ServiceGone || key.proto == IPPROTO_UDP));
            sweep.flows.push(FlowRemoval {
                key,
                flow,
                reverse,
                why,
            });
            continue;
        }
        let census = &mut sweep.census;
        if let Some(nat) = nat.filter(|_| owns_nat && flow.holds_snat_pair()) {
            *census
                .snat_pairs
                .entry(A::socket(nat.backend_addr, nat.backend_port))
                .or_default() += 1;
        }
        *census.total.entry(flow.backend_id).or_default() += 1;
        *census.per_service.entry(flow.service_id).or_default() += 1;
        match phase(flow.state) {
            FlowPhase::Embryonic => *census.embryonic.entry(flow.backend_id).or_default() += 1,
            p if p.is_open() => *census.open.entry(flow.backend_id).or_default() += 1,
            _ => {}
        }
    }
    let live: HashSet<(A, u16)> = backends
        .values()
        .filter(|b| !b.is_free())
        .map(|b| (b.addr, b.port))
        .collect();
    sweep.orphan_reverse = owners
        .into_iter()
        .filter(|(nat, owner)| {
            owned.get(owner) != Some(nat)
                && (owner.proto == IPPROTO_UDP || !live.contains(&(nat.backend_addr, nat.backend_port)))
        })
        .collect();
    let expired = |r: &&FlowRemoval<A>| matches!(r.why, Removal::Expired(_) | Removal::PortReused);
    sweep.census.expired = sweep.flows.iter().filter(expired).count() as u64;
    sweep.census.orphans = (sweep.flows.len() - sweep.census.expired as usize + sweep.orphan_reverse.len()) as u64;
    sweep
}

#[cfg(test)]
mod tests;
