//! systemd's notify protocol (`Type=notify`, sd_notify(3)): READY=1 once the
//! data plane forwards, STATUS= lines, RELOADING=1 and READY=1 around a
//! reload, STOPPING=1, and WATCHDOG=1 pings from the event loop. Outside a
//! notify unit (no `NOTIFY_SOCKET`) every message is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

use super::{Daemon, RequestError};

/// What the daemon tells systemd, and how often it must ping the watchdog.
pub struct Notifier {
    /// `WatchdogSec=` as the unit set it (WATCHDOG_USEC), if for this process.
    watchdog: Option<Duration>,
    /// The last STATUS= sent, so an unchanged one is not sent every tick.
    status: String,
}

impl Notifier {
    pub fn from_env() -> Self {
        let mut usec = 0;
        // The variables stay set: nothing this daemon starts is a service.
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
        Notifier {
            watchdog,
            status: String::new(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!(error = %e, "cannot notify systemd through NOTIFY_SOCKET");
        }
    }
}

impl Daemon {
    /// How often the event loop pings the watchdog: half its timeout, as
    /// sd_watchdog_enabled(3) advises; `None` without a watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.notifier.watchdog.map(|timeout| timeout / 2)
    }

    /// READY=1: XDP is attached, the tables are programmed and the admin
    /// socket listens, so `systemctl start` returns into a working LB.
    pub fn notify_ready(&mut self) {
        let status = self.status_line();
        self.notifier.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.notifier.status = status;
    }

    /// STATUS= with the services and open flows, when they changed.
    pub fn notify_status(&mut self) {
        let status = self.status_line();
        if status != self.notifier.status {
            self.notifier.send(&[NotifyState::Status(&status)]);
            self.notifier.status = status;
        }
    }

    /// WATCHDOG=1, sent from the event loop only while the loop turns and
    /// the data plane's maps answer: a stuck loop or a broken data plane
    /// stops the pings, and systemd restarts the daemon after WatchdogSec
    /// (forwarding goes on meanwhile; the new daemon adopts the pins).
    pub fn watchdog_ping(&self) {
        match self.dataplane.counters() {
            Ok(_) => self.notifier.send(&[NotifyState::Watchdog]),
            Err(e) => tracing::error!(error = %e, "data plane unreadable; not pinging the systemd watchdog"),
        }
    }

    /// STOPPING=1: the daemon exits; the pinned data plane keeps forwarding.
    pub fn notify_stopping(&self) {
        self.notifier.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping; the pinned data plane keeps forwarding"),
        ]);
    }

    /// RELOADING=1 (with the MONOTONIC_USEC systemd 253+ requires) before a
    /// reload.
    pub(super) fn notify_reloading(&mut self) {
        let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading the config")];
        states.extend(NotifyState::monotonic_usec_now().ok());
        self.notifier.send(&states);
        self.notifier.status.clear();
    }

    /// READY=1 after a reload, applied or rejected: either way the daemon
    /// serves (a rejected config leaves the running one in place), and the
    /// STATUS= line says which.
    pub(super) fn notify_reloaded(&mut self, result: &Result<String, RequestError>) {
        let status = match result {
            Ok(_) => self.status_line(),
            Err(e) => format!("reload rejected, still serving the previous config: {e}"),
        };
        self.notifier.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.notifier.status = status;
    }

    /// One line for `systemctl status`: services, interfaces, open flows.
    fn status_line(&self) -> String {
        let open: u64 = self.census.open.values().sum();
        format!(
            "serving {} service(s) on {}; {open} open flow(s)",
            self.config.services.len(),
            self.config.interfaces.names().join(", ")
        )
    }
}
