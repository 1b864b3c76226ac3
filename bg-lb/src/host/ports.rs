//! The SNAT port range against the kernel's ephemeral ports. Health probes
//! (and any local client) bind the SNAT address with an ephemeral port; a
//! reply to one whose port lies in the SNAT range is taken by the XDP
//! program as the reply of a NAT flow, so the ranges must not overlap
//! unless those ports are reserved (`net.ipv4.ip_local_reserved_ports`).

use std::{fmt, fs, io, ops::RangeInclusive};

const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The kernel's ephemeral port settings, in the reading process's network
/// namespace (both sysctls are per namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EphemeralPorts {
    /// `net.ipv4.ip_local_port_range`, inclusive.
    pub range: (u16, u16),
    /// `net.ipv4.ip_local_reserved_ports`: never handed out.
    pub reserved: Vec<RangeInclusive<u16>>,
}

impl EphemeralPorts {
    /// Reads both sysctls.
    pub fn read() -> io::Result<Self> {
        let range = fs::read_to_string(LOCAL_PORT_RANGE)?;
        let range = parse_range(&range).ok_or_else(|| invalid(LOCAL_PORT_RANGE, &range))?;
        // Absent on old kernels: nothing reserved then.
        let reserved = match fs::read_to_string(RESERVED_PORTS) {
            Ok(text) => parse_reserved(&text).ok_or_else(|| invalid(RESERVED_PORTS, &text))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(EphemeralPorts { range, reserved })
    }

    /// The SNAT ports the kernel may also hand out as ephemeral ports, as
    /// ranges; empty when `snat` is safe.
    pub fn clashes(&self, snat: (u16, u16)) -> Vec<RangeInclusive<u16>> {
        let low = snat.0.max(self.range.0);
        let high = snat.1.min(self.range.1);
        let mut clashes = Vec::new();
        let mut start = None;
        for port in low..=high {
            let free = !self.reserved.iter().any(|r| r.contains(&port));
            match (free, start) {
                (true, None) => start = Some(port),
                (false, Some(s)) => {
                    clashes.push(s..=port - 1);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            clashes.push(s..=high);
        }
        clashes
    }
}

/// Why the SNAT range cannot be used on this host: both ranges and the fixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub snat: (u16, u16),
    pub ephemeral: EphemeralPorts,
    pub clashes: Vec<RangeInclusive<u16>>,
}

impl Overlap {
    /// `Some` when `snat` overlaps the ephemeral ports.
    pub fn check(snat: (u16, u16), ephemeral: EphemeralPorts) -> Option<Self> {
        let clashes = ephemeral.clashes(snat);
        (!clashes.is_empty()).then_some(Overlap {
            snat,
            ephemeral,
            clashes,
        })
    }
}

impl Overlap {
    /// The kernel's range without the SNAT ports, when they sit at one end
    /// of it.
    fn narrowed_range(&self) -> Option<(u16, u16)> {
        let ((snat_min, snat_max), (eph_min, eph_max)) = (self.snat, self.ephemeral.range);
        if snat_min <= eph_min && snat_max < eph_max {
            Some((snat_max + 1, eph_max))
        } else if snat_min > eph_min && snat_max >= eph_max {
            Some((eph_min, snat_min - 1))
        } else {
            None
        }
    }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (snat_min, snat_max) = self.snat;
        let (eph_min, eph_max) = self.ephemeral.range;
        let clashes: Vec<String> = self
            .clashes
            .iter()
            .map(|r| format!("{}-{}", r.start(), r.end()))
            .collect();
        write!(
            f,
            "snat_ports {snat_min}-{snat_max} overlaps the kernel's ephemeral ports \
             (net.ipv4.ip_local_port_range = {eph_min} {eph_max}) at {}: a local socket on any SNAT \
             address (a health probe) could get such a port, and its replies would be taken for a NAT \
             flow's. Fix one of: set snat_ports outside {eph_min}-{eph_max} in the config (e.g. \
             \"20000-29999\" with the kernel's default range); or ",
            clashes.join(","),
        )?;
        match self.narrowed_range() {
            Some((min, max)) => write!(
                f,
                "shrink the kernel's range: `sysctl -w net.ipv4.ip_local_port_range=\"{min} {max}\"`"
            )?,
            None => write!(
                f,
                "move the kernel's range (net.ipv4.ip_local_port_range) away from them"
            )?,
        }
        write!(
            f,
            " (and persist it in /etc/sysctl.d/); or reserve the SNAT ports: \
             `sysctl -w net.ipv4.ip_local_reserved_ports={snat_min}-{snat_max}`"
        )
    }
}

fn invalid(path: &str, text: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{path}: unexpected {:?}", text.trim()),
    )
}

/// "32768\t60999\n" -> (32768, 60999).
fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut words = text.split_whitespace().map(str::parse::<u16>);
    match (words.next(), words.next(), words.next()) {
        (Some(Ok(min)), Some(Ok(max)), None) if min <= max => Some((min, max)),
        _ => None,
    }
}

/// "" or "8080,20000-29999\n" -> ranges.
fn parse_reserved(text: &str) -> Option<Vec<RangeInclusive<u16>>> {
    text.trim()
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('-') {
            Some((min, max)) => Some(min.parse().ok()?..=max.parse().ok()?),
            None => part.parse().ok().map(|port| port..=port),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ephemeral(range: (u16, u16), reserved: Vec<RangeInclusive<u16>>) -> EphemeralPorts {
        EphemeralPorts { range, reserved }
    }

    #[test]
    fn disjoint_ranges_never_clash_and_touching_ones_do() {
        let linux_default = ephemeral((32768, 60999), vec![]);
        assert!(Overlap::check((20000, 29999), linux_default.clone()).is_none());
        assert!(Overlap::check((61000, 65535), linux_default.clone()).is_none());
        assert!(Overlap::check((1024, 32767), linux_default.clone()).is_none());
        assert_eq!(linux_default.clashes((1024, 32768)), vec![32768..=32768]);
        assert_eq!(linux_default.clashes((60999, 65535)), vec![60999..=60999]);
        assert_eq!(linux_default.clashes((40000, 40003)), vec![40000..=40003]);
        assert_eq!(linux_default.clashes((1024, 65535)), vec![32768..=60999]);
    }

    #[test]
    fn reserved_ports_are_never_handed_out_so_they_do_not_clash() {
        let reserved = ephemeral((20000, 30000), vec![20000..=20003]);
        assert!(reserved.clashes((20000, 20003)).is_empty());
        let partly = ephemeral((20000, 30000), vec![20001..=20001, 20003..=20003]);
        assert_eq!(
            partly.clashes((20000, 20004)),
            vec![20000..=20000, 20002..=20002, 20004..=20004]
        );
    }

    #[test]
    fn the_refusal_names_both_ranges_and_the_fixes() {
        let overlap = Overlap::check((20000, 20003), ephemeral((20000, 30000), vec![])).unwrap();
        let text = overlap.to_string();
        for expected in [
            "snat_ports 20000-20003",
            "net.ipv4.ip_local_port_range = 20000 30000",
            "at 20000-20003",
            "set snat_ports outside 20000-30000",
            "net.ipv4.ip_local_port_range=\"20004 30000\"",
            "/etc/sysctl.d/",
            "net.ipv4.ip_local_reserved_ports=20000-20003",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from: {text}");
        }
    }

    #[test]
    fn the_suggested_kernel_range_leaves_the_snat_ports_out() {
        let narrowed = |snat, range| Overlap::check(snat, ephemeral(range, vec![])).unwrap().narrowed_range();
        assert_eq!(narrowed((20000, 20003), (20000, 30000)), Some((20004, 30000)));
        assert_eq!(narrowed((10000, 20003), (20000, 30000)), Some((20004, 30000)));
        assert_eq!(narrowed((29000, 40000), (20000, 30000)), Some((20000, 28999)));
        assert_eq!(narrowed((25000, 26000), (20000, 30000)), None, "in the middle");
        assert_eq!(narrowed((10000, 40000), (20000, 30000)), None, "around it");
    }

    #[test]
    fn the_sysctl_files_parse() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("1 2 3"), None);
        assert_eq!(parse_reserved("\n"), Some(vec![]));
        assert_eq!(
            parse_reserved("8080,20000-29999\n"),
            Some(vec![8080..=8080, 20000..=29999])
        );
        assert_eq!(parse_reserved("x"), None);
    }
}
