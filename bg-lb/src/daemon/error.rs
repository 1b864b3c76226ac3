//! Why the daemon refuses or fails a request. A message is the `error` of the
//! protocol reply word for word: scripts and tests match these texts.

use std::net::SocketAddr;

use crate::{
    cluster::store::StoreError,
    config::{self, ConfigError},
    dataplane::DataplaneError,
    protocol::{MAX_FLOWS_LIMIT, MAX_REQUEST_BYTES},
    ratio::{Pool, Ratio},
    shift::PlanError,
};

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("reading request: {0}")]
    Read(#[source] std::io::Error),
    #[error("request over {} KiB refused", MAX_REQUEST_BYTES / 1024)]
    TooLong,
    #[error("bad request: not UTF-8")]
    NotUtf8,
    #[error("no service {name:?} (configured: {})", .configured.join(", "))]
    NoService { name: String, configured: Vec<String> },
    #[error("service {service:?} has no backend {address}")]
    NoBackend { service: String, address: SocketAddr },
    #[error("backend refused: {0}")]
    BackendRefused(String),
    #[error(
        "backend {address} of {service} is in the config file: remove it there and reload, \
         or take it out of rotation with `ctl backend {service} {address} disable`"
    )]
    BackendFromFile { service: String, address: SocketAddr },
    #[error("limit {0} is over the maximum {max}", max = MAX_FLOWS_LIMIT)]
    FlowsLimit(usize),
    #[error("the flow sweeper thread is gone")]
    SweeperGone,
    #[error("weight {0} is over {max}", max = config::MAX_WEIGHT)]
    WeightOverMax(u32),
    #[error(
        "ratio {ratio} gives {pool} {share}% but {pool} has no enabled backend with weight > 0; \
         its share would go to the other pool (use --force to set it anyway)",
        share = .ratio.share(*.pool)
    )]
    PoolCannotServe { ratio: Ratio, pool: Pool },
    #[error("a progressive shift of {service} is running; `ctl shift {service} --abort` stops it first")]
    ShiftRunning { service: String },
    #[error("a shift of {service} is already running; `ctl shift {service} --abort` stops it")]
    ShiftAlreadyRunning { service: String },
    #[error("another host still holds the lead of {service}'s last shift (it goes within seconds); retry")]
    ShiftLeadHeld { service: String },
    #[error("no shift of {service} is running")]
    NoShiftRunning { service: String },
    #[error("interval {0}s is not a duration")]
    BadInterval(f64),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0} has no enabled backend with weight > 0")]
    NoEnabledBackend(Pool),
    /// `down` names the backend and why its check fails.
    #[error("not starting: {pool} backend {down}")]
    TargetBackendDown { pool: Pool, down: String },
    #[error("a shift of {service} is running; abort it first")]
    PromoteDuringShift { service: String },
    #[error("not promoting {pool}: backend {down} (use --force to promote anyway)")]
    PromoteBackendDown { pool: Pool, down: String },
    #[error("{service} has no earlier ratio to go back to")]
    NoEarlierRatio { service: String },
    #[error("the running shift has no record")]
    ShiftWithoutRecord,
    #[error("no running shift")]
    NoActiveShift,
    #[error("this daemon announces no VIP (its config has no [bgp] table), so there is nothing to drain or resume")]
    NoBgp,
    #[error("not applied: cannot persist the change: {0}")]
    NotPersisted(#[source] StoreError),
    #[error("config rejected, still serving the previous one: {0}")]
    ConfigInvalid(#[source] ConfigError),
    #[error("config rejected: changing {0} needs a restart; still serving the previous config")]
    RestartNeeded(&'static str),
    #[error("config rejected: service {service}: lookup_table_size cannot change while the service runs")]
    LookupTableSizeChanged { service: String },
    #[error("config rejected: {0:#}; restored the previous config")]
    ConfigNotApplied(#[source] anyhow::Error),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts built from several parts, as replies carried them before
    /// they were typed.
    #[test]
    fn messages_read_as_the_protocol_replies_them() {
        let cases = [
            (
                RequestError::NoService {
                    name: "api".into(),
                    configured: vec!["web".into(), "bulk".into()],
                },
                r#"no service "api" (configured: web, bulk)"#,
            ),
            (
                RequestError::PoolCannotServe {
                    ratio: Ratio::new(30).unwrap(),
                    pool: Pool::Green,
                },
                "ratio 30:70 gives green 70% but green has no enabled backend with weight > 0; \
                 its share would go to the other pool (use --force to set it anyway)",
            ),
            (RequestError::WeightOverMax(1001), "weight 1001 is over 1000"),
            (RequestError::TooLong, "request over 64 KiB refused"),
            (
                RequestError::ConfigNotApplied(anyhow::anyhow!("too many services").context("service web")),
                "config rejected: service web: too many services; restored the previous config",
            ),
            (
                RequestError::ShiftRunning { service: "web".into() },
                "a progressive shift of web is running; `ctl shift web --abort` stops it first",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }
}
