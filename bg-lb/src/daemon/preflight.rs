//! Checks of the host at startup, each naming the cause and the fix: SNAT
//! addresses the host does not have (refused), the SNAT range against the
//! kernel's ephemeral ports (refused), pins on a
//! bpffs that dies with the daemon (warned), `dsr` backends that are not
//! on-link (warned), ICMP redirects under a `gateway` service (turned off),
//! and the XDP mode auto picks for an interface (see [`crate::host`]).

use std::net::{IpAddr, UdpSocket};

use anyhow::bail;

use crate::{
    config::Config,
    dataplane::{AttachMode, forwarding::Forwarding, pins::PinLayout},
    host::{
        bpffs::{self, BpffsView},
        interface,
        ports::{EphemeralPorts, Overlap},
        redirects,
        routes::{self, NextHop},
    },
};

/// Refuses a SNAT address that is not local to this host (network
/// namespace): backends' replies to it would not be routed here, and
/// health probes bind the first one. Binding a socket to it is the
/// kernel's own answer (EADDRNOTAVAIL otherwise).
pub(super) fn refuse_foreign_snat_addresses(config: &Config) -> anyhow::Result<()> {
    let v4 = config.snat_addresses.iter().map(|&a| IpAddr::from(a));
    for address in v4.chain(config.snat6_addresses.iter().map(|&a| IpAddr::from(a))) {
        if let Err(e) = UdpSocket::bind((address, 0)) {
            bail!(
                "SNAT address {address} is not local to this host ({e}): backends' replies to it would never \
                 arrive. Add it to an interface (e.g. `ip addr add {address} dev IFACE`) or remove it from the \
                 config"
            );
        }
    }
    Ok(())
}

/// Refuses a SNAT range the kernel may hand out as ephemeral ports in this
/// network namespace. One range serves every SNAT address, and a local
/// socket on any of them (a health probe, on the first) could get such a
/// port.
pub(super) fn refuse_snat_ports_overlapping_ephemeral_ports(config: &Config) -> anyhow::Result<()> {
    match EphemeralPorts::read() {
        Ok(ephemeral) => match Overlap::check(config.snat_ports, ephemeral) {
            Some(overlap) => bail!("{overlap}"),
            None => Ok(()),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the kernel's ephemeral port range; snat_ports not checked against it");
            Ok(())
        }
    }
}

/// Warns about each `dsr` backend the main routing table reaches through a
/// router: a MAC rewrite cannot reach it, so the data plane will drop its
/// packets (`dsr_not_on_link`). A warning, not a refusal: the data plane
/// judges per packet, and routes may change after startup.
pub(super) fn warn_dsr_backends_not_on_link(config: &Config) {
    let dsr = config.services.iter().filter(|s| s.forwarding == Forwarding::Dsr);
    for (service, backend) in dsr.flat_map(|s| s.backends.iter().map(move |b| (s, b))) {
        match routes::next_hop(backend.address.ip()) {
            Ok(NextHop::OnLink) => {}
            Ok(hop) => tracing::warn!(
                service = %service.name,
                backend = %backend.address,
                next_hop = ?hop,
                "forwarding = \"dsr\" needs backends on this host's L2 segment; this one is not on-link, so its \
                 packets will be dropped (counter dsr_not_on_link). Move it onto the segment or use forwarding = \
                 \"gateway\""
            ),
            Err(e) => tracing::warn!(error = %e, "cannot read the routing table; dsr backends not checked"),
        }
    }
}

/// Turns the host's ICMP redirects off while a `gateway` service is
/// configured: one sent to a backend would route its replies around the LB
/// ([`redirects`]). A setting that cannot be changed is warned about. IPv6
/// has no such setting: Linux sends its redirects whenever it forwards a
/// packet back out of the interface it came in on, so an IPv6 `gateway`
/// service gets a warning naming what the backends must do instead.
pub(super) fn stop_icmp_redirects_under_gateway(config: &Config) {
    let gateway = config.services.iter().filter(|s| s.forwarding == Forwarding::Gateway);
    if let Some(service) = gateway
        .clone()
        .find(|s| s.vips.iter().chain(&s.standby_vips).any(|v| v.is_ipv6()))
    {
        tracing::warn!(
            service = %service.name,
            "{}",
            redirects::IPV6_WARNING
        );
    }
    if gateway.count() == 0 {
        return;
    }
    for (setting, outcome) in redirects::turn_off(&config.interfaces.names()) {
        match outcome {
            Ok(true) => tracing::info!(
                setting = %setting.display(),
                "turned ICMP redirects off: a gateway service's backends route their traffic to clients through this \
                 host, and a redirect would make them send it around the LB"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                setting = %setting.display(),
                error = %e,
                "cannot turn ICMP redirects off: a backend that accepts one sends its gateway replies around the LB \
                 and those connections fail. Set it to 0"
            ),
        }
    }
}

/// Warns when the pins will not outlive the daemon; `mounted_here` says
/// whether the daemon just mounted their bpffs.
pub(super) fn warn_if_pins_die_with_daemon(pins: &PinLayout, mounted_here: bool) {
    let mount_point = pins.mount_point();
    match BpffsView::observe(&mount_point, mounted_here).dies_with_daemon() {
        Some(cause) => tracing::warn!("{}", bpffs::warning(cause, &mount_point, pins.root())),
        None if mounted_here => {
            tracing::info!(path = %mount_point.display(), "mounted bpffs (the host's mount namespace: it outlives the daemon)")
        }
        None => {}
    }
}

/// The mode to attach XDP to `iface` with: `configured`, except auto on a
/// veth (generic, with a warning). `adopting` skips the warning: an adopted
/// attachment keeps the mode it was made with.
pub(super) fn attach_mode(iface: &str, configured: AttachMode, adopting: bool) -> AttachMode {
    let (mode, warning) = interface::attach_mode(iface, configured, interface::driver(iface).as_deref());
    if let Some(warning) = warning.filter(|_| !adopting) {
        tracing::warn!(interface = iface, "{warning}");
    }
    mode
}
