//! Config reload: a new config replaces the running one only if it is valid
//! and changes nothing that needs a restart.

use std::time::SystemTime;

use super::{Daemon, RequestError, preflight};
use crate::config::{self, Config};

impl Daemon {
    /// Re-reads the config. An invalid config, or one changing what only a
    /// restart can change, is rejected and the running config stays. Either
    /// way the outcome is counted for metrics, and systemd sees RELOADING=1
    /// before and READY=1 after.
    pub fn reload(&mut self) -> Result<String, RequestError> {
        self.notify_reloading();
        let result = self.reload_config();
        self.reloads.record(result.is_ok(), SystemTime::now());
        self.notify_reloaded(&result);
        result
    }

    fn reload_config(&mut self) -> Result<String, RequestError> {
        let new = config::load(&self.config_path).map_err(RequestError::ConfigInvalid)?;
        let new = super::added_backends::with_added_backends(new, &self.operator);
        if let Some(what) = restart_only_change(&self.config, &new) {
            return Err(RequestError::RestartNeeded(what));
        }
        for service in &new.services {
            if let Some(old) = self
                .config
                .services
                .iter()
                .find(|s| s.vips.iter().any(|v| service.vips.contains(v)))
                && old.lookup_table_size != service.lookup_table_size
            {
                return Err(RequestError::LookupTableSizeChanged {
                    service: service.name.clone(),
                });
            }
        }
        let old = std::mem::replace(&mut self.config, new);
        if let Err(e) = self.apply_all() {
            self.config = old;
            let _ = self.apply_all();
            return Err(RequestError::ConfigNotApplied(e));
        }
        self.restart_probes();
        preflight::warn_dsr_backends_not_on_link(&self.config);
        preflight::stop_icmp_redirects_under_gateway(&self.config);
        tracing::info!(path = %self.config_path.display(), "config reloaded");
        Ok(format!("reloaded {}", self.config_path.display()))
    }
}

/// Settings baked into the loaded data plane or the daemon's sockets.
fn restart_only_change(old: &Config, new: &Config) -> Option<&'static str> {
    [
        (old.interfaces != new.interfaces, "the interfaces"),
        (old.xdp_mode != new.xdp_mode, "xdp_mode"),
        (old.snat_addresses != new.snat_addresses, "the SNAT addresses"),
        (old.snat_ports != new.snat_ports, "snat_ports"),
        (old.max_flows != new.max_flows, "max_flows"),
        (old.lookup_capacity != new.lookup_capacity, "lookup_capacity"),
        (old.pin_dir != new.pin_dir, "pin_dir"),
        (old.state_dir != new.state_dir, "state_dir"),
        (old.admin != new.admin, "[admin]"),
        (old.bgp != new.bgp, "[bgp]"),
        (old.cluster != new.cluster, "[cluster]"),
        (old.metrics != new.metrics, "metrics"),
        (old.api != new.api, "[api]"),
        (
            old.metrics_limits != new.metrics_limits,
            "metrics_max_connections/metrics_idle_timeout",
        ),
    ]
    .into_iter()
    .find_map(|(changed, what)| changed.then_some(what))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    pub(super) fn config(extra: &str) -> Config {
        let text = format!("interface = \"eth0\"\nsnat_address = \"10.0.0.1\"\n{extra}");
        config::parse(Path::new("test.toml"), &text).unwrap()
    }

    #[test]
    pub(super) fn turning_metrics_on_off_or_moving_them_needs_a_restart() {
        let off = config("");
        let on = config("metrics = \"127.0.0.1:9750\"\n");
        let moved = config("metrics = \"127.0.0.1:9751\"\n");
        assert_eq!(restart_only_change(&off, &on), Some("metrics"));
        assert_eq!(restart_only_change(&on, &off), Some("metrics"));
        assert_eq!(restart_only_change(&on, &moved), Some("metrics"));
        assert_eq!(restart_only_change(&on, &on.clone()), None);
    }

    #[test]
    fn turning_bgp_on_off_or_changing_it_needs_a_restart() {
        let off = config("");
        let on = config("[bgp]\n");
        let other = config("[bgp]\nbird_socket = \"/run/bird/other.ctl\"\n");
        assert_eq!(restart_only_change(&off, &on), Some("[bgp]"));
        assert_eq!(restart_only_change(&on, &off), Some("[bgp]"));
        assert_eq!(restart_only_change(&on, &other), Some("[bgp]"));
        assert_eq!(restart_only_change(&on, &on.clone()), None);
    }

    #[test]
    fn joining_leaving_or_changing_a_cluster_needs_a_restart() {
        let alone = config("");
        let fleet = config("[cluster]\netcd = [\"http://10.0.9.1:2379\"]\nhost = \"lb1\"\n");
        let renamed = config("[cluster]\netcd = [\"http://10.0.9.1:2379\"]\nhost = \"lb2\"\n");
        assert_eq!(restart_only_change(&alone, &fleet), Some("[cluster]"));
        assert_eq!(restart_only_change(&fleet, &alone), Some("[cluster]"));
        assert_eq!(restart_only_change(&fleet, &renamed), Some("[cluster]"));
        assert_eq!(restart_only_change(&fleet, &fleet.clone()), None);
    }

    #[test]
    fn changing_the_snat_addresses_needs_a_restart_but_rewriting_the_same_one_does_not() {
        let parse = |text: &str| config::parse(Path::new("test.toml"), text).unwrap();
        let one = config("");
        let listed = parse("interface = \"eth0\"\nsnat_addresses = [\"10.0.0.1\"]\n");
        let two = parse("interface = \"eth0\"\nsnat_addresses = [\"10.0.0.1\", \"10.0.0.2\"]\n");
        let swapped = parse("interface = \"eth0\"\nsnat_addresses = [\"10.0.0.2\", \"10.0.0.1\"]\n");
        assert_eq!(restart_only_change(&one, &listed), None);
        assert_eq!(restart_only_change(&one, &two), Some("the SNAT addresses"));
        // The first address is the probes' source and flows keep theirs: order matters.
        assert_eq!(restart_only_change(&two, &swapped), Some("the SNAT addresses"));
    }
}
