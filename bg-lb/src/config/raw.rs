//! The file as serde sees it: what was written, before any of it is checked.
//!
//! Values that validation may complain about are `Spanned` so the error can point at them; integers are `i64` (TOML's integer type) so out-of-range values get our message rather than serde's.
//! Tables themselves are not wrapped: `Spanned` tables break on dotted keys (`admin.socket = ...`) in toml 0.8.

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) interface: Option<Spanned<String>>,
    pub(super) front_interface: Option<Spanned<String>>,
    pub(super) back_interface: Option<Spanned<String>>,
    pub(super) xdp_mode: Option<Spanned<String>>,
    pub(super) snat_address: Option<Spanned<String>>,
    pub(super) snat_addresses: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) snat_ports: Option<Spanned<String>>,
    pub(super) max_flows: Option<Spanned<i64>>,
    pub(super) lookup_capacity: Option<Spanned<i64>>,
    pub(super) pin_dir: Option<Spanned<String>>,
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) metrics: Option<Spanned<String>>,
    pub(super) metrics_max_connections: Option<Spanned<i64>>,
    pub(super) metrics_idle_timeout: Option<Spanned<String>>,
    pub(super) api: Option<RawApi>,
    pub(super) timeouts: Option<RawTimeouts>,
    pub(super) bgp: Option<RawBgp>,
    pub(super) cluster: Option<RawCluster>,
    #[serde(default)]
    pub(super) service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    pub(super) bird_include: Option<Spanned<String>>,
    pub(super) birdc: Option<Spanned<String>>,
    pub(super) bird_socket: Option<Spanned<String>>,
    pub(super) protocol_name: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) etcd: Spanned<Vec<Spanned<String>>>,
    pub(super) host: Spanned<String>,
    pub(super) prefix: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) listen: Spanned<String>,
    pub(super) token_file: Spanned<String>,
    pub(super) read_only_token_file: Option<Spanned<String>>,
    pub(super) tls_cert: Option<Spanned<String>>,
    pub(super) tls_key: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) socket: Option<Spanned<String>>,
    pub(super) group: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) established_idle: Option<Spanned<String>>,
    pub(super) closing: Option<Spanned<String>>,
    pub(super) syn: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) vip: Spanned<OneOrList>,
    pub(super) standby_vip: Option<Spanned<OneOrList>>,
    pub(super) ratio: Option<Spanned<String>>,
    pub(super) lookup_table_size: Option<Spanned<i64>>,
    pub(super) syn_proxy: Option<Spanned<String>>,
    pub(super) syn_proxy_threshold: Option<Spanned<i64>>,
    pub(super) syn_proxy_mss: Option<Spanned<i64>>,
    pub(super) forwarding: Option<Spanned<String>>,
    pub(super) affinity: Option<Spanned<String>>,
    pub(super) slowstart: Option<Spanned<String>>,
    pub(super) drain_deadline: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) udp_idle: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) backend: Vec<RawBackend>,
    pub(super) health: Option<RawHealth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(rename = "type")]
    pub(super) check: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) fast_interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rise: Option<Spanned<i64>>,
    pub(super) fall: Option<Spanned<i64>>,
    pub(super) on_down: Option<Spanned<String>>,
    pub(super) live_path: Option<Spanned<String>>,
    pub(super) standby_path: Option<Spanned<String>>,
    pub(super) expect_status: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) expect_body: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) request: Option<Spanned<String>>,
    pub(super) expect: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) pool: Spanned<String>,
    pub(super) address: Spanned<String>,
    pub(super) weight: Option<Spanned<i64>>,
}

/// A key that takes one string or a list of them (`vip = "10.0.0.100:80"`
/// or `vip = ["10.0.0.100:80", "[fd00::100]:80"]`). Hand-written rather
/// than `#[serde(untagged)]`, which buffers the value and so loses the
/// items' spans.
#[derive(Debug)]
pub(super) enum OneOrList {
    One(String),
    List(Vec<Spanned<String>>),
}

impl OneOrList {
    /// Each item with where it was written (`span`: where the whole value was).
    pub(super) fn items(value: &Spanned<OneOrList>) -> Vec<Spanned<String>> {
        match value.get_ref() {
            OneOrList::One(text) => vec![Spanned::new(value.span(), text.clone())],
            OneOrList::List(items) => items.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for OneOrList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrList;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address or a list of addresses")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<OneOrList, E> {
                Ok(OneOrList::One(text.to_owned()))
            }

            fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<OneOrList, S::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrList::List(items))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{
        config::test_support::{BLUE, TOP, WEB, assert_rejected, backend, parse_ok},
        ratio::Pool,
    };

    #[test]
    fn dotted_and_inline_tables_are_accepted() {
        let config = parse_ok(&format!(
            "{TOP}admin.group = \"ops\"\ntimeouts = {{ closing = \"1s\" }}\n\
             service = [{{ name = \"a\", vip = \"10.0.0.100:80\", \
             backend = [{{ pool = \"green\", address = \"10.0.2.1:80\" }}] }}]\n"
        ));
        assert_eq!(config.admin.group.as_deref(), Some("ops"));
        assert_eq!(config.timeouts.closing, Duration::from_secs(1));
        assert_eq!(config.services[0].backends, [backend(Pool::Green, "10.0.2.1:80", 100)]);
    }

    #[test]
    fn wrong_value_types_are_located() {
        assert_rejected(
            &format!("{TOP}max_flows = \"many\"  # <-\n"),
            "invalid type: string \"many\", expected i64",
        );
        assert_rejected(&format!("{TOP}{WEB}backend = \"x\"  # <-\n"), "expected a sequence");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        assert_rejected(
            &format!("{TOP}interfaces = [\"eth0\"]  # <-\n"),
            "unknown field `interfaces`",
        );
        assert_rejected(
            &format!("{TOP}[admin]\nsocket_path = \"/x\"  # <-\n"),
            "unknown field `socket_path`",
        );
        assert_rejected(&format!("{TOP}[timeouts]\nfin = \"1s\"  # <-\n"), "unknown field `fin`");
        assert_rejected(&format!("{TOP}[stats]  # <-\n"), "unknown field `stats`");
        assert_rejected(&format!("{TOP}{WEB}weight = 1  # <-\n"), "unknown field `weight`");
        assert_rejected(&format!("{TOP}{WEB}{BLUE}port = 80  # <-\n"), "unknown field `port`");
    }

    #[test]
    fn missing_required_keys_point_at_their_table() {
        assert_rejected("interface = \"eth0\"  # <-\n", "no SNAT address: set `snat_address`");
        assert_rejected(
            &format!("{TOP}[[service]]  # <-\nvip = \"10.0.0.100:80\"\n"),
            "missing field `name`",
        );
        assert_rejected(
            &format!("{TOP}[[service]]  # <-\nname = \"web\"\n"),
            "missing field `vip`",
        );
        assert_rejected(
            &format!("{TOP}{WEB}[[service.backend]]  # <-\naddress = \"10.0.1.1:80\"\n"),
            "missing field `pool`",
        );
        assert_rejected(
            &format!("{TOP}{WEB}[[service.backend]]  # <-\npool = \"blue\"\n"),
            "missing field `address`",
        );
    }
}
