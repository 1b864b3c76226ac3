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

use crate::{
    bench::{
        contenders::Contender,
        lab::Lab,
        macro_bench::panic_text,
        paced::{self, Mode, PacedSpec},
        procs,
        report::fmt_number,
        stats,
    },
    topology::Family,
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
    /// Passes over the contenders, the order rotating each pass.
    pub rounds: usize,
    pub duration: Duration,
    /// Requests in flight at most (and keep-alive connections).
    pub workers: u32,
    /// Shares of the slowest contender's saturated rate.
    pub fractions: Vec<f64>,
    /// Fixed rates, instead of shares (empty: shares).
    pub new_rates: Vec<u32>,
    pub keep_alive_rates: Vec<u32>,
    /// The labs' family: the VIP, backends and SNAT address.
    pub family: Family,
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
    pub round: usize,
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
    fn failed(round: usize, contender: Contender, mode: Mode, rate: u32, why: String) -> Self {
        LatencyPoint {
            round,
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
}

/// One contender at one rate over the rounds: the median of each figure;
/// failing if any round failed.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyRow {
    pub contender: Contender,
    pub mode: Mode,
    pub rate: u32,
    pub rounds: usize,
    pub failing: bool,
    pub errors: u64,
    pub achieved_per_sec: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl LatencyRow {
    /// Served under 95% of the rate: the rate was at or past this
    /// contender's maximum here (the generator shares the cores), so its
    /// latency is a queue's, not the path's.
    pub fn behind(&self) -> bool {
        self.achieved_per_sec.is_some_and(|a| a < 0.95 * f64::from(self.rate))
    }
}

/// The points grouped by contender, mode and rate, in the order they first
/// appear.
pub fn rows(points: &[LatencyPoint]) -> Vec<LatencyRow> {
    let mut rows: Vec<LatencyRow> = Vec::new();
    for p in points {
        if rows
            .iter()
            .any(|r| (r.contender, r.mode, r.rate) == (p.contender, p.mode, p.rate))
        {
            continue;
        }
        let mine: Vec<&LatencyPoint> = points
            .iter()
            .filter(|q| (q.contender, q.mode, q.rate) == (p.contender, p.mode, p.rate))
            .collect();
        let median = |figure: fn(&LatencyPoint) -> Option<f64>| {
            let values: Vec<f64> = mine.iter().filter_map(|q| figure(q)).collect();
            stats::summarize(&values).map(|s| s.median)
        };
        rows.push(LatencyRow {
            contender: p.contender,
            mode: p.mode,
            rate: p.rate,
            rounds: mine.len(),
            failing: mine.iter().any(|q| q.failing()),
            errors: mine.iter().map(|q| q.errors).sum(),
            achieved_per_sec: median(|q| (q.ok > 0).then_some(q.achieved_per_sec)),
            p50_ms: median(|q| q.p50_ms),
            p99_ms: median(|q| q.p99_ms),
            p999_ms: median(|q| q.p999_ms),
            max_ms: median(|q| q.max_ms),
        });
    }
    rows
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub options: LatencyOptions,
    pub new_rates: (Vec<u32>, RateSource),
    pub keep_alive_rates: (Vec<u32>, RateSource),
    pub rows: Vec<LatencyRow>,
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
    for round in 0..opts.rounds {
        for i in 0..contenders.len() {
            let contender = contenders[(i + round) % contenders.len()];
            progress(&format!(
                "paced latency: round {}/{}: {}",
                round + 1,
                opts.rounds,
                contender.label()
            ));
            let mine = catch_unwind(AssertUnwindSafe(|| {
                run_one(opts, round, contender, &plan, bg_lb, progress)
            }))
            .unwrap_or_else(|panic| {
                if procs::interrupted() {
                    std::panic::resume_unwind(panic)
                }
                let why = format!("setup or run aborted: {}", panic_text(&*panic));
                plan.iter()
                    .flat_map(|&(mode, rates)| {
                        let why = why.clone();
                        rates
                            .iter()
                            .map(move |&r| LatencyPoint::failed(round, contender, mode, r, why.clone()))
                    })
                    .collect()
            });
            for p in mine.iter().filter(|p| p.failing()) {
                progress(&format!(
                    "  FAILING {} {} at {}/s: {}",
                    contender.label(),
                    p.mode.label(),
                    p.rate,
                    p.first_error.as_deref().unwrap_or_default()
                ));
            }
            points.extend(mine);
        }
    }
    LatencyReport {
        options: opts.clone(),
        new_rates,
        keep_alive_rates,
        rows: rows(&points),
        points,
    }
}

/// One contender in a fresh lab at every rate of `plan`.
fn run_one(
    opts: &LatencyOptions,
    round: usize,
    contender: Contender,
    plan: &[(Mode, &Vec<u32>)],
    bg_lb: &'static str,
    progress: &mut dyn FnMut(&str),
) -> Vec<LatencyPoint> {
    let lab = Lab::new(bg_lb, contender.forwarding(), opts.family);
    // As in the macro rounds: a contender that cannot serve the family has
    // no points, and says why.
    let mine = match contender.refuses(&lab) {
        Some(why) => {
            progress(&format!("  skipped {}: {why}", contender.label()));
            Vec::new()
        }
        None => paced_points(opts, round, contender, plan, &lab, bg_lb),
    };
    for leftover in lab.close() {
        progress(&format!("  killed a leftover: {leftover}"));
    }
    mine
}

/// The contender started in `lab`, at every rate of `plan`.
fn paced_points(
    opts: &LatencyOptions,
    round: usize,
    contender: Contender,
    plan: &[(Mode, &Vec<u32>)],
    lab: &Lab,
    bg_lb: &'static str,
) -> Vec<LatencyPoint> {
    let running = contender.start(lab, bg_lb);
    let mut mine = Vec::new();
    for &(mode, rates) in plan {
        for &rate in rates {
            let spec = PacedSpec {
                target: running.http,
                mode,
                rate,
                duration: opts.duration,
                workers: opts.workers,
            };
            mine.push(point(round, contender, spec, &paced::run(lab.client(), spec)));
        }
    }
    mine
}

fn point(round: usize, contender: Contender, spec: PacedSpec, run: &paced::PacedRun) -> LatencyPoint {
    LatencyPoint {
        round,
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

/// `row`'s p99 over nftables' at the same mode and rate, both clean.
pub fn p99_vs_nftables(rows: &[LatencyRow], row: &LatencyRow) -> Option<f64> {
    let nft = rows
        .iter()
        .find(|n| n.contender == Contender::NftablesDnat && n.mode == row.mode && n.rate == row.rate)?;
    match (row.failing || nft.failing, row.p99_ms, nft.p99_ms) {
        (false, Some(mine), Some(theirs)) => stats::ratio(mine, theirs),
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
        "Open-loop paced load (wrk2's model: latency from each request's due time), {} round(s) of {} s per rate \
         (medians over rounds), {} workers.\n\
         Rates: new connections {:?} ({}); keep-alive {:?} ({}). \
         \"behind\": under 95% of the rate served, so that contender was saturated there.\n\n\
         | contender | workload | rate/s | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | p99 / nftables |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        r.options.rounds,
        r.options.duration.as_secs_f64(),
        r.options.workers,
        r.new_rates.0,
        source_text(&r.new_rates.1),
        r.keep_alive_rates.0,
        source_text(&r.keep_alive_rates.1),
    );
    for row in &r.rows {
        let achieved = row.achieved_per_sec.map_or("-".to_owned(), fmt_number);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.contender.key(),
            row.mode.label(),
            row.rate,
            match (row.failing, row.behind()) {
                (true, _) => format!("FAIL ({achieved})"),
                (false, true) => format!("{achieved} (behind)"),
                (false, false) => achieved,
            },
            ms(row.p50_ms),
            ms(row.p99_ms),
            ms(row.p999_ms),
            ms(row.max_ms),
            row.errors,
            p99_vs_nftables(&r.rows, row).map_or("-".to_owned(), |x| format!("{x:.2}x")),
        );
    }
    let verdicts: Vec<String> = r
        .rows
        .iter()
        .filter(|row| row.contender == Contender::BgLb)
        .map(|row| {
            let verdict = match p99_vs_nftables(&r.rows, row) {
                Some(x) if x <= P99_VS_NFTABLES_TARGET => format!("{x:.2}x, met"),
                Some(x) => format!("{x:.2}x, not met"),
                None => "no figure".to_owned(),
            };
            format!("{} at {}/s: {verdict}", row.mode.label(), row.rate)
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

    fn at(round: usize, contender: Contender, mode: Mode, rate: u32, p99: f64, clean: bool) -> LatencyPoint {
        LatencyPoint {
            ok: 100,
            achieved_per_sec: f64::from(rate),
            p99_ms: Some(p99),
            first_error: (!clean).then(String::new),
            ..LatencyPoint::failed(round, contender, mode, rate, String::new())
        }
    }

    #[test]
    fn rows_take_the_median_over_rounds_and_fail_if_any_round_failed() {
        let points = vec![
            at(0, Contender::BgLb, Mode::KeepAlive, 100, 1.0, true),
            at(0, Contender::NftablesDnat, Mode::KeepAlive, 100, 9.0, false),
            at(1, Contender::BgLb, Mode::KeepAlive, 100, 3.0, true),
            at(1, Contender::NftablesDnat, Mode::KeepAlive, 100, 1.0, true),
            at(2, Contender::BgLb, Mode::KeepAlive, 100, 2.0, true),
        ];
        let rows = rows(&points);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].contender, rows[0].rounds), (Contender::BgLb, 3));
        assert_eq!((rows[0].p99_ms, rows[0].failing), (Some(2.0), false));
        assert!(rows[1].failing, "one failing round fails the row");
        assert!(!rows[0].behind());
    }

    #[test]
    fn p99_ratio_compares_with_nftables_at_the_same_mode_and_rate_only_when_both_are_clean() {
        let rows = rows(&[
            at(0, Contender::BgLb, Mode::KeepAlive, 100, 1.1, true),
            at(0, Contender::NftablesDnat, Mode::KeepAlive, 100, 1.0, true),
            at(0, Contender::NftablesDnat, Mode::KeepAlive, 200, 5.0, true),
            at(0, Contender::BgLb, Mode::NewConnections, 100, 1.0, false),
            at(0, Contender::NftablesDnat, Mode::NewConnections, 100, 1.0, true),
        ]);
        let ratio = p99_vs_nftables(&rows, &rows[0]).unwrap();
        assert!((ratio - 1.1).abs() < 1e-9);
        assert_eq!(p99_vs_nftables(&rows, &rows[3]), None, "a failing row has no ratio");
    }
}
