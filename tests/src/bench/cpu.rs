//! CPU accounting from /proc.
//!
//! On veth, a sent packet is processed by the softirq that the sender's own
//! `local_bh_enable` runs: the veth peer's receive, the bridge, XDP on the
//! LB's veth, the receiving TCP stack. That time is charged to the sending
//! thread. So the cost of an LB in the path shows as CPU time of the threads
//! in the benchmark's namespaces (client, LB, backends), read exactly from
//! the scheduler (`schedstat`, ns). Softirq work deferred to `ksoftirqd` is
//! read too but only reported: those threads serve the whole machine, other
//! tenants included, and at the paced rate little is deferred. Machine-wide `/proc/stat` is kept for reference only: this kernel
//! samples it by tick (no IRQ time accounting), which misses short softirq
//! bursts on idle CPUs, and on a shared machine it includes other tenants.

use std::{fs, os::unix::fs::MetadataExt as _};

use serde::Serialize;

/// Cumulative CPU time of all CPUs, in clock ticks (USER_HZ).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MachineTicks {
    /// Everything but idle and iowait: user, nice, system, irq, softirq, steal.
    pub busy: u64,
    pub softirq: u64,
}

impl MachineTicks {
    pub fn since(&self, earlier: &MachineTicks) -> MachineTicks {
        MachineTicks {
            busy: self.busy.saturating_sub(earlier.busy),
            softirq: self.softirq.saturating_sub(earlier.softirq),
        }
    }
}

/// Reads the aggregate `cpu` line of `/proc/stat`.
pub fn machine() -> MachineTicks {
    let text = fs::read_to_string("/proc/stat").expect("read /proc/stat");
    parse_proc_stat(&text).expect("/proc/stat has a cpu line")
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`;
/// guest time is already part of user time.
pub fn parse_proc_stat(text: &str) -> Option<MachineTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    let (user, nice, system, irq, softirq, steal) = (field(0), field(1), field(2), field(5), field(6), field(7));
    Some(MachineTicks {
        busy: user + nice + system + irq + softirq + steal,
        softirq,
    })
}

/// The inode of a named network namespace (`ip netns` name).
pub fn netns_inode(netns: &str) -> Option<u64> {
    fs::metadata(format!("/run/netns/{netns}")).ok().map(|m| m.ino())
}

/// Scheduler CPU time (ns) of every thread on the machine: the sum for the
/// threads in each of `namespaces` (by inode, in order), and for the
/// `ksoftirqd` threads.
pub fn thread_cpu_ns(namespaces: &[u64]) -> (Vec<u64>, u64) {
    let mut per_ns = vec![0; namespaces.len()];
    let mut ksoftirqd = 0;
    let numeric = |e: &fs::DirEntry| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit());
    let Ok(procs) = fs::read_dir("/proc") else {
        return (per_ns, ksoftirqd);
    };
    for task in procs
        .flatten()
        .filter(numeric)
        .filter_map(|p| fs::read_dir(p.path().join("task")).ok())
        .flat_map(|tasks| tasks.flatten().filter(numeric))
    {
        let path = task.path();
        let Some(ns) = fs::metadata(path.join("ns/net")).ok().map(|m| m.ino()) else {
            continue;
        };
        let slot = namespaces.iter().position(|&n| n == ns);
        let softirqd =
            slot.is_none() && fs::read_to_string(path.join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"));
        if slot.is_none() && !softirqd {
            continue;
        }
        let Some(ns_time) = fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| parse_schedstat(&s))
        else {
            continue;
        };
        match slot {
            Some(i) => per_ns[i] += ns_time,
            None => ksoftirqd += ns_time,
        }
    }
    (per_ns, ksoftirqd)
}

/// The first field of `/proc/.../schedstat`: time on CPU in ns.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The calling thread's CPU time in ns.
pub fn this_thread_cpu_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Clock ticks per second (USER_HZ), the unit of /proc's CPU times.
pub fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 40 3 7 2 0 0\ncpu0 50 2 25 4500 20 1 3 1 0 0\nintr 1\n";
        assert_eq!(
            parse_proc_stat(stat),
            Some(MachineTicks {
                busy: 100 + 5 + 50 + 3 + 7 + 2,
                softirq: 7
            })
        );
    }

    #[test]
    fn schedstat_gives_the_time_on_cpu_in_nanoseconds() {
        assert_eq!(parse_schedstat("123456789 2000 17\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn differences_never_go_negative() {
        let later = MachineTicks { busy: 5, softirq: 1 };
        let earlier = MachineTicks { busy: 7, softirq: 0 };
        assert_eq!(later.since(&earlier), MachineTicks { busy: 0, softirq: 1 });
    }
}
