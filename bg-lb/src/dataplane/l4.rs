//! Which transport protocol a service balances (`protocol = "tcp" | "udp"`),
//! as userspace sees it: the setting, its number in map keys, and its name
//! in `ctl` output and metrics. The data plane's UDP path is bg-lb-ebpf's
//! `udp`.

use std::{fmt, str::FromStr, time::Duration};

use bg_lb_common::maps::{IPPROTO_TCP, IPPROTO_UDP};

/// The idle timeout of a UDP service's flows when `udp_idle` is not set.
pub const DEFAULT_UDP_IDLE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// Its IP protocol number, as map keys hold it.
    pub const fn wire(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }

    /// The protocol of a map key's number; `None` for one bg-lb never writes.
    pub const fn from_wire(proto: u8) -> Option<Self> {
        match proto {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!("protocol {other:?}: expected \"tcp\" or \"udp\"")),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_round_trip_through_their_names_and_numbers() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(protocol.name().parse::<Protocol>(), Ok(protocol));
            assert_eq!(Protocol::from_wire(protocol.wire()), Some(protocol));
        }
        assert_eq!((Protocol::Tcp.wire(), Protocol::Udp.wire()), (6, 17));
        assert_eq!(Protocol::from_wire(1), None);
        assert!(
            "sctp"
                .parse::<Protocol>()
                .unwrap_err()
                .contains("expected \"tcp\" or \"udp\"")
        );
    }
}
