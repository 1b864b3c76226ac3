use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use bg_lb_common::maps::{NO_BACKEND, POOL_SHARE_SCALE};

use super::*;

const VIP: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80));
const STANDBY_VIP: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 8080));
const VIP6: SocketAddr = SocketAddr::V6(SocketAddrV6::new(
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100),
    80,
    0,
    0,
));
const LUT_SIZE: u32 = 7;

/// The key of the TCP service on `vip`.
fn key(vip: SocketAddr) -> ListenerKey {
    ListenerKey::new(vip, Protocol::Tcp)
}

fn backend(last_octet: u8) -> SocketAddr {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, last_octet), 8080).into()
}

fn backend6(last: u16) -> SocketAddr {
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, last), 8080, 0, 0).into()
}

/// The entry a backend of service 0 gets, blue.
fn entry(service_id: u32, generation: u32, addr: SocketAddr, pool: Pool) -> BackendEntry {
    BackendEntry {
        service_id,
        generation,
        addr,
        pool,
        reset_flows: false,
    }
}

fn spec(vip: SocketAddr, backends: &[u8]) -> ServiceSpec {
    spec_of(vip, backends.iter().map(|&b| backend(b)))
}

fn spec_of(vip: SocketAddr, backends: impl Iterator<Item = SocketAddr>) -> ServiceSpec {
    ServiceSpec {
        vip,
        lut_size: LUT_SIZE,
        ratio: Ratio::new(100).unwrap(),
        backends: backends
            .map(|addr| BackendSpec {
                addr,
                pool: Pool::Blue,
                weight: 100,
                reset_flows: false,
            })
            .collect(),
        syn_proxy: SynProxy::default(),
        protocol: Protocol::Tcp,
        udp_idle: Duration::ZERO,
        forwarding: Default::default(),
        affinity: Default::default(),
    }
}

/// SERVICES and BACKENDS as the kernel would hold them after the writes.
#[derive(Default)]
struct Maps {
    services: HashMap<ListenerKey, Service>,
    backends: BTreeMap<u32, BackendEntry>,
}

impl Maps {
    fn apply(&mut self, services: &mut Services, spec: &ServiceSpec) -> ServiceUpdate {
        let update = services.update(spec).unwrap();
        self.backends.extend(update.backends.iter().copied());
        self.services.insert(update.key, update.service);
        services.swapped(&update);
        update
    }
}

#[test]
fn id_pool_reuses_the_lowest_released_id() {
    let mut pool = IdPool::new(3);
    assert_eq!(
        (pool.allocate(), pool.allocate(), pool.allocate(), pool.allocate()),
        (Some(0), Some(1), Some(2), None)
    );
    pool.release(1);
    assert_eq!(pool.allocate(), Some(1));
}

#[test]
fn adopted_ids_are_not_handed_out_again() {
    let mut pool = IdPool::new(4);
    pool.mark_used(0);
    pool.mark_used(2);
    assert_eq!(
        (pool.allocate(), pool.allocate(), pool.allocate()),
        (Some(1), Some(3), None)
    );
}

/// The tables `update` writes, as (pool, buffer).
fn written(update: &ServiceUpdate) -> Vec<(Pool, u32)> {
    let offset = |t: &TableWrite| (t.first_slot - update.service.lut_base) / LUT_SIZE;
    update
        .tables
        .iter()
        .map(|t| (t.pool, offset(t) - 2 * t.pool.index() as u32))
        .collect()
}

/// The table of `pool` that `update` writes.
fn table(update: &ServiceUpdate, pool: Pool) -> &[u32] {
    let write = update.tables.iter().find(|t| t.pool == pool);
    &write.unwrap_or_else(|| panic!("no {pool} table written")).slots
}

/// The buffer of `pool` the entry of `update` names.
fn active(update: &ServiceUpdate, pool: Pool) -> u32 {
    update.service.active_buffer(pool.index() as u32)
}

#[test]
fn an_update_writes_every_backend_and_each_pools_table_in_its_first_buffer() {
    let mut services = Services::new(100);
    let update = services.update(&spec(VIP, &[1, 2])).unwrap();
    assert_eq!(
        update.backends,
        [
            (0, entry(0, 1, backend(1), Pool::Blue)),
            (1, entry(0, 2, backend(2), Pool::Blue)),
        ]
    );
    assert_eq!(update.key, key(VIP));
    assert_eq!((update.service.lut_base, update.service.lut_size), (0, LUT_SIZE));
    assert_eq!(u32::from(update.service.blue_share), POOL_SHARE_SCALE, "all blue");
    assert_eq!(written(&update), [(Pool::Blue, 0), (Pool::Green, 0)]);
    assert_eq!(update.tables[1].first_slot, 2 * LUT_SIZE, "green's first buffer");
    assert!(table(&update, Pool::Blue).iter().all(|id| [0, 1].contains(id)));
    assert_eq!(
        table(&update, Pool::Green),
        [NO_BACKEND; LUT_SIZE as usize],
        "green has no backend"
    );
    assert_eq!((active(&update, Pool::Blue), active(&update, Pool::Green)), (0, 0));
}

/// The double buffer: a pool's new table goes to its buffer packets do not
/// read, and the entry flips that pool alone.
#[test]
fn each_change_to_a_pool_writes_its_table_to_its_other_buffer() {
    let mut services = Services::new(100);
    let mut maps = Maps::default();
    let mut both = spec(VIP, &[1, 2, 3]);
    both.backends[2].pool = Pool::Green;
    maps.apply(&mut services, &both);
    for (weight, buffer) in [(50, 1), (20, 0), (70, 1)] {
        both.backends[0].weight = weight;
        let update = maps.apply(&mut services, &both);
        assert_eq!(written(&update), [(Pool::Blue, buffer)], "weight {weight}");
        assert_eq!((active(&update, Pool::Blue), active(&update, Pool::Green)), (buffer, 0));
    }
}

/// What makes a ratio change (a shift's step) cost microseconds: the
/// tables do not depend on the ratio, so the SERVICES entry changes its
/// blue share over the tables packets read already.
#[test]
fn a_ratio_change_writes_no_table_only_the_entrys_blue_share() {
    let mut services = Services::new(100);
    let mut maps = Maps::default();
    let mut both = spec(VIP, &[1, 2]);
    both.backends[1].pool = Pool::Green;
    both.ratio = Ratio::new(50).unwrap();
    let first = maps.apply(&mut services, &both);
    assert_eq!(first.tables.len(), 2);
    for (blue, share) in [(30, 3000), (0, 0), (100, 10_000), (30, 3000)] {
        both.ratio = Ratio::new(blue).unwrap();
        let step = maps.apply(&mut services, &both);
        assert_eq!(step.tables, [], "ratio {blue}");
        assert_eq!(step.service.blue_share, share, "ratio {blue}");
        assert_eq!(step.service.flags, first.service.flags, "the active buffers stay");
    }
    // Applied again unchanged: nothing but the entry either.
    assert_eq!(maps.apply(&mut services, &both).tables, []);
}

/// A pool's spare buffer that holds its table as it is now (a health flip
/// back: down, then up) needs no write: the entry flips to it.
#[test]
fn a_pool_flips_back_to_a_spare_buffer_holding_its_table_without_a_write() {
    let mut services = Services::new(100);
    let mut maps = Maps::default();
    let mut one = spec(VIP, &[1, 2]);
    maps.apply(&mut services, &one);
    one.backends[0].weight = 0;
    let down = maps.apply(&mut services, &one);
    assert_eq!(written(&down), [(Pool::Blue, 1)]);
    assert!(table(&down, Pool::Blue).iter().all(|&id| id == 1));
    one.backends[0].weight = 100;
    let up = maps.apply(&mut services, &one);
    assert_eq!(written(&up), []);
    assert_eq!(active(&up, Pool::Blue), 0, "back to the first buffer");
}

/// An update that was never swapped in may have left its buffer half
/// written: the next update that needs that buffer writes it again.
#[test]
fn a_table_of_an_update_never_swapped_in_is_written_again() {
    let mut services = Services::new(100);
    let mut maps = Maps::default();
    let mut one = spec(VIP, &[1, 2]);
    maps.apply(&mut services, &one);
    one.backends[0].weight = 0;
    maps.apply(&mut services, &one);
    one.backends[0].weight = 100;
    assert_eq!(
        written(&services.update(&one).unwrap()),
        [],
        "the first buffer holds it"
    );
    one.backends[1].weight = 50;
    let lost = services.update(&one).unwrap(); // computed, never written
    assert_eq!(written(&lost), [(Pool::Blue, 0)]);
    one.backends[1].weight = 100;
    let retry = services.update(&one).unwrap();
    assert_eq!(written(&retry), [(Pool::Blue, 0)], "blue's slots there are unknown now");
}

/// A restarted daemon does not know what the adopted tables were built
/// from, so its first update writes them, into the buffers packets do not
/// read, even for a ratio alone.
#[test]
fn the_first_update_after_an_adoption_writes_the_tables() {
    let mut services = Services::new(100);
    let mut maps = Maps::default();
    maps.apply(&mut services, &spec(VIP, &[1]));
    let (mut adopted, _) = Services::adopt(100, maps.services.clone(), maps.backends.clone(), []).unwrap();
    let first = adopted.update(&spec(VIP, &[1])).unwrap();
    assert_eq!(written(&first), [(Pool::Blue, 1), (Pool::Green, 1)]);
    adopted.swapped(&first);
    assert_eq!(written(&adopted.update(&spec(VIP, &[1])).unwrap()), []);
}

#[test]
fn a_table_never_swapped_in_leaves_the_active_buffer_alone() {
    let mut services = Services::new(100);
    let mut maps = Maps::default();
    maps.apply(&mut services, &spec(VIP, &[1]));
    // Computed but not written (say the kernel refused): packets still
    // read buffer 0, so the retry writes buffer 1 again.
    let lost = services.update(&spec(VIP, &[1, 2])).unwrap();
    let retry = services.update(&spec(VIP, &[1, 2])).unwrap();
    assert_eq!(
        (written(&lost), written(&retry)),
        (vec![(Pool::Blue, 1)], vec![(Pool::Blue, 1)])
    );
    assert_eq!(active(&retry, Pool::Blue), 1);
}

#[test]
fn a_removed_backend_keeps_its_id_until_no_flow_names_it() {
    let mut services = Services::new(100);
    let mut maps = Maps::default();
    maps.apply(&mut services, &spec(VIP, &[1, 2]));
    let removed = services.backend_id(&key(VIP), &backend(2)).unwrap();
    let update = maps.apply(&mut services, &spec(VIP, &[1]));
    assert!(
        !table(&update, Pool::Blue).contains(&removed),
        "it leaves the table at once"
    );
    assert_eq!(
        services.backend_id(&key(VIP), &backend(2)),
        Some(removed),
        "but keeps its id"
    );

    let live = HashMap::from([(key(VIP), HashSet::from([backend(1)]))]);
    assert_eq!(
        services.reap(&live, |_| 1, |_| 1),
        [] as [u32; 0],
        "a flow still names it"
    );
    assert_eq!(services.reap(&live, |_| 0, |_| 1), [removed]);
    assert_eq!(services.backend_id(&key(VIP), &backend(2)), None);
    let update = maps.apply(&mut services, &spec(VIP, &[1, 3]));
    assert_eq!(
        services.backend_id(&key(VIP), &backend(3)),
        Some(removed),
        "the id is reused"
    );
    assert!(
        update
            .backends
            .contains(&(removed, entry(0, 3, backend(3), Pool::Blue))),
        "in a generation of its own: {:?}",
        update.backends
    );
}

#[test]
fn backends_of_a_service_missing_from_live_are_not_reaped() {
    let mut services = Services::new(100);
    Maps::default().apply(&mut services, &spec(VIP, &[1]));
    assert_eq!(services.reap(&HashMap::new(), |_| 0, |_| 0), [] as [u32; 0]);
}

#[test]
fn removing_a_service_frees_its_table_space_at_once_and_its_ids_once_no_flow_names_them() {
    let mut services = Services::new(4 * LUT_SIZE);
    let mut maps = Maps::default();
    maps.apply(&mut services, &spec(VIP, &[1, 2]));
    let removal = services.remove(&key(VIP)).unwrap();
    assert_eq!(removal.key, key(VIP));
    assert!(removal.release_address, "no other service is on its address");
    let mut cleared = removal.backend_ids;
    cleared.sort();
    assert_eq!(cleared, [0, 1]);
    assert!(services.remove(&key(VIP)).is_none());
    assert!(services.keys().is_empty() && services.service_ids().is_empty());

    let update = services.update(&spec(STANDBY_VIP, &[3])).unwrap();
    assert_eq!(
        (update.service.id, update.backends[0].0, update.service.lut_base),
        (1, 2, 0),
        "retired ids are not handed out while flows may name them"
    );
    services.swapped(&update);
    let flows_of = |id| u64::from(id == 0);
    assert_eq!(services.reap(&HashMap::new(), flows_of, flows_of), [] as [u32; 0]);
    services.remove(&key(STANDBY_VIP));
    services.reap(&HashMap::new(), flows_of, flows_of);
    let next = services.update(&spec(VIP, &[4, 5])).unwrap();
    assert_eq!(
        (next.service.id, next.backends[0].0, next.backends[1].0),
        (1, 1, 2),
        "ids without flows are free again; id 0 still has one"
    );
}

#[test]
fn a_vip_address_is_released_with_the_last_service_on_it() {
    let mut services = Services::new(100);
    Maps::default().apply(&mut services, &spec(VIP, &[1]));
    Maps::default().apply(&mut services, &spec(STANDBY_VIP, &[1]));
    assert_eq!(services.vip_addresses(), HashSet::from([VIP.ip()]));
    assert!(
        !services.remove(&key(VIP)).unwrap().release_address,
        "the standby VIP shares it"
    );
    assert!(services.remove(&key(STANDBY_VIP)).unwrap().release_address);
    assert!(services.vip_addresses().is_empty());
}

#[test]
fn only_a_new_services_first_update_is_fresh_and_every_update_carries_its_syn_proxy() {
    let mut services = Services::new(100);
    let mut maps = Maps::default();
    let always = ServiceSpec {
        syn_proxy: SynProxy {
            mode: crate::dataplane::syn_proxy::SynProxyMode::Always,
            threshold: 9,
            mss: 1400,
        },
        forwarding: Default::default(),
        affinity: Default::default(),
        ..spec(VIP, &[1])
    };
    let first = maps.apply(&mut services, &always);
    assert!(first.fresh, "a new id: its flood detector is cleared");
    let again = maps.apply(&mut services, &always);
    assert!(!again.fresh, "the running service keeps its detector");
    assert_eq!(
        (
            again.service.flags,
            again.service.syn_proxy_threshold,
            again.service.syn_proxy_mss
        ),
        (bg_lb_common::syn_proxy::SYN_PROXY_ALWAYS, 9, 1400)
    );
}

#[test]
fn the_table_size_of_a_running_service_cannot_change() {
    let mut services = Services::new(100);
    Maps::default().apply(&mut services, &spec(VIP, &[1]));
    let bigger = ServiceSpec {
        lut_size: 11,
        ..spec(VIP, &[1])
    };
    assert!(matches!(
        services.update(&bigger),
        Err(ServicesError::TableSizeChanged { size: 7, new: 11, .. })
    ));
}

/// A ratio change or a health flip (a weight) leaves every BACKENDS entry
/// as it was: the update writes none of them.
#[test]
fn an_update_that_changes_no_backend_entry_writes_no_backend() {
    let mut services = Services::new(100);
    let mut maps = Maps::default();
    maps.apply(&mut services, &spec(VIP, &[1, 2]));
    let mut shifted = spec(VIP, &[1, 2]);
    shifted.ratio = Ratio::new(30).unwrap();
    shifted.backends[0].weight = 0;
    let update = maps.apply(&mut services, &shifted);
    assert_eq!(update.backends, []);
    assert!(table(&update, Pool::Blue).iter().all(|&id| id == 1));
}

/// A backend whose entry would change (its pool, its reset flag) is
/// written again, and only it.
#[test]
fn an_update_writes_the_backends_whose_entry_changes() {
    let mut services = Services::new(100);
    let mut maps = Maps::default();
    maps.apply(&mut services, &spec(VIP, &[1, 2, 3]));
    let mut changed = spec(VIP, &[1, 2, 3]);
    changed.backends[1].pool = Pool::Green;
    changed.backends[2].reset_flows = true;
    let update = maps.apply(&mut services, &changed);
    let reset = BackendEntry {
        reset_flows: true,
        ..entry(0, 3, backend(3), Pool::Blue)
    };
    assert_eq!(update.backends, [(1, entry(0, 2, backend(2), Pool::Green)), (2, reset)]);
}

/// An update that never reached the maps (its write failed, so it was not
/// swapped in) does not count as written: the next one writes its
/// backends.
#[test]
fn backends_of_an_update_not_swapped_in_are_written_by_the_next() {
    let mut services = Services::new(100);
    let first = services.update(&spec(VIP, &[1, 2])).unwrap();
    let second = services.update(&spec(VIP, &[1, 2])).unwrap();
    assert_eq!(second.backends, first.backends);
}

/// A restarted daemon does not know what the adopted BACKENDS entries were
/// written from: its first update writes every backend.
#[test]
fn the_first_update_after_an_adoption_writes_every_backend() {
    let mut before = Services::new(100);
    let mut maps = Maps::default();
    let written = maps.apply(&mut before, &spec(VIP, &[1, 2]));
    let (mut after, _) = Services::adopt(100, maps.services.clone(), maps.backends.clone(), []).unwrap();
    let update = maps.apply(&mut after, &spec(VIP, &[1, 2]));
    assert_eq!(update.backends, written.backends);
    assert_eq!(maps.apply(&mut after, &spec(VIP, &[1, 2])).backends, []);
}

#[test]
fn adopting_maps_rebuilds_ids() {
    let mut before = Services::new(100);
    let mut maps = Maps::default();
    maps.apply(&mut before, &spec(VIP, &[1, 2]));
    maps.apply(&mut before, &spec(STANDBY_VIP, &[1, 2]));
    let mut reweighted = spec(VIP, &[1, 2]);
    reweighted.backends[0].weight = 50;
    maps.apply(&mut before, &reweighted); // VIP's tables now in its second buffer
    let orphan = entry(99, 40, backend(9), Pool::Green);
    maps.backends.insert(7, orphan);
    // A flow of a service removed before the restart still names ids 9 and 8.
    let leftover = FlowIds {
        service_id: 9,
        backend_id: 8,
        backend_gen: 50,
    };

    let (mut after, orphans) = Services::adopt(100, maps.services.clone(), maps.backends.clone(), [&leftover]).unwrap();
    assert_eq!(orphans, [7], "its service is gone");
    let mut keys = after.keys();
    keys.sort_by_key(|key| key.vip);
    assert_eq!(keys, [key(VIP), key(STANDBY_VIP)]);
    for vip in [key(VIP), key(STANDBY_VIP)] {
        assert_eq!(after.service_id(&vip), before.service_id(&vip));
        for b in [1, 2] {
            assert_eq!(
                after.backend_id(&vip, &backend(b)),
                before.backend_id(&vip, &backend(b))
            );
        }
    }
    let next = after.update(&spec(VIP, &[1, 2])).unwrap();
    assert_eq!(
        next.service.lut_base, 0,
        "the next table goes to the buffer packets do not read"
    );
    let new_backend = after.update(&spec(VIP, &[1, 2, 3])).unwrap();
    assert_eq!(
        new_backend.backends[2],
        (4, entry(0, 51, backend(3), Pool::Blue)),
        "adopted ids 0..4 are not handed out again, nor generations up to the flows' highest"
    );
    assert!(!after.service_ids().contains(&9) && after.service_ids().len() == 2);
    let new_service = ServiceSpec {
        vip: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 101), 80).into(),
        ..spec(VIP, &[])
    };
    let placed = after.update(&new_service).unwrap().service;
    assert_eq!(
        (placed.id, placed.lut_base),
        (2, 8 * LUT_SIZE),
        "ids and regions in use are skipped"
    );
}

#[test]
fn a_tcp_and_a_udp_service_on_one_vip_are_two_services() {
    let mut services = Services::new(8 * LUT_SIZE);
    let mut maps = Maps::default();
    let tcp = maps.apply(&mut services, &spec(VIP, &[1]));
    let udp_spec = ServiceSpec {
        protocol: Protocol::Udp,
        udp_idle: Duration::from_secs(5),
        ..spec(VIP, &[1])
    };
    let udp = maps.apply(&mut services, &udp_spec);
    assert_eq!(udp.key, ListenerKey::new(VIP, Protocol::Udp));
    assert_ne!(udp.service.id, tcp.service.id);
    assert_eq!((udp.service.udp_idle_s, tcp.service.udp_idle_s), (5, 0));
    assert_ne!(udp.backends[0].0, tcp.backends[0].0, "one backend id per service");
    let removal = services.remove(&udp.key).unwrap();
    assert!(!removal.release_address, "the TCP service is still on the address");
    assert_eq!(services.keys(), [key(VIP)]);
}

/// A dual-stack service's IPv6 listener: its own id and table, its
/// backends' ids from the one space the IPv4 listener's come from, its
/// address released apart from the IPv4 one; a backend of the other family
/// is refused.
#[test]
fn an_ipv6_listener_takes_ids_from_the_one_space_and_only_backends_of_its_family() {
    let mut services = Services::new(8 * LUT_SIZE);
    let mut maps = Maps::default();
    let v4 = maps.apply(&mut services, &spec(VIP, &[1, 2]));
    let v6 = maps.apply(&mut services, &spec_of(VIP6, [backend6(1), backend6(2)].into_iter()));
    assert_eq!(v6.key, key(VIP6));
    assert_eq!((v4.service.id, v6.service.id), (0, 1));
    assert_eq!(
        v6.backends,
        [
            (2, entry(1, 3, backend6(1), Pool::Blue)),
            (3, entry(1, 4, backend6(2), Pool::Blue))
        ]
    );
    assert!(table(&v6, Pool::Blue).iter().all(|id| [2, 3].contains(id)));
    assert_eq!(services.vip_addresses(), HashSet::from([VIP.ip(), VIP6.ip()]));
    let mixed = spec_of(VIP6, [backend6(1), backend(1)].into_iter());
    assert!(matches!(
        services.update(&mixed),
        Err(ServicesError::OtherFamily { backend: found, .. }) if found == backend(1)
    ));
    let removal = services.remove(&key(VIP6)).unwrap();
    assert!(removal.release_address, "no other listener is on the IPv6 address");
    assert_eq!(services.keys(), [key(VIP)]);
}
