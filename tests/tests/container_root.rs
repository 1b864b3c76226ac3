//! The privileged container for real (root, podman): the Dockerfile's
//! runtime stage, built from a debootstrapped Debian 12 base and the bg-lb
//! cargo built, runs the daemon `--privileged` in the lab's LB network
//! namespace with the host's bpffs, as docs/deploy.md's recipe does.
//!
//! The first run on a machine makes the base with debootstrap (about a
//! minute) and caches it in target/tmp/container-base.tar; later runs take a
//! few seconds to build the image.

use std::{fs, path::Path, time::Instant};

use bg_lb_tests::{
    container::{Container, Image},
    deploy::Layout,
    lab::{NameLab, NameLabConfig, SERVICE},
    require_root,
};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");

/// `n` connections through the VIP, each answered by one of `backends`.
fn assert_served_by(lab: &NameLab, n: usize, backends: &[&str]) {
    let names = lab.names(n);
    assert!(
        names.iter().all(|name| backends.contains(&name.as_str())),
        "expected only {backends:?}: {names:?}"
    );
}

#[test]
fn the_image_forwards_keeps_connections_across_podman_kill_and_answers_ctl_on_the_host() {
    require_root();
    let started = Instant::now();
    let image = Image::build(Path::new(BG_LB), Path::new(env!("CARGO_TARGET_TMPDIR")));
    eprintln!("base and runtime stage ready in {:.1?}", started.elapsed());
    let etc = Layout::new("container-etc");
    let container = Container::new("lb");
    let mut lab = NameLab::start(
        BG_LB,
        2,
        Some(container.launch(&image, &etc)),
        &NameLabConfig::default(),
    );

    // The daemon that answers is the container's: its root is the image's.
    let pid = container.pid();
    let exe = fs::read_link(format!("/proc/{pid}/exe")).expect("the daemon's executable");
    assert_eq!(exe, Path::new("/usr/local/bin/bg-lb"), "as the container sees it");
    let root_os = fs::read_to_string(format!("/proc/{pid}/root/etc/debian_version")).expect("the image's Debian");
    assert!(root_os.starts_with("12."), "Debian 12 in the image: {root_os}");
    assert!(
        !fs::exists(format!("/proc/{pid}/root{}", env!("CARGO_MANIFEST_DIR"))).unwrap_or(true),
        "the daemon sees the image's filesystem, not the host's"
    );
    assert!(lab.daemon.pins_exist(), "pins on the host's bpffs");

    // Traffic flows, and `bg-lb ctl` on the host drives the container's
    // daemon through the mounted socket.
    assert_served_by(&lab, 20, &["b0", "b1"]);
    assert_eq!(lab.daemon.status(SERVICE).backends.len(), 2);
    let b0 = lab.backend_addr(0).to_string();
    lab.daemon.ctl_ok(&["backend", SERVICE, &b0, "disable"]);
    assert_served_by(&lab, 10, &["b1"]);
    lab.daemon.ctl_ok(&["backend", SERVICE, &b0, "enable"]);

    // `podman kill`: the open connection and new ones keep flowing through
    // the pinned data plane while no daemon runs.
    let mut open = lab.connect();
    let served_by = open.ask().expect("first answer");
    container.kill();
    let killed = lab.daemon.wait_exit();
    assert!(!killed.success(), "podman kill is SIGKILL: {killed}");
    assert!(lab.daemon.pins_exist(), "the pins outlive the container");
    assert_eq!(open.ask().expect("open connection with no daemon"), served_by);
    assert_served_by(&lab, 10, &["b0", "b1"]);

    // A new container adopts the pins without breaking the connection.
    lab.daemon.spawn();
    let log = lab.daemon.log();
    assert!(
        log.contains("XDP attachment adopted"),
        "the new container adopts the pinned attachment:\n{log}"
    );
    assert_ne!(container.pid(), pid, "a new container");
    assert_eq!(open.ask().expect("open connection after the new container"), served_by);
    assert_served_by(&lab, 10, &["b0", "b1"]);
    assert_eq!(
        lab.daemon.status(SERVICE).backends.len(),
        2,
        "ctl on the host reaches the new container"
    );
    // The container goes first, then the lab's namespaces and pins.
    drop(container);
    drop(lab);
}
