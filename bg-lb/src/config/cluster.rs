//! `[cluster]`: the etcd that holds the fleet's operator state.

use toml::Spanned;

use super::{ClusterConfig, DEFAULT_CLUSTER_PREFIX, error::Invalid, raw::RawCluster};

/// etcd clusters have 1, 3, 5 or 7 members; a list can name each.
const MAX_ENDPOINTS: usize = 7;
/// A host name is a key segment and a label in logs: short, no `/`.
const MAX_HOST_NAME: usize = 63;

pub(super) fn cluster(raw: &RawCluster) -> Result<ClusterConfig, Invalid> {
    let urls = raw.etcd.get_ref();
    if urls.is_empty() || urls.len() > MAX_ENDPOINTS {
        return Invalid::at(
            raw.etcd.span(),
            format!("cluster.etcd lists {} URLs; it needs 1 to {MAX_ENDPOINTS}", urls.len()),
        );
    }
    Ok(ClusterConfig {
        etcd: urls.iter().map(endpoint).collect::<Result<_, _>>()?,
        host: host_name(&raw.host)?,
        prefix: prefix(raw.prefix.as_ref())?,
    })
}

/// `http://HOST:PORT` to `HOST:PORT`: the client speaks plain HTTP/1.1 to
/// etcd's JSON gateway (see [`crate::cluster::etcd`]), so no TLS and no path.
fn endpoint(url: &Spanned<String>) -> Result<String, Invalid> {
    let text = url.get_ref();
    let authority = text.strip_prefix("http://").unwrap_or_default().trim_end_matches('/');
    let port_ok = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || authority.contains(['/', '@', ' ']) {
        return Invalid::at(
            url.span(),
            format!("cluster.etcd {text:?} must be http://HOST:PORT (an etcd client URL without TLS or path)"),
        );
    }
    Ok(authority.to_owned())
}

fn host_name(name: &Spanned<String>) -> Result<String, Invalid> {
    let text = name.get_ref();
    let valid = !text.is_empty()
        && text.len() <= MAX_HOST_NAME
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Invalid::at(
            name.span(),
            format!(
                "cluster.host {text:?} must be 1 to {MAX_HOST_NAME} letters, digits, `-`, `_` or `.`, unique in the \
                 fleet"
            ),
        );
    }
    Ok(text.clone())
}

fn prefix(value: Option<&Spanned<String>>) -> Result<String, Invalid> {
    let Some(value) = value else {
        return Ok(DEFAULT_CLUSTER_PREFIX.to_owned());
    };
    let text = value.get_ref();
    if !text.starts_with('/') || text.ends_with('/') || text.contains("//") {
        return Invalid::at(
            value.span(),
            format!("cluster.prefix {text:?} must start with `/` and not end with one, like \"/bg-lb\""),
        );
    }
    Ok(text.clone())
}

#[cfg(test)]
mod tests {
    use crate::config::{
        ClusterConfig,
        test_support::{TOP, assert_rejected, parse_ok},
    };

    #[test]
    fn without_a_cluster_table_the_state_is_this_hosts_alone() {
        assert_eq!(parse_ok(TOP).cluster, None);
    }

    #[test]
    fn cluster_keys_are_read_with_the_default_prefix() {
        let config = parse_ok(&format!(
            "{TOP}[cluster]\netcd = [\"http://10.0.0.5:2379\", \"http://etcd-2.example:2379/\"]\nhost = \"lb-1\"\n"
        ));
        assert_eq!(
            config.cluster,
            Some(ClusterConfig {
                etcd: vec!["10.0.0.5:2379".into(), "etcd-2.example:2379".into()],
                host: "lb-1".into(),
                prefix: "/bg-lb".into(),
            })
        );
        let config = parse_ok(&format!(
            "{TOP}[cluster]\netcd = [\"http://[::1]:2379\"]\nhost = \"a\"\nprefix = \"/lb/eu\"\n"
        ));
        assert_eq!(config.cluster.unwrap().prefix, "/lb/eu");
    }

    #[test]
    fn bad_cluster_values_are_rejected_on_their_line() {
        for bad in [
            "https://10.0.0.5:2379",
            "10.0.0.5:2379",
            "http://10.0.0.5",
            "http://10.0.0.5:0",
            "http://10.0.0.5:2379/v3",
            "http://:2379",
        ] {
            assert_rejected(
                &format!("{TOP}[cluster]\netcd = [{bad:?}]  # <-\nhost = \"a\"\n"),
                "must be http://HOST:PORT",
            );
        }
        assert_rejected(
            &format!("{TOP}[cluster]\netcd = []  # <-\nhost = \"a\"\n"),
            "needs 1 to 7",
        );
        for bad in ["", "a/b", "lb 1"] {
            assert_rejected(
                &format!("{TOP}[cluster]\netcd = [\"http://e:1\"]\nhost = {bad:?}  # <-\n"),
                "cluster.host",
            );
        }
        for bad in ["bg-lb", "/bg-lb/", "/a//b"] {
            assert_rejected(
                &format!("{TOP}[cluster]\netcd = [\"http://e:1\"]\nhost = \"a\"\nprefix = {bad:?}  # <-\n"),
                "cluster.prefix",
            );
        }
    }
}
