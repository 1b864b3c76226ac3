//! Latency at paced rates: every contender in a fresh lab, new connections
//! and keep-alive requests sent open-loop ([`paced`]) at the same fixed
//! rates, below every contender's maximum, so the percentiles compare (at
//! saturation each contender is measured at its own throughput).
//!
//! The rates are shares of the slowest contender's saturated rate measured
//! earlier in the same run (wrk's new-connections and keep-alive figures),
//! or fixed ones (`--latency-new-rates`, `--latency-keep-alive-rates`), or,
//! when neither exists, [`FALLBACK_NEW`] and [`FALLBACK_KEEP_ALIVE`].

use std::{
    fmt::Write as _,
    panic::{AssertUnwindSafe, catch_unwind},
    time::Duration,
};

use serde::Serialize;

use crate::bench::{
    contenders::Contender,
    lab::Lab,
    macro_bench::panic_text,
    paced::{self, Mode, PacedSpec},
    procs,
    report::fmt_number,
};

/// Rates when neither flags nor a saturated rate give them: about a
/// quarter, a half and three quarters of the slowest contender's maximum on
/// a 2-core machine.
pub const FALLBACK_NEW: [u32; 3] = [2_000, 4_000, 6_000];
pub const FALLBACK_KEEP_ALIVE: [u32; 3] = [10_000, 20_000, 30_000];

/// The target: bg-lb's p99 at a paced rate at most this times
/// nftables'.
pub const P99_VS_NFTABLES_TARGET: f64 = 1.10;

#[derive(Clone, Debug, Serialize)]
pub struct LatencyOptions {
    pub duration: Duration,
    /// Requests in flight at most (and keep-alive connections).
    pub workers: u32,
    /// Shares of the slowest contender's saturated rate.
    pub fractions: Vec<f64>,
    /// Fixed rates, instead of shares (empty: shares).
    pub new_rates: Vec<u32>,
    pub keep_alive_rates: Vec<u32>,
}

/// Where a mode's rates came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateSource {
    Fixed,
    /// Shares of this rate, the slowest contender's median at saturation.
    SlowestSaturated(f64),
    /// No saturated rate was measured in this run.
    Fallback,
}

/// `fixed` if given, else `fractions` of the slowest saturated rate, else
/// `fallback`.
pub fn pick_rates(fixed: &[u32], slowest: Option<f64>, fractions: &[f64], fallback: &[u32]) -> (Vec<u32>, RateSource) {
    match (fixed.is_empty(), slowest) {
        (false, _) => (fixed.to_vec(), RateSource::Fixed),
        (true, Some(rate)) if rate >= 1.0 => (
            fractions.iter().map(|f| ((rate * f).round() as u32).max(1)).collect(),
            RateSource::SlowestSaturated(rate),
        ),
        _ => (fallback.to_vec(), RateSource::Fallback),
    }
}

/// One contender at one rate.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyPoint {
    pub contender: Contender,
    pub mode: Mode,
    pub rate: u32,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub achieved_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl LatencyPoint {
    fn failed(contender: Contender, mode: Mode, rate: u32, why: String) -> Self {
        LatencyPoint {
            contender,
            mode,
            rate,
            ok: 0,
            errors: 0,
            first_error: Some(why),
            achieved_per_sec: 0.0,
            p50_ms: None,
            p99_ms: None,
            p999_ms: None,
            max_ms: None,
        }
    }

    pub fn failing(&self) -> bool {
        self.first_error.is_some()
    }

    /// Served under 95% of the rate: the rate was at or past this
    /// contender's maximum here (the generator shares the cores), so its
    /// latency is a queue's, not the path's.
    pub fn behind(&self) -> bool {
        self.achieved_per_sec < 0.95 * f64::from(self.rate)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub options: LatencyOptions,
    pub new_rates: (Vec<u32>, RateSource),
    pub keep_alive_rates: (Vec<u32>, RateSource),
    pub points: Vec<LatencyPoint>,
}

/// Runs every contender at every rate of both modes.
pub fn run(
    opts: &LatencyOptions,
    contenders: &[Contender],
    new_rates: (Vec<u32>, RateSource),
    keep_alive_rates: (Vec<u32>, RateSource),
    bg_lb: &'static str,
    progress: &mut dyn FnMut(&str),
) -> LatencyReport {
    let plan = [
        (Mode::NewConnections, &new_rates.0),
        (Mode::KeepAlive, &keep_alive_rates.0),
    ];
    let mut points = Vec::new();
    for &contender in contenders {
        progress(&format!("paced latency: {}", contender.label()));
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let lab = Lab::new(bg_lb);
            let running = contender.start(&lab, bg_lb);
            let mut mine = Vec::new();
            for (mode, rates) in plan {
                for &rate in rates {
                    let spec = PacedSpec {
                        target: running.http,
                        mode,
                        rate,
                        duration: opts.duration,
                        workers: opts.workers,
                    };
                    mine.push(point(contender, spec, &paced::run(lab.client(), spec)));
                }
            }
            drop(running);
            for leftover in lab.close() {
                progress(&format!("  killed a leftover: {leftover}"));
            }
            mine
        }));
        match outcome {
            Ok(mine) => points.extend(mine),
            Err(panic) if procs::interrupted() => std::panic::resume_unwind(panic),
            Err(panic) => {
                let why = format!("setup or run aborted: {}", panic_text(&*panic));
                for (mode, rates) in plan {
                    points.extend(
                        rates
                            .iter()
                            .map(|&r| LatencyPoint::failed(contender, mode, r, why.clone())),
                    );
                }
            }
        }
        for p in points.iter().filter(|p| p.contender == contender && p.failing()) {
            progress(&format!(
                "  FAILING {} {} at {}/s: {} errors, first: {}",
                contender.label(),
                p.mode.label(),
                p.rate,
                p.errors,
                p.first_error.as_deref().unwrap_or_default()
            ));
        }
    }
    LatencyReport {
        options: opts.clone(),
        new_rates,
        keep_alive_rates,
        points,
    }
}

fn point(contender: Contender, spec: PacedSpec, run: &paced::PacedRun) -> LatencyPoint {
    LatencyPoint {
        contender,
        mode: spec.mode,
        rate: spec.rate,
        ok: run.ok(),
        errors: run.errors,
        first_error: run
            .first_error
            .as_ref()
            .map(|e| format!("{} of {} failed, first: {e}", run.errors, run.due)),
        achieved_per_sec: run.ok() as f64 / run.seconds.max(1e-9),
        p50_ms: run.quantile_ms(0.5),
        p99_ms: run.quantile_ms(0.99),
        p999_ms: run.quantile_ms(0.999),
        max_ms: run.quantile_ms(1.0),
    }
}

/// bg-lb's p99 over nftables' at the same mode and rate, both clean.
pub fn p99_vs_nftables(points: &[LatencyPoint], p: &LatencyPoint) -> Option<f64> {
    let nft = points
        .iter()
        .find(|n| n.contender == Contender::NftablesDnat && n.mode == p.mode && n.rate == p.rate)?;
    match (p.failing() || nft.failing(), p.p99_ms, nft.p99_ms) {
        (false, Some(mine), Some(theirs)) => crate::bench::stats::ratio(mine, theirs),
        _ => None,
    }
}

fn source_text(source: &RateSource) -> String {
    match source {
        RateSource::Fixed => "fixed by flag".to_owned(),
        RateSource::SlowestSaturated(r) => format!("shares of the slowest contender's saturated {}/s", fmt_number(*r)),
        RateSource::Fallback => "fallback (no saturated rate in this run)".to_owned(),
    }
}

pub fn render(r: &LatencyReport) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), fmt_number);
    let mut out = format!(
        "Open-loop paced load (wrk2's model: latency from each request's due time), {} s per rate, {} workers.\n\
         Rates: new connections {:?} ({}); keep-alive {:?} ({}). \
         \"behind\": under 95% of the rate served, so that contender was saturated there.\n\n\
         | contender | workload | rate/s | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | p99 / nftables |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        r.options.duration.as_secs_f64(),
        r.options.workers,
        r.new_rates.0,
        source_text(&r.new_rates.1),
        r.keep_alive_rates.0,
        source_text(&r.keep_alive_rates.1),
    );
    for p in &r.points {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.contender.key(),
            p.mode.label(),
            p.rate,
            match (p.failing(), p.behind()) {
                (true, _) => "FAIL".to_owned(),
                (false, true) => format!("{} (behind)", fmt_number(p.achieved_per_sec)),
                (false, false) => fmt_number(p.achieved_per_sec),
            },
            ms(p.p50_ms),
            ms(p.p99_ms),
            ms(p.p999_ms),
            ms(p.max_ms),
            p.errors,
            p99_vs_nftables(&r.points, p).map_or("-".to_owned(), |x| format!("{x:.2}x")),
        );
    }
    let verdicts: Vec<String> = r
        .points
        .iter()
        .filter(|p| p.contender == Contender::BgLb)
        .map(|p| {
            let verdict = match p99_vs_nftables(&r.points, p) {
                Some(x) if x <= P99_VS_NFTABLES_TARGET => format!("{x:.2}x, met"),
                Some(x) => format!("{x:.2}x, not met"),
                None => "no figure".to_owned(),
            };
            format!("{} at {}/s: {verdict}", p.mode.label(), p.rate)
        })
        .collect();
    let _ = writeln!(
        out,
        "\nTarget: bg-lb's p99 <= {P99_VS_NFTABLES_TARGET:.2}x nftables' at each paced rate. {}.",
        verdicts.join("; ")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_fixed_ones_first_then_shares_of_the_slowest_then_the_fallback() {
        let shares = [0.25, 0.5, 0.75];
        assert_eq!(
            pick_rates(&[7], Some(1000.0), &shares, &[1]),
            (vec![7], RateSource::Fixed)
        );
        assert_eq!(
            pick_rates(&[], Some(1000.0), &shares, &[1]),
            (vec![250, 500, 750], RateSource::SlowestSaturated(1000.0))
        );
        assert_eq!(
            pick_rates(&[], None, &shares, &[1, 2]),
            (vec![1, 2], RateSource::Fallback)
        );
    }

    #[test]
    fn p99_ratio_compares_bg_lb_with_nftables_at_the_same_mode_and_rate_only_when_both_are_clean() {
        let at = |contender, mode, rate, p99: f64| LatencyPoint {
            p99_ms: Some(p99),
            ..LatencyPoint::failed(contender, mode, rate, String::new())
        };
        let clean = |mut p: LatencyPoint| {
            p.first_error = None;
            p
        };
        let points = vec![
            clean(at(Contender::BgLb, Mode::KeepAlive, 100, 1.1)),
            clean(at(Contender::NftablesDnat, Mode::KeepAlive, 100, 1.0)),
            clean(at(Contender::NftablesDnat, Mode::KeepAlive, 200, 5.0)),
            at(Contender::BgLb, Mode::NewConnections, 100, 1.0),
            clean(at(Contender::NftablesDnat, Mode::NewConnections, 100, 1.0)),
        ];
        let ratio = p99_vs_nftables(&points, &points[0]).unwrap();
        assert!((ratio - 1.1).abs() < 1e-9);
        assert_eq!(p99_vs_nftables(&points, &points[3]), None, "a failing run has no ratio");
    }
}
