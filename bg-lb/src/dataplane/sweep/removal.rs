//! Removing the entry a sweep judged, and never a newer one under its key.
//! A client may reuse the 5-tuple of an ended flow for a new connection at
//! any time, and the data plane then writes the new flow under the same
//! key; a new connection may take a reverse-NAT entry's pair over. A look
//! before the removal is not enough: the sweeper runs at a low priority and
//! may wait for a CPU between two calls, and a new flow removed there loses
//! its backend's SYN-ACK (`stale_reply`), so its client waits a second to
//! send the SYN again. So the removal itself returns what it removed, and
//! a newer entry goes back at once.

use std::io;

use bg_lb_common::maps::{FlowKeyOf, FlowOf, WireAddr};

/// The element commands a checked removal needs: the kernel's map, or a
/// test's stand-in.
pub trait Elements<K, V> {
    fn lookup(&self, key: &K) -> io::Result<Option<V>>;
    /// Removes `key` and returns what it held, in one step.
    fn lookup_and_delete(&self, key: &K) -> io::Result<Option<V>>;
    /// Inserts unless `key` is there; `false` if it was.
    fn insert_new(&self, key: &K, value: &V) -> io::Result<bool>;
}

/// Removes the flow under `key` if it is the one created at `created_ns`;
/// returns whether it did (see [`remove_if`]).
pub fn remove_flow_created_at<A: WireAddr>(
    flows: &impl Elements<FlowKeyOf<A>, FlowOf<A>>,
    key: &FlowKeyOf<A>,
    created_ns: u64,
) -> io::Result<bool> {
    remove_if(flows, key, |flow| flow.created_ns == created_ns)
}

/// Removes the entry under `key` if it is the one `judged` recognises;
/// returns whether it did. Another entry the removal took goes back,
/// unless a still newer one came in meanwhile: that one stays.
pub fn remove_if<K, V>(map: &impl Elements<K, V>, key: &K, judged: impl Fn(&V) -> bool) -> io::Result<bool> {
    // Looked at first, so that an entry replaced since the judgement is
    // seldom removed even for a moment.
    if !map.lookup(key)?.is_some_and(|value| judged(&value)) {
        return Ok(false);
    }
    match map.lookup_and_delete(key)? {
        Some(gone) if !judged(&gone) => {
            map.insert_new(key, &gone)?;
            Ok(false)
        }
        gone => Ok(gone.is_some()),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        collections::HashMap,
        net::{Ipv4Addr, SocketAddrV4},
    };

    use bg_lb_common::maps::{Flow, FlowKey};

    use super::*;

    /// A flow table whose 5-tuple a client reuses for a new connection
    /// (created at `reconnect`) right after the sweeper's look, if set.
    #[derive(Default)]
    struct Table {
        flows: RefCell<HashMap<FlowKey, Flow>>,
        reconnect: Option<u64>,
    }

    impl Elements<FlowKey, Flow> for Table {
        fn lookup(&self, key: &FlowKey) -> io::Result<Option<Flow>> {
            let found = self.flows.borrow().get(key).copied();
            if let Some(created_ns) = self.reconnect {
                self.flows.borrow_mut().insert(*key, flow(created_ns));
            }
            Ok(found)
        }

        fn lookup_and_delete(&self, key: &FlowKey) -> io::Result<Option<Flow>> {
            Ok(self.flows.borrow_mut().remove(key))
        }

        fn insert_new(&self, key: &FlowKey, value: &Flow) -> io::Result<bool> {
            let mut flows = self.flows.borrow_mut();
            if flows.contains_key(key) {
                return Ok(false);
            }
            flows.insert(*key, *value);
            Ok(true)
        }
    }

    fn key() -> FlowKey {
        FlowKey::from_client(
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 5), 40000),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80),
        )
    }

    fn flow(created_ns: u64) -> Flow {
        Flow {
            created_ns,
            ..Flow::default()
        }
    }

    fn table(created_ns: u64, reconnect: Option<u64>) -> Table {
        Table {
            flows: RefCell::new(HashMap::from([(key(), flow(created_ns))])),
            reconnect,
        }
    }

    #[test]
    fn the_judged_flow_is_removed() {
        let flows = table(10, None);
        assert!(remove_flow_created_at(&flows, &key(), 10).unwrap());
        assert!(flows.flows.borrow().is_empty());
    }

    #[test]
    fn a_newer_flow_of_the_5_tuple_found_by_the_look_stays() {
        let flows = table(20, None);
        assert!(!remove_flow_created_at(&flows, &key(), 10).unwrap());
        assert_eq!(flows.flows.borrow()[&key()].created_ns, 20);
    }

    #[test]
    fn a_new_connection_on_the_5_tuple_between_the_look_and_the_removal_keeps_its_flow() {
        let flows = table(10, Some(20));
        assert!(!remove_flow_created_at(&flows, &key(), 10).unwrap());
        assert_eq!(flows.flows.borrow()[&key()].created_ns, 20, "put back");
    }
}
