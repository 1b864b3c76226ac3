//! End-to-end tests (root) of what a restarted daemon keeps: `bg-lb run` in
//! a network namespace, killed with SIGKILL (pins kept) and started again.
//! - a backend that was down stays out of the tables across restarts and a
//!   crash loop until its probes bring it up (`rise` successes);
//! - a restart with another `max_flows` migrates the flow table and keeps
//!   open connections; pins of another layout, or a `max_flows` below the
//!   flows in use, are refused and left untouched.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs, io,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapInfo},
    programs::links::{FdLink, PinnedLink},
};
use bg_lb::{daemon::PinsRefused, dataplane::pins::PinLayout, protocol::BackendHealth};
use bg_lb_common::maps::{self, Backend, Flow, FlowKey, NO_BACKEND, Service, ServiceKey};
use bg_lb_tests::{
    lab::{NameLab, NameLabConfig},
    lookup_slots,
    map_surgery::NatMaps,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
/// Where the labs that read metrics serve them, inside the LB's namespace.
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9751);
/// The lab's `max_flows`.
const MAX_FLOWS: u32 = 65536;
/// The backend that goes down.
const DOWN: usize = 3;

fn open(pin_dir: &Path, name: &str) -> Map {
    let path = PinLayout::new(pin_dir).maps_dir().join(name);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("open pinned {name}: {e}"));
    Map::from_map_data(data).expect("a known map type")
}

/// The backends the pinned lookup table of `vip` sends new flows to: what
/// the data plane does, whatever the daemon reports.
fn table_backends(pin_dir: &Path, vip: SocketAddrV4) -> BTreeSet<SocketAddrV4> {
    let services: HashMap<_, ServiceKey, Service> = open(pin_dir, maps::SERVICES).try_into().unwrap();
    let tables: Array<_, u32> = open(pin_dir, maps::LOOKUP_TABLES).try_into().unwrap();
    let backends: Array<_, Backend> = open(pin_dir, maps::BACKENDS).try_into().unwrap();
    let service = services
        .get(&ServiceKey::new(vip), 0)
        .expect("the service is programmed");
    let ids: BTreeSet<u32> = lookup_slots::read_by_new_flows(&service)
        .map(|slot| tables.get(&slot, 0).expect("read LOOKUP_TABLES"))
        .filter(|&id| id != NO_BACKEND)
        .collect();
    ids.iter()
        .map(|id| backends.get(id, 0).expect("read BACKENDS").addr())
        .collect()
}

/// Polls `status` until backend `i` has `health`; panics after 30 s.
fn wait_health(lab: &NameLab, i: usize, health: BackendHealth) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.daemon.status("web").backends[i].health != health {
        assert!(Instant::now() < deadline, "b{i} never {health}:\n{}", lab.daemon.log());
        thread::sleep(Duration::from_millis(100));
    }
}

/// Right after a (re)start, before any probe could bring it up: b3 is not
/// in the table, and no new connection reaches it.
fn assert_kept_out(lab: &NameLab, when: &str) {
    let down = lab.backend_addr(DOWN);
    let table = table_backends(&lab.daemon.pin_dir, lab.vip());
    assert!(!table.contains(&down), "{when}: b3 is in the table {table:?}");
    assert_eq!(table.len(), 3, "{when}: the other backends serve: {table:?}");
    let names = lab.names(40);
    assert!(
        !names.iter().any(|n| n == "b3"),
        "{when}: a connection reached b3: {names:?}"
    );
}

#[test]
fn a_backend_down_before_a_restart_or_a_crash_loop_gets_no_connection_before_rise_successes() {
    // rise = 100 at 1 s: the checks below run long before b3 could rise.
    let config = NameLabConfig {
        service: "ratio = \"50:50\"\nlookup_table_size = 251\n\n[service.health]\ninterval = \"1s\"\n\
                  fast_interval = \"1s\"\ntimeout = \"500ms\"\nrise = 100\nfall = 1\n",
        ..NameLabConfig::default()
    };
    let mut lab = NameLab::start(BG_LB, 4, None, &config);
    lab.stop_server(DOWN);
    wait_health(&lab, DOWN, BackendHealth::Down);

    lab.daemon.kill9();
    // Its port accepts again: one successful probe would be enough for a
    // daemon that counted unknown health as up.
    lab.start_server(DOWN);
    lab.daemon.spawn();
    assert_kept_out(&lab, "after a restart");
    let status = lab.daemon.status("web");
    assert_eq!(status.backends[DOWN].health, BackendHealth::Down, "{status:#?}");

    for cycle in 0..3 {
        lab.daemon.kill9();
        lab.daemon.spawn();
        assert_kept_out(&lab, &format!("crash loop, restart {cycle}"));
    }

    // With rise = 2 its probes bring it back: the state was not stuck.
    let path = lab.daemon.config_path();
    let text = fs::read_to_string(&path).unwrap().replace("rise = 100", "rise = 2");
    fs::write(&path, text).unwrap();
    lab.daemon.ctl_ok(&["reload"]);
    wait_health(&lab, DOWN, BackendHealth::Up);
    assert!(table_backends(&lab.daemon.pin_dir, lab.vip()).contains(&lab.backend_addr(DOWN)));
    assert!(lab.names(40).iter().any(|n| n == "b3"), "b3 serves again after rise");
}

// --- Pins of another layout ---------------------------------------------------------

fn maps_dir(lab: &NameLab) -> PathBuf {
    PinLayout::new(&lab.daemon.pin_dir).maps_dir()
}

fn open_pin(lab: &NameLab, name: &str) -> Map {
    open(&lab.daemon.pin_dir, name)
}

fn max_entries(lab: &NameLab, name: &str) -> u32 {
    MapInfo::from_pin(maps_dir(lab).join(name))
        .expect("pinned map")
        .max_entries()
}

/// Rewrites the config's `max_flows`.
fn set_max_flows(lab: &NameLab, from: u32, to: u32) {
    let path = lab.daemon.config_path();
    let text = fs::read_to_string(&path).unwrap();
    let from = format!("max_flows = {from}\n");
    assert!(text.contains(&from), "{text}");
    fs::write(&path, text.replace(&from, &format!("max_flows = {to}\n"))).unwrap();
}

fn metrics_lab() -> NameLab {
    let config = NameLabConfig {
        settings: &format!("metrics = \"{METRICS}\"\n"),
        ..NameLabConfig::default()
    };
    NameLab::start(BG_LB, 4, None, &config)
}

#[test]
fn a_restart_with_another_max_flows_migrates_the_flow_table_and_keeps_open_connections() {
    let mut lab = metrics_lab();
    let mut open = lab.connect();
    let served_by = open.ask().expect("the connection works");
    let key = FlowKey::from_client(open.local_addr(), lab.vip());
    assert_eq!(max_entries(&lab, maps::FLOWS), MAX_FLOWS);

    for bigger in [2 * MAX_FLOWS, 4 * MAX_FLOWS] {
        let smaller = bigger / 2;
        set_max_flows(&lab, smaller, bigger);
        lab.daemon.terminate();
        // What a daemon killed in the middle of a migration leaves: removed,
        // and the migration done afresh.
        let info = MapInfo::from_pin(maps_dir(&lab).join(maps::FLOWS)).unwrap();
        pin_foreign_map(
            &maps_dir(&lab).join(format!("{}-migrating", maps::FLOWS)),
            info.map_type().expect("a known map type") as u32,
            info.key_size(),
            info.value_size(),
            1024,
        );
        lab.daemon.spawn();
        assert_eq!(max_entries(&lab, maps::FLOWS), bigger, "{}", lab.daemon.log());
        assert_eq!(lab.metric(METRICS, "bglb_flow_table_capacity "), f64::from(bigger));
        // 4 backends x 10,000 SNAT ports x 2 is below both: REVERSE_NAT
        // follows max_flows and migrates too.
        assert_eq!(max_entries(&lab, maps::REVERSE_NAT), bigger);
        let nat = NatMaps::pinned(&lab.daemon.pin_dir);
        let flow: Flow = nat.flow(&key).expect("the open flow was copied into the new FLOWS");
        assert_eq!(
            nat.owner(&nat.nat_of(&flow)),
            Some(key),
            "its reverse-NAT entry was copied into the new REVERSE_NAT"
        );
        assert_eq!(
            open.ask().expect("the open connection survives the migration"),
            served_by
        );
        assert!(
            fs::read_dir(maps_dir(&lab)).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with("-migrating")),
            "no migration pin left"
        );
    }
    // A crash after the migration: the new pins are adopted as they are.
    lab.daemon.kill9();
    lab.daemon.spawn();
    assert_eq!(max_entries(&lab, maps::FLOWS), 4 * MAX_FLOWS);
    assert_eq!(open.ask().expect("still open"), served_by);
    assert_eq!(lab.names(8).len(), 8, "new connections are served");
}

#[test]
fn a_max_flows_below_the_flows_in_use_is_refused_and_drops_nothing() {
    let mut lab = metrics_lab();
    let mut open = lab.connect();
    let served_by = open.ask().expect("the connection works");
    lab.daemon.terminate();
    // More flows than the new max_flows holds (as spoofed SYNs would leave).
    let mut flows: HashMap<_, FlowKey, Flow> = open_pin(&lab, maps::FLOWS).try_into().unwrap();
    for port in 1..=1500 {
        let client = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), port);
        flows
            .insert(FlowKey::from_client(client, lab.vip()), Flow::default(), 0)
            .unwrap();
    }
    drop(flows);
    set_max_flows(&lab, MAX_FLOWS, 1024);
    let before = pins(&lab);

    let status = lab.daemon.run_to_failure();
    assert_eq!(status.code(), Some(1), "a retry may succeed once flows end");
    let log = lab.daemon.log();
    assert!(
        log.contains("migrating pinned map FLOWS: the new capacity holds") && log.contains("raise max_flows"),
        "{log}"
    );
    assert_eq!(
        pins(&lab),
        before,
        "every pin is the object it was, and no migration pin is left"
    );
    assert_eq!(max_entries(&lab, maps::FLOWS), MAX_FLOWS);
    assert_eq!(open.ask().expect("the pinned data plane still forwards"), served_by);
}

/// Creates a map of this definition and pins it at `path`, as a bg-lb
/// whose maps are laid out differently would have left it.
fn pin_foreign_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) {
    /// The head of `union bpf_attr` for BPF_MAP_CREATE; the rest is zero.
    #[repr(C)]
    #[derive(Default)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        rest: [u32; 16],
    }
    /// `union bpf_attr` for BPF_OBJ_PIN.
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let create = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        ..MapCreate::default()
    };
    // SAFETY: a BPF_MAP_CREATE attribute of the size passed, zero-padded.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &create, size_of::<MapCreate>()) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let pin = ObjPin {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: a BPF_OBJ_PIN attribute naming a live path string and our fd.
    let pinned = unsafe { libc::syscall(libc::SYS_bpf, 6, &pin, size_of::<ObjPin>()) };
    assert_eq!(pinned, 0, "BPF_OBJ_PIN: {}", io::Error::last_os_error());
    // SAFETY: our own fd, closed once; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// Every pin under the pin dir and the id of the kernel object it holds.
fn pins(lab: &NameLab) -> BTreeMap<PathBuf, u32> {
    let layout = PinLayout::new(&lab.daemon.pin_dir);
    let ids = |dir: PathBuf, id: fn(&Path) -> u32| {
        fs::read_dir(dir)
            .unwrap()
            .map(move |entry| {
                let path = entry.unwrap().path();
                let id = id(&path);
                (path, id)
            })
            .collect::<Vec<_>>()
    };
    let map_id = |path: &Path| MapInfo::from_pin(path).expect("a map pin").id();
    let link_id = |path: &Path| {
        let link = FdLink::from(PinnedLink::from_pin(path).expect("a link pin"));
        link.info().expect("link info").id()
    };
    let mut pins: BTreeMap<_, _> = ids(layout.maps_dir(), map_id).into_iter().collect();
    pins.extend(ids(layout.link("eth0").parent().unwrap().to_owned(), link_id));
    assert!(pins.len() > maps::ALL_MAPS.len(), "maps and a link: {pins:?}");
    pins
}

#[test]
fn pins_of_another_value_layout_are_refused_with_the_map_both_layouts_and_the_fix_and_left_untouched() {
    let mut lab = metrics_lab();
    let mut open = lab.connect();
    let served_by = open.ask().expect("the connection works");
    lab.daemon.terminate();
    // FLOWS as a bg-lb whose Flow is 8 bytes longer left it.
    let flows = maps_dir(&lab).join(maps::FLOWS);
    let info = MapInfo::from_pin(&flows).unwrap();
    fs::remove_file(&flows).unwrap();
    let (key_size, value_size) = (info.key_size(), info.value_size() + 8);
    let map_type = info.map_type().expect("a known map type");
    pin_foreign_map(&flows, map_type as u32, key_size, value_size, info.max_entries());
    let before = pins(&lab);

    let status = lab.daemon.run_to_failure();
    assert_eq!(
        status.code(),
        Some(PinsRefused::EXIT_CODE.into()),
        "the exit status the unit does not restart on"
    );
    let log = lab.daemon.log();
    let expected = format!(
        "the map FLOWS pinned at {} was left by a bg-lb whose data plane differs: pinned {map_type:?}, key {key_size} B, \
         value {value_size} B, {MAX_FLOWS} entries, flags 0x0; this bg-lb expects {map_type:?}, key {key_size} B, \
         value {} B, {MAX_FLOWS} entries, flags 0x0. Nothing was changed.",
        flows.display(),
        value_size - 8
    );
    assert!(log.contains(&expected), "expected {expected:?} in\n{log}");
    let fix = format!("`bg-lb teardown --config {}`", lab.daemon.config_path().display());
    assert!(log.contains(&fix), "expected {fix:?} in\n{log}");
    assert_eq!(pins(&lab), before, "every pin is the object it was");
    assert_eq!(open.ask().expect("the pinned data plane still forwards"), served_by);
}
