//! Slow start (`slowstart = "30s"` per service), as HAProxy's: a backend
//! that begins taking new connections (it came up, was enabled, had its
//! weight raised from 0, or was added) ramps from a tenth of its weight to
//! all of it over the period, in [`RAMP_STEPS`] equal steps, so no step
//! gives a cold instance more than a tenth of its full share at once, and a
//! ramp rebuilds its service's tables at most [`RAMP_STEPS`] times.
//!
//! Pure: the daemon feeds it the weights it would program and the time, and
//! programs what it says.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

/// The steps of a ramp: weights of 1/10, 2/10, ... 10/10 of the full one.
pub const RAMP_STEPS: u32 = 10;

/// The step (1..=[`RAMP_STEPS`]) of a ramp `elapsed` into `period`: step k
/// covers the k-th tenth of the period.
pub fn ramp_step(elapsed: Duration, period: Duration) -> u32 {
    if elapsed >= period {
        return RAMP_STEPS;
    }
    let done = elapsed.as_nanos() * u128::from(RAMP_STEPS) / period.as_nanos();
    u32::try_from(done).unwrap_or(RAMP_STEPS) + 1
}

/// `full` weight at `step`: at least 1, so a ramping backend takes some
/// connections from its first step.
pub fn ramped_weight(full: u32, step: u32) -> u32 {
    if full == 0 {
        return 0;
    }
    (u64::from(full) * u64::from(step.min(RAMP_STEPS)) / u64::from(RAMP_STEPS)).max(1) as u32
}

/// One service's ramps.
#[derive(Debug, Default)]
pub struct Ramps {
    /// Each backend's full weight as last observed; `None` before the
    /// first observation.
    last: Option<BTreeMap<SocketAddr, u32>>,
    /// When each ramping backend's ramp began.
    started: BTreeMap<SocketAddr, Instant>,
    /// The ramping backends' steps at the last observation: what the
    /// tables hold.
    programmed: Vec<(SocketAddr, u32)>,
}

impl Ramps {
    /// Records the full weights (what the backends get without slow start)
    /// at `now`: a backend whose weight rose from 0, or that is new, starts
    /// its ramp; one at 0 stops ramping; finished ramps are forgotten. The
    /// first observation starts none: a starting daemon keeps the weights
    /// the data plane already had.
    pub fn observe(&mut self, full: impl IntoIterator<Item = (SocketAddr, u32)>, now: Instant, period: Duration) {
        let full: BTreeMap<SocketAddr, u32> = full.into_iter().collect();
        if let Some(last) = &self.last {
            for (&address, &weight) in &full {
                let before = last.get(&address).copied().unwrap_or(0);
                if weight == 0 {
                    self.started.remove(&address);
                } else if before == 0 {
                    self.started.insert(address, now);
                }
            }
        }
        self.started
            .retain(|address, at| full.contains_key(address) && now.saturating_duration_since(*at) < period);
        self.last = Some(full);
        self.programmed = self.steps(now, period);
    }

    /// Whether a ramp moved a step since the last observation: the tables
    /// need rebuilding.
    pub fn due(&self, now: Instant, period: Duration) -> bool {
        self.steps(now, period) != self.programmed
    }

    /// The weight to program for `address`, whose full weight is `full`.
    pub fn weight(&self, address: SocketAddr, full: u32, now: Instant, period: Duration) -> u32 {
        match self.started.get(&address) {
            Some(&at) => ramped_weight(full, ramp_step(now.saturating_duration_since(at), period)),
            None => full,
        }
    }

    /// Each ramping backend's step: when it changes, the tables need
    /// rebuilding.
    pub fn steps(&self, now: Instant, period: Duration) -> Vec<(SocketAddr, u32)> {
        self.started
            .iter()
            .map(|(&address, &at)| (address, ramp_step(now.saturating_duration_since(at), period)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(30);

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::new([10, 0, 1, last].into(), 80)
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_schedule_climbs_a_tenth_per_tenth_of_the_period_and_never_skips_a_step() {
        assert_eq!(ramp_step(Duration::ZERO, PERIOD), 1);
        assert_eq!(ramp_step(secs(2.99), PERIOD), 1);
        assert_eq!(ramp_step(secs(3.0), PERIOD), 2);
        assert_eq!(ramp_step(secs(29.99), PERIOD), 10);
        assert_eq!(ramp_step(PERIOD * 5, PERIOD), 10);
        let weights: Vec<u32> = (0..=300)
            .map(|t| ramped_weight(100, ramp_step(secs(f64::from(t) / 10.0), PERIOD)))
            .collect();
        assert_eq!(weights[0], 10);
        assert_eq!(*weights.last().unwrap(), 100);
        for pair in weights.windows(2) {
            assert!(
                pair[1] >= pair[0] && pair[1] - pair[0] <= 10,
                "a step of at most a tenth: {pair:?}"
            );
        }
        let distinct: std::collections::BTreeSet<u32> = weights.into_iter().collect();
        assert_eq!(distinct.len(), RAMP_STEPS as usize, "one table rebuild per step");
    }

    #[test]
    fn a_small_weight_ramps_from_1_and_zero_stays_zero() {
        assert_eq!(ramped_weight(3, 1), 1);
        assert_eq!(ramped_weight(3, 10), 3);
        assert_eq!(ramped_weight(0, 5), 0);
        assert_eq!(ramped_weight(1000, 7), 700);
    }

    #[test]
    fn backends_that_start_taking_connections_ramp_and_the_others_keep_their_weight() {
        let t0 = Instant::now();
        let mut ramps = Ramps::default();
        // Start-up: b1 serving, b2 down (weight 0); nothing ramps.
        ramps.observe([(addr(1), 100), (addr(2), 0)], t0, PERIOD);
        assert_eq!(ramps.weight(addr(1), 100, t0, PERIOD), 100);
        assert!(ramps.steps(t0, PERIOD).is_empty());
        // b2 comes up, b3 is added: both ramp; b1 does not.
        let t1 = t0 + secs(10.0);
        ramps.observe([(addr(1), 100), (addr(2), 100), (addr(3), 50)], t1, PERIOD);
        assert_eq!(ramps.weight(addr(1), 100, t1, PERIOD), 100);
        assert_eq!(ramps.weight(addr(2), 100, t1, PERIOD), 10);
        assert_eq!(ramps.weight(addr(3), 50, t1 + secs(15.0), PERIOD), 30);
        assert_eq!(ramps.steps(t1 + secs(15.0), PERIOD), [(addr(2), 6), (addr(3), 6)]);
        assert!(!ramps.due(t1 + secs(2.9), PERIOD), "still the first step: no rebuild");
        assert!(ramps.due(t1 + secs(3.0), PERIOD), "the second step: rebuild");
        // A weight change while ramping (100 -> 200) keeps the ramp's clock.
        ramps.observe([(addr(1), 100), (addr(2), 200), (addr(3), 50)], t1 + secs(15.0), PERIOD);
        assert_eq!(ramps.weight(addr(2), 200, t1 + secs(15.0), PERIOD), 120);
        // Done after the period: full weight, nothing ramping.
        let t2 = t1 + PERIOD;
        assert!(ramps.due(t2, PERIOD), "the last step to full weight is a rebuild too");
        ramps.observe([(addr(1), 100), (addr(2), 200), (addr(3), 50)], t2, PERIOD);
        assert!(ramps.steps(t2, PERIOD).is_empty());
        assert_eq!(ramps.weight(addr(2), 200, t2, PERIOD), 200);
    }

    #[test]
    fn a_backend_disabled_mid_ramp_starts_again_from_the_bottom() {
        let t0 = Instant::now();
        let mut ramps = Ramps::default();
        ramps.observe([(addr(1), 100)], t0, PERIOD);
        ramps.observe([(addr(1), 0)], t0 + secs(1.0), PERIOD);
        ramps.observe([(addr(1), 100)], t0 + secs(2.0), PERIOD);
        assert_eq!(ramps.weight(addr(1), 100, t0 + secs(20.0), PERIOD), 70);
        ramps.observe([(addr(1), 0)], t0 + secs(21.0), PERIOD);
        assert!(ramps.steps(t0 + secs(21.0), PERIOD).is_empty());
        ramps.observe([(addr(1), 100)], t0 + secs(22.0), PERIOD);
        assert_eq!(ramps.weight(addr(1), 100, t0 + secs(22.0), PERIOD), 10);
    }
}
