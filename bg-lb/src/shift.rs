//! Progressive traffic shifts with automatic rollback, decided from what the
//! data plane sees: per pool, over a sliding window, the share of new flows
//! the backends refused or reset.
//!
//! A shift moves the target pool's share through `steps`, holding each for
//! `interval`. Before each step and while holding, the target pool is
//! judged: any of its backends down, or an error rate above the threshold
//! (and above the other pool's over the same window, with at least
//! `min_flows` new flows so a quiet service cannot trip it), rolls the ratio
//! back to where the shift began, in one atomic swap.

pub mod hooks;

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use self::hooks::{AnalysisHooks, HookVerdict};
use crate::ratio::{Pool, Ratio};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShiftPlan {
    pub to: Pool,
    /// Target pool shares in percent, increasing.
    pub steps: Vec<u8>,
    #[serde(with = "duration_as_secs")]
    pub interval: Duration,
    /// Fraction of new flows (0..1) that may fail.
    pub max_error_rate: f64,
    pub min_flows: u64,
    /// Checks outside bg-lb each step must pass.
    #[serde(default, skip_serializing_if = "AnalysisHooks::is_empty")]
    pub hooks: AnalysisHooks,
}

/// Durations persist as whole seconds (plus fraction) in the state file.
mod duration_as_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

// A shift's defaults, as `ctl shift` takes them and its help shows them;
// requests that leave a field out get the same values (see `protocol`).
/// The target pool's share at each step, in percent.
pub const DEFAULT_STEPS: &str = "10,25,50,100";
/// How long each step is held.
pub const DEFAULT_INTERVAL: &str = "30s";
/// The share of new connections to the target pool that may fail.
pub const DEFAULT_MAX_ERROR_RATE: &str = "1%";
/// New connections in the window before the error rate is judged.
pub const DEFAULT_MIN_FLOWS: u64 = 20;

impl ShiftPlan {
    /// The ratio that gives the target pool `share` percent.
    pub fn ratio_at(&self, share: u8) -> Ratio {
        let blue = if self.to == Pool::Blue { share } else { 100 - share };
        Ratio::new(u32::from(blue)).expect("shares are validated to 0..=100")
    }

    /// Checks the plan and drops the steps the target already has.
    pub fn starting_from(mut self, current: Ratio) -> Result<Self, PlanError> {
        if self.steps.is_empty() {
            return Err(PlanError::NoSteps);
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) || self.steps.iter().any(|&s| s == 0 || s > 100) {
            return Err(PlanError::BadSteps(self.steps));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err(PlanError::BadErrorRate(self.max_error_rate));
        }
        if self.interval.is_zero() {
            return Err(PlanError::ZeroInterval);
        }
        self.hooks.validate().map_err(PlanError::BadHook)?;
        let have = current.share(self.to);
        self.steps.retain(|&s| s > have);
        if self.steps.is_empty() {
            return Err(PlanError::NothingToShift {
                pool: self.to,
                have,
                current,
            });
        }
        Ok(self)
    }
}

/// Why a shift cannot start with this plan.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("a shift needs at least one step")]
    NoSteps,
    #[error("steps {0:?} must increase, each 1..=100")]
    BadSteps(Vec<u8>),
    #[error("max error rate {0} must be between 0% and 100%")]
    BadErrorRate(f64),
    #[error("the interval must be positive")]
    ZeroInterval,
    #[error("{0}")]
    BadHook(String),
    #[error("{pool} already has {have}% (ratio {current}): nothing to shift")]
    NothingToShift { pool: Pool, have: u8, current: Ratio },
}

/// A shift as persisted in the state file and shown by `status`: a daemon
/// restart resumes a running shift, holding its current step a full interval
/// again with a fresh window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShiftRecord {
    pub plan: ShiftPlan,
    /// Where a rollback returns to.
    pub start_ratio: Ratio,
    /// Index into `plan.steps` of the step in effect.
    pub step: usize,
    pub outcome: ShiftOutcome,
    /// Both pools' record over the latest window (blue, green).
    #[serde(default)]
    pub rates: [PoolRates; 2],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ShiftOutcome {
    Running,
    Completed,
    RolledBack { reason: String },
    Aborted { rolled_back: bool },
}

/// One pool's cumulative connection counters (summed over its backends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCounters {
    /// Connections whose handshake the client completed.
    pub new_flows: u64,
    /// Connections refused before the handshake completed.
    pub refused: u64,
    /// Established connections reset.
    pub resets: u64,
}

/// Each host's blue and green counters of one service, by host name: with
/// `[cluster]` every live host's, else this host's alone.
pub type CountersByHost = BTreeMap<String, [PoolCounters; 2]>;

/// A pool's record over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolRates {
    /// Connections that reached the backend's verdict: established or
    /// refused. SYNs nobody completes (a spoofed flood) are not among them.
    pub new_flows: u64,
    /// Refused or reset: at most `new_flows`, as resets only hit
    /// established connections.
    pub failures: u64,
}

impl PoolRates {
    pub fn error_rate(&self) -> f64 {
        if self.new_flows == 0 {
            0.0
        } else {
            self.failures as f64 / self.new_flows as f64
        }
    }
}

impl fmt::Display for PoolRates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} new flows, {} failed ({:.1}%)",
            self.new_flows,
            self.failures,
            self.error_rate() * 100.0
        )
    }
}

/// Samples of both pools' counters on each host, one per tick, over the
/// last `span`.
#[derive(Debug)]
pub struct Window {
    span: Duration,
    samples: VecDeque<(Duration, CountersByHost)>,
}

impl Window {
    pub fn new(span: Duration) -> Self {
        Self {
            span,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample taken at `at` (any monotonic clock) and forgets the ones
    /// older than the span.
    pub fn push(&mut self, at: Duration, counters: CountersByHost) {
        self.samples.push_back((at, counters));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.saturating_sub(*t) > self.span)
        {
            self.samples.pop_front();
        }
    }

    /// Each pool's new flows and failures over the window, summed over the
    /// hosts in the newest sample, each from its oldest sample in the
    /// window. Counted per host, so a host that joins or leaves the fleet
    /// (its cumulative counters appearing or vanishing at once) moves
    /// neither figure: a sum of totals would lose the leaver's flows but
    /// not its failures' share, and could read as an error spike.
    pub fn rates(&self) -> [PoolRates; 2] {
        let Some((_, last)) = self.samples.back() else {
            return Default::default();
        };
        let mut rates = [PoolRates::default(); 2];
        for (host, now) in last {
            let Some(then) = self.samples.iter().find_map(|(_, sample)| sample.get(host)) else {
                continue;
            };
            for (i, rate) in rates.iter_mut().enumerate() {
                let (now, then) = (now[i], then[i]);
                rate.new_flows += (now.new_flows + now.refused).saturating_sub(then.new_flows + then.refused);
                rate.failures += (now.refused + now.resets).saturating_sub(then.refused + then.resets);
            }
        }
        rates
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Hold,
    /// Move to the next step.
    Advance,
    /// The last step was held for its interval.
    Complete,
    RollBack(String),
}

/// Judges the target pool at one tick: a down backend or a failed hook
/// rolls back; a step ends once held for the interval with every hook
/// passed during it.
pub fn judge(
    plan: &ShiftPlan,
    step: usize,
    held_for: Duration,
    rates: [PoolRates; 2],
    down_backend: Option<String>,
    hooks: HookVerdict,
) -> Verdict {
    if let Some(down) = down_backend {
        return Verdict::RollBack(format!("{} backend {down}", plan.to));
    }
    if let HookVerdict::Failed(reason) = hooks {
        return Verdict::RollBack(reason);
    }
    let (target, other) = (rates[plan.to.index()], rates[plan.to.other().index()]);
    if target.new_flows >= plan.min_flows
        && target.error_rate() > plan.max_error_rate
        && target.error_rate() > other.error_rate()
    {
        return Verdict::RollBack(format!(
            "{} error rate {:.1}% over the max {:.1}% ({}; {}: {})",
            plan.to,
            target.error_rate() * 100.0,
            plan.max_error_rate * 100.0,
            target,
            plan.to.other(),
            other
        ));
    }
    match (
        held_for >= plan.interval && hooks == HookVerdict::Pass,
        step + 1 < plan.steps.len(),
    ) {
        (false, _) => Verdict::Hold,
        (true, true) => Verdict::Advance,
        (true, false) => Verdict::Complete,
    }
}

/// Parses "1%", "0.5%" or a fraction "0.01".
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let bad = || format!("{text:?} is not a rate like 1% or 0.01");
    let value = match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
        None => text.trim().parse::<f64>().map_err(|_| bad())?,
    };
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(bad())
    }
}

/// Parses "10,25,50,100".
pub fn parse_steps(text: &str) -> Result<Vec<u8>, String> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse::<u8>()
                .map_err(|_| format!("step {s:?} is not a percentage"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ShiftPlan {
        ShiftPlan {
            to: Pool::Blue,
            steps: vec![10, 25, 50, 100],
            interval: Duration::from_secs(30),
            max_error_rate: 0.01,
            min_flows: 20,
            hooks: AnalysisHooks::default(),
        }
    }

    const PASS: HookVerdict = HookVerdict::Pass;

    fn rates(blue: (u64, u64), green: (u64, u64)) -> [PoolRates; 2] {
        [
            PoolRates {
                new_flows: blue.0,
                failures: blue.1,
            },
            PoolRates {
                new_flows: green.0,
                failures: green.1,
            },
        ]
    }

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn holds_each_step_for_the_interval_then_advances_and_completes() {
        let clean = rates((100, 0), (100, 0));
        assert_eq!(judge(&plan(), 0, SECS(29), clean, None, PASS), Verdict::Hold);
        assert_eq!(judge(&plan(), 0, SECS(30), clean, None, PASS), Verdict::Advance);
        assert_eq!(judge(&plan(), 3, SECS(30), clean, None, PASS), Verdict::Complete);
    }

    #[test]
    fn a_down_backend_in_the_target_pool_rolls_back() {
        let verdict = judge(
            &plan(),
            1,
            SECS(1),
            rates((0, 0), (0, 0)),
            Some("10.0.1.11:8080 down (HTTP 500)".into()),
            PASS,
        );
        assert_eq!(
            verdict,
            Verdict::RollBack("blue backend 10.0.1.11:8080 down (HTTP 500)".into())
        );
    }

    #[test]
    fn an_error_rate_over_the_max_and_over_the_other_pool_rolls_back() {
        let Verdict::RollBack(why) = judge(&plan(), 1, SECS(5), rates((200, 25), (800, 0)), None, PASS) else {
            panic!("should roll back")
        };
        assert!(why.contains("blue error rate 12.5% over the max 1.0%"), "{why}");
        assert!(why.contains("200 new flows, 25 failed"), "{why}");
    }

    #[test]
    fn errors_everywhere_do_not_blame_the_target_pool() {
        // Both pools fail alike (a client or network problem): hold.
        assert_eq!(
            judge(&plan(), 1, SECS(5), rates((100, 5), (100, 8)), None, PASS),
            Verdict::Hold
        );
    }

    #[test]
    fn a_step_is_held_until_its_hooks_pass_and_a_failed_hook_rolls_back_naming_it() {
        let clean = rates((100, 0), (100, 0));
        assert_eq!(
            judge(&plan(), 0, SECS(60), clean, None, HookVerdict::Waiting),
            Verdict::Hold,
            "held past the interval while a hook has not passed"
        );
        assert_eq!(
            judge(&plan(), 3, SECS(60), clean, None, HookVerdict::Waiting),
            Verdict::Hold,
            "nor does the last step complete"
        );
        let failed = HookVerdict::Failed("analysis hook check-url failed: HTTP 500".into());
        assert_eq!(
            judge(&plan(), 0, SECS(1), clean, None, failed),
            Verdict::RollBack("analysis hook check-url failed: HTTP 500".into())
        );
    }

    #[test]
    fn a_quiet_service_cannot_trip_the_threshold() {
        assert_eq!(
            judge(&plan(), 1, SECS(5), rates((10, 5), (10, 0)), None, PASS),
            Verdict::Hold
        );
    }

    #[test]
    fn the_window_counts_only_its_span() {
        let c = |n, f| PoolCounters {
            new_flows: n,
            refused: f,
            resets: 0,
        };
        let mut w = Window::new(SECS(10));
        w.push(SECS(0), one([c(0, 0), c(0, 0)]));
        w.push(SECS(5), one([c(50, 10), c(50, 0)]));
        w.push(SECS(12), one([c(120, 10), c(90, 0)]));
        assert_eq!(
            w.rates()[0],
            PoolRates {
                new_flows: 70,
                failures: 0
            },
            "the sample at 0s left the window"
        );
        assert_eq!(w.rates()[1].new_flows, 40);
    }

    /// A host alone.
    fn one(counters: [PoolCounters; 2]) -> CountersByHost {
        CountersByHost::from([(String::new(), counters)])
    }

    #[test]
    fn a_host_leaving_or_joining_the_fleet_within_the_window_makes_no_error_spike() {
        let c = |n, refused| PoolCounters {
            new_flows: n,
            refused,
            resets: 0,
        };
        let hosts = |of: &[(&str, PoolCounters)]| -> CountersByHost {
            of.iter()
                .map(|&(h, c)| (h.to_owned(), [c, PoolCounters::default()]))
                .collect()
        };
        let mut w = Window::new(SECS(10));
        // lb2 has carried 1000 flows, 1 refused, before the window.
        w.push(SECS(0), hosts(&[("lb1", c(500, 1)), ("lb2", c(1000, 1))]));
        w.push(SECS(2), hosts(&[("lb1", c(600, 1)), ("lb2", c(1100, 1))]));
        // lb2 leaves (its report goes with its lease); lb3 joins with the
        // totals of its whole life.
        w.push(SECS(4), hosts(&[("lb1", c(700, 2)), ("lb3", c(5000, 50))]));
        w.push(SECS(6), hosts(&[("lb1", c(800, 2)), ("lb3", c(5100, 50))]));
        assert_eq!(
            w.rates()[0],
            PoolRates {
                new_flows: 301 + 100,
                failures: 1
            },
            "lb1 over the window (a refused connection is a new flow) and lb3 since it joined; lb2 no more"
        );
    }

    #[test]
    fn refused_connections_count_among_the_new_flows_so_a_pool_refusing_all_fails_all() {
        let c = |established, refused| PoolCounters {
            new_flows: established,
            refused,
            resets: 0,
        };
        let mut w = Window::new(SECS(10));
        w.push(SECS(0), one([c(0, 0), c(0, 0)]));
        w.push(SECS(5), one([c(0, 30), c(30, 0)]));
        assert_eq!(
            w.rates()[0],
            PoolRates {
                new_flows: 30,
                failures: 30
            }
        );
        assert_eq!(w.rates()[0].error_rate(), 1.0);
        assert_eq!(w.rates()[1].error_rate(), 0.0);
    }

    #[test]
    fn steps_the_target_already_has_are_skipped() {
        let p = plan().starting_from(Ratio::new(25).unwrap()).unwrap();
        assert_eq!(p.steps, [50, 100]);
        assert_eq!(p.ratio_at(50).to_string(), "50:50");
        let green = ShiftPlan {
            to: Pool::Green,
            ..plan()
        }
        .starting_from(Ratio::new(100).unwrap())
        .unwrap();
        assert_eq!(green.ratio_at(10).to_string(), "90:10");
    }

    #[test]
    fn bad_plans_are_refused_with_a_reason() {
        assert!(
            plan()
                .starting_from(Ratio::new(100).unwrap())
                .unwrap_err()
                .to_string()
                .contains("nothing to shift")
        );
        let p = ShiftPlan {
            steps: vec![50, 25],
            ..plan()
        };
        assert!(
            p.starting_from(Ratio::new(0).unwrap())
                .unwrap_err()
                .to_string()
                .contains("must increase")
        );
        let p = ShiftPlan {
            max_error_rate: 2.0,
            ..plan()
        };
        assert!(p.starting_from(Ratio::new(0).unwrap()).is_err());
    }

    #[test]
    fn rates_and_steps_parse_as_typed() {
        assert_eq!(parse_rate("1%"), Ok(0.01));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert!(parse_rate("150%").is_err() && parse_rate("x").is_err());
        assert_eq!(parse_steps("10, 25,100"), Ok(vec![10, 25, 100]));
        assert!(parse_steps("10,abc").is_err());
    }
}
