//! How a service's packets reach its backends (`forwarding = "full-nat" |
//! "gateway" | "dsr"`), as userspace sees it: the setting, the value it
//! writes into the SERVICES entry, and what each mode gives up. The data
//! plane's side is bg-lb-ebpf's `forwarding`.

use std::{fmt, str::FromStr};

use bg_lb_common::maps::{FORWARDING_DSR, FORWARDING_FULL_NAT, FORWARDING_GATEWAY, Service};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarding {
    /// Source and destination rewritten: backends see a SNAT address.
    #[default]
    FullNat,
    /// Destination rewritten only: backends see the client and route their
    /// replies through the LB.
    Gateway,
    /// Destination MAC rewritten only: backends on the LB's segment hold the
    /// VIP and answer clients directly.
    Dsr,
}

impl Forwarding {
    pub const fn name(self) -> &'static str {
        match self {
            Forwarding::FullNat => "full-nat",
            Forwarding::Gateway => "gateway",
            Forwarding::Dsr => "dsr",
        }
    }

    /// Writes the mode into a service's SERVICES entry.
    pub fn program(self, service: &mut Service) {
        service.forwarding = match self {
            Forwarding::FullNat => FORWARDING_FULL_NAT,
            Forwarding::Gateway => FORWARDING_GATEWAY,
            Forwarding::Dsr => FORWARDING_DSR,
        };
    }

    /// Whether flows take a SNAT address and port (the others keep the
    /// client's).
    pub const fn uses_snat(self) -> bool {
        matches!(self, Forwarding::FullNat)
    }

    /// Whether the backends' replies cross the LB, to be counted.
    pub const fn sees_replies(self) -> bool {
        !matches!(self, Forwarding::Dsr)
    }

    /// What the mode cannot do because the backends' replies bypass the LB,
    /// for `ctl status`; `None` when nothing is lost.
    pub const fn limits(self) -> Option<&'static str> {
        match self {
            Forwarding::FullNat | Forwarding::Gateway => None,
            Forwarding::Dsr => Some(
                "replies bypass the LB: no backend-side signals (refusals, resets, FINs, bytes out); drains end \
                 flows by client FIN/RST or idle timeout; shifts see no failed connections (only health checks take a failing backend out)",
            ),
        }
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Forwarding {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [Forwarding::FullNat, Forwarding::Gateway, Forwarding::Dsr]
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or_else(|| format!("forwarding {text:?}: expected \"full-nat\", \"gateway\" or \"dsr\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_their_names_and_program_their_wire_value() {
        for (mode, wire) in [
            (Forwarding::FullNat, FORWARDING_FULL_NAT),
            (Forwarding::Gateway, FORWARDING_GATEWAY),
            (Forwarding::Dsr, FORWARDING_DSR),
        ] {
            assert_eq!(mode.name().parse::<Forwarding>(), Ok(mode));
            let mut service = Service::default();
            mode.program(&mut service);
            assert_eq!(service.forwarding, wire);
            assert_eq!(
                mode.limits().is_some(),
                mode == Forwarding::Dsr,
                "only dsr loses the reply path"
            );
            assert_eq!(mode.sees_replies(), mode.limits().is_none());
            assert_eq!(mode.uses_snat(), mode == Forwarding::FullNat);
        }
        assert!("nat".parse::<Forwarding>().is_err());
    }
}
