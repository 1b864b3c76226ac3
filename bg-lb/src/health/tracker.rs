//! Rise/fall tracking (HAProxy semantics): turning a probe's stream of
//! outcomes into up or down.

use super::Outcome;

/// Up or down after `rise` consecutive successes or `fall` consecutive
/// failures. A backend with no known health counts as up until its first
/// result, which then sets the state directly; rise/fall govern every change
/// after it. A backend last known down ([`Tracker::known_down`]) starts
/// down and needs `rise` successes.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    up: bool,
    checked: bool,
    /// Consecutive results contrary to the current state.
    streak: u32,
    last: Option<Outcome>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    WentUp,
    WentDown,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise,
            fall,
            up: true,
            checked: false,
            streak: 0,
            last: None,
        }
    }

    /// A backend that was down when the daemon last ran (or before a
    /// reload): it stays down until `rise` consecutive successes, so a
    /// restart never puts it back into rotation on one lucky probe.
    pub fn known_down(rise: u32, fall: u32) -> Self {
        Self {
            up: false,
            checked: true,
            ..Self::new(rise, fall)
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn last(&self) -> Option<&Outcome> {
        self.last.as_ref()
    }

    /// A result contrary to the state was seen: probe faster to confirm.
    pub fn transitioning(&self) -> bool {
        self.streak > 0
    }

    pub fn record(&mut self, outcome: Outcome) -> Option<Transition> {
        let ok = outcome.is_ok();
        self.last = Some(outcome);
        if !self.checked {
            self.checked = true;
            let was_up = std::mem::replace(&mut self.up, ok);
            return (was_up != ok).then_some(if ok { Transition::WentUp } else { Transition::WentDown });
        }
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < if ok { self.rise } else { self.fall } {
            return None;
        }
        self.streak = 0;
        self.up = ok;
        Some(if ok { Transition::WentUp } else { Transition::WentDown })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Failure;

    fn fail() -> Outcome {
        Err(Failure::Refused)
    }

    #[test]
    fn the_first_result_sets_the_state_directly() {
        let mut t = Tracker::new(2, 3);
        assert!(t.is_up(), "unchecked backends keep serving");
        assert_eq!(t.record(fail()), Some(Transition::WentDown));
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.record(Ok(())), None);
        assert!(t.is_up());
    }

    #[test]
    fn a_backend_known_down_needs_rise_successes_to_come_up() {
        let mut t = Tracker::known_down(3, 2);
        assert!(!t.is_up(), "known down: out of rotation before any probe");
        assert_eq!(t.record(Ok(())), None, "one success is not a rise");
        assert_eq!(t.record(Ok(())), None);
        assert!(!t.is_up());
        assert_eq!(t.record(Ok(())), Some(Transition::WentUp));
        assert!(t.is_up());
        let mut t = Tracker::known_down(3, 2);
        assert_eq!(t.record(fail()), None, "still down is no transition");
        assert!(!t.is_up());
    }

    #[test]
    fn goes_down_after_fall_consecutive_failures() {
        let mut t = Tracker::new(2, 3);
        t.record(Ok(()));
        assert_eq!(t.record(fail()), None);
        assert!(t.transitioning(), "probe faster while a change is being confirmed");
        assert_eq!(t.record(fail()), None);
        assert_eq!(t.record(fail()), Some(Transition::WentDown));
        assert!(!t.is_up() && !t.transitioning());
    }

    #[test]
    fn goes_up_after_rise_consecutive_successes() {
        let mut t = Tracker::new(2, 3);
        t.record(fail());
        assert_eq!(t.record(Ok(())), None);
        assert_eq!(t.record(Ok(())), Some(Transition::WentUp));
        assert!(t.is_up());
    }

    #[test]
    fn an_interrupted_streak_starts_over() {
        let mut t = Tracker::new(2, 3);
        t.record(Ok(()));
        t.record(fail());
        t.record(fail());
        t.record(Ok(()));
        assert!(!t.transitioning());
        assert_eq!(t.record(fail()), None);
        assert_eq!(t.record(fail()), None);
        assert!(t.is_up(), "two failures after a success are not three in a row");
    }
}
