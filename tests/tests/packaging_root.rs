//! The packaged ways to run bg-lb, exercised without Docker or systemd
//! (root): the container image's ENTRYPOINT and CMD run from a directory
//! laid out like the runtime image, and the systemd unit's ExecStart runs
//! with exactly the unit's capabilities, both forwarding through a VIP in a
//! test namespace, with pins on the host's /sys/fs/bpf as in production.

use std::{
    ffi::OsString,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use bg_lb::dataplane::pins::PinLayout;
use bg_lb_tests::{
    daemon::Launch,
    deploy::{Dockerfile, Layout, Unit, dockerfile_path, repo_root, unit_path},
    lab::{NameLab, NameLabConfig},
    require_root,
    topology::{LB_ADDR, NetNs},
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
/// Where both the image and the unit expect the binary and the config.
const BIN_PATH: &str = "/usr/local/bin/bg-lb";
const CONFIG_PATH: &str = "/etc/bg-lb/bg-lb.toml";

/// Two backends, both blue, and the daemon started by `launch`; `admin`
/// goes into the config's [admin] table.
fn start_lab(launch: Launch, admin: &str) -> NameLab {
    let config = NameLabConfig {
        admin,
        ..NameLabConfig::default()
    };
    NameLab::start(BG_LB, 2, Some(launch), &config)
}

/// `n` connections through the VIP, each served by one of the backends.
fn assert_forwards(lab: &NameLab, n: usize) {
    let names = lab.names(n);
    assert!(names.iter().all(|n| n == "b0" || n == "b1"), "{names:?}");
}

/// The Dockerfile's ENTRYPOINT + CMD, run from a layout of the runtime image
/// (the binary at /usr/local/bin/bg-lb, the config mounted at
/// /etc/bg-lb/bg-lb.toml): the example config passes `check-config`, and the
/// daemon forwards through the VIP.
#[test]
fn container_entrypoint_checks_the_mounted_config_and_forwards_through_the_vip() {
    require_root();
    let image = Layout::new("image");
    let command = Dockerfile::read(&dockerfile_path()).default_command();
    assert_eq!(
        command[0], BIN_PATH,
        "the entrypoint is where the runtime stage copies the binary"
    );
    image.install(Path::new(BG_LB), BIN_PATH, 0o755);
    // `-v /etc/bg-lb:/etc/bg-lb`: first the shipped example, as a user
    // would start from it.
    image.install(&repo_root().join("examples/bg-lb.toml"), CONFIG_PATH, 0o644);
    let command = image.map_command(&command);
    let check = Command::new(&command[0])
        .arg("check-config")
        .arg(image.path(CONFIG_PATH))
        .output()
        .expect("run the entrypoint");
    assert_success(&check, "check-config on the example config");

    let launch = Launch {
        program: PathBuf::from(&command[0]),
        args: command[1..].iter().map(OsString::from).collect(),
        config: image.path(CONFIG_PATH),
    };
    let lab = start_lab(launch, "");
    assert!(
        lab.daemon.pin_dir.starts_with("/sys/fs/bpf"),
        "pins on the host's bpffs"
    );
    assert_forwards(&lab, 20);
}

/// The unit's ExecStart under `setpriv` with the unit's capability bounding
/// set (and NoNewPrivileges), as root like the unit: it loads, attaches and
/// forwards; a stop (SIGTERM, what `systemctl restart` sends) keeps open and
/// new connections flowing, and the restarted daemon adopts the pins.
#[test]
fn unit_capabilities_suffice_and_a_restart_keeps_forwarding() {
    require_root();
    let unit = Unit::read(&unit_path());
    let install = Layout::new("unit");
    install.install(Path::new(BG_LB), BIN_PATH, 0o755);
    install.install(&repo_root().join("examples/bg-lb.toml"), CONFIG_PATH, 0o644);
    let launch = unit_launch(&unit, &install, &unit.capabilities());
    // The [admin] group needs CAP_CHOWN; the test includes it to prove that.
    let mut lab = start_lab(launch, "group = \"nogroup\"\n");
    assert_forwards(&lab, 20);
    assert_eq!(
        effective_capabilities(lab.daemon.pid().expect("running")),
        capability_mask(&unit.capabilities()),
        "the daemon runs with exactly the unit's capabilities"
    );

    let mut open = lab.connect();
    let served_by = open.ask().expect("first answer");

    let status = lab.daemon.terminate();
    assert!(
        status.success(),
        "SIGTERM is a clean exit: {status}\n{}",
        lab.daemon.log()
    );
    assert!(lab.daemon.pins_exist(), "a stop leaves the pinned data plane");
    assert_eq!(open.ask().expect("open connection while stopped"), served_by);
    assert_forwards(&lab, 10);

    lab.daemon.spawn();
    assert!(
        lab.daemon.log().contains("adopted"),
        "the restart adopts the pins:\n{}",
        lab.daemon.log()
    );
    assert_eq!(open.ask().expect("open connection after the restart"), served_by);
    assert_forwards(&lab, 10);
}

/// Each capability in the unit is needed: without it the daemon refuses to
/// start, with an error that says what failed.
#[test]
fn each_unit_capability_is_needed() {
    require_root();
    let lb = NetNs::new("caps");
    lb.ip("link add eth0 type veth peer name eth1");
    lb.ip(&format!("addr add {LB_ADDR}/24 dev eth0"));
    lb.ip("link set eth0 up");
    lb.ip("link set eth1 up");
    let unit = Unit::read(&unit_path());
    let all = unit.capabilities();
    for (missing, expected) in [
        ("bpf", "failed to create map"),
        ("perfmon", "pointer -= pointer prohibited"),
        ("net_admin", "failed to create map `TX_PORTS`"),
        ("chown", "CAP_CHOWN"),
    ] {
        assert!(all.iter().any(|c| c == missing), "the unit lacks CAP_{missing}");
        let install = Layout::new(&format!("no-{missing}"));
        install.install(Path::new(BG_LB), BIN_PATH, 0o755);
        let pins = PinGuard(PathBuf::from(format!(
            "/sys/fs/bpf/bglb-test-{}-no-{missing}",
            std::process::id()
        )));
        let state = install.path("/var/lib/bg-lb");
        let socket = install.path("/run/bg-lb/admin.sock");
        let config = format!(
            "interface = \"eth0\"\nsnat_address = \"{LB_ADDR}\"\nmax_flows = 65536\nlookup_capacity = 524296\n\
             pin_dir = \"{}\"\nstate_dir = \"{}\"\n[admin]\nsocket = \"{}\"\ngroup = \"nogroup\"\n",
            pins.0.display(),
            state.display(),
            socket.display()
        );
        std::fs::create_dir_all(install.path("/etc/bg-lb")).unwrap();
        std::fs::write(install.path(CONFIG_PATH), config).unwrap();
        let caps: Vec<String> = all.iter().filter(|c| *c != missing).cloned().collect();
        let launch = unit_launch(&unit, &install, &caps);
        // A daemon that starts after all would run forever: timeout ends it.
        let out = Command::new("timeout")
            .args(["20", "nsenter"])
            .arg(format!("--net=/run/netns/{}", lb.name))
            .arg(&launch.program)
            .args(&launch.args)
            .output()
            .expect("run bg-lb under setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "without CAP_{missing} the daemon must fail to start:\n{stderr}"
        );
        assert!(
            stderr.contains(expected),
            "without CAP_{missing}, expected {expected:?} in:\n{stderr}"
        );
    }
}

/// A user who may not use the admin socket is told which socket and what to
/// do: the kernel's EACCES (root would bypass it, so the client runs as
/// nobody), with the path and the [admin] group hint.
#[test]
fn ctl_without_access_to_the_socket_names_it_and_the_admin_group() {
    require_root();
    let install = Layout::new("ctl");
    let bin = install.install(Path::new(BG_LB), BIN_PATH, 0o755);
    let socket = install.path("/run/bg-lb/admin.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let _listener = UnixListener::bind(&socket).expect("bind the socket");
    // The daemon's mode without an [admin] group: root only.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["ctl", "--socket"])
        .arg(&socket)
        .arg("status")
        .output()
        .expect("run bg-lb ctl as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let path = format!("cannot connect to the admin socket {}: ", socket.display());
    for expected in [path.as_str(), "Permission denied", "run as root", "[admin] group"] {
        assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
    }
}

/// The unit's ExecStart, paths pointed into `install`, run by `setpriv` with
/// the bounding set `caps` (root keeps exactly those across exec, as under
/// systemd's CapabilityBoundingSet) and no_new_privs if the unit sets it.
fn unit_launch(unit: &Unit, install: &Layout, caps: &[String]) -> Launch {
    let exec = install.map_command(&unit.exec_start());
    assert_eq!(
        exec[0],
        install.path(BIN_PATH).display().to_string(),
        "ExecStart runs {BIN_PATH}"
    );
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut args: Vec<OsString> = vec![format!("--bounding-set={bounding}").into()];
    if unit.get("Service", "NoNewPrivileges") == Some("yes") {
        args.push("--no-new-privs".into());
    }
    args.push("--".into());
    args.extend(exec.iter().map(OsString::from));
    Launch {
        program: PathBuf::from("setpriv"),
        args,
        config: install.path(CONFIG_PATH),
    }
}

/// `CapEff` of a process, from /proc.
fn effective_capabilities(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff line");
    u64::from_str_radix(hex.trim(), 16).expect("hex CapEff")
}

/// The capability bits of setpriv-style names (linux/capability.h).
fn capability_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "chown" => 0,
            "net_admin" => 12,
            "sys_admin" => 21,
            "perfmon" => 38,
            "bpf" => 39,
            other => panic!("add CAP_{other}'s number here"),
        })
        .fold(0, |mask, bit| mask | 1 << bit)
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes a pin directory (detaching XDP) when the test ends, however.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = PinLayout::new(&self.0).remove_all();
    }
}
