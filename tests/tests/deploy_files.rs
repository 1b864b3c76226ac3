//! The deployment files keep the properties docs/deploy.md promises (no
//! root needed): the Dockerfile follows the review checklist there (no
//! hadolint is available to lint it), and the systemd unit passes
//! `systemd-analyze verify` and never tears down the pinned data plane.

use std::{fs, path::PathBuf, process::Command};

use bg_lb::{
    cli::{Cli, Command as BgLb, CtlArgs, CtlCommand},
    config::{DEFAULT_ADMIN_SOCKET, DEFAULT_CONFIG},
};
use bg_lb_tests::deploy::{Dockerfile, Layout, Stage, Unit, dockerfile_path, repo_root, unit_path};
use clap::Parser as _;

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");

fn dockerfile() -> Dockerfile {
    Dockerfile::read(&dockerfile_path())
}

/// The command line parses with the real CLI into `bg-lb run --config
/// /etc/bg-lb/bg-lb.toml`, without `--detach-on-exit`.
fn assert_runs_the_daemon_with_the_default_config(argv: &[String]) {
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?} is not a bg-lb command line: {e}"));
    match cli.command {
        BgLb::Run {
            config, detach_on_exit, ..
        } => {
            assert_eq!(config, PathBuf::from(DEFAULT_CONFIG), "{argv:?}");
            assert!(!detach_on_exit, "a stop must leave the data plane forwarding: {argv:?}");
        }
        other => panic!("{argv:?} does not run the daemon: {other:?}"),
    }
}

#[test]
fn dockerfile_base_images_are_fully_qualified_and_pinned() {
    let file = dockerfile();
    assert!(file.stages.len() >= 2, "multi-stage: a build stage and a runtime stage");
    let stage_names: Vec<_> = file.stages.iter().filter_map(|s| s.name.clone()).collect();
    for stage in &file.stages {
        // Build arguments at their defaults: what a plain build pulls.
        let image = &file.image_of(stage);
        if stage_names.contains(image) || image == "scratch" {
            continue;
        }
        let registry = image.split('/').next().unwrap_or_default();
        assert!(
            registry.contains('.') && image.matches('/').count() >= 1,
            "{image}: name the registry (docker.io/library/...): podman will not guess"
        );
        let pinned = match image.rsplit_once(':') {
            _ if image.contains("@sha256:") => true,
            Some((_, tag)) => tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            None => false,
        };
        assert!(
            pinned,
            "{image}: pin a versioned tag or a digest, never latest or no tag"
        );
    }
}

/// The one COPY of a stage: (source stage, source path, destination).
fn only_copy(stage: &Stage) -> (Option<String>, String, String) {
    let copies: Vec<_> = stage.all("COPY").collect();
    assert_eq!(copies.len(), 1, "stage {:?} copies one file: {copies:?}", stage.name);
    let words: Vec<&str> = copies[0].args.split_whitespace().collect();
    let (from, paths) = match words.split_first() {
        Some((first, rest)) if first.starts_with("--from=") => (first.strip_prefix("--from=").map(str::to_owned), rest),
        _ => (None, words.as_slice()),
    };
    match paths {
        [source, destination] => (from, source.to_string(), destination.to_string()),
        _ => panic!("one source, one destination: {words:?}"),
    }
}

#[test]
fn dockerfile_runtime_stage_copies_only_the_binary_from_the_build_stage() {
    let file = dockerfile();
    let build = file.stages.first().expect("build stage");
    let build_name = build
        .name
        .as_deref()
        .expect("the build stage is named (FROM ... AS build)");
    let runtime = file.runtime();
    for keyword in ["RUN", "ADD"] {
        assert!(
            runtime.last(keyword).is_none(),
            "the runtime stage must not {keyword}: one layer holding the binary"
        );
    }
    let (from, source, destination) = only_copy(runtime);
    assert_eq!(destination, "/usr/local/bin/bg-lb");
    // From the stage BINARY picks, which is the build stage unless a test
    // passes --build-arg BINARY=context.
    let from = from.expect("COPY --from=<stage>");
    let binary = file
        .stage(&from)
        .unwrap_or_else(|| panic!("--from={from} names a stage"));
    assert!(binary.instructions.is_empty(), "{from} only names another stage");
    assert_eq!(file.image_of(binary), build_name, "by default the binary is built here");
    let installs = build
        .all("RUN")
        .any(|r| r.args.contains(&format!("target/release/bg-lb {source}")));
    assert!(installs, "the build stage installs the release binary at {source}");
    // The other choice is a bg-lb from the build context, at the same path.
    let context = file
        .stage("context")
        .expect("a stage taking bg-lb from the build context");
    assert_eq!(file.image_of(context), "scratch");
    assert_eq!(only_copy(context), (None, "bg-lb".to_owned(), source));
    // Checklist item 2: the runtime base is the build stage's Debian release.
    assert_eq!(file.image_of(runtime), file.image_of(build), "same Debian release");
}

#[test]
fn dockerfile_entrypoint_and_cmd_run_the_daemon_in_exec_form() {
    let file = dockerfile();
    let runtime = file.runtime();
    let entrypoint = runtime.last("ENTRYPOINT").expect("ENTRYPOINT");
    assert_eq!(
        entrypoint
            .exec_form()
            .expect("exec form: signals reach the daemon, no shell"),
        ["/usr/local/bin/bg-lb"]
    );
    assert!(
        runtime.last("CMD").expect("CMD").exec_form().is_some(),
        "CMD in exec form"
    );
    let mut argv = file.default_command();
    argv[0] = "bg-lb".into();
    assert_runs_the_daemon_with_the_default_config(&argv);
}

#[test]
fn dockerfile_apt_installs_are_non_interactive_minimal_and_cleaned() {
    let file = dockerfile();
    let mut installs = 0;
    for stage in &file.stages {
        let noninteractive = stage
            .all("ENV")
            .chain(stage.all("ARG"))
            .any(|i| i.args.contains("DEBIAN_FRONTEND=noninteractive"));
        for run in stage.all("RUN").filter(|r| r.args.contains("apt-get install")) {
            installs += 1;
            let args = &run.args;
            assert!(
                noninteractive || args.contains("DEBIAN_FRONTEND=noninteractive"),
                "{args}"
            );
            for needed in [
                "apt-get update",
                "-y",
                "--no-install-recommends",
                "rm -rf /var/lib/apt/lists/*",
            ] {
                assert!(args.contains(needed), "an apt-get install RUN lacks `{needed}`: {args}");
            }
        }
    }
    assert!(installs > 0, "the build stage installs its packages with apt-get");
}

#[test]
fn dockerfile_pipes_fail_the_build_and_nothing_floats() {
    let file = dockerfile();
    for stage in &file.stages {
        let mut pipefail = false;
        for instruction in &stage.instructions {
            match instruction.keyword.as_str() {
                "SHELL" => pipefail = instruction.args.contains("pipefail"),
                "RUN" if instruction.args.contains(" | ") => assert!(
                    pipefail,
                    "a piped RUN needs SHELL [..., \"-o\", \"pipefail\", ...] before it: {}",
                    instruction.args
                ),
                "ADD" => panic!("use COPY (ADD fetches URLs and unpacks archives): {}", instruction.args),
                _ => {}
            }
            assert!(!instruction.args.contains("sudo"), "no sudo: {}", instruction.args);
        }
    }
    let text = fs::read_to_string(dockerfile_path()).unwrap();
    assert!(!text.contains(":latest"), "no latest tags");
}

#[test]
fn build_context_leaves_out_target_and_git() {
    let ignore = fs::read_to_string(repo_root().join(".dockerignore")).expect(".dockerignore at the repo root");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for path in ["/target", "/.git"] {
        assert!(lines.contains(&path), ".dockerignore must list {path}: {ignore}");
    }
}

#[test]
fn unit_runs_the_daemon_with_the_default_config_and_restarts_on_failure() {
    let unit = Unit::read(&unit_path());
    let mut argv = unit.exec_start();
    assert_eq!(argv[0], "/usr/local/bin/bg-lb");
    argv[0] = "bg-lb".into();
    assert_runs_the_daemon_with_the_default_config(&argv);
    assert_eq!(unit.get("Service", "Restart"), Some("on-failure"));
    assert_eq!(
        unit.get("Service", "RestartPreventExitStatus"),
        Some(bg_lb::daemon::PinsRefused::EXIT_CODE.to_string().as_str()),
        "pins the daemon refuses are not retried in a loop"
    );
    assert_eq!(unit.get("Service", "LimitMEMLOCK"), Some("infinity"));
}

/// `Type=notify` (the daemon says READY=1 itself), a watchdog, and a reload
/// that waits for the daemon's verdict: `bg-lb ctl reload` on the default
/// admin socket, the one the unit's RuntimeDirectory holds.
#[test]
fn unit_is_notify_type_with_a_watchdog_and_reloads_through_the_admin_socket() {
    let unit = Unit::read(&unit_path());
    assert_eq!(unit.get("Service", "Type"), Some("notify"));
    assert_eq!(unit.get("Service", "NotifyAccess"), Some("main"));
    let watchdog = unit.get("Service", "WatchdogSec").expect("WatchdogSec");
    let watchdog = humantime::parse_duration(watchdog).expect("WatchdogSec is a duration");
    assert!(
        watchdog >= std::time::Duration::from_secs(10),
        "WatchdogSec={watchdog:?} leaves the loop too little slack"
    );
    let reload: Vec<String> = unit
        .get("Service", "ExecReload")
        .expect("ExecReload")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(reload[0], "/usr/local/bin/bg-lb");
    let cli = Cli::try_parse_from(std::iter::once("bg-lb".to_owned()).chain(reload[1..].iter().cloned()))
        .unwrap_or_else(|e| panic!("ExecReload {reload:?} is not a bg-lb command line: {e}"));
    match cli.command {
        BgLb::Ctl(CtlArgs {
            socket,
            command: CtlCommand::Reload,
            ..
        }) => assert_eq!(socket, PathBuf::from(DEFAULT_ADMIN_SOCKET), "{reload:?}"),
        other => panic!("ExecReload {reload:?} does not run `ctl reload`: {other:?}"),
    }
}

#[test]
fn unit_never_detaches_or_unpins_the_data_plane() {
    let unit = Unit::read(&unit_path());
    for key in ["ExecStop", "ExecStopPost", "ExecStartPre", "ExecStartPost"] {
        for command in unit.all("Service", key) {
            assert!(
                !command.contains("teardown") && !command.contains("detach") && !command.contains("/sys/fs/bpf"),
                "{key}={command} would stop forwarding on a restart"
            );
        }
    }
    // Options that would hide the host's bpffs or interfaces from the daemon,
    // or make /sys/fs/bpf and /proc/sys read-only.
    for (key, forbidden) in [
        ("PrivateNetwork", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("TemporaryFileSystem", "/sys"),
        ("InaccessiblePaths", "/sys"),
        ("ReadOnlyPaths", "/sys"),
    ] {
        for value in unit.all("Service", key) {
            assert!(!value.contains(forbidden), "{key}={value} breaks pinning or XDP attach");
        }
    }
}

#[test]
fn unit_grants_the_tested_capabilities_and_not_cap_sys_admin() {
    let unit = Unit::read(&unit_path());
    assert_eq!(unit.capabilities(), ["bpf", "perfmon", "net_admin", "chown"]);
    assert_eq!(
        unit.get("Service", "AmbientCapabilities"),
        unit.get("Service", "CapabilityBoundingSet"),
        "the same set, so a non-root User= gets it too"
    );
}

#[test]
fn unit_directories_are_the_default_socket_and_state_dirs() {
    let unit = Unit::read(&unit_path());
    let socket_dir = PathBuf::from(DEFAULT_ADMIN_SOCKET).parent().unwrap().to_path_buf();
    assert_eq!(
        PathBuf::from("/run").join(unit.get("Service", "RuntimeDirectory").expect("RuntimeDirectory")),
        socket_dir
    );
    let example = fs::read_to_string(repo_root().join("examples/bg-lb.toml")).unwrap();
    let state_dir = unit.get("Service", "StateDirectory").expect("StateDirectory");
    assert!(
        example.contains(&format!("state_dir = \"/var/lib/{state_dir}\"")),
        "the example config's state_dir is /var/lib/{state_dir}"
    );
}

/// `systemd-analyze verify` (Debian's systemd package) checks the unit as
/// systemd would load it, including that ExecStart and ExecReload are
/// executable and that the `Documentation=man:bg-lb(1)` page exists. The
/// unit is copied with both pointing at the built binary, and `bg-lb man`
/// provides the page.
#[test]
fn unit_passes_systemd_analyze_verify() {
    let layout = Layout::new("verify");
    let bin = layout.install(PathBuf::from(BG_LB).as_path(), "/usr/local/bin/bg-lb", 0o755);
    let man = Command::new(&bin).arg("man").output().expect("bg-lb man");
    assert!(man.status.success(), "bg-lb man failed");
    let man_dir = layout.path("/usr/local/share/man");
    fs::create_dir_all(man_dir.join("man1")).unwrap();
    fs::write(man_dir.join("man1/bg-lb.1"), &man.stdout).unwrap();

    let unit = fs::read_to_string(unit_path())
        .unwrap()
        .replace("=/usr/local/bin/bg-lb ", &format!("={} ", bin.display()));
    let copy = layout.path("/etc/systemd/system/bg-lb.service");
    fs::create_dir_all(copy.parent().unwrap()).unwrap();
    fs::write(&copy, unit).unwrap();

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("MANPATH", &man_dir)
        .output()
        .expect("run systemd-analyze (Debian package systemd; `cargo xtask setup` installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on some problems (an unknown key is only logged), so
    // anything it says is a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify bg-lb.service: {}\n{stderr}",
        out.status
    );
}
