//! The XDP mode `xdp_mode = "auto"` picks for an interface. On a veth,
//! native XDP attaches, but frames the program sends with XDP_TX or
//! XDP_REDIRECT are dropped unless the peer runs an XDP program too, which
//! a container on a bridge cannot arrange for its host-side peer: the LB
//! would blackhole every connection. Generic mode hands those frames to
//! the peer's normal receive path, so auto picks it on veth, with a
//! warning; `xdp_mode = "native"` is kept as configured.

use std::os::fd::AsRawFd as _;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::dataplane::AttachMode;

/// ethtool's `ETHTOOL_GDRVINFO` command (linux/ethtool.h).
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct DriverInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The driver of `iface` in this process's network namespace ("veth",
/// "mlx5_core", ...), as `ethtool -i` shows it; `None` if the interface
/// does not answer (it then fails to attach with its own error).
pub fn driver(iface: &str) -> Option<String> {
    let socket = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).ok()?;
    // SAFETY: both are plain C structs for which all-zero bytes are valid.
    let mut info: DriverInfo = unsafe { std::mem::zeroed() };
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let name = iface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return None;
    }
    for (to, from) in request.ifr_name.iter_mut().zip(name) {
        *to = *from as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO writes at most a
    // `struct ethtool_drvinfo` through `ifru_data`, which points at `info`,
    // alive and exclusively borrowed for the call.
    let status = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut request) };
    if status != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The mode to attach `configured` with on an interface whose driver is
/// `driver`, and the warning to log when auto does not mean native-first.
pub fn attach_mode(iface: &str, configured: AttachMode, driver: Option<&str>) -> (AttachMode, Option<String>) {
    match (configured, driver) {
        (AttachMode::Auto, Some("veth")) => (
            AttachMode::Generic,
            Some(format!(
                "{iface} is a veth: xdp_mode = \"auto\" attaches in generic mode. In native mode, frames \
                 the LB sends back out (XDP_TX/XDP_REDIRECT) are dropped unless the veth's peer runs an \
                 XDP program, which a container cannot arrange for its host-side peer. Set \
                 xdp_mode = \"generic\" to silence this, or xdp_mode = \"native\" if you run an XDP \
                 program on the peer"
            )),
        ),
        (mode, _) => (mode, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_on_a_veth_is_generic_with_a_warning_naming_both_fixes() {
        let (mode, warning) = attach_mode("eth0", AttachMode::Auto, Some("veth"));
        assert_eq!(mode, AttachMode::Generic);
        let warning = warning.expect("a warning");
        for expected in [
            "eth0 is a veth",
            "generic mode",
            "peer runs an XDP program",
            "xdp_mode = \"generic\"",
            "xdp_mode = \"native\"",
        ] {
            assert!(warning.contains(expected), "{expected:?} missing from: {warning}");
        }
    }

    #[test]
    fn a_configured_mode_or_another_driver_is_left_alone() {
        assert_eq!(
            attach_mode("eth0", AttachMode::Native, Some("veth")),
            (AttachMode::Native, None)
        );
        assert_eq!(
            attach_mode("eth0", AttachMode::Generic, Some("veth")),
            (AttachMode::Generic, None)
        );
        assert_eq!(
            attach_mode("eth0", AttachMode::Auto, Some("mlx5_core")),
            (AttachMode::Auto, None)
        );
        assert_eq!(attach_mode("eth0", AttachMode::Auto, None), (AttachMode::Auto, None));
    }

    #[test]
    fn the_loopback_driver_is_read_without_privileges() {
        // lo exists in every network namespace; its ethtool driver is empty
        // or absent, never veth.
        assert_ne!(driver("lo").as_deref(), Some("veth"));
        assert_eq!(driver("no-such-if0"), None);
    }
}
