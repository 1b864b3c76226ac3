//! Run time of the XDP programs attached in a namespace, from the kernel's
//! BPF statistics: the data plane's own share of an LB's CPU, apart from the
//! veth, bridge and stack work around it that [`super::cpu`] counts as well.
//!
//! The kernel times a program from entry to verdict, so the entry
//! program's figure includes the programs it tail-calls (bg-lb's UDP, IPv6
//! and SYN-proxy jobs).

use std::{os::fd::OwnedFd, time::Duration};

use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use serde_json::Value;

use crate::topology::NetNs;

/// Run time and runs, summed over some programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramTime {
    pub run_time: Duration,
    pub runs: u64,
}

impl ProgramTime {
    pub fn since(&self, earlier: &ProgramTime) -> ProgramTime {
        ProgramTime {
            run_time: self.run_time.saturating_sub(earlier.run_time),
            runs: self.runs.saturating_sub(earlier.runs),
        }
    }
}

/// The XDP programs attached in one namespace, timed while this lives.
pub struct XdpTime {
    /// Statistics stay on while the kernel holds this descriptor.
    _enabled: OwnedFd,
    programs: Vec<u32>,
}

impl XdpTime {
    /// `None` if no XDP program is attached in `ns` (a proxy, nftables, the
    /// direct floor) or the kernel refuses to keep statistics.
    pub fn start(ns: &NetNs) -> Option<Self> {
        let programs = attached_xdp_programs(&ns.output_of(&["ip", "-j", "-d", "link", "show"]));
        if programs.is_empty() {
            return None;
        }
        let enabled = enable_stats(Stats::RunTime)
            .map_err(|e| eprintln!("bench: BPF run-time statistics unavailable: {e}"))
            .ok()?;
        Some(Self {
            _enabled: enabled,
            programs,
        })
    }

    /// The programs' totals so far.
    pub fn read(&self) -> ProgramTime {
        loaded_programs()
            .flatten()
            .filter(|p| self.programs.contains(&p.id()))
            .fold(ProgramTime::default(), |sum, p| ProgramTime {
                run_time: sum.run_time + p.run_time(),
                runs: sum.runs + p.run_count(),
            })
    }
}

/// The ids of the XDP programs attached to any link in `ip -j -d link show`
/// output: one program (`xdp.prog`) or several modes at once
/// (`xdp.attached[].prog`).
fn attached_xdp_programs(json: &str) -> Vec<u32> {
    let Ok(Value::Array(links)) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let id = |prog: &Value| prog.get("id").and_then(Value::as_u64).map(|id| id as u32);
    links
        .iter()
        .filter_map(|link| link.get("xdp"))
        .flat_map(|xdp| {
            let attached = xdp.get("attached").and_then(Value::as_array).into_iter().flatten();
            xdp.get("prog")
                .and_then(id)
                .into_iter()
                .chain(attached.filter_map(|a| a.get("prog").and_then(id)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_programs_are_read_from_single_and_multi_mode_attachments() {
        let json = r#"[
            {"ifname":"lo"},
            {"ifname":"eth0","xdp":{"mode":1,"prog":{"id":42,"name":"bg_lb"}}},
            {"ifname":"eth1","xdp":{"mode":4,"attached":[
                {"mode":1,"prog":{"id":7}},{"mode":2,"prog":{"id":9}}]}}
        ]"#;
        assert_eq!(attached_xdp_programs(json), vec![42, 7, 9]);
    }

    #[test]
    fn a_namespace_without_xdp_or_unreadable_output_has_no_programs() {
        assert!(attached_xdp_programs(r#"[{"ifname":"eth0"}]"#).is_empty());
        assert!(attached_xdp_programs("Cannot open network namespace").is_empty());
    }

    #[test]
    fn program_time_since_an_earlier_reading_is_the_difference() {
        let earlier = ProgramTime {
            run_time: Duration::from_millis(5),
            runs: 10,
        };
        let later = ProgramTime {
            run_time: Duration::from_millis(8),
            runs: 25,
        };
        assert_eq!(
            later.since(&earlier),
            ProgramTime {
                run_time: Duration::from_millis(3),
                runs: 15
            }
        );
    }
}
