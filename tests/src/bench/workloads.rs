//! The workloads, each run from the client namespace against one target:
//! new connections per second and keep-alive requests (wrk), bulk
//! throughput ([`bulk`]), and CPU per 1,000 connections at a fixed rate.

use std::{net::SocketAddr, time::Duration};

use serde::Serialize;

use crate::{
    bench::{
        bulk::{self, BulkReport},
        cpu,
        lab::Lab,
        paced::{self, Mode, PacedSpec},
        syn_flood::SynFloodOptions,
        wrk::{self, Connections, WrkReport},
        xdp_time::XdpTime,
    },
    topology::NetNs,
};

/// Lengths and sizes of one pass over the workloads.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadOptions {
    pub duration: Duration,
    /// wrk threads: one per core.
    pub wrk_threads: u32,
    pub close_connections: u32,
    pub keepalive_connections: u32,
    pub bulk_connections: usize,
    /// UDP sockets of the UDP request/response workload.
    pub udp_clients: usize,
    /// New connections per second for the CPU measurement: well below every
    /// contender's maximum, so the machine is not saturated and CPU time per
    /// connection means something (at saturation it is just 1/throughput).
    pub paced_rate: u32,
    pub syn_flood: SynFloodOptions,
}

/// New connections per second: one short request per connection.
pub fn new_connections(client: &NetNs, target: SocketAddr, o: &WorkloadOptions) -> Result<WrkReport, String> {
    let threads = o.wrk_threads;
    wrk::run(
        client,
        target,
        Connections::OnePerRequest,
        threads,
        o.close_connections,
        o.duration,
    )
}

/// Requests per second and latency over keep-alive connections.
pub fn keep_alive(client: &NetNs, target: SocketAddr, o: &WorkloadOptions) -> Result<WrkReport, String> {
    let threads = o.wrk_threads;
    wrk::run(
        client,
        target,
        Connections::KeepAlive,
        threads,
        o.keepalive_connections,
        o.duration,
    )
}

pub fn bulk(client: &NetNs, target: SocketAddr, o: &WorkloadOptions) -> Result<BulkReport, String> {
    bulk::run(client, target, o.bulk_connections, o.duration)
}

/// CPU used while serving connections at a fixed rate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuReport {
    pub connections: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Every thread of the experiment: the client's connecting threads and
    /// all threads in the LB and backend namespaces. Packet processing on
    /// veth (XDP included) is charged to the sending thread.
    pub experiment_ms: f64,
    /// Threads in the LB namespace (proxies, bg-lb's daemon).
    pub lb_process_ms: f64,
    /// The parts of `experiment_ms` besides the LB's.
    pub client_ms: f64,
    pub backends_ms: f64,
    /// Softirq work deferred to ksoftirqd, machine-wide: not part of
    /// `experiment_ms`, as other tenants' traffic lands there too.
    pub ksoftirqd_ms: f64,
    /// For reference only (see [`cpu`]): machine-wide busy and softirq time
    /// by tick sampling, other tenants included.
    pub machine_ms: f64,
    pub softirq_ms: f64,
    /// Run time of the XDP programs attached in the LB's namespace
    /// ([`xdp_time`]): the data plane's own part of the LB's CPU, inside
    /// `experiment_ms`. `None` where none is attached.
    pub xdp_program_ms: Option<f64>,
    /// The frames those programs ran on.
    pub xdp_runs: u64,
}

impl CpuReport {
    fn per_1k(&self, ms: f64) -> f64 {
        ms / (self.connections as f64 / 1000.0)
    }

    pub fn experiment_ms_per_1k(&self) -> f64 {
        self.per_1k(self.experiment_ms)
    }

    pub fn lb_process_ms_per_1k(&self) -> f64 {
        self.per_1k(self.lb_process_ms)
    }

    pub fn xdp_program_ms_per_1k(&self) -> Option<f64> {
        self.xdp_program_ms.map(|ms| self.per_1k(ms))
    }

    pub fn xdp_ns_per_frame(&self) -> Option<f64> {
        let ms = self.xdp_program_ms.filter(|_| self.xdp_runs > 0)?;
        Some(ms * 1e6 / self.xdp_runs as f64)
    }
}

/// Opens `paced_rate` connections per second for `duration` (each: one
/// request with `Connection: close`, response read to the end; [`paced`])
/// from the client and reads the CPU time the experiment's threads used
/// meanwhile.
pub fn paced(lab: &Lab, target: SocketAddr, o: &WorkloadOptions) -> Result<CpuReport, String> {
    // The LB first: its share is reported on its own.
    let namespaces: Vec<u64> = std::iter::once(lab.lb())
        .chain(lab.topo.backends.iter().map(|b| &b.ns))
        .filter_map(|ns| cpu::netns_inode(&ns.name))
        .collect();
    let xdp = XdpTime::start(lab.lb());
    let xdp_before = xdp.as_ref().map(XdpTime::read);
    let (threads_before, softirqd_before) = cpu::thread_cpu_ns(&namespaces);
    let machine_before = cpu::machine();
    let spec = PacedSpec {
        target,
        mode: Mode::NewConnections,
        rate: o.paced_rate,
        duration: o.duration,
        workers: 4,
    };
    let run = paced::run(lab.client(), spec);
    let machine = cpu::machine().since(&machine_before);
    let (threads_after, softirqd_after) = cpu::thread_cpu_ns(&namespaces);
    let xdp_used = xdp.as_ref().zip(xdp_before).map(|(x, before)| x.read().since(&before));
    let used: Vec<u64> = threads_after
        .iter()
        .zip(&threads_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let softirqd_ns = softirqd_after.saturating_sub(softirqd_before);
    let experiment_ns = run.client_cpu_ns + used.iter().sum::<u64>();
    let ms = |ns: u64| ns as f64 / 1e6;
    let tick_ms = |ticks: u64| ticks as f64 * 1000.0 / cpu::ticks_per_second();
    let report = CpuReport {
        connections: run.ok(),
        errors: run.errors,
        seconds: run.seconds,
        experiment_ms: ms(experiment_ns),
        lb_process_ms: ms(used.first().copied().unwrap_or(0)),
        client_ms: ms(run.client_cpu_ns),
        backends_ms: ms(used.iter().skip(1).sum()),
        ksoftirqd_ms: ms(softirqd_ns),
        machine_ms: tick_ms(machine.busy),
        softirq_ms: tick_ms(machine.softirq),
        xdp_program_ms: xdp_used.map(|t| t.run_time.as_secs_f64() * 1e3),
        xdp_runs: xdp_used.map_or(0, |t| t.runs),
    };
    match run.first_error {
        Some(e) => Err(format!(
            "{} of {} connections failed, first: {e}",
            report.errors, run.due
        )),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2,000 connections with 500 ms of CPU, 100 ms of it the LB's.
    fn report(xdp_program_ms: Option<f64>, xdp_runs: u64) -> CpuReport {
        CpuReport {
            connections: 2000,
            errors: 0,
            seconds: 2.0,
            experiment_ms: 500.0,
            lb_process_ms: 100.0,
            client_ms: 0.0,
            backends_ms: 0.0,
            ksoftirqd_ms: 0.0,
            machine_ms: 0.0,
            softirq_ms: 0.0,
            xdp_program_ms,
            xdp_runs,
        }
    }

    #[test]
    fn cpu_per_thousand_connections_divides_by_thousands_of_connections() {
        let report = report(None, 0);
        assert_eq!(report.experiment_ms_per_1k(), 250.0);
        assert_eq!(report.lb_process_ms_per_1k(), 50.0);
        assert_eq!(report.xdp_program_ms_per_1k(), None);
        assert_eq!(report.xdp_ns_per_frame(), None);
    }

    #[test]
    fn xdp_run_time_is_given_per_thousand_connections_and_per_frame() {
        let report = report(Some(20.0), 40_000);
        assert_eq!(report.xdp_program_ms_per_1k(), Some(10.0));
        assert_eq!(report.xdp_ns_per_frame(), Some(500.0));
    }
}
