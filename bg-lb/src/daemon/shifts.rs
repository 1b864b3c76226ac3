//! Progressive shifts run inside the daemon, so they survive the CLI
//! disconnecting; the record is persisted with the operator state, and a
//! restarted daemon resumes a running shift (see [`crate::shift`]). Its
//! analysis hooks are checked in [`super::analysis`].

use std::time::{Duration, Instant};

use super::{Daemon, RequestError, analysis::HookRuns};
use crate::{
    config::ServiceConfig,
    desired,
    health::{CheckKey, Listener},
    protocol::{RatioChange, Reply, ShiftRequest},
    ratio::{Pool, Ratio},
    shift::{PoolCounters, ShiftOutcome, ShiftPlan, ShiftRecord, Verdict, Window, hooks::AnalysisHooks, judge},
};

/// Live state of a running shift, beside its persisted record.
pub struct ActiveShift {
    step_started: Instant,
    started: Instant,
    window: Window,
    /// Its analysis hooks' checks and results.
    pub(super) hooks: HookRuns,
}

impl Daemon {
    pub(super) fn new_active_shift(&mut self, plan: &ShiftPlan) -> ActiveShift {
        self.shifts_started += 1;
        // Judge over the last interval, but never less than 5 s of traffic.
        let span = plan.interval.max(Duration::from_secs(5));
        ActiveShift {
            step_started: Instant::now(),
            started: Instant::now(),
            window: Window::new(span),
            hooks: HookRuns::new(self.shifts_started, plan.interval),
        }
    }

    /// Resumes shifts a previous daemon left running. With `[cluster]` the
    /// host that takes the shift's lead resumes it instead (see
    /// [`Daemon::tick_fleet`]).
    pub(super) fn resume_shifts(&mut self) {
        if self.store.fleet().is_some() {
            return;
        }
        for (name, record) in self.running_shifts() {
            tracing::info!(service = %name, step = record.step, "resuming the progressive shift");
            let active = self.new_active_shift(&record.plan);
            self.shifts.insert(name, active);
        }
    }

    /// The shifts the operator state records as running.
    pub(super) fn running_shifts(&self) -> Vec<(String, ShiftRecord)> {
        self.operator
            .services
            .iter()
            .filter_map(|(name, state)| Some((name.clone(), state.shift.clone()?)))
            .filter(|(_, record)| record.outcome == ShiftOutcome::Running)
            .collect()
    }

    pub(super) fn start_shift(&mut self, request: ShiftRequest) -> Result<Reply, RequestError> {
        let interval = Duration::try_from_secs_f64(request.interval_secs)
            .map_err(|_| RequestError::BadInterval(request.interval_secs))?;
        let plan = ShiftPlan {
            to: request.to,
            steps: request.steps,
            interval,
            max_error_rate: request.max_error_rate,
            min_flows: request.min_flows,
            hooks: AnalysisHooks {
                check_url: request.check_url,
                prometheus: request.check_prometheus,
            },
        };
        let name = request.service.as_str();
        let service = self.service(name)?.clone();
        if self.shift_running(name) {
            return Err(RequestError::ShiftAlreadyRunning {
                service: name.to_owned(),
            });
        }
        if let Some(fleet) = self.store.fleet()
            && !fleet.lead(name).map_err(RequestError::NotPersisted)?
        {
            return Err(RequestError::ShiftLeadHeld {
                service: name.to_owned(),
            });
        }
        let operator = self.operator.services.get(name);
        let start_ratio = desired::ratio(&service, operator);
        let plan = plan.starting_from(start_ratio)?;
        if !desired::pool_enabled(&service, operator, plan.to) {
            return Err(RequestError::NoEnabledBackend(plan.to));
        }
        if let Some(down) = self.down_backend(&service, plan.to) {
            return Err(RequestError::TargetBackendDown { pool: plan.to, down });
        }
        let first = plan.ratio_at(plan.steps[0]);
        let record = ShiftRecord {
            plan,
            start_ratio,
            step: 0,
            outcome: ShiftOutcome::Running,
            rates: Default::default(),
        };
        let active = self.new_active_shift(&record.plan);
        self.shifts.insert(name.to_owned(), active);
        let started = self.set_shift_ratio(&service, first, record);
        if started.is_err() {
            self.shifts.remove(name);
            self.release_lead(name);
        }
        started?;
        tracing::info!(service = name, from = %start_ratio, to = %first, "progressive shift started");
        Ok(Reply {
            ok: true,
            ratio: Some(RatioChange {
                old: start_ratio,
                new: first,
            }),
            ..Default::default()
        })
    }

    /// Stops a running shift, back where it began or holding where it is.
    pub(super) fn abort_shift(&mut self, name: &str, rollback: bool) -> Result<Reply, RequestError> {
        let service = self.service(name)?.clone();
        // With `[cluster]` another host may drive it: the fleet state says.
        let driven_here = self.shifts.remove(name).is_some();
        if !driven_here && !self.shift_running(name) {
            return Err(RequestError::NoShiftRunning {
                service: name.to_owned(),
            });
        }
        self.release_lead(name);
        let mut record = self.shift_record(name).ok_or(RequestError::ShiftWithoutRecord)?;
        let current = desired::ratio(&service, self.operator.services.get(name));
        record.outcome = ShiftOutcome::Aborted { rolled_back: rollback };
        let ratio = if rollback { record.start_ratio } else { current };
        self.set_shift_ratio(&service, ratio, record)?;
        tracing::warn!(service = name, %ratio, rollback, "progressive shift aborted");
        Ok(Reply {
            ok: true,
            ratio: Some(RatioChange {
                old: current,
                new: ratio,
            }),
            ..Default::default()
        })
    }

    /// All new connections to `pool` at once, if its backends are healthy.
    pub(super) fn promote(&mut self, name: &str, pool: Pool, force: bool) -> Result<Reply, RequestError> {
        let service = self.service(name)?.clone();
        if self.shift_running(name) {
            return Err(RequestError::PromoteDuringShift {
                service: name.to_owned(),
            });
        }
        if let Some(down) = self.down_backend(&service, pool).filter(|_| !force) {
            return Err(RequestError::PromoteBackendDown { pool, down });
        }
        self.set_ratio(name, Ratio::all_to(pool), force)
    }

    /// Back to the ratio before the latest change (a running shift is
    /// aborted back to where it began).
    pub(super) fn rollback(&mut self, name: &str) -> Result<Reply, RequestError> {
        if self.shift_running(name) {
            return self.abort_shift(name, true);
        }
        let previous = self
            .operator
            .services
            .get(name)
            .and_then(|s| s.previous_ratio)
            .ok_or_else(|| RequestError::NoEarlierRatio {
                service: name.to_owned(),
            })?;
        self.set_ratio(name, previous, true)
    }

    /// Judges every running shift; called once a second.
    pub(super) fn tick_shifts(&mut self) {
        let names: Vec<String> = self.shifts.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.tick_shift(&name) {
                tracing::error!(service = %name, error = %e, "progressive shift step failed");
            }
        }
    }

    fn tick_shift(&mut self, name: &str) -> Result<(), RequestError> {
        let service = self.service(name)?.clone();
        let mut record = self.shift_record(name).ok_or(RequestError::ShiftWithoutRecord)?;
        let counters = self.shift_counters(&service)?;
        let down = self.down_backend(&service, record.plan.to);
        if !record.plan.hooks.is_empty() {
            self.check_hooks(name, &record.plan.hooks);
        }
        let active = self.shifts.get_mut(name).ok_or(RequestError::NoActiveShift)?;
        active.window.push(active.started.elapsed(), counters);
        record.rates = active.window.rates();
        let verdict = judge(
            &record.plan,
            record.step,
            active.step_started.elapsed(),
            record.rates,
            down,
            active.hooks.gate.verdict(&record.plan.hooks),
        );
        match verdict {
            Verdict::Hold => {
                // Fresh numbers for `status`, persisted at the next transition.
                self.operator.services.entry(name.to_owned()).or_default().shift = Some(record);
                Ok(())
            }
            Verdict::Advance => {
                record.step += 1;
                active.step_started = Instant::now();
                active.hooks.gate.next_step();
                let ratio = record.plan.ratio_at(record.plan.steps[record.step]);
                tracing::info!(service = name, step = record.step + 1, %ratio, "progressive shift: next step");
                self.set_shift_ratio(&service, ratio, record)
            }
            Verdict::Complete => {
                self.shifts.remove(name);
                self.release_lead(name);
                record.outcome = ShiftOutcome::Completed;
                let ratio = record.plan.ratio_at(record.plan.steps[record.step]);
                tracing::info!(service = name, %ratio, "progressive shift completed");
                self.set_shift_ratio(&service, ratio, record)
            }
            Verdict::RollBack(reason) => {
                self.shifts.remove(name);
                self.release_lead(name);
                let ratio = record.start_ratio;
                tracing::error!(service = name, %reason, back_to = %ratio, "progressive shift ROLLED BACK");
                record.outcome = ShiftOutcome::RolledBack { reason };
                *self.shift_rollbacks.entry(name.to_owned()).or_default() += 1;
                self.set_shift_ratio(&service, ratio, record)
            }
        }
    }

    fn shift_record(&self, name: &str) -> Option<ShiftRecord> {
        self.operator.services.get(name)?.shift.clone()
    }

    /// A shift of `name` runs, here or (`[cluster]`) on another host.
    pub(super) fn shift_running(&self, name: &str) -> bool {
        self.shift_record(name)
            .is_some_and(|r| r.outcome == ShiftOutcome::Running)
    }

    /// Sets the ratio and the shift record in one persisted change.
    fn set_shift_ratio(
        &mut self,
        service: &ServiceConfig,
        ratio: Ratio,
        record: ShiftRecord,
    ) -> Result<(), RequestError> {
        self.update_operator(service, |state| {
            if state.ratio != Some(ratio) {
                state.previous_ratio = state.ratio.or(Some(service.ratio));
            }
            state.ratio = Some(ratio);
            state.shift = Some(record);
        })
    }

    /// A backend of `pool` that operators keep in rotation but that fails its
    /// live check, with the reason.
    fn down_backend(&self, service: &ServiceConfig, pool: Pool) -> Option<String> {
        let operator = self.operator.services.get(&service.name);
        service.backends.iter().filter(|b| b.pool == pool).find_map(|b| {
            let key = CheckKey {
                service: service.name.clone(),
                backend: b.address,
                listener: Listener::Live,
            };
            let view = self.health.get(&key).filter(|v| !v.up)?;
            (desired::operator_weight(service, operator, b.address) > 0).then(|| match &view.last {
                Err(reason) => format!("{} down ({reason})", b.address),
                Ok(()) => format!("{} down", b.address),
            })
        })
    }

    /// Both pools' cumulative counters on this host's live VIPs (blue,
    /// green).
    pub(super) fn pool_counters(&self, service: &ServiceConfig) -> Result<[PoolCounters; 2], RequestError> {
        let mut pools = [PoolCounters::default(); 2];
        let live: Vec<_> = service
            .listeners()
            .filter(|(_, listener)| *listener == Listener::Live)
            .map(|(key, _)| key)
            .collect();
        for b in &service.backends {
            let Some(id) = live.iter().find_map(|key| self.dataplane.backend_id(key, &b.address)) else {
                continue;
            };
            let stats = self.dataplane.backend_stats(id)?;
            let pool = &mut pools[b.pool.index()];
            pool.new_flows += stats.new_flows;
            pool.refused += stats.refused;
            pool.resets += stats.resets;
        }
        Ok(pools)
    }
}
