//! tracing setup: which records are kept and where they go. aya-log records
//! from the eBPF side arrive through the `log` crate, so `LogTracer` bridges
//! them into the same output.
//!
//! - Level: `--log-level` when given; otherwise `RUST_LOG` (any
//!   `tracing_subscriber::EnvFilter` directives, e.g.
//!   `info,bg_lb::health=debug`); otherwise `info`. The flag wins because it
//!   is the explicit, per-invocation choice; `RUST_LOG` is for finer
//!   debugging filters and applies only when no level is given.
//! - Destination: with `--log-format auto` (the default) and stderr
//!   connected to the journal (`JOURNAL_STREAM` names stderr's device and
//!   inode, as systemd sets it), records go to journald's native socket with
//!   their fields (`F_INTERFACE=eth0`, ...); if journald cannot be reached
//!   they fall back to stderr. Lines on stderr are coloured only when stderr
//!   is a terminal.

use std::{io::IsTerminal as _, os::unix::fs::MetadataExt as _};

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use crate::cli::{LogFormat, LogLevel};

const DEFAULT_LEVEL: &str = "info";
/// journald's `SYSLOG_IDENTIFIER` (`journalctl -t bg-lb`), whatever the
/// binary is called.
const SYSLOG_IDENTIFIER: &str = "bg-lb";

pub fn init(format: LogFormat, level: Option<LogLevel>) {
    let _ = tracing_log::LogTracer::init();
    let rust_log = std::env::var("RUST_LOG").ok();
    let directives = filter_directives(level, rust_log.as_deref());
    let (filter, bad_rust_log) = match EnvFilter::try_new(&directives) {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new(DEFAULT_LEVEL), Some(e)),
    };
    let mut journald_error = None;
    if format == LogFormat::Auto && journal_stream_is(std::env::var("JOURNAL_STREAM").ok().as_deref(), stderr_id()) {
        match tracing_journald::layer() {
            Ok(journald) => {
                let journald = journald.with_syslog_identifier(SYSLOG_IDENTIFIER.into());
                let _ = tracing_subscriber::registry().with(filter).with(journald).try_init();
                report(bad_rust_log.as_ref(), rust_log.as_deref(), None);
                return;
            }
            Err(e) => journald_error = Some(e),
        }
    }
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Auto | LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    report(bad_rust_log.as_ref(), rust_log.as_deref(), journald_error.as_ref());
}

/// Problems with the setup itself, logged once logging works.
fn report(
    bad_rust_log: Option<&tracing_subscriber::filter::ParseError>,
    rust_log: Option<&str>,
    journald: Option<&std::io::Error>,
) {
    if let Some(e) = bad_rust_log {
        tracing::warn!(error = %e, "ignoring RUST_LOG={:?}: not a valid filter; logging at {DEFAULT_LEVEL}", rust_log.unwrap_or_default());
    }
    if let Some(e) = journald {
        tracing::warn!(error = %e, "stderr is the journal but journald's socket is unreachable; logging lines on stderr instead");
    }
}

/// The filter: `--log-level` wins over a non-empty RUST_LOG, which wins over
/// the default.
fn filter_directives(level: Option<LogLevel>, rust_log: Option<&str>) -> String {
    match (level, rust_log.map(str::trim)) {
        (Some(level), _) => level.directive().to_owned(),
        (None, Some(env)) if !env.is_empty() => env.to_owned(),
        (None, _) => DEFAULT_LEVEL.to_owned(),
    }
}

/// stderr's device and inode, as systemd writes them into JOURNAL_STREAM.
fn stderr_id() -> Option<(u64, u64)> {
    let stderr = std::io::stderr();
    let fd = std::os::fd::AsFd::as_fd(&stderr).try_clone_to_owned().ok()?;
    let metadata = std::fs::File::from(fd).metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// Whether `JOURNAL_STREAM` ("DEVICE:INODE") names the stream that is our
/// stderr. systemd sets it for the service's own stderr; a child whose
/// stderr was redirected (a pipe, a file) inherits the variable but not the
/// stream, and must not switch to journald.
fn journal_stream_is(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some((dev, ino))) = (journal_stream, stderr) else {
        return false;
    };
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        .is_some_and(|named| named == (dev, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_level_flag_wins_over_rust_log_which_wins_over_the_default() {
        assert_eq!(filter_directives(Some(LogLevel::Warn), Some("debug")), "warn");
        assert_eq!(filter_directives(Some(LogLevel::Debug), None), "debug");
        assert_eq!(
            filter_directives(None, Some("info,bg_lb::health=debug")),
            "info,bg_lb::health=debug"
        );
        assert_eq!(filter_directives(None, Some("  ")), "info");
        assert_eq!(filter_directives(None, None), "info");
    }

    #[test]
    fn journald_is_used_only_when_journal_stream_names_our_stderr() {
        let stderr = Some((64769, 1234));
        assert!(journal_stream_is(Some("64769:1234"), stderr));
        assert!(!journal_stream_is(Some("64769:1235"), stderr), "another stream");
        assert!(!journal_stream_is(Some("64770:1234"), stderr), "another device");
        assert!(!journal_stream_is(None, stderr), "not under systemd");
        assert!(!journal_stream_is(Some("64769:1234"), None), "no stderr");
        for garbage in ["", "64769", "64769:", ":1234", "a:b", "64769:1234:5"] {
            assert!(!journal_stream_is(Some(garbage), stderr), "{garbage:?}");
        }
    }
}
