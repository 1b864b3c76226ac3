//! `[service.health]`: how a service's backends are checked.

use std::ops::{Range, RangeInclusive};

use toml::Spanned;

use super::{
    DEFAULT_EXPECT_STATUS, DEFAULT_FALL, DEFAULT_HEALTH_FAST_INTERVAL, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_LIVE_PATH, DEFAULT_RISE, DEFAULT_STANDBY_PATH, HealthCheck, HealthConfig, HttpCheck, OnDown, UdpCheck,
    error::Invalid,
    raw::RawHealth,
    values::{duration, integer_in},
};

const RISE_FALL_RANGE: RangeInclusive<i64> = 1..=100;
const HTTP_STATUS_RANGE: RangeInclusive<u16> = 100..=599;

pub(super) fn health(raw: &RawHealth) -> Result<HealthConfig, Invalid> {
    let check = match &raw.check {
        None => HealthCheck::Tcp,
        Some(check) => match check.get_ref().as_str() {
            "tcp" => HealthCheck::Tcp,
            "http" => HealthCheck::Http(http_check(raw)?),
            "udp" => HealthCheck::Udp(udp_check(raw)?),
            other => {
                return Invalid::at(
                    check.span(),
                    format!("unknown health.type {other:?} (expected tcp, http or udp)"),
                );
            }
        },
    };
    if !matches!(check, HealthCheck::Http(_)) {
        reject_keys(raw, http_keys(raw), "http")?;
    }
    if !matches!(check, HealthCheck::Udp(_)) {
        reject_keys(raw, udp_keys(raw), "udp")?;
    }
    let port = raw
        .port
        .as_ref()
        .map(|port| integer_in(port, "health.port", 1..=i64::from(u16::MAX)).map(|port| port as u16))
        .transpose()?;
    let interval = duration(raw.interval.as_ref(), "health.interval", DEFAULT_HEALTH_INTERVAL)?;
    let fast_interval = duration(
        raw.fast_interval.as_ref(),
        "health.fast_interval",
        DEFAULT_HEALTH_FAST_INTERVAL,
    )?;
    let timeout = duration(raw.timeout.as_ref(), "health.timeout", DEFAULT_HEALTH_TIMEOUT)?;
    // Point at the key that breaks the rule; when that one is absent (a default), at the key that was given.
    if fast_interval > interval {
        let (span, default) = given_or_default(&raw.fast_interval, &raw.interval);
        return Invalid::at(
            span,
            format!(
                "health.fast_interval {}{default} must be at most health.interval {}",
                humantime::format_duration(fast_interval),
                humantime::format_duration(interval),
            ),
        );
    }
    if timeout >= interval {
        let (span, default) = given_or_default(&raw.timeout, &raw.interval);
        return Invalid::at(
            span,
            format!(
                "health.timeout {}{default} must be less than health.interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval),
            ),
        );
    }
    let rise = match &raw.rise {
        Some(rise) => integer_in(rise, "health.rise", RISE_FALL_RANGE)?,
        None => DEFAULT_RISE,
    };
    let fall = match &raw.fall {
        Some(fall) => integer_in(fall, "health.fall", RISE_FALL_RANGE)?,
        None => DEFAULT_FALL,
    };
    let on_down = match &raw.on_down {
        Some(on_down) => OnDown::parse(on_down.get_ref()).ok_or_else(|| {
            Invalid::new(
                on_down.span(),
                format!(
                    "unknown health.on_down {:?} (expected drain or reset)",
                    on_down.get_ref()
                ),
            )
        })?,
        None => OnDown::default(),
    };
    Ok(HealthConfig {
        check,
        interval,
        fast_interval,
        timeout,
        rise,
        fall,
        on_down,
        port,
    })
}

/// Where to point when `key` breaks a rule against `other`: at `key` if it was given, else at `other` with a note
/// that `key` has its default (one of the two was given, as the defaults keep the rules).
fn given_or_default(key: &Option<Spanned<String>>, other: &Option<Spanned<String>>) -> (Range<usize>, &'static str) {
    match (key, other) {
        (Some(key), _) => (key.span(), ""),
        (None, Some(other)) => (other.span(), " (the default)"),
        // Only reachable if the defaults broke the rule themselves.
        (None, None) => (0..0, " (the default)"),
    }
}

/// The keys that only an HTTP check uses, in the order of `RawHealth`.
fn http_keys(raw: &RawHealth) -> [(&'static str, Option<&Spanned<String>>); 5] {
    [
        ("live_path", raw.live_path.as_ref()),
        ("standby_path", raw.standby_path.as_ref()),
        ("expect_status", raw.expect_status.as_ref()),
        ("host", raw.host.as_ref()),
        ("expect_body", raw.expect_body.as_ref()),
    ]
}

/// The keys that only a UDP check uses.
fn udp_keys(raw: &RawHealth) -> [(&'static str, Option<&Spanned<String>>); 2] {
    [("request", raw.request.as_ref()), ("expect", raw.expect.as_ref())]
}

/// Another check type ignores `keys`, which only a `wanted` check uses, so
/// one given there is a mistake: most likely a forgotten `type = "http"`.
fn reject_keys<const N: usize>(
    raw: &RawHealth,
    keys: [(&'static str, Option<&Spanned<String>>); N],
    wanted: &str,
) -> Result<(), Invalid> {
    let first = keys
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .min_by_key(|(_, value)| value.span().start);
    match first {
        Some((key, value)) => Invalid::at(
            value.span(),
            format!(
                "health.{key} needs type = \"{wanted}\" (the check type is {})",
                match &raw.check {
                    Some(check) => format!("{:?}", check.get_ref()),
                    None => "tcp by default".to_owned(),
                }
            ),
        ),
        None => Ok(()),
    }
}

/// `request` and `expect`, both required and non-empty.
fn udp_check(raw: &RawHealth) -> Result<UdpCheck, Invalid> {
    let required = |value: Option<&Spanned<String>>, key: &str| match value {
        Some(value) if value.get_ref().is_empty() => {
            Invalid::at(value.span(), format!("health.{key} must not be empty"))
        }
        Some(value) => Ok(value.get_ref().clone()),
        None => Invalid::at(
            raw.check.as_ref().map_or(0..0, |check| check.span()),
            format!("type = \"udp\" needs health.{key}: the datagram sent and a substring of the reply"),
        ),
    };
    Ok(UdpCheck {
        request: required(raw.request.as_ref(), "request")?,
        expect: required(raw.expect.as_ref(), "expect")?,
    })
}

fn http_check(raw: &RawHealth) -> Result<HttpCheck, Invalid> {
    let live_path = http_path(raw.live_path.as_ref(), "health.live_path", DEFAULT_LIVE_PATH)?;
    let standby_path = http_path(raw.standby_path.as_ref(), "health.standby_path", DEFAULT_STANDBY_PATH)?;
    let expect_status = raw
        .expect_status
        .as_ref()
        .map_or(Ok(DEFAULT_EXPECT_STATUS), expect_status)?;
    let host = match &raw.host {
        Some(host) if host.get_ref().is_empty() => return Invalid::at(host.span(), "health.host must not be empty"),
        Some(host) if !is_printable_ascii_without_spaces(host.get_ref()) => {
            return Invalid::at(
                host.span(),
                format!(
                    "health.host {:?} must be printable ASCII without whitespace",
                    host.get_ref()
                ),
            );
        }
        Some(host) => Some(host.get_ref().clone()),
        None => None,
    };
    let expect_body = match &raw.expect_body {
        Some(body) if body.get_ref().is_empty() => {
            return Invalid::at(
                body.span(),
                "health.expect_body must not be empty (leave it out to accept any body)",
            );
        }
        Some(body) => Some(body.get_ref().clone()),
        None => None,
    };
    Ok(HttpCheck {
        live_path,
        standby_path,
        expect_status,
        host,
        expect_body,
    })
}

/// Visible ASCII: no spaces, control characters or anything outside ASCII, so the value goes into a request line
/// or header as it is.
fn is_printable_ascii_without_spaces(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}

/// An absolute request path that goes into the request line as it is.
fn http_path(value: Option<&Spanned<String>>, key: &str, default: &str) -> Result<String, Invalid> {
    let Some(value) = value else { return Ok(default.into()) };
    let text = value.get_ref();
    if !text.starts_with('/') {
        return Invalid::at(value.span(), format!("{key} {text:?} must start with '/'"));
    }
    if !is_printable_ascii_without_spaces(text) {
        return Invalid::at(
            value.span(),
            format!("{key} {text:?} must be printable ASCII without whitespace (percent-encode the rest)"),
        );
    }
    Ok(text.clone())
}

/// `STATUS` or `MIN-MAX`, inclusive, within 100..=599.
fn expect_status(value: &Spanned<String>) -> Result<(u16, u16), Invalid> {
    let text = value.get_ref();
    let code = |s: &str| -> Option<u16> {
        let s = s.trim();
        // Digits only: u16's parser would also take a sign.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let parsed = match text.split_once('-') {
        Some((min, max)) => code(min).zip(code(max)),
        None => code(text).map(|status| (status, status)),
    };
    let Some((min, max)) = parsed else {
        return Invalid::at(
            value.span(),
            format!("health.expect_status {text:?} is not STATUS or MIN-MAX (e.g. \"200\" or \"200-399\")"),
        );
    };
    if !HTTP_STATUS_RANGE.contains(&min) || !HTTP_STATUS_RANGE.contains(&max) {
        return Invalid::at(
            value.span(),
            format!(
                "health.expect_status {text:?} is out of range {}..={}",
                HTTP_STATUS_RANGE.start(),
                HTTP_STATUS_RANGE.end()
            ),
        );
    }
    if min > max {
        return Invalid::at(
            value.span(),
            format!("health.expect_status {text:?} is inverted: {min} is above {max}"),
        );
    }
    Ok((min, max))
}

#[cfg(test)]
mod tests;
