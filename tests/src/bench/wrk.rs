//! Runs `wrk` in a namespace and reads its report: throughput, latency
//! percentiles and every kind of error it counts.

use std::{net::SocketAddr, time::Duration};

use serde::Serialize;

use crate::{bench::procs, topology::NetNs};

/// What one wrk run reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WrkReport {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    /// From `--latency`: the 50th and 99th percentiles, in milliseconds.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
    pub non_2xx: u64,
}

impl WrkReport {
    /// Every request got a 2xx answer, and at least one was made.
    pub fn clean(&self) -> bool {
        self.requests > 0 && self.socket_errors == 0 && self.non_2xx == 0
    }

    /// Why the run does not count, if it does not.
    pub fn failure(&self) -> Option<String> {
        (!self.clean()).then(|| {
            format!(
                "wrk: {} requests, {} socket errors, {} non-2xx responses",
                self.requests, self.socket_errors, self.non_2xx
            )
        })
    }
}

/// How the requests use connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// `Connection: close`: every request opens a new connection.
    OnePerRequest,
    KeepAlive,
}

/// Runs wrk from `client` against `http://target/` for `duration` with
/// `threads` threads and `connections` connections.
pub fn run(
    client: &NetNs,
    target: SocketAddr,
    mode: Connections,
    threads: u32,
    connections: u32,
    duration: Duration,
) -> Result<WrkReport, String> {
    let mut args = vec![
        format!("--net=/run/netns/{}", client.name),
        "wrk".to_owned(),
        format!("-t{threads}"),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs().max(1)),
        "--latency".to_owned(),
        "--timeout".to_owned(),
        "2s".to_owned(),
    ];
    if mode == Connections::OnePerRequest {
        args.extend(["-H".to_owned(), "Connection: close".to_owned()]);
    }
    args.push(format!("http://{target}/"));
    let out = procs::output("nsenter", &args, duration + Duration::from_secs(15))?;
    parse(&out).ok_or_else(|| format!("unreadable wrk output:\n{out}"))
}

/// Parses wrk's text report; `None` if its summary line is missing.
pub fn parse(text: &str) -> Option<WrkReport> {
    let mut report = WrkReport::default();
    let mut summary = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // "30220 requests in 2.03s, 5.81MB read"
            [n, "requests", "in", secs, ..] => {
                report.requests = n.parse().ok()?;
                report.seconds = parse_seconds(secs.trim_end_matches(','))?;
                summary = true;
            }
            ["Requests/sec:", rate] => report.requests_per_sec = rate.parse().ok()?,
            ["50%", value] => report.p50_ms = parse_millis(value),
            ["99%", value] => report.p99_ms = parse_millis(value),
            // "Socket errors: connect 0, read 12, write 0, timeout 3"
            ["Socket", "errors:", rest @ ..] => {
                report.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => report.non_2xx = n.parse().ok()?,
            _ => {}
        }
    }
    summary.then_some(report)
}

/// wrk's durations: "734.00us", "1.88ms", "1.02s", "2.00m".
fn parse_millis(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(number * scale)
}

fn parse_seconds(text: &str) -> Option<f64> {
    parse_millis(text).map(|ms| ms / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "Running 2s test @ http://127.0.0.1:8080/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.74ms    2.70ms  33.38ms   88.80%
    Req/Sec     7.52k     2.12k   11.49k    60.00%
  Latency Distribution
     50%  734.00us
     75%    1.88ms
     90%    4.61ms
     99%   11.90ms
  30220 requests in 2.03s, 5.81MB read
Requests/sec:  14900.12
Transfer/sec:      2.87MB
";

    #[test]
    fn clean_report_gives_throughput_and_percentiles_in_milliseconds() {
        let r = parse(CLEAN).unwrap();
        assert_eq!(r.requests, 30220);
        assert_eq!(r.seconds, 2.03);
        assert_eq!(r.requests_per_sec, 14900.12);
        assert!((r.p50_ms.unwrap() - 0.734).abs() < 1e-9);
        assert_eq!(r.p99_ms, Some(11.90));
        assert!(r.clean());
        assert_eq!(r.failure(), None);
    }

    #[test]
    fn socket_errors_and_bad_statuses_make_the_run_failing() {
        let text =
            format!("{CLEAN}  Socket errors: connect 1, read 12, write 0, timeout 3\n  Non-2xx or 3xx responses: 5\n");
        let r = parse(&text).unwrap();
        assert_eq!((r.socket_errors, r.non_2xx), (16, 5));
        assert!(!r.clean());
        assert!(r.failure().unwrap().contains("16 socket errors"));
    }

    #[test]
    fn zero_requests_is_not_clean() {
        let r = parse("  0 requests in 2.00s, 0.00B read\nRequests/sec:      0.00\n").unwrap();
        assert!(!r.clean());
    }

    #[test]
    fn output_without_a_summary_is_unreadable() {
        assert_eq!(parse("unable to connect to 10.99.0.100:80 Connection refused"), None);
    }

    #[test]
    fn durations_in_every_unit_wrk_prints() {
        assert_eq!(parse_millis("500.00us"), Some(0.5));
        assert_eq!(parse_millis("2.00s"), Some(2000.0));
        assert_eq!(parse_millis("1.50m"), Some(90_000.0));
        assert_eq!(parse_millis("12"), None);
    }
}
