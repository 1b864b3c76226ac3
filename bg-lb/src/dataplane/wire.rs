//! The address families as the daemon's map code sees them: [`Wire`] is a
//! family's wire address (`u32` for IPv4, `Ipv6Wire` for IPv6) with the
//! names of its maps and the conversions to and from `std::net`, so the
//! code that reads and writes SERVICES, BACKENDS, FLOWS, REVERSE_NAT and
//! VIP_ADDRESSES (or their `6` twins), and runs the family's flow-reset
//! program, is written once, generic over it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use aya::Pod;
use bg_lb_common::maps::{self, Ipv6Wire, WireAddr, ip6, wire_ip6};

/// An address family's wire address, with its maps.
pub trait Wire: WireAddr + Pod {
    const SERVICES: &'static str;
    const BACKENDS: &'static str;
    const FLOWS: &'static str;
    const REVERSE_NAT: &'static str;
    const VIP_ADDRESSES: &'static str;
    /// The drain deadline's reset program for the family's flows.
    const FLOW_RESET: &'static str;

    fn to_ip(self) -> IpAddr;

    /// `None` for an address of the other family.
    fn from_ip(ip: IpAddr) -> Option<Self>;

    /// `addr`:`port`, the port in wire order (as map entries hold it).
    fn socket(addr: Self, wire_port: u16) -> SocketAddr {
        SocketAddr::new(addr.to_ip(), u16::from_be(wire_port))
    }
}

impl Wire for u32 {
    const SERVICES: &'static str = maps::SERVICES;
    const BACKENDS: &'static str = maps::BACKENDS;
    const FLOWS: &'static str = maps::FLOWS;
    const REVERSE_NAT: &'static str = maps::REVERSE_NAT;
    const VIP_ADDRESSES: &'static str = maps::VIP_ADDRESSES;
    const FLOW_RESET: &'static str = maps::FLOW_RESET_PROGRAM;

    fn to_ip(self) -> IpAddr {
        Ipv4Addr::from(self.to_ne_bytes()).into()
    }

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(ip) => Some(u32::from_ne_bytes(ip.octets())),
            IpAddr::V6(_) => None,
        }
    }
}

impl Wire for Ipv6Wire {
    const SERVICES: &'static str = maps::SERVICES6;
    const BACKENDS: &'static str = maps::BACKENDS6;
    const FLOWS: &'static str = maps::FLOWS6;
    const REVERSE_NAT: &'static str = maps::REVERSE_NAT6;
    const VIP_ADDRESSES: &'static str = maps::VIP_ADDRESSES6;
    const FLOW_RESET: &'static str = maps::FLOW_RESET6_PROGRAM;

    fn to_ip(self) -> IpAddr {
        ip6(self).into()
    }

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(ip) => Some(wire_ip6(ip)),
            IpAddr::V4(_) => None,
        }
    }
}

/// A port as map entries hold it (network order).
pub fn wire_port(port: u16) -> u16 {
    port.to_be()
}

/// `address` as a family's wire address and port, if it is of that family.
pub fn wire_socket<A: Wire>(address: SocketAddr) -> Option<(A, u16)> {
    Some((A::from_ip(address.ip())?, wire_port(address.port())))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};

    use bg_lb_common::maps::{Backend, Backend6};

    use super::*;

    /// The conversions agree with bg-lb-common's own constructors and
    /// accessors, for either family, and refuse the other family.
    #[test]
    fn wire_addresses_round_trip_as_bg_lb_common_writes_them() {
        let v4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 11), 8080);
        let v6 = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11), 8080, 0, 0);
        let b4 = Backend::new(0, 1, v4, 0, false);
        let b6 = Backend6::new(0, 1, v6, 0, false);
        assert_eq!(wire_socket::<u32>(v4.into()), Some((b4.addr, b4.port)));
        assert_eq!(wire_socket::<Ipv6Wire>(v6.into()), Some((b6.addr, b6.port)));
        assert_eq!(u32::socket(b4.addr, b4.port), SocketAddr::V4(v4));
        assert_eq!(Ipv6Wire::socket(b6.addr, b6.port), SocketAddr::V6(v6));
        assert_eq!(wire_socket::<u32>(v6.into()), None);
        assert_eq!(wire_socket::<Ipv6Wire>(v4.into()), None);
    }
}
