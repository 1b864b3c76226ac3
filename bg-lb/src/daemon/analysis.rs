//! The shifts' analysis hooks at work (see [`crate::shift::hooks`]): each
//! running shift with hooks has each hook checked in a task of its own, one
//! check at a time, spaced through the step; results come back to the
//! daemon's loop as [`HookResult`]s and are judged at the next tick.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Daemon;
use crate::{
    health::http_get,
    shift::hooks::{AnalysisHooks, Hook, HookGate, HttpUrl, PrometheusCheck, judge_prometheus},
};

/// A check with no complete answer in this time fails.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// A hook's check, as it comes back to the daemon.
#[derive(Debug)]
pub struct HookResult {
    service: String,
    /// The shift it was run for: a result for an earlier shift is dropped.
    shift: u64,
    hook: Hook,
    result: Result<(), String>,
}

/// The hooks of one running shift.
#[derive(Debug)]
pub struct HookRuns {
    /// This shift among every shift the daemon ran.
    shift: u64,
    pub gate: HookGate,
    /// Per hook: a check in flight, and when the last one was started.
    running: Vec<Hook>,
    started: Vec<(Hook, Instant)>,
    /// Time between the starts of a hook's checks.
    spacing: Duration,
}

impl HookRuns {
    pub fn new(shift: u64, interval: Duration) -> Self {
        HookRuns {
            shift,
            gate: HookGate::default(),
            running: Vec::new(),
            started: Vec::new(),
            // A few checks per step, and one at least every 10 s.
            spacing: (interval / 3).clamp(Duration::from_millis(500), Duration::from_secs(10)),
        }
    }

    /// The hooks due for a check now: not in flight, and not started within
    /// the spacing.
    fn due(&mut self, hooks: &AnalysisHooks) -> Vec<Hook> {
        let now = Instant::now();
        let wanted = [
            (hooks.check_url.is_some(), Hook::CheckUrl),
            (hooks.prometheus.is_some(), Hook::Prometheus),
        ];
        let due: Vec<Hook> = wanted
            .into_iter()
            .filter(|&(on, hook)| {
                on && !self.running.contains(&hook)
                    && !self
                        .started
                        .iter()
                        .any(|&(h, at)| h == hook && now.duration_since(at) < self.spacing)
            })
            .map(|(_, hook)| hook)
            .collect();
        self.started.retain(|(h, _)| !due.contains(h));
        self.started.extend(due.iter().map(|&h| (h, now)));
        self.running.extend(&due);
        due
    }
}

impl Daemon {
    /// Starts the checks of `service`'s running shift that are due.
    pub(super) fn check_hooks(&mut self, service: &str, hooks: &AnalysisHooks) {
        let Some(active) = self.shifts.get_mut(service) else {
            return;
        };
        let shift = active.hooks.shift;
        for hook in active.hooks.due(hooks) {
            let results = self.hook_results.clone();
            let (service, hooks) = (service.to_owned(), hooks.clone());
            tokio::spawn(async move {
                let result = check(hook, &hooks, HOOK_TIMEOUT).await;
                let _ = results.send(HookResult {
                    service,
                    shift,
                    hook,
                    result,
                });
            });
        }
    }

    /// A hook's result: recorded for the next judgement of its shift.
    pub fn on_hook_result(&mut self, done: HookResult) {
        let Some(active) = self
            .shifts
            .get_mut(&done.service)
            .filter(|a| a.hooks.shift == done.shift)
        else {
            return;
        };
        active.hooks.running.retain(|&h| h != done.hook);
        if let Err(reason) = &done.result {
            tracing::warn!(service = %done.service, hook = %done.hook, %reason, "analysis hook failed");
        }
        active.hooks.gate.record(done.hook, done.result);
    }

    /// The receiving end of the hooks' results, for the daemon's loop.
    pub fn take_hook_results(&mut self) -> Option<mpsc::UnboundedReceiver<HookResult>> {
        self.hook_results_rx.take()
    }
}

/// One check of `hook`, which gets `timeout` for its answer.
async fn check(hook: Hook, hooks: &AnalysisHooks, timeout: Duration) -> Result<(), String> {
    match (hook, &hooks.check_url, &hooks.prometheus) {
        (Hook::CheckUrl, Some(url), _) => check_url(url, timeout).await,
        (Hook::Prometheus, _, Some(prometheus)) => check_prometheus(prometheus, timeout).await,
        _ => Ok(()),
    }
}

/// `--check-url`: a 2xx passes.
async fn check_url(url: &str, timeout: Duration) -> Result<(), String> {
    let (status, _) = get(url, false, timeout).await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {url}: HTTP {status}"))
    }
}

/// `--check-prometheus`: every value of the query at most `max`.
async fn check_prometheus(check: &PrometheusCheck, timeout: Duration) -> Result<(), String> {
    let url = AnalysisHooks::prometheus_query_url(check);
    let (status, body) = get(&url, true, timeout).await?;
    if status != 200 && status != 400 && status != 422 {
        // 400 and 422 carry Prometheus's JSON error, which says more.
        return Err(format!("Prometheus at {}: HTTP {status}", check.url));
    }
    let body = body.ok_or_else(|| format!("Prometheus at {}: the answer did not arrive whole", check.url))?;
    judge_prometheus(&body, &check.query, check.max)
}

async fn get(url: &str, read_body: bool, timeout: Duration) -> Result<(u16, Option<hyper::body::Bytes>), String> {
    let parsed = HttpUrl::parse(url)?;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&parsed.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", parsed.authority))?;
        http_get(
            stream,
            &parsed.authority,
            &parsed.path,
            "bg-lb-analysis-hook",
            read_body,
        )
        .await
        .map_err(|e| format!("GET {url}: {e}"))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET {url}: no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A server answering every connection with `response` (raw HTTP), or
    /// never answering when `None`; its base URL and the requests it read.
    async fn server(response: Option<String>) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut head = vec![0; 4096];
                let n = stream.read(&mut head).await.unwrap();
                let _ = seen.send(String::from_utf8_lossy(&head[..n]).into_owned());
                match &response {
                    Some(response) => stream.write_all(response.as_bytes()).await.unwrap(),
                    // Hold the connection open without a word.
                    None => std::mem::forget(stream),
                }
            }
        });
        (url, requests)
    }

    fn hooks(check_url: Option<String>, prometheus: Option<PrometheusCheck>) -> AnalysisHooks {
        AnalysisHooks { check_url, prometheus }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_webhook_passes_on_2xx_and_fails_on_any_other_status_or_silence() {
        let (ok, mut requests) = server(Some("HTTP/1.1 204 No Content\r\n\r\n".into())).await;
        let url = format!("{ok}/ready?v=2");
        assert_eq!(check(Hook::CheckUrl, &hooks(Some(url), None), SECOND).await, Ok(()));
        assert!(requests.recv().await.unwrap().starts_with("GET /ready?v=2 HTTP/1.1"));
        let (bad, _) = server(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".into(),
        ))
        .await;
        let failed = check(Hook::CheckUrl, &hooks(Some(format!("{bad}/")), None), SECOND).await;
        assert!(failed.unwrap_err().ends_with("HTTP 503"));
        let (silent, _) = server(None).await;
        let url = format!("{silent}/");
        let failed = check(Hook::CheckUrl, &hooks(Some(url), None), Duration::from_millis(200)).await;
        assert!(failed.unwrap_err().contains("no answer within 200ms"));
        let nobody = check(Hook::CheckUrl, &hooks(Some("http://127.0.0.1:1/".into()), None), SECOND).await;
        assert!(nobody.unwrap_err().contains("connecting to 127.0.0.1:1"));
    }

    #[tokio::test]
    async fn a_prometheus_check_sends_the_query_and_judges_the_answer() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.02"]}]}}"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (url, mut requests) = server(Some(response)).await;
        let prometheus = |max| {
            hooks(
                None,
                Some(PrometheusCheck {
                    url: url.clone(),
                    query: "rate(errors[1m])".into(),
                    max,
                }),
            )
        };
        assert_eq!(check(Hook::Prometheus, &prometheus(0.05), SECOND).await, Ok(()));
        let request = requests.recv().await.unwrap();
        assert!(
            request.starts_with("GET /api/v1/query?query=rate%28errors%5B1m%5D%29 HTTP/1.1"),
            "{request}"
        );
        let over = check(Hook::Prometheus, &prometheus(0.01), SECOND).await.unwrap_err();
        assert!(over.contains("= 0.02, over the max 0.01"), "{over}");
    }
}
