//! Whether the pins live on a bpffs that outlives the daemon. A bpffs
//! mounted inside a private mount namespace (`ip netns exec`, `unshare -m`,
//! a container without the host's /sys/fs/bpf) is freed with the last
//! process in that namespace: the pinned XDP links and maps go with it, so
//! a restart or a kill -9 detaches XDP and breaks every connection.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

/// The inode of the initial PID namespace (PROC_PID_INIT_INO): only there
/// is PID 1 the host's init.
const INITIAL_PID_NS: &str = "pid:[4026531836]";

/// What the daemon can see of the bpffs its pins are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpffsView {
    /// The daemon found nothing mounted and mounted bpffs itself.
    pub mounted_here: bool,
    /// Whether the daemon's mount namespace is the host init's; `None` when
    /// it cannot tell (its own PID namespace, or no access to /proc/1).
    pub host_mount_ns: Option<bool>,
    /// Whether the host's init sees this same bpffs at that path; `None`
    /// when it cannot tell.
    pub host_sees_it: Option<bool>,
}

impl BpffsView {
    /// Looks at `mount_point` (where the pins' bpffs is mounted) from this
    /// process and, through /proc/1, from the host's init.
    pub fn observe(mount_point: &Path, mounted_here: bool) -> Self {
        let initial_pid_ns = fs::read_link("/proc/self/ns/pid").is_ok_and(|ns| ns == Path::new(INITIAL_PID_NS));
        if !initial_pid_ns {
            return BpffsView {
                mounted_here,
                host_mount_ns: None,
                host_sees_it: None,
            };
        }
        let host_mount_ns = match (fs::read_link("/proc/self/ns/mnt"), fs::read_link("/proc/1/ns/mnt")) {
            (Ok(ours), Ok(init)) => Some(ours == init),
            _ => None,
        };
        let in_init_root = Path::new("/proc/1/root").join(mount_point.strip_prefix("/").unwrap_or(mount_point));
        let host_sees_it = match (fs::metadata(mount_point), fs::metadata(in_init_root)) {
            (Ok(ours), Ok(init)) => Some(ours.dev() == init.dev()),
            _ => None,
        };
        BpffsView {
            mounted_here,
            host_mount_ns,
            host_sees_it,
        }
    }

    /// Why the pins will not outlive the daemon, if they will not.
    pub fn dies_with_daemon(&self) -> Option<Cause> {
        match (self.host_sees_it, self.mounted_here, self.host_mount_ns) {
            (Some(true), ..) => None,
            (Some(false), true, _) | (None, true, Some(false)) => Some(Cause::MountedInPrivateNamespace),
            (Some(false), false, _) => Some(Cause::NotTheHostsBpffs),
            (None, true, Some(true)) => None,
            (None, true, None) => Some(Cause::MountedWhereHostUnknown),
            (None, false, _) => None,
        }
    }
}

/// See [`BpffsView::dies_with_daemon`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    MountedInPrivateNamespace,
    MountedWhereHostUnknown,
    NotTheHostsBpffs,
}

/// The warning for `cause`, naming the cause and the fix.
pub fn warning(cause: Cause, mount_point: &Path, pin_dir: &Path) -> String {
    let (mount_point, pin_dir) = (mount_point.display(), pin_dir.display());
    let why = match cause {
        Cause::MountedInPrivateNamespace => format!(
            "bg-lb mounted bpffs at {mount_point} itself, inside a private mount namespace \
             (`ip netns exec`, `unshare -m`, or a container without the host's /sys/fs/bpf)"
        ),
        Cause::MountedWhereHostUnknown => format!(
            "bg-lb mounted bpffs at {mount_point} itself and cannot tell whether that is the host's \
             mount namespace (a container's PID namespace, or no access to /proc/1)"
        ),
        Cause::NotTheHostsBpffs => {
            format!("the bpffs at {mount_point} is not the one the host's init sees there")
        }
    };
    format!(
        "the pins under {pin_dir} will not outlive this daemon: {why}. When the daemon stops or is \
         killed, the kernel detaches XDP and frees the flow table, breaking every connection through \
         the LB. Fix: pin on the host's bpffs: mount it on the host (`mount -t bpf bpf /sys/fs/bpf`; \
         systemd does at boot) and share it with the daemon: in a container `-v /sys/fs/bpf:/sys/fs/bpf`; \
         instead of `ip netns exec NAME` use `nsenter --net=/run/netns/NAME`, which keeps the host's mounts"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(mounted_here: bool, host_mount_ns: Option<bool>, host_sees_it: Option<bool>) -> BpffsView {
        BpffsView {
            mounted_here,
            host_mount_ns,
            host_sees_it,
        }
    }

    #[test]
    fn the_hosts_bpffs_outlives_the_daemon_whatever_namespace_it_runs_in() {
        // A systemd unit with ProtectSystem= has a mount namespace of its
        // own, but the host's bpffs.
        assert_eq!(view(false, Some(false), Some(true)).dies_with_daemon(), None);
        assert_eq!(view(false, Some(true), Some(true)).dies_with_daemon(), None);
        // A host without bpffs at boot, the daemon in the host's namespace.
        assert_eq!(view(true, Some(true), Some(true)).dies_with_daemon(), None);
        assert_eq!(view(true, Some(true), None).dies_with_daemon(), None);
        // A container with -v /sys/fs/bpf:/sys/fs/bpf: nothing to compare with.
        assert_eq!(view(false, None, None).dies_with_daemon(), None);
    }

    #[test]
    fn a_bpffs_of_a_private_namespace_dies_with_the_daemon() {
        // ip netns exec: a fresh /sys, so bg-lb mounts bpffs itself.
        assert_eq!(
            view(true, Some(false), Some(false)).dies_with_daemon(),
            Some(Cause::MountedInPrivateNamespace)
        );
        assert_eq!(
            view(true, Some(false), None).dies_with_daemon(),
            Some(Cause::MountedInPrivateNamespace)
        );
        // A container without the host's bpffs: PID 1 is not the host's init.
        assert_eq!(
            view(true, None, None).dies_with_daemon(),
            Some(Cause::MountedWhereHostUnknown)
        );
        // Someone else mounted a private bpffs before the daemon started.
        assert_eq!(
            view(false, Some(false), Some(false)).dies_with_daemon(),
            Some(Cause::NotTheHostsBpffs)
        );
    }

    #[test]
    fn the_warning_names_the_cause_and_the_fix() {
        let text = warning(
            Cause::MountedInPrivateNamespace,
            Path::new("/sys/fs/bpf"),
            Path::new("/sys/fs/bpf/bg-lb"),
        );
        for expected in [
            "the pins under /sys/fs/bpf/bg-lb will not outlive this daemon",
            "mounted bpffs at /sys/fs/bpf itself",
            "ip netns exec",
            "breaking every connection",
            "-v /sys/fs/bpf:/sys/fs/bpf",
            "nsenter --net=/run/netns/NAME",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from: {text}");
        }
    }
}
