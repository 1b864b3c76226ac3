//! What one check found: [`Outcome`], and the [`Failure`]s operators read in
//! `ctl status`.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Refused,
    /// The backend reset the connection right after the handshake.
    Reset,
    Network(String),
    HttpStatus(u16),
    BodyMismatch,
    BadResponse(String),
    /// A UDP check's reply lacks the expected string.
    ReplyMismatch,
    /// Down when the daemon last ran, and not probed up since it started.
    DownBeforeRestart,
    /// No result yet, and not seen up by the last daemon: how VIP
    /// announcements count a check until its first result.
    NotCheckedYet,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::Refused => f.write_str("connection refused"),
            Failure::Reset => f.write_str("connection reset after the handshake"),
            Failure::Network(e) => write!(f, "network error: {e}"),
            Failure::HttpStatus(code) => write!(f, "HTTP {code}"),
            Failure::BodyMismatch => f.write_str("body mismatch"),
            Failure::BadResponse(e) => write!(f, "bad HTTP response: {e}"),
            Failure::ReplyMismatch => f.write_str("UDP reply mismatch"),
            Failure::DownBeforeRestart => f.write_str("down before the daemon restarted"),
            Failure::NotCheckedYet => f.write_str("not checked yet"),
        }
    }
}

pub type Outcome = Result<(), Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_operators_expect() {
        assert_eq!(Failure::HttpStatus(500).to_string(), "HTTP 500");
        assert_eq!(Failure::Timeout.to_string(), "timeout");
        assert_eq!(Failure::Refused.to_string(), "connection refused");
        assert_eq!(Failure::BodyMismatch.to_string(), "body mismatch");
    }
}
