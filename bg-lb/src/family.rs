//! The address family of a VIP, backend, SNAT address or flow: IPv4 or
//! IPv6. The data plane keeps the families in maps of their own; everything
//! above it names the family with this.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

/// On the wire and in metric labels `"ipv4"` or `"ipv6"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(address: IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    pub fn of_socket(address: SocketAddr) -> Family {
        Family::of(address.ip())
    }

    /// The wildcard address ("every address") of the family.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::Ipv4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::Ipv6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    /// The metric label value and wire name.
    pub fn label(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// "IPv4" or "IPv6", as messages write it; `pad` so tables can align it.
impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// The wire name, or the version's digit (`--family 6`).
impl FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ipv4" | "4" => Ok(Family::Ipv4),
            "ipv6" | "6" => Ok(Family::Ipv6),
            _ => Err(format!("unknown address family {s:?} (ipv4 or ipv6)")),
        }
    }
}
