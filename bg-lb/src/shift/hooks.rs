//! Analysis hooks: besides the data plane's signals, a shift can gate each
//! step on checks outside bg-lb, as Argo Rollouts and Flagger gate theirs
//! on analysis: a webhook (`--check-url`: any status but 2xx, or no answer
//! in time, fails) and a Prometheus query (`--check-prometheus URL --query Q
//! --max V`: fails when a value of the result is over `V`, or there is none).
//!
//! The rules here are pure: what the checks' results mean for a step
//! ([`HookGate`]), and how a Prometheus answer is read. The daemon runs the
//! checks ([`crate::daemon`]'s analysis module).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A shift's hooks, persisted with its plan so a restarted daemon keeps
/// checking them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisHooks {
    /// GET it; a 2xx passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusCheck>,
}

/// An instant query whose every value must be at most `max`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusCheck {
    /// The server's base URL, e.g. `http://prometheus:9090`.
    pub url: String,
    pub query: String,
    pub max: f64,
}

impl AnalysisHooks {
    pub fn is_empty(&self) -> bool {
        self.check_url.is_none() && self.prometheus.is_none()
    }

    /// Refuses what could never pass: a URL that is not `http://HOST[:PORT]/...`,
    /// an empty query, a `max` that is not a number.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.check_url {
            HttpUrl::parse(url).map_err(|e| format!("--check-url {url:?}: {e}"))?;
        }
        if let Some(check) = &self.prometheus {
            HttpUrl::parse(&check.url).map_err(|e| format!("--check-prometheus {:?}: {e}", check.url))?;
            if check.query.trim().is_empty() {
                return Err("--check-prometheus needs a --query".into());
            }
            if !check.max.is_finite() {
                return Err(format!("--max {} is not a number", check.max));
            }
        }
        Ok(())
    }

    /// The Prometheus check's request URL: the instant query API.
    pub fn prometheus_query_url(check: &PrometheusCheck) -> String {
        format!(
            "{}/api/v1/query?query={}",
            check.url.trim_end_matches('/'),
            percent_encode(&check.query)
        )
    }
}

/// An `http://` URL split for a request. (No `https://`: a hook reaches a
/// check next to the balancer, as the health checks reach the backends.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// `HOST:PORT`, port 80 when not given.
    pub authority: String,
    /// `/path?query`, `/` when empty.
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
        let (host, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() || host.contains('@') || host.chars().any(|c| c.is_whitespace()) {
            return Err("no host".into());
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("spaces or control characters in the path".into());
        }
        let authority = if host
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        {
            host.to_owned()
        } else if host.contains(':') {
            return Err("bad port".into());
        } else {
            format!("{host}:80")
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(HttpUrl { authority, path })
    }
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads a Prometheus instant query's JSON answer: passes when it has at
/// least one value and every value is at most `max`.
pub fn judge_prometheus(body: &[u8], query: &str, max: f64) -> Result<(), String> {
    let answer: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("Prometheus answer is not JSON: {e}"))?;
    if answer["status"] != "success" {
        return Err(format!(
            "Prometheus refused {query:?}: {}",
            answer["error"].as_str().unwrap_or("no reason given")
        ));
    }
    let data = &answer["data"];
    // A scalar is [time, "value"]; a vector is a list of {metric, value}.
    let values: Vec<&serde_json::Value> = match data["resultType"].as_str() {
        Some("scalar") => vec![&data["result"][1]],
        Some("vector") => data["result"]
            .as_array()
            .map(|series| series.iter().map(|s| &s["value"][1]).collect())
            .unwrap_or_default(),
        other => {
            return Err(format!(
                "Prometheus answered {query:?} with a {other:?}, not a vector or scalar"
            ));
        }
    };
    if values.is_empty() {
        return Err(format!("Prometheus query {query:?} returned no data"));
    }
    for value in values {
        let number = value
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| !v.is_nan())
            .ok_or_else(|| format!("Prometheus query {query:?} returned {value}, not a number"))?;
        if number > max {
            return Err(format!("Prometheus query {query:?} = {number}, over the max {max}"));
        }
    }
    Ok(())
}

/// Which hook a result is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    CheckUrl,
    Prometheus,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::CheckUrl => "check-url",
            Hook::Prometheus => "check-prometheus",
        })
    }
}

/// What the hooks say of the current step, for [`crate::shift::judge`].
#[derive(Clone, Debug, PartialEq)]
pub enum HookVerdict {
    /// No hooks, or every hook passed since the step began.
    Pass,
    /// Some hook has not passed since the step began: the step cannot end.
    Waiting,
    /// A hook failed: roll back, naming it.
    Failed(String),
}

/// The hooks' results over one step of a shift.
#[derive(Debug, Default)]
pub struct HookGate {
    /// Hooks that passed since the step began.
    passed: Vec<Hook>,
    failed: Option<String>,
}

impl HookGate {
    /// A new step: every hook must pass again.
    pub fn next_step(&mut self) {
        self.passed.clear();
    }

    pub fn record(&mut self, hook: Hook, result: Result<(), String>) {
        match result {
            Ok(()) if !self.passed.contains(&hook) => self.passed.push(hook),
            Ok(()) => {}
            Err(reason) => self.failed = Some(format!("analysis hook {hook} failed: {reason}")),
        }
    }

    pub fn verdict(&self, hooks: &AnalysisHooks) -> HookVerdict {
        if let Some(reason) = &self.failed {
            return HookVerdict::Failed(reason.clone());
        }
        let wanted = [
            (hooks.check_url.is_some(), Hook::CheckUrl),
            (hooks.prometheus.is_some(), Hook::Prometheus),
        ];
        if wanted.iter().all(|&(on, hook)| !on || self.passed.contains(&hook)) {
            HookVerdict::Pass
        } else {
            HookVerdict::Waiting
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> AnalysisHooks {
        AnalysisHooks {
            check_url: Some("http://10.0.0.5:8080/ok".into()),
            prometheus: Some(PrometheusCheck {
                url: "http://prom:9090/".into(),
                query: "sum(rate(errors[1m])) > 0".into(),
                max: 0.5,
            }),
        }
    }

    #[test]
    fn a_step_waits_for_every_hook_to_pass_again() {
        let hooks = both();
        let mut gate = HookGate::default();
        assert_eq!(gate.verdict(&hooks), HookVerdict::Waiting);
        gate.record(Hook::CheckUrl, Ok(()));
        assert_eq!(gate.verdict(&hooks), HookVerdict::Waiting, "prometheus has not passed");
        gate.record(Hook::Prometheus, Ok(()));
        assert_eq!(gate.verdict(&hooks), HookVerdict::Pass);
        gate.next_step();
        assert_eq!(gate.verdict(&hooks), HookVerdict::Waiting, "a new step checks again");
        assert_eq!(
            HookGate::default().verdict(&AnalysisHooks::default()),
            HookVerdict::Pass
        );
    }

    #[test]
    fn a_failed_hook_fails_the_shift_naming_the_hook_even_after_passes() {
        let hooks = both();
        let mut gate = HookGate::default();
        gate.record(Hook::CheckUrl, Ok(()));
        gate.record(Hook::CheckUrl, Err("HTTP 503".into()));
        gate.record(Hook::CheckUrl, Ok(()));
        assert_eq!(
            gate.verdict(&hooks),
            HookVerdict::Failed("analysis hook check-url failed: HTTP 503".into())
        );
    }

    #[test]
    fn prometheus_answers_pass_only_with_data_at_most_the_max() {
        let vector = |values: &[&str]| {
            let series: Vec<String> = values
                .iter()
                .map(|v| format!(r#"{{"metric":{{}},"value":[1700000000.1,"{v}"]}}"#))
                .collect();
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
                series.join(",")
            )
        };
        assert_eq!(judge_prometheus(vector(&["0.1", "0.5"]).as_bytes(), "q", 0.5), Ok(()));
        let over = judge_prometheus(vector(&["0.1", "0.7"]).as_bytes(), "q", 0.5).unwrap_err();
        assert!(over.contains("= 0.7, over the max 0.5"), "{over}");
        let none = judge_prometheus(vector(&[]).as_bytes(), "q", 0.5).unwrap_err();
        assert!(none.contains("no data"), "{none}");
        let nan = judge_prometheus(vector(&["NaN"]).as_bytes(), "q", 0.5).unwrap_err();
        assert!(nan.contains("not a number"), "{nan}");
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"2"]}}"#;
        assert!(judge_prometheus(scalar.as_bytes(), "q", 1.0).is_err());
        assert_eq!(judge_prometheus(scalar.as_bytes(), "q", 2.0), Ok(()));
        let error = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(
            judge_prometheus(error.as_bytes(), "q", 1.0)
                .unwrap_err()
                .contains("parse error")
        );
        assert!(judge_prometheus(b"<html>", "q", 1.0).is_err());
    }

    #[test]
    fn hook_urls_are_http_with_a_host_and_queries_are_encoded() {
        assert_eq!(
            HttpUrl::parse("http://10.0.0.5:8080/ok?x=1").unwrap(),
            HttpUrl {
                authority: "10.0.0.5:8080".into(),
                path: "/ok?x=1".into()
            }
        );
        assert_eq!(
            HttpUrl::parse("http://checks.example").unwrap(),
            HttpUrl {
                authority: "checks.example:80".into(),
                path: "/".into()
            }
        );
        for bad in ["https://x/", "http:///x", "ftp://x", "http://x:99999/", "http://a b/"] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
        let check = both().prometheus.unwrap();
        assert_eq!(
            AnalysisHooks::prometheus_query_url(&check),
            "http://prom:9090/api/v1/query?query=sum%28rate%28errors%5B1m%5D%29%29%20%3E%200"
        );
        assert!(both().validate().is_ok());
        let empty_query = AnalysisHooks {
            prometheus: Some(PrometheusCheck {
                query: " ".into(),
                ..both().prometheus.unwrap()
            }),
            ..both()
        };
        assert!(empty_query.validate().is_err());
    }
}
