//! The container image built and run for real with podman: a Debian 12 base
//! made with debootstrap and imported once per machine (no registry can be
//! reached), the Dockerfile's runtime stage built around the bg-lb that cargo
//! built, and containers started the way docs/deploy.md's recipe starts them.
//! Containers and the images a test builds are removed on drop, even when the
//! test fails; the base stays, as a cache.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::Instant,
};

use crate::{
    daemon::Launch,
    deploy::{Layout, dockerfile_path},
};

/// The base image of the tested runtime stage (`--build-arg BASE`).
pub const BASE_IMAGE: &str = "localhost/bg-lb-test-base:bookworm";
/// Where a container mounts the host's config directory, and the config file
/// the image's CMD names.
pub const CONFIG_DIR: &str = "/etc/bg-lb";
pub const CONFIG_PATH: &str = "/etc/bg-lb/bg-lb.toml";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// The label that marks every image a test build makes (intermediate stages
/// included), so they can all be removed.
const LABEL: &str = "bg-lb-test";

/// podman's global flags for a host without systemd as PID 1
/// (docs/deploy.md): runc, and cgroups managed through cgroupfs.
const PODMAN_FLAGS: [&str; 3] = ["--runtime", "runc", "--cgroup-manager=cgroupfs"];

pub fn podman() -> Command {
    let mut command = Command::new("podman");
    command.args(PODMAN_FLAGS);
    command
}

/// Runs `command`, panicking with its output unless it succeeds.
fn run(command: &mut Command, what: &str) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?} ({e}); `cargo xtask setup` installs podman"));
    assert!(
        out.status.success(),
        "{what}: {command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`BASE_IMAGE`], imported from `cache/container-base.tar` when podman lacks
/// it; the tarball is made with `debootstrap --variant=minbase bookworm`
/// when it is missing (about a minute, once per machine).
pub fn base_image(cache: &Path) -> &'static str {
    // Test threads share podman's store and the tarball.
    static BUSY: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUSY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if podman()
        .args(["image", "exists", BASE_IMAGE])
        .status()
        .is_ok_and(|s| s.success())
    {
        return BASE_IMAGE;
    }
    let tarball = cache.join("container-base.tar");
    if !tarball.exists() {
        debootstrap(cache, &tarball);
    }
    run(
        podman().args(["import", "--quiet"]).arg(&tarball).arg(BASE_IMAGE),
        "importing the base image",
    );
    BASE_IMAGE
}

/// A minimal Debian 12 root filesystem as a tarball at `tarball`, built in
/// `cache` and renamed into place only when complete.
fn debootstrap(cache: &Path, tarball: &Path) {
    let started = Instant::now();
    let rootfs = cache.join("container-base.rootfs");
    let partial = cache.join("container-base.tar.partial");
    let _ = fs::remove_dir_all(&rootfs);
    fs::create_dir_all(cache).expect("cache directory");
    run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&rootfs)
            .arg(DEBIAN_MIRROR)
            .stdout(Stdio::null()),
        "debootstrap of the container base (needs Debian's mirror)",
    );
    // The downloaded packages are installed by now: leave them out.
    run(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["--exclude=./var/cache/apt/archives/*.deb", "-cf"])
            .arg(&partial)
            .arg("."),
        "packing the container base",
    );
    fs::rename(&partial, tarball).expect("move the base tarball into place");
    let _ = fs::remove_dir_all(&rootfs);
    eprintln!(
        "made the container base {} with debootstrap in {:.0?}",
        tarball.display(),
        started.elapsed()
    );
}

/// The runtime stage of deploy/container/Dockerfile, built on [`BASE_IMAGE`]
/// with `BINARY=context`: the stage that ships, around the binary under test.
/// Removed on drop with every intermediate image of its build.
pub struct Image {
    pub name: String,
    label: String,
}

impl Image {
    pub fn build(binary: &Path, cache: &Path) -> Self {
        let base = base_image(cache);
        let id = std::process::id();
        let image = Image {
            name: format!("localhost/bg-lb-test:{id}"),
            label: format!("{LABEL}={id}"),
        };
        let context = Layout::new("image-context");
        fs::copy(binary, context.path("/bg-lb")).expect("copy the binary into the build context");
        run(
            podman()
                .args(["build", "--pull=never", "--label", &image.label])
                .arg("--file")
                .arg(dockerfile_path())
                .args(["--build-arg", &format!("BASE={base}")])
                .args(["--build-arg", "BINARY=context"])
                .args(["--tag", &image.name])
                .arg(&context.root),
            "building the image's runtime stage",
        );
        image
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let ids = podman()
            .args(["images", "--all", "--quiet", "--filter"])
            .arg(format!("label={}", self.label))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut ids: Vec<&str> = ids.split_whitespace().collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            let _ = podman().args(["rmi", "--force"]).args(ids).output();
        }
    }
}

/// A container name of this test process; `podman rm --force` on drop, so a
/// failing test leaves no container running.
pub struct Container {
    pub name: String,
}

impl Container {
    pub fn new(role: &str) -> Self {
        Container {
            name: format!("bglb-test-{}-{role}", std::process::id()),
        }
    }

    /// `podman run` of `image` as docs/deploy.md runs it: privileged, joined
    /// to the namespace the harness starts the daemon in, with the host's
    /// bpffs (the pins outlive the container), the config directory of `etc`
    /// read-only at /etc/bg-lb, and the daemon's directory (state, admin
    /// socket) at the same path, so `bg-lb ctl` on the host reaches the
    /// socket. It runs in the foreground, so the harness's log gets the
    /// daemon's output, and `--rm` removes it when it stops. The rlimits are
    /// within what this build machine grants (podman's defaults are higher).
    ///
    /// The harness starts a launcher inside the LB's namespace; podman goes
    /// back to the host's first, as an operator's podman runs there: runc
    /// refuses the default `net.*` sysctls for a namespace that is its own.
    pub fn launch(&self, image: &Image, etc: &Layout) -> Launch {
        let config_dir = etc.path(CONFIG_DIR);
        fs::create_dir_all(&config_dir).expect("config directory");
        let dir = Launch::DIR;
        let run = [
            "run",
            "--rm",
            "--pull=never",
            "--name",
            &self.name,
            "--privileged",
            "--network",
            &format!("ns:{}", Launch::NETNS),
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
            "--volume",
            "/sys/fs/bpf:/sys/fs/bpf",
            "--volume",
            &format!("{}:{CONFIG_DIR}:ro", config_dir.display()),
            "--volume",
            &format!("{dir}:{dir}"),
            &image.name,
        ];
        let host = format!("--net=/proc/{}/ns/net", std::process::id());
        let podman = [host.as_str(), "podman"];
        Launch {
            program: PathBuf::from("nsenter"),
            args: podman
                .iter()
                .chain(&PODMAN_FLAGS)
                .chain(&run)
                .map(OsString::from)
                .collect(),
            config: etc.path(CONFIG_PATH),
        }
    }

    /// `podman kill`: SIGKILL to the daemon, as in a crash.
    pub fn kill(&self) {
        run(podman().args(["kill", &self.name]), "podman kill");
    }

    /// The host's pid of the container's first process.
    pub fn pid(&self) -> u32 {
        let out = run(
            podman().args(["inspect", "--format", "{{.State.Pid}}", &self.name]),
            "podman inspect",
        );
        let pid = String::from_utf8_lossy(&out.stdout);
        pid.trim().parse().unwrap_or_else(|_| panic!("a pid: {pid}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--time", "0", &self.name]).output();
    }
}
