//! `[api]`: the remote API's listener, tokens and TLS files. The files are
//! read when the listener starts (see [`crate::api`]), not here: checking a
//! config (`bg-lb check`) needs no access to secrets.

use std::path::PathBuf;

use toml::Spanned;

use super::{
    ApiConfig, DEFAULT_API_LIMITS, TlsFiles,
    error::Invalid,
    raw::RawApi,
    validate::listener_limits,
    values::{absolute_path, listen_address},
};

pub(super) fn api(raw: &RawApi) -> Result<ApiConfig, Invalid> {
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: path(cert, "api.tls_cert")?,
            key: path(key, "api.tls_key")?,
        }),
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => {
            return Invalid::at(
                one.span(),
                "api.tls_cert and api.tls_key go together: give both or neither",
            );
        }
    };
    Ok(ApiConfig {
        listen: listen_address(&raw.listen, "api.listen")?,
        token_file: path(&raw.token_file, "api.token_file")?,
        read_only_token_file: raw
            .read_only_token_file
            .as_ref()
            .map(|p| path(p, "api.read_only_token_file"))
            .transpose()?,
        tls,
        limits: listener_limits(
            (raw.max_connections.as_ref(), "api.max_connections"),
            (raw.idle_timeout.as_ref(), "api.idle_timeout"),
            DEFAULT_API_LIMITS,
        )?,
    })
}

fn path(value: &Spanned<String>, key: &str) -> Result<PathBuf, Invalid> {
    absolute_path(Some(value), key, "")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{self, Config};

    fn parse(api: &str) -> Result<Config, String> {
        let text = format!("interface = \"eth0\"\nsnat_address = \"10.0.0.1\"\n[api]\n{api}");
        config::parse(Path::new("test.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_api_is_off_unless_configured_and_takes_its_defaults() {
        let off = config::parse(
            Path::new("t.toml"),
            "interface = \"eth0\"\nsnat_address = \"10.0.0.1\"\n",
        )
        .unwrap();
        assert_eq!(off.api, None);
        let on = parse("listen = \"127.0.0.1:9751\"\ntoken_file = \"/etc/bg-lb/api.token\"\n").unwrap();
        assert_eq!(
            on.api,
            Some(ApiConfig {
                listen: "127.0.0.1:9751".parse().unwrap(),
                token_file: "/etc/bg-lb/api.token".into(),
                read_only_token_file: None,
                tls: None,
                limits: DEFAULT_API_LIMITS,
            })
        );
    }

    #[test]
    fn bad_api_settings_are_rejected_at_their_line() {
        let cases = [
            ("listen = \"127.0.0.1:9751\"\n", "missing field `token_file`"),
            (
                "listen = \"127.0.0.1:0\"\ntoken_file = \"/t\"\n",
                "api.listen \"127.0.0.1:0\": port 0 is not allowed",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntoken_file = \"t\"\n",
                "api.token_file \"t\" must be an absolute path",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntoken_file = \"/t\"\ntls_cert = \"/c\"\n",
                "give both or neither",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntoken_file = \"/t\"\nmax_connections = 0\n",
                "api.max_connections",
            ),
        ];
        for (api, reason) in cases {
            let err = parse(api).unwrap_err();
            assert!(err.contains(reason), "{api}: {err}");
            assert!(err.contains("test.toml:"), "{api}: names the file and line: {err}");
        }
    }
}
