//! The VIP announcements (`[bgp]`): what can serve, kept in line with BIRD
//! after every request, health report and housekeeping tick (which also
//! retries a failed `birdc configure`).

use super::{Daemon, RequestError, probes::check_keys};
use crate::{
    bgp::{self, speaker::Speaker},
    desired::{Health, HealthView},
    health::Failure,
    protocol::{BgpStatus, NodeAction, Reply},
};

impl Daemon {
    /// The speaker for the config's `[bgp]`, if any.
    pub(super) fn speaker_for(config: &crate::config::Config) -> Option<Speaker> {
        config.bgp.clone().map(Speaker::new)
    }

    /// Announces what can serve and withdraws the rest. A failure is the
    /// speaker's to log and show; it never fails the caller.
    pub fn announce(&mut self) {
        if self.speaker.is_none() {
            return;
        }
        let wanted = bgp::wanted(&self.config, &self.operator, &self.announce_health());
        if let Some(speaker) = &mut self.speaker {
            let _ = speaker.sync(&wanted);
        }
    }

    /// The health announcements go by: a check without a result yet counts
    /// as down unless the last daemon saw it up. The data plane serves such
    /// a backend at once (a first start must), but a new host must not draw
    /// its share of the routers' flows before one of its backends answered;
    /// a restarted one keeps what it announced.
    fn announce_health(&self) -> Health {
        let mut health = self.health.clone();
        for key in self.config.services.iter().flat_map(check_keys) {
            if !health.contains_key(&key) && !self.last_health.was_up(&key) {
                let view = HealthView {
                    up: false,
                    last: Err(Failure::NotCheckedYet),
                };
                health.insert(key, view);
            }
        }
        health
    }

    /// Stopping for good: nothing stays announced, and the routers get
    /// [`bgp::WITHDRAW_GRACE`] to reroute before the caller detaches. Best
    /// effort: the include file is emptied even if BIRD cannot be told now,
    /// so it announces nothing when it next reads its config.
    pub(super) fn withdraw_all(&mut self) {
        if let Some(speaker) = &mut self.speaker {
            match speaker.sync(&Default::default()) {
                Ok(()) => {
                    tracing::info!(grace = ?bgp::WITHDRAW_GRACE, "every VIP withdrawn from BIRD; detaching after the grace");
                    std::thread::sleep(bgp::WITHDRAW_GRACE);
                }
                Err(error) => tracing::error!(%error, "the VIPs may still be announced"),
            }
        }
    }

    /// `ctl node drain` / `ctl node resume`: persisted, so a restarted
    /// daemon keeps a drained host withdrawn.
    pub(super) fn set_node(&mut self, action: NodeAction) -> Result<Reply, RequestError> {
        if self.speaker.is_none() {
            return Err(RequestError::NoBgp);
        }
        let drained = action == NodeAction::Drain;
        let previous = self.operator.node_drained;
        self.operator.node_drained = drained;
        if let Err(e) = self.store.save(&self.operator) {
            self.operator.node_drained = previous;
            return Err(RequestError::NotPersisted(e));
        }
        self.announce();
        let status = self.bgp_status().expect("a speaker");
        let what = if drained {
            "node drained: every VIP withdrawn; the routers send this host's flows, open ones included, to the other \
             hosts"
        } else {
            "node resumed: the VIPs that can serve are announced"
        };
        let message = match (status.last_configure_ok, &status.last_configure) {
            (false, Some(error)) => format!("{what}, but BIRD has not taken it yet (retrying): {error}"),
            _ => what.to_owned(),
        };
        tracing::info!(drained, "{message}");
        Ok(Reply::done(message))
    }

    pub(super) fn bgp_status(&self) -> Option<BgpStatus> {
        let speaker = self.speaker.as_ref()?;
        Some(speaker.status(&bgp::vip_addresses(&self.config), self.operator.node_drained))
    }

    /// `bglb_vip_announced`: every VIP address with whether BIRD announces
    /// it; none without `[bgp]`.
    pub(super) fn vips_announced(&self) -> Vec<(std::net::IpAddr, bool)> {
        let Some(speaker) = &self.speaker else {
            return Vec::new();
        };
        bgp::vip_addresses(&self.config)
            .into_iter()
            .map(|address| (address, speaker.announces(address)))
            .collect()
    }
}
