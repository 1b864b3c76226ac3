//! Flood state in the log: once a second the daemon asks the data plane
//! which services' SYN proxies are on, and logs each change, one line per
//! service and change (the data plane itself logs nothing per SYN).

use std::time::Instant;

use bg_lb_common::counters::Counter;

use super::{Daemon, RequestError};
use crate::dataplane::syn_proxy::SynProxyMode;

/// A service whose proxy engaged in auto mode: since when, and the SYN
/// proxy counters then (they are global, for every service).
#[derive(Debug)]
pub(super) struct Flooded {
    since: Instant,
    counters: [u64; PROXY_COUNTERS.len()],
}

/// What an engagement's log lines report.
const PROXY_COUNTERS: [Counter; 3] = [
    Counter::SynCookieSent,
    Counter::SynCookieValid,
    Counter::SynCookieInvalid,
];

impl Daemon {
    /// Logs auto-mode services whose SYN proxy went on or off since the
    /// last look.
    pub(super) fn log_syn_floods(&mut self) -> Result<(), RequestError> {
        let services: Vec<_> = self
            .config
            .services
            .iter()
            .filter(|s| s.syn_proxy.mode == SynProxyMode::Auto)
            .cloned()
            .collect();
        for service in services {
            let active = self.syn_proxy_status(&service)?.active;
            let was = self.flooded.contains_key(&service.name);
            if active == was {
                continue;
            }
            let counters = self.proxy_counters()?;
            if active {
                tracing::warn!(
                    service = service.name,
                    vip = %service.vip(),
                    threshold = service.syn_proxy.threshold,
                    "SYN flood: more connection requests left unanswered in a second than the threshold; \
                     the SYN proxy answers the service's SYNs with SYN cookies"
                );
                let since = Instant::now();
                self.flooded.insert(service.name, Flooded { since, counters });
            } else if let Some(flood) = self.flooded.remove(&service.name) {
                let [sent, valid, invalid] = std::array::from_fn(|i| counters[i] - flood.counters[i]);
                tracing::info!(
                    service = service.name,
                    vip = %service.vip(),
                    lasted_secs = flood.since.elapsed().as_secs(),
                    cookies_sent = sent,
                    cookies_valid = valid,
                    cookies_invalid = invalid,
                    "SYN flood over: the SYN proxy is off again (cookie counts are of every service)"
                );
            }
        }
        Ok(())
    }

    fn proxy_counters(&self) -> Result<[u64; PROXY_COUNTERS.len()], RequestError> {
        let all = self.dataplane.counters()?;
        Ok(PROXY_COUNTERS.map(|wanted| {
            all.iter()
                .find(|(counter, _)| *counter == wanted)
                .map_or(0, |(_, n)| *n)
        }))
    }
}
