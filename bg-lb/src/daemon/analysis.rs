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
                let result = match hook {
                    Hook::CheckUrl => check_url(hooks.check_url.as_deref().unwrap_or_default()).await,
                    Hook::Prometheus => match &hooks.prometheus {
                        Some(check) => check_prometheus(check).await,
                        None => Ok(()),
                    },
                };
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

/// `--check-url`: a 2xx passes.
async fn check_url(url: &str) -> Result<(), String> {
    let (status, _) = get(url, false).await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {url}: HTTP {status}"))
    }
}

/// `--check-prometheus`: every value of the query at most `max`.
async fn check_prometheus(check: &PrometheusCheck) -> Result<(), String> {
    let url = AnalysisHooks::prometheus_query_url(check);
    let (status, body) = get(&url, true).await?;
    if status != 200 && status != 400 && status != 422 {
        // 400 and 422 carry Prometheus's JSON error, which says more.
        return Err(format!("Prometheus at {}: HTTP {status}", check.url));
    }
    let body = body.ok_or_else(|| format!("Prometheus at {}: the answer did not arrive whole", check.url))?;
    judge_prometheus(&body, &check.query, check.max)
}

async fn get(url: &str, read_body: bool) -> Result<(u16, Option<hyper::body::Bytes>), String> {
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
    tokio::time::timeout(HOOK_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("GET {url}: no answer within {}s", HOOK_TIMEOUT.as_secs()))?
}
