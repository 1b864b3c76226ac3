//! The SYN proxy as userspace sees it: a service's settings
//! ([`SynProxy`]), the bits they write into its SERVICES entry, and whether
//! the proxy answers the service's SYNs now (its flood detector's verdict).
//! The data plane's side is bg-lb-ebpf's `synproxy`; the rules both read
//! are in [`bg_lb_common::syn_proxy`].

use std::{fmt, str::FromStr};

use bg_lb_common::{
    maps::{Service, SynFlood},
    syn_proxy::{DEFAULT_OFFERED_MSS, DEFAULT_THRESHOLD, SYN_PROXY_ALWAYS, SYN_PROXY_AUTO},
};

/// When a service answers SYNs with SYN cookies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynProxyMode {
    /// Never: every SYN goes to a backend.
    Off,
    /// While the flood detector says the service is flooded.
    #[default]
    Auto,
    /// Always.
    Always,
}

impl SynProxyMode {
    pub const fn name(self) -> &'static str {
        match self {
            SynProxyMode::Off => "off",
            SynProxyMode::Auto => "auto",
            SynProxyMode::Always => "always",
        }
    }

    const fn flags(self) -> u32 {
        match self {
            SynProxyMode::Off => 0,
            SynProxyMode::Auto => SYN_PROXY_AUTO,
            SynProxyMode::Always => SYN_PROXY_ALWAYS,
        }
    }
}

impl fmt::Display for SynProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SynProxyMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "off" => Ok(SynProxyMode::Off),
            "auto" => Ok(SynProxyMode::Auto),
            "always" => Ok(SynProxyMode::Always),
            other => Err(format!("syn_proxy {other:?}: expected \"auto\", \"always\" or \"off\"")),
        }
    }
}

/// A service's SYN proxy settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SynProxy {
    pub mode: SynProxyMode,
    /// Auto mode: connection requests in one second that clients leave
    /// unanswered before the proxy engages.
    pub threshold: u32,
    /// The MSS the proxy's SYN-ACKs offer clients.
    pub mss: u16,
}

impl Default for SynProxy {
    fn default() -> Self {
        SynProxy {
            mode: SynProxyMode::default(),
            threshold: DEFAULT_THRESHOLD,
            mss: DEFAULT_OFFERED_MSS,
        }
    }
}

impl SynProxy {
    /// Writes these settings into a service's SERVICES entry.
    pub fn program(&self, service: &mut Service) {
        service.flags = self.mode.flags();
        service.syn_proxy_threshold = self.threshold;
        service.syn_proxy_mss = self.mss;
    }
}

/// Whether a service with SERVICES entry `service` and flood detector
/// `flood` answers SYNs with cookies at `now_ns` (the data plane's clock).
pub fn is_active(service: &Service, flood: &SynFlood, now_ns: u64) -> bool {
    bg_lb_common::syn_proxy::is_active(service.flags, flood, now_ns)
}

#[cfg(test)]
mod tests {
    use bg_lb_common::syn_proxy::HOLD_NS;

    use super::*;

    #[test]
    fn modes_parse_from_their_names() {
        for mode in [SynProxyMode::Off, SynProxyMode::Auto, SynProxyMode::Always] {
            assert_eq!(mode.name().parse::<SynProxyMode>(), Ok(mode));
        }
        assert!("on".parse::<SynProxyMode>().is_err());
    }

    #[test]
    fn settings_program_the_service_entry_and_the_entry_says_when_the_proxy_is_on() {
        let mut service = Service::default();
        let auto = SynProxy {
            threshold: 7,
            mss: 1400,
            ..SynProxy::default()
        };
        auto.program(&mut service);
        assert_eq!(
            (service.flags, service.syn_proxy_threshold, service.syn_proxy_mss),
            (SYN_PROXY_AUTO, 7, 1400)
        );
        let flooded = SynFlood {
            active_until_ns: HOLD_NS,
            ..SynFlood::default()
        };
        assert!(is_active(&service, &flooded, HOLD_NS - 1));
        assert!(!is_active(&service, &flooded, HOLD_NS));

        SynProxy {
            mode: SynProxyMode::Off,
            ..auto
        }
        .program(&mut service);
        assert!(!is_active(&service, &flooded, 0));
        SynProxy {
            mode: SynProxyMode::Always,
            ..auto
        }
        .program(&mut service);
        assert!(is_active(&service, &SynFlood::default(), 0));
    }
}
