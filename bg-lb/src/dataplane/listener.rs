//! A listener's identity above the maps: a VIP (IPv4 or IPv6) and a
//! protocol. The daemon's bookkeeping is keyed by it; `kernel` turns it
//! into the SERVICES or SERVICES6 key of its family.

use std::{fmt, net::SocketAddr};

use crate::{dataplane::l4::Protocol, family::Family};

/// One VIP of a service for one protocol: what has its own SERVICES (or
/// SERVICES6) entry and lookup table. A TCP and a UDP service may share a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub vip: SocketAddr,
    pub protocol: Protocol,
}

impl ListenerKey {
    pub const fn new(vip: SocketAddr, protocol: Protocol) -> Self {
        Self { vip, protocol }
    }

    pub fn family(&self) -> Family {
        Family::of_socket(self.vip)
    }
}

/// `10.0.0.100:80/tcp`, `[fd00::100]:80/udp`.
impl fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vip, self.protocol)
    }
}
