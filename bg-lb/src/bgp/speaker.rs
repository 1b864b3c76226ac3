//! Drives BIRD: writes the include file atomically and runs
//! `birdc -s SOCKET configure`, remembering what BIRD last accepted.
//! A failure is logged (once per distinct error), shown in `status` and
//! retried on the next sync; it never stops the daemon.

use std::{
    collections::BTreeSet,
    io::Read as _,
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use super::{configure_result, render};
use crate::{config::BgpConfig, protocol::BgpStatus, state_file::write_atomic};

/// How long `birdc configure` may take; the daemon waits for it, so a hung
/// BIRD must not hold it longer. A local reconfiguration takes milliseconds.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Speaker {
    config: BgpConfig,
    /// What the include file holds, once this daemon wrote it.
    written: Option<BTreeSet<IpAddr>>,
    /// What BIRD accepted last (`None` before the first success).
    accepted: Option<BTreeSet<IpAddr>>,
    /// The last attempt: when, and birdc's reply or the error.
    last: Option<(SystemTime, Result<String, String>)>,
}

impl Speaker {
    pub fn new(config: BgpConfig) -> Self {
        Speaker {
            config,
            written: None,
            accepted: None,
            last: None,
        }
    }

    /// Makes BIRD announce exactly `wanted`: nothing to do once it accepted
    /// that; otherwise rewrites the file if needed and reconfigures.
    pub fn sync(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<(), String> {
        if self.accepted.as_ref() == Some(wanted) {
            return Ok(());
        }
        let result = self.write(wanted).and_then(|()| self.configure());
        match &result {
            Ok(reply) => {
                tracing::info!(announced = ?wanted, reply = %reply, "BIRD reconfigured");
                self.accepted = Some(wanted.clone());
            }
            Err(error) => {
                let repeated = matches!(&self.last, Some((_, Err(last))) if last == error);
                if !repeated {
                    tracing::error!(%error, wanted = ?wanted, "BIRD not reconfigured; retrying every second");
                }
            }
        }
        let outcome = result.clone().map(|_| ());
        self.last = Some((SystemTime::now(), result));
        outcome
    }

    fn write(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<(), String> {
        if self.written.as_ref() == Some(wanted) {
            return Ok(());
        }
        let path = &self.config.bird_include;
        let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(dir), Some(name)) => (dir, name),
            _ => return Err(format!("{}: not a file path", path.display())),
        };
        let text = render(&self.config.protocol_name, wanted);
        write_atomic(dir, name, text.as_bytes())
            .map_err(|(at, cause)| format!("writing {}: {}: {cause}", path.display(), at.display()))?;
        self.written = Some(wanted.clone());
        Ok(())
    }

    fn configure(&self) -> Result<String, String> {
        let output = run_with_timeout(
            Command::new(&self.config.birdc)
                .arg("-s")
                .arg(&self.config.bird_socket)
                .arg("configure"),
            BIRDC_TIMEOUT,
        )?;
        configure_result(&output)
    }

    /// For `status`: what BIRD announces and how the last attempt went.
    pub fn status(&self, all: &BTreeSet<IpAddr>, node_drained: bool) -> BgpStatus {
        let accepted = self.accepted.clone().unwrap_or_default();
        BgpStatus {
            node_drained,
            announced: accepted.iter().copied().collect(),
            withdrawn: all.difference(&accepted).copied().collect(),
            include: self.config.bird_include.clone(),
            last_configure_ok: matches!(self.last, Some((_, Ok(_)))),
            last_configure: self.last.as_ref().map(|(_, r)| match r {
                Ok(reply) | Err(reply) => reply.clone(),
            }),
            last_configure_unix_secs: self.last.as_ref().map(|(at, _)| {
                at.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
            }),
        }
    }

    /// Whether BIRD accepted an announcement of `address`.
    pub fn announces(&self, address: IpAddr) -> bool {
        self.accepted.as_ref().is_some_and(|a| a.contains(&address))
    }
}

/// Runs `command` and returns its stdout and stderr, killing it after
/// `timeout`.
fn run_with_timeout(command: &mut Command, timeout: Duration) -> Result<String, String> {
    let program = Path::new(command.get_program()).display().to_string();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e} (is bird2 installed? see [bgp] birdc)"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} did not answer in {}s", timeout.as_secs()));
            }
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut output);
    }
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut output);
    }
    if !status.success() && output.trim().is_empty() {
        return Err(format!("{program} failed ({status})"));
    }
    Ok(output)
}

/// `bg-lb teardown`'s withdrawal, without a daemon: the include file is
/// emptied (so a BIRD started later announces nothing either), then BIRD is
/// asked to reconfigure.
pub fn withdraw_all(config: &BgpConfig) -> Result<String, String> {
    let mut speaker = Speaker::new(config.clone());
    speaker.write(&BTreeSet::new())?;
    speaker.configure()
}

#[cfg(test)]
mod tests {
    use std::{fs, net::Ipv4Addr, os::unix::fs::PermissionsExt as _, path::PathBuf};

    use super::*;

    /// A directory with a fake `birdc` that logs its arguments to `calls`
    /// and prints `reply` (a shell word list), and the config pointing at it.
    fn fake_birdc(name: &str, reply: &str) -> (PathBuf, BgpConfig) {
        let dir = std::env::temp_dir().join(format!("bglb-speaker-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let script = dir.join("birdc");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}/calls\nprintf '%s\\n' {reply}\n",
                dir.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let config = BgpConfig {
            bird_include: dir.join("run").join("vips.conf"),
            birdc: script,
            bird_socket: dir.join("bird.ctl"),
            protocol_name: "bglb_vips".into(),
        };
        (dir, config)
    }

    fn calls(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn vips(list: &[u8]) -> BTreeSet<IpAddr> {
        list.iter().map(|&last| vip(last)).collect()
    }

    fn vip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn a_change_is_written_then_configured_once() {
        let (dir, config) = fake_birdc("once", "'BIRD 2.0.12 ready.' Reconfigured");
        let mut speaker = Speaker::new(config.clone());
        speaker.sync(&vips(&[100])).unwrap();
        assert_eq!(
            fs::read_to_string(&config.bird_include).unwrap(),
            render("bglb_vips", &vips(&[100]))
        );
        let configure = format!("-s {} configure", config.bird_socket.display());
        assert_eq!(calls(&dir), [configure]);
        // Nothing changed: BIRD is not asked again.
        speaker.sync(&vips(&[100])).unwrap();
        assert_eq!(calls(&dir).len(), 1);
        assert!(speaker.announces(vip(100)));
        speaker.sync(&vips(&[])).unwrap();
        assert_eq!(calls(&dir).len(), 2);
        assert!(!speaker.announces(vip(100)));
        let status = speaker.status(&vips(&[100]), false);
        assert!(status.announced.is_empty() && status.last_configure_ok);
        assert_eq!(status.withdrawn, [vip(100)]);
        assert_eq!(status.last_configure.as_deref(), Some("Reconfigured"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_rejected_configure_is_shown_and_retried_without_claiming_the_routes() {
        let (dir, config) = fake_birdc("rejected", "'BIRD 2.0.12 ready.' '/run/x.conf:2:1 syntax error'");
        let mut speaker = Speaker::new(config);
        let error = speaker.sync(&vips(&[100])).unwrap_err();
        assert!(error.contains("syntax error"), "{error}");
        assert!(!speaker.announces(vip(100)));
        let status = speaker.status(&vips(&[100]), false);
        assert!(!status.last_configure_ok && status.announced.is_empty(), "{status:?}");
        assert!(status.last_configure.unwrap().contains("syntax error"));
        // The next sync (the daemon's next tick) asks again.
        assert!(speaker.sync(&vips(&[100])).is_err());
        assert_eq!(calls(&dir).len(), 2);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_birdc_is_an_error_not_a_crash() {
        let (dir, mut config) = fake_birdc("missing", "Reconfigured");
        config.birdc = dir.join("no-such-birdc");
        let error = Speaker::new(config).sync(&vips(&[100])).unwrap_err();
        assert!(error.contains("cannot run"), "{error}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn teardown_empties_the_include_file_even_when_bird_cannot_be_told() {
        let (dir, mut config) = fake_birdc("teardown", "Reconfigured");
        Speaker::new(config.clone()).sync(&vips(&[100])).unwrap();
        config.birdc = dir.join("no-such-birdc");
        assert!(withdraw_all(&config).is_err());
        assert_eq!(
            fs::read_to_string(&config.bird_include).unwrap(),
            render("bglb_vips", &BTreeSet::new())
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
