//! Packet tests (root) of the IPv6 next-hop cache (`NEXT_HOPS6`): the real
//! XDP program through BPF_PROG_TEST_RUN in the packet lab, each test in its
//! own network namespace, with the lab's IPv6 services
//! ([`PacketLab::add_ipv6_services`]) sending every new flow to one on-link
//! backend. A route lookup's answer is kept per CPU and answers the
//! destination's next packets for `NEXT_HOP_TTL_JIFFIES` at most; a route change
//! reaches them after that, and a packet bigger than the one the lookup let
//! through always asks the kernel.

use std::{
    net::{Ipv6Addr, SocketAddrV6},
    thread,
    time::{Duration, Instant},
};

use aya::maps::PerCpuValues;
use bg_lb_common::maps::{NEXT_HOP_SLOTS, NEXT_HOP_TTL_JIFFIES, NEXT_HOP_TTL_MAX_NS, NextHop6, wire_ip6};
use bg_lb_tests::{
    cmd::ip,
    netns::in_fresh_netns,
    packet_lab::{
        BACKENDS6, GATEWAY_MAC, GATEWAY6, INTERFACE, Ipv6Services, LB_MAC, PacketLab, PacketLabOptions, SNAT6, VIP6,
        XDP_REDIRECT, client6, mac_of6,
    },
    packets::{ACK, Numbers, SEQ, SYN, numbered_tcp6_frame, parse_checked6},
    require_root,
};

/// The backend every new flow goes to.
const BACKEND: SocketAddrV6 = BACKENDS6[0];
/// A MAC no neighbour has: where a forged cache entry sends packets.
const FORGED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];

/// The lab with every new IPv6 flow to [`BACKEND`].
fn in_lab(test: impl FnOnce(PacketLab, Ipv6Services) + Send + 'static) {
    require_root();
    in_fresh_netns(move || {
        let lab = PacketLab::new(&PacketLabOptions::with_ratio(100));
        let mut v6 = lab.add_ipv6_services();
        v6.send_all_to(BACKEND);
        test(lab, v6)
    });
}

fn from_client(client: SocketAddrV6, flags: u8, ack: u32, payload: &[u8]) -> Vec<u8> {
    let seq = if flags == SYN { SEQ } else { SEQ + 1 };
    numbered_tcp6_frame(GATEWAY_MAC, LB_MAC, client, VIP6, flags, Numbers { seq, ack }, payload)
}

/// `client`'s handshake SYN, forwarded to [`BACKEND`] by a route lookup
/// the cache keeps: the IPv6 length the lookup let through.
fn open(lab: &PacketLab, client: SocketAddrV6) -> u16 {
    let (verdict, out) = lab.run(&from_client(client, SYN, 0, b""));
    assert_eq!(verdict, XDP_REDIRECT, "the SYN is forwarded");
    let syn = parse_checked6(&out);
    assert_eq!(
        (syn.dst, syn.dst_mac),
        (BACKEND, mac_of6(*BACKEND.ip())),
        "to the backend"
    );
    (out.len() - 14) as u16
}

/// The shortest time a cached entry stays fresh: [`NEXT_HOP_TTL_JIFFIES`]
/// ticks counted from the tick of its lookup, so one tick less at HZ 1000
/// (the highest), should the lookup come at that tick's end.
const SHORTEST_TTL: Duration = Duration::from_millis(NEXT_HOP_TTL_JIFFIES - 1);

/// The slot caching `dst` and its entry, from the latest lookup on any CPU.
fn cached(lab: &PacketLab, dst: Ipv6Addr) -> (u32, NextHop6) {
    let hops = lab.next_hops6();
    let want = wire_ip6(dst);
    (0..NEXT_HOP_SLOTS)
        .find_map(|slot| {
            let values = hops.get(&slot, 0).expect("NEXT_HOPS6");
            // The latest lookup's: each CPU caches its own, and the test's
            // thread may run on another CPU after a sleep, leaving the first
            // CPU's older entry in place (a CI run read it).
            let entry = values
                .iter()
                .filter(|hop| hop.dst_addr == want && hop.fits != 0)
                .max_by_key(|hop| hop.looked_up_jiffies)
                .copied();
            entry.map(|entry| (slot, entry))
        })
        .unwrap_or_else(|| panic!("no cached next hop for {dst}"))
}

/// Whether the frame a run sent (`verdict`, `out`) went to [`BACKEND`].
fn sent_to_backend(verdict: u32, out: &[u8]) -> bool {
    // The IPv6 destination, whatever the frame carries.
    verdict == XDP_REDIRECT && out.get(38..54) == Some(&BACKEND.ip().octets()[..])
}

#[test]
fn an_ipv6_route_lookup_is_cached_and_a_fresh_entry_answers_in_its_place() {
    in_lab(|lab, _v6| {
        let client = client6(42000);
        let fits = open(&lab, client);
        let (slot, entry) = cached(&lab, *BACKEND.ip());
        assert_eq!(entry.src_addr, wire_ip6(SNAT6), "for the SNAT source");
        assert_eq!((entry.smac, entry.dmac), (LB_MAC, mac_of6(*BACKEND.ip())));
        assert_eq!(entry.on_link, 1, "the backend is on-link");
        assert_eq!(entry.fits, fits, "no longer than the SYN");
        // An entry the cache holds is used, not the kernel's answer: a
        // forged one, fresh, sends the next segment to its MAC. Fresh means
        // within the TTL of its lookup's tick, which userspace cannot read:
        // the forgery takes the tick of a lookup the ACK just made, and the
        // next run must come within the shortest TTL of that lookup.
        let mut hops = lab.next_hops6();
        let cpus = hops.get(&slot, 0).expect("NEXT_HOPS6").len();
        let mut forge = |entry: NextHop6| {
            let values = PerCpuValues::try_from(vec![entry; cpus]).expect("one per CPU");
            hops.set(slot, values, 0).expect("forge NEXT_HOPS6");
        };
        let ack = from_client(client, ACK, 1, b"");
        for _ in 0..20 {
            // Empty on every CPU: the ACK asks the kernel and caches its answer.
            forge(NextHop6 { fits: 0, ..entry });
            let looked_up = Instant::now();
            assert_eq!(lab.run(&ack).0, XDP_REDIRECT);
            let (_, fresh) = cached(&lab, *BACKEND.ip());
            forge(NextHop6 {
                dmac: FORGED_MAC,
                ..fresh
            });
            let (verdict, out) = lab.run(&ack);
            if looked_up.elapsed() >= SHORTEST_TTL {
                // Too slow to tell: the entry may have gone stale.
                continue;
            }
            assert_eq!(verdict, XDP_REDIRECT);
            let sent = parse_checked6(&out);
            assert_eq!(sent.dst, BACKEND);
            assert_eq!(sent.dst_mac, FORGED_MAC, "the cached next hop, not a new lookup");
            return;
        }
        panic!("no run came within the cache's TTL of the forged entry");
    });
}

#[test]
fn after_the_ttl_an_ipv6_route_change_reaches_a_destination_that_was_cached() {
    in_lab(|lab, _v6| {
        let client = client6(42001);
        open(&lab, client);
        cached(&lab, *BACKEND.ip());
        lab.route_via_gateway6(*BACKEND.ip());
        thread::sleep(Duration::from_nanos(NEXT_HOP_TTL_MAX_NS) + Duration::from_millis(20));
        let (verdict, out) = lab.run(&from_client(client, ACK, 1, b""));
        assert_eq!(verdict, XDP_REDIRECT);
        let sent = parse_checked6(&out);
        assert_eq!(sent.dst, BACKEND);
        assert_eq!(sent.dst_mac, mac_of6(GATEWAY6), "through the gateway now");
        let (_, entry) = cached(&lab, *BACKEND.ip());
        assert_eq!((entry.dmac, entry.on_link), (mac_of6(GATEWAY6), 0), "cached anew");
    });
}

#[test]
fn a_packet_bigger_than_the_cached_lookup_let_through_asks_the_kernel() {
    in_lab(|lab, _v6| {
        let client = client6(42002);
        let fits = open(&lab, client);
        // The path to the backend narrows at once; the cached entry, fresh,
        // let through only the SYN's length.
        ip(&format!(
            "-6 route add {}/128 dev {INTERFACE} mtu lock 1280",
            BACKEND.ip()
        ));
        let segment = from_client(client, ACK, 1, &[0x55; 1300]);
        assert!(segment.len() - 14 > usize::from(fits).max(1280));
        let (verdict, out) = lab.run(&segment);
        assert!(
            !sent_to_backend(verdict, &out),
            "bigger than the link takes: not forwarded (verdict {verdict})"
        );
        // A segment the narrow path takes still goes through.
        let (verdict, out) = lab.run(&from_client(client, ACK, 1, &[0x55; 1000]));
        assert!(sent_to_backend(verdict, &out), "a segment that fits is forwarded");
    });
}
