//! `[bgp]`: how the daemon drives the host's BIRD to announce its VIPs.

use std::path::PathBuf;

use toml::Spanned;

use super::{
    BgpConfig, DEFAULT_BGP_PROTOCOL, DEFAULT_BIRD_INCLUDE, DEFAULT_BIRD_SOCKET, DEFAULT_BIRDC, error::Invalid,
    raw::RawBgp, values::absolute_path,
};

/// BIRD's symbol names: a letter or `_`, then letters, digits and `_`.
const MAX_PROTOCOL_NAME: usize = 64;

pub(super) fn bgp(raw: &RawBgp) -> Result<BgpConfig, Invalid> {
    Ok(BgpConfig {
        bird_include: absolute_path(raw.bird_include.as_ref(), "bgp.bird_include", DEFAULT_BIRD_INCLUDE)?,
        birdc: birdc(raw.birdc.as_ref())?,
        bird_socket: absolute_path(raw.bird_socket.as_ref(), "bgp.bird_socket", DEFAULT_BIRD_SOCKET)?,
        protocol_name: protocol_name(raw.protocol_name.as_ref())?,
    })
}

/// A program name looked up in `PATH`, or an absolute path: a relative path
/// would depend on the daemon's working directory.
fn birdc(value: Option<&Spanned<String>>) -> Result<PathBuf, Invalid> {
    let Some(value) = value else {
        return Ok(PathBuf::from(DEFAULT_BIRDC));
    };
    let text = value.get_ref();
    if text.is_empty() || (text.contains('/') && !text.starts_with('/')) {
        return Invalid::at(
            value.span(),
            format!("bgp.birdc {text:?} must be a program name (found in PATH) or an absolute path"),
        );
    }
    Ok(PathBuf::from(text))
}

/// The name goes into BIRD's config as a symbol, so it must be one.
fn protocol_name(value: Option<&Spanned<String>>) -> Result<String, Invalid> {
    let Some(value) = value else {
        return Ok(DEFAULT_BGP_PROTOCOL.to_owned());
    };
    let name = value.get_ref();
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_PROTOCOL_NAME;
    if !valid {
        return Invalid::at(
            value.span(),
            format!(
                "bgp.protocol_name {name:?} is not a BIRD symbol: a letter or `_`, then letters, digits or `_`, \
                 at most {MAX_PROTOCOL_NAME} characters"
            ),
        );
    }
    Ok(name.clone())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::{
        BgpConfig,
        test_support::{TOP, assert_rejected, parse_ok},
    };

    #[test]
    fn without_a_bgp_table_nothing_is_announced() {
        assert_eq!(parse_ok(TOP).bgp, None);
    }

    #[test]
    fn an_empty_bgp_table_takes_the_defaults() {
        let config = parse_ok(&format!("{TOP}[bgp]\n"));
        assert_eq!(
            config.bgp,
            Some(BgpConfig {
                bird_include: PathBuf::from("/run/bg-lb/bird-vips.conf"),
                birdc: PathBuf::from("birdc"),
                bird_socket: PathBuf::from("/run/bird/bird.ctl"),
                protocol_name: "bglb_vips".into(),
            })
        );
    }

    #[test]
    fn bgp_keys_are_read() {
        let config = parse_ok(&format!(
            "{TOP}[bgp]\nbird_include = \"/etc/bird/vips.conf\"\nbirdc = \"/usr/sbin/birdc\"\n\
             bird_socket = \"/run/bird/x.ctl\"\nprotocol_name = \"lb_1\"\n"
        ));
        let bgp = config.bgp.unwrap();
        assert_eq!(bgp.bird_include, PathBuf::from("/etc/bird/vips.conf"));
        assert_eq!(bgp.birdc, PathBuf::from("/usr/sbin/birdc"));
        assert_eq!(bgp.bird_socket, PathBuf::from("/run/bird/x.ctl"));
        assert_eq!(bgp.protocol_name, "lb_1");
    }

    #[test]
    fn bad_bgp_values_are_rejected_on_their_line() {
        assert_rejected(
            &format!("{TOP}[bgp]\nbird_include = \"vips.conf\"  # <-\n"),
            "bgp.bird_include \"vips.conf\" must be an absolute path",
        );
        assert_rejected(
            &format!("{TOP}[bgp]\nbird_socket = \"bird.ctl\"  # <-\n"),
            "bgp.bird_socket \"bird.ctl\" must be an absolute path",
        );
        assert_rejected(
            &format!("{TOP}[bgp]\nbirdc = \"bin/birdc\"  # <-\n"),
            "must be a program name (found in PATH) or an absolute path",
        );
        assert_rejected(&format!("{TOP}[bgp]\nbirdc = \"\"  # <-\n"), "bgp.birdc \"\"");
        for bad in ["1vips", "vips-1", "", "v ips", "v;}"] {
            assert_rejected(
                &format!("{TOP}[bgp]\nprotocol_name = {bad:?}  # <-\n"),
                "is not a BIRD symbol",
            );
        }
        assert_rejected(
            &format!("{TOP}[bgp]\nspeaker = \"gobgp\"  # <-\n"),
            "unknown field `speaker`",
        );
    }
}
