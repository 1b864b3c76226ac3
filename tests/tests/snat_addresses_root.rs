//! Packet tests (root) for several SNAT addresses (`snat_addresses`): the
//! real XDP program through BPF_PROG_TEST_RUN in the packet lab
//! (`bg_lb_tests::packet_lab`), configured with [`SNAT`] and [`SNAT_2`].
//! A new flow takes an (address, port) pair; replies and ICMP errors
//! arriving at either address are translated back to their flow; verdicts,
//! output bytes, checksums, counters and map state are checked.

use std::net::{Ipv4Addr, SocketAddrV4};

use bg_lb::dataplane::housekeeping::monotonic_now_ns;
use bg_lb_common::{
    counters::Counter,
    flow_hash::flow_hash,
    flow_state::{ESTABLISHED, SYN_ACK_SEEN, SYN_SEEN},
    maps::{Backend, DataplaneConfig, Flow, FlowKey, NatKey},
    snat_port::SNAT_PORT_ATTEMPTS,
};
use bg_lb_tests::{
    expect::Out,
    netns::in_fresh_netns,
    packet_lab::{
        BACKEND_ISN, BLUE, Connection, GATEWAY_MAC, LB_MAC, PacketLab, PacketLabOptions, SNAT, SNAT_2, SNAT_PORTS, VIP,
        XDP_PASS, XDP_REDIRECT, XDP_TX, client, mac_of,
    },
    packets::{ACK, PSH_ACK, SEQ, SYN, SYN_ACK, icmp_error_frame, parse_checked, quote_of, tcp_frame},
    require_root,
};
use etherparse::{
    Icmpv4Type,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
};

/// Both SNAT addresses, every new flow to [`BLUE`]`[0]`.
fn two_addresses(snat_ports: (u16, u16)) -> PacketLabOptions {
    PacketLabOptions {
        snat_addrs: vec![SNAT, SNAT_2],
        snat_ports,
        ..PacketLabOptions::with_ratio(100)
    }
}

fn in_lab(options: PacketLabOptions, test: impl FnOnce(PacketLab) + Send + 'static) {
    require_root();
    in_fresh_netns(move || {
        let mut lab = PacketLab::new(&options);
        lab.keep_only(BLUE[0]);
        test(lab)
    });
}

fn wire(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn ip_of(wire: u32) -> Ipv4Addr {
    Ipv4Addr::from(wire.to_ne_bytes())
}

/// The pair `attempt` of `client`'s flow, as the data plane computes it.
fn candidate(config: &DataplaneConfig, client: SocketAddrV4, attempt: u32) -> SocketAddrV4 {
    let (addr, port) = config.snat_candidate(flow_hash(&FlowKey::from_client(client, VIP)), attempt);
    SocketAddrV4::new(ip_of(addr), u16::from_be(port))
}

/// Opens flows from consecutive client ports until one is on `snat`: its
/// connection.
fn flow_on(lab: &PacketLab, snat: Ipv4Addr, first_port: u16) -> Connection {
    for port in first_port..first_port + 64 {
        let connection = lab.open(client(port));
        if *connection.snat.ip() == snat {
            return connection;
        }
    }
    panic!("64 flows and none on {snat}");
}

#[test]
fn a_syn_takes_the_second_snat_address_when_the_first_addresses_candidates_are_taken() {
    in_lab(two_addresses(SNAT_PORTS), |lab| {
        let config = DataplaneConfig::new(&[SNAT, SNAT_2], SNAT_PORTS.0..=SNAT_PORTS.1);
        // A client whose first candidate is on the first address, so the
        // flow must skip it.
        let x = (41000..41100)
            .map(client)
            .find(|&c| *candidate(&config, c, 0).ip() == SNAT)
            .expect("a client whose first candidate is on the first address");
        let mut maps = lab.nat_maps();
        let (backend_id, _) = lab
            .backends_by_id()
            .into_iter()
            .find(|&(_, addr)| addr == BLUE[0])
            .expect("BLUE[0] is installed");
        let backend = maps.backend(backend_id);
        let mut taken = 0;
        for attempt in 0..SNAT_PORT_ATTEMPTS {
            let pair = candidate(&config, x, attempt);
            if *pair.ip() == SNAT {
                // Owned by open connections: a port whose flow is gone would
                // be free to take over.
                let other = FlowKey::from_client(client(50000 + attempt as u16), VIP);
                let now = monotonic_now_ns();
                maps.insert_flow(
                    &other,
                    &Flow {
                        backend_id,
                        service_id: backend.service_id,
                        backend_gen: backend.generation,
                        snat_addr: u32::from(*pair.ip()).to_be(),
                        snat_port: pair.port().to_be(),
                        state: SYN_SEEN | SYN_ACK_SEEN | ESTABLISHED,
                        created_ns: now,
                        last_seen_ns: now,
                        ..Flow::default()
                    },
                );
                maps.set_owner(&nat_key(BLUE[0], pair), &other);
                taken += 1;
            }
        }
        assert!(taken >= 8, "the first address's candidates are taken ({taken})");
        let expected = (0..SNAT_PORT_ATTEMPTS)
            .map(|a| candidate(&config, x, a))
            .find(|pair| *pair.ip() == SNAT_2)
            .unwrap();

        let syn = tcp_frame(GATEWAY_MAC, LB_MAC, x, VIP, SYN, b"");
        let (verdict, out) = lab.run(&syn);
        assert_eq!(verdict, XDP_REDIRECT, "the SYN is forwarded");
        Out::ToBackend {
            backend: BLUE[0],
            snat: expected,
        }
        .check(&lab, "SYN", x, &syn, &out);
        let flow = lab.flow(x).expect("the flow is pinned");
        assert_eq!(
            (ip_of(flow.snat_addr), u16::from_be(flow.snat_port)),
            (SNAT_2, expected.port()),
            "the flow records its address and port"
        );
        assert_eq!(
            lab.reverse_nat_on(BLUE[0], expected),
            Some(FlowKey::from_client(x, VIP)),
            "the reverse entry of the second address's pair names the flow"
        );
        assert_eq!(lab.counter(Counter::SnatPortsExhausted), 0);
    });
}

#[test]
fn replies_to_each_snat_address_are_translated_back_to_their_client() {
    in_lab(two_addresses(SNAT_PORTS), |lab| {
        let on_first = flow_on(&lab, SNAT, 42000);
        let on_second = flow_on(&lab, SNAT_2, 42100);
        for (name, connection) in [("first", on_first), ("second", on_second)] {
            let syn_ack = connection.from_backend_at(SYN_ACK, BACKEND_ISN, SEQ + 1, b"");
            let (verdict, out) = lab.run(&syn_ack);
            assert_eq!(verdict, XDP_REDIRECT, "the SYN-ACK to the {name} address is forwarded");
            Out::ToClient.check(&lab, name, connection.client, &syn_ack, &out);
            assert_eq!(lab.run(&connection.from_client(ACK, b"")).0, XDP_REDIRECT);
            let reply = connection.from_backend(PSH_ACK, b"HTTP/1.1 200 OK\r\n\r\n");
            let (verdict, out) = lab.run(&reply);
            assert_eq!(verdict, XDP_REDIRECT, "a reply to the {name} address is forwarded");
            Out::ToClient.check(&lab, name, connection.client, &reply, &out);
        }
        // The same port on the other address is another pair, which no
        // flow owns: the reply is not this flow's.
        let other = SocketAddrV4::new(SNAT_2, on_first.snat.port());
        if lab.reverse_nat_on(BLUE[0], other).is_none() {
            let stray = Connection {
                snat: other,
                ..on_first
            }
            .from_backend(PSH_ACK, b"x");
            let before = lab.counter(Counter::ReplyWithoutFlow);
            let (verdict, out) = lab.run(&stray);
            assert_eq!((verdict, out), (XDP_PASS, stray), "no flow owns {other}");
            assert_eq!(lab.counter(Counter::ReplyWithoutFlow), before + 1);
        }
    });
}

#[test]
fn a_frame_to_the_snat_range_of_an_address_that_is_no_snat_address_passes_unchanged() {
    in_lab(two_addresses(SNAT_PORTS), |lab| {
        let elsewhere = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), SNAT_PORTS.0);
        let frame = tcp_frame(mac_of(*BLUE[0].ip()), LB_MAC, BLUE[0], elsewhere, PSH_ACK, b"x");
        let before = lab.counter(Counter::Passed);
        let (verdict, out) = lab.run(&frame);
        assert_eq!((verdict, out), (XDP_PASS, frame));
        assert_eq!(lab.counter(Counter::Passed), before + 1);
    });
}

#[test]
fn frag_needed_about_a_segment_from_the_second_address_is_translated_to_its_client() {
    in_lab(two_addresses(SNAT_PORTS), |lab| {
        let connection = flow_on(&lab, SNAT_2, 43000);
        let sent = tcp_frame(
            GATEWAY_MAC,
            LB_MAC,
            connection.client,
            VIP,
            PSH_ACK,
            b"GET / HTTP/1.1\r\n\r\n",
        );
        let (verdict, emitted) = lab.run(&sent);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(parse_checked(&emitted).src, connection.snat);
        let router = Ipv4Addr::new(10, 0, 0, 50);
        let error = icmp_error_frame(
            mac_of(router),
            LB_MAC,
            router,
            SNAT_2,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 }),
            &quote_of(&emitted, emitted.len() - 34),
        );
        let (verdict, out) = lab.run(&error);
        assert_eq!(verdict, XDP_REDIRECT, "translated and forwarded");
        Out::IcmpToClient.check(&lab, "frag needed", connection.client, &error, &out);
    });
}

#[test]
fn an_error_about_a_reply_goes_to_the_backend_from_its_flows_snat_address() {
    in_lab(two_addresses(SNAT_PORTS), |lab| {
        let connection = flow_on(&lab, SNAT_2, 44000);
        let reply = connection.from_backend_at(SYN_ACK, BACKEND_ISN, SEQ + 1, b"");
        let (verdict, emitted) = lab.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        let gateway = Ipv4Addr::new(192, 168, 0, 1);
        let error = icmp_error_frame(
            GATEWAY_MAC,
            LB_MAC,
            gateway,
            *VIP.ip(),
            Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
            &quote_of(&emitted, 20),
        );
        let (verdict, out) = lab.run(&error);
        assert_eq!(verdict, XDP_REDIRECT, "translated and forwarded");
        Out::IcmpToBackend.check(&lab, "time exceeded", connection.client, &error, &out);
    });
}

#[test]
fn a_syn_that_finds_every_pair_of_every_address_taken_is_refused_and_counted_for_its_backend() {
    // Two addresses of two ports: four pairs for the backend.
    in_lab(two_addresses((20000, 20001)), |mut lab| {
        let opened: Vec<_> = (45000..45004).map(|port| lab.open(client(port))).collect();
        let mut pairs: Vec<_> = opened.iter().map(|c| c.snat).collect();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), 4, "four flows, four distinct pairs: {pairs:?}");
        assert!(pairs.iter().any(|p| *p.ip() == SNAT) && pairs.iter().any(|p| *p.ip() == SNAT_2));

        let last = client(45004);
        let syn = tcp_frame(GATEWAY_MAC, LB_MAC, last, VIP, SYN, b"");
        let (verdict, out) = lab.run(&syn);
        assert_eq!(verdict, XDP_TX, "refused at once");
        Out::Rst {
            seq: 0,
            ack: Some(SEQ + 1),
        }
        .check(&lab, "SYN past the budget", last, &syn, &out);
        assert!(lab.flow(last).is_none());
        assert_eq!(lab.counter(Counter::SnatPortsExhausted), 1);
        assert_eq!(lab.backend_stats(BLUE[0]).snat_exhausted, 1, "counted for its backend");
        assert_eq!(
            lab.sweep().snat_pairs_of(BLUE[0].into()),
            4,
            "the census sees every pair in use"
        );
    });
}

/// The reverse-NAT key of `backend`'s replies to `snat`.
fn nat_key(backend: SocketAddrV4, snat: SocketAddrV4) -> NatKey {
    NatKey::new(
        &Backend::new(0, 0, backend, 0, false),
        wire(*snat.ip()),
        snat.port().to_be(),
    )
}
