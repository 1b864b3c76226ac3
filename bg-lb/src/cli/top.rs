//! `bg-lb ctl top`: a live view for watching a release. Every interval it
//! polls `status` and redraws the ratio, each pool's open flows (drain
//! progress) and each backend's health, open flows, new flows/s and bytes/s.
//! Rates are differences between two successive polls, so the first frame
//! has none yet.
//!
//! The screen is redrawn with plain ANSI escapes. On a terminal, stdin is put
//! in non-canonical mode so `q` quits at once; Ctrl-C arrives as a byte too,
//! so the terminal is always restored. When stdout is not a terminal each
//! frame is printed after the previous one, without escapes.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{IsTerminal as _, Read as _, Write as _},
    net::SocketAddr,
    os::fd::AsFd as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios},
};

use crate::{
    cli::ctl::Client,
    protocol::{BackendHealth, Request, ServiceStatus, StatusRequest},
    ratio::Pool,
};

/// Counter values of one poll, per service and backend.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    backends: HashMap<(String, SocketAddr), Counts>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    new_flows: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Sample {
    pub fn of(services: &[ServiceStatus], at: Instant) -> Self {
        let backends = services
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(|b| {
                    let counts = Counts {
                        new_flows: b.new_flows,
                        bytes_in: b.bytes_in,
                        bytes_out: b.bytes_out,
                    };
                    ((s.name.clone(), b.address), counts)
                })
            })
            .collect();
        Sample { at, backends }
    }
}

/// Per-second rates of one backend between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub new_flows: f64,
    pub bytes_in: f64,
    pub bytes_out: f64,
}

impl Rates {
    fn add(self, other: Rates) -> Rates {
        Rates {
            new_flows: self.new_flows + other.new_flows,
            bytes_in: self.bytes_in + other.bytes_in,
            bytes_out: self.bytes_out + other.bytes_out,
        }
    }
}

/// Rates of `backend` from `previous` to `current`; `None` on the first
/// sample, for a backend that just appeared, or when a counter went back
/// (the daemon reused its id for a re-added backend).
pub fn rates(previous: &Sample, current: &Sample, service: &str, backend: SocketAddr) -> Option<Rates> {
    let key = (service.to_owned(), backend);
    let (before, now) = (previous.backends.get(&key)?, current.backends.get(&key)?);
    let seconds = current.at.checked_duration_since(previous.at)?.as_secs_f64();
    if seconds <= 0.0 {
        return None;
    }
    let per_second = |now: u64, before: u64| now.checked_sub(before).map(|d| d as f64 / seconds);
    Some(Rates {
        new_flows: per_second(now.new_flows, before.new_flows)?,
        bytes_in: per_second(now.bytes_in, before.bytes_in)?,
        bytes_out: per_second(now.bytes_out, before.bytes_out)?,
    })
}

/// One frame's lines.
pub fn render(
    services: &[ServiceStatus],
    previous: Option<&Sample>,
    current: &Sample,
    interval: Duration,
) -> Vec<String> {
    let mut lines = vec![format!(
        "bg-lb top - every {} - q or Ctrl-C quits",
        humantime::format_duration(interval)
    )];
    for service in services {
        lines.push(String::new());
        render_service(&mut lines, service, previous, current);
    }
    if services.is_empty() {
        lines.push("no services configured".into());
    }
    lines
}

fn render_service(lines: &mut Vec<String>, s: &ServiceStatus, previous: Option<&Sample>, current: &Sample) {
    let effective = if s.effective_ratio == s.ratio {
        String::new()
    } else {
        format!("  (effective {})", s.effective_ratio)
    };
    lines.push(format!("{}  {}  ratio {}{effective}", s.name, s.vips_text(), s.ratio));
    let rates_of = |address| previous.and_then(|p| rates(p, current, &s.name, address));
    // Under `dsr` no reply crosses the LB: "-", not a rate of zero.
    let replies = s.forwarding.sees_replies();
    for pool in [Pool::Blue, Pool::Green] {
        let members: Vec<_> = s.backends.iter().filter(|b| b.pool == pool).collect();
        let up = members.iter().filter(|b| b.health != BackendHealth::Down).count();
        let pool_rates = members
            .iter()
            .map(|b| rates_of(b.address))
            .try_fold(Rates::default(), |sum, r| r.map(|r| sum.add(r)));
        lines.push(format!(
            "  {:<6} {} {:>3}%  open {:>7}  new/s {:>8}  in {:>11}  out {:>11}  up {up}/{}",
            pool.to_string(),
            bar(s.effective_ratio.share(pool)),
            s.effective_ratio.share(pool),
            s.open_flows(pool),
            pool_rates.map_or("-".into(), |r| format!("{:.1}", r.new_flows)),
            pool_rates.map_or("-".into(), |r| bytes_per_second(r.bytes_in)),
            pool_rates
                .filter(|_| replies)
                .map_or("-".into(), |r| bytes_per_second(r.bytes_out)),
            members.len(),
        ));
    }
    lines.push(format!(
        "  {:<6} {:<21} {:<9} {:>6} {:>7} {:>8} {:>11} {:>11}",
        "POOL", "BACKEND", "HEALTH", "WEIGHT", "OPEN", "NEW/S", "IN/S", "OUT/S"
    ));
    for b in &s.backends {
        let r = rates_of(b.address);
        let health = if b.enabled {
            b.health.to_string()
        } else {
            format!("{} off", b.health)
        };
        lines.push(format!(
            "  {:<6} {:<21} {:<9} {:>6} {:>7} {:>8} {:>11} {:>11}",
            b.pool.to_string(),
            b.address.to_string(),
            health,
            b.weight,
            b.open_flows,
            r.map_or("-".into(), |r| format!("{:.1}", r.new_flows)),
            r.map_or("-".into(), |r| bytes_per_second(r.bytes_in)),
            r.filter(|_| replies)
                .map_or("-".into(), |r| bytes_per_second(r.bytes_out)),
        ));
    }
}

/// A 20-character bar of `percent`.
fn bar(percent: u8) -> String {
    let filled = (percent.min(100) as usize * 20).div_ceil(100);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(20 - filled))
}

/// `1536.0` -> `1.5 KiB/s`.
pub fn bytes_per_second(rate: f64) -> String {
    let mut value = rate;
    let mut text = String::new();
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if value < 1024.0 || unit == "GiB" {
            let _ = if unit == "B" {
                write!(text, "{value:.0} {unit}/s")
            } else {
                write!(text, "{value:.1} {unit}/s")
            };
            break;
        }
        value /= 1024.0;
    }
    text
}

/// Polls and redraws until `q`, Ctrl-C, or `iterations` frames.
pub fn run(
    client: &mut Client,
    service: Option<String>,
    interval: Duration,
    iterations: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let mut screen = Screen::open()?;
    let mut previous: Option<Sample> = None;
    let mut frames = 0;
    loop {
        let reply = client.request(&Request::Status(StatusRequest {
            service: service.clone(),
        }))?;
        if !reply.ok {
            drop(screen);
            eprintln!("error: {}", reply.error.unwrap_or_default());
            return Ok(ExitCode::FAILURE);
        }
        let services = reply.services.unwrap_or_default();
        let current = Sample::of(&services, Instant::now());
        screen.draw(&render(&services, previous.as_ref(), &current, interval))?;
        previous = Some(current);
        frames += 1;
        if iterations.is_some_and(|n| frames >= n) || screen.quit_within(interval)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// The terminal while `top` runs; restored on drop (panics included).
struct Screen {
    /// Redraw in place (stdout is a terminal).
    redraw: bool,
    /// The stdin settings to restore, when stdin is a terminal we read keys from.
    keyboard: Option<Termios>,
}

/// Enter the alternate screen, hide the cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Show the cursor, leave the alternate screen.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";
/// Cursor home; each line then clears its rest and the end clears below.
const HOME: &str = "\x1b[H";
const CLEAR_LINE_END: &str = "\x1b[K";
const CLEAR_BELOW: &str = "\x1b[J";
const CTRL_C: u8 = 0x03;

impl Screen {
    fn open() -> anyhow::Result<Self> {
        let stdin = std::io::stdin();
        let keyboard = if stdin.is_terminal() {
            let saved = termios::tcgetattr(stdin.as_fd())?;
            let mut raw = saved.clone();
            // Keys arrive one by one without echo; Ctrl-C arrives as a byte
            // (no SIGINT) so the drop below always restores the terminal.
            raw.local_flags
                .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
            raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
            raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
            termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
            Some(saved)
        } else {
            None
        };
        // The alternate screen only when we can restore it on every way out.
        let redraw = std::io::stdout().is_terminal() && keyboard.is_some();
        let screen = Screen { redraw, keyboard };
        if redraw {
            print!("{ENTER}");
        }
        Ok(screen)
    }

    fn draw(&mut self, lines: &[String]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.redraw {
            write!(out, "{HOME}")?;
            for line in lines {
                writeln!(out, "{line}{CLEAR_LINE_END}")?;
            }
            write!(out, "{CLEAR_BELOW}")?;
        } else {
            for line in lines {
                writeln!(out, "{line}")?;
            }
            writeln!(out)?;
        }
        out.flush()
    }

    /// Waits `interval`; true if `q` or Ctrl-C was pressed meanwhile.
    fn quit_within(&mut self, interval: Duration) -> anyhow::Result<bool> {
        if self.keyboard.is_none() {
            std::thread::sleep(interval);
            return Ok(false);
        }
        let deadline = Instant::now() + interval;
        let stdin = std::io::stdin();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let timeout = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, timeout)? == 0 {
                return Ok(false);
            }
            let mut key = [0u8; 16];
            let n = stdin.lock().read(&mut key)?;
            if n == 0 || key[..n].iter().any(|&k| matches!(k, b'q' | b'Q' | CTRL_C)) {
                return Ok(true);
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.redraw {
            print!("{LEAVE}");
            let _ = std::io::stdout().flush();
        }
        if let Some(saved) = &self.keyboard {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        protocol::BackendStatus,
        ratio::{Pool, Ratio},
        test_support::backend_status,
    };

    fn backend(
        address: &str,
        pool: Pool,
        health: BackendHealth,
        new_flows: u64,
        bytes_in: u64,
        open: u64,
    ) -> BackendStatus {
        BackendStatus {
            open_flows: open,
            new_flows,
            bytes_in,
            bytes_out: bytes_in * 2,
            ..backend_status(address, pool, health)
        }
    }

    fn web(b0: (u64, u64), g0: (u64, u64)) -> Vec<ServiceStatus> {
        vec![ServiceStatus {
            name: "web".into(),
            vip: "10.0.0.100:80".parse().unwrap(),
            standby_vip: None,
            listeners: vec![],
            ratio: Ratio::new(30).unwrap(),
            effective_ratio: Ratio::new(30).unwrap(),
            backends: vec![
                backend("10.0.1.1:80", Pool::Blue, BackendHealth::Up, b0.0, b0.1, 4),
                backend("10.0.2.1:80", Pool::Green, BackendHealth::Down, g0.0, g0.1, 0),
            ],
            shift: None,
            syn_proxy: Default::default(),
            forwarding: Default::default(),
            affinity: Default::default(),
            drain_deadline: None,
            protocol: Default::default(),
        }]
    }

    #[test]
    fn rates_are_counter_differences_over_the_time_between_polls() {
        let start = Instant::now();
        let before = Sample::of(&web((10, 1000), (0, 0)), start);
        let after = Sample::of(&web((30, 5096), (0, 0)), start + Duration::from_secs(2));
        let blue = "10.0.1.1:80".parse().unwrap();
        assert_eq!(
            rates(&before, &after, "web", blue),
            Some(Rates {
                new_flows: 10.0,
                bytes_in: 2048.0,
                bytes_out: 4096.0
            })
        );
        assert_eq!(rates(&before, &after, "api", blue), None, "unknown service");
    }

    #[test]
    fn a_counter_that_went_back_has_no_rate() {
        let start = Instant::now();
        let before = Sample::of(&web((30, 0), (0, 0)), start);
        let after = Sample::of(&web((2, 0), (0, 0)), start + Duration::from_secs(1));
        assert_eq!(rates(&before, &after, "web", "10.0.1.1:80".parse().unwrap()), None);
    }

    #[test]
    fn the_first_frame_shows_ratio_health_and_open_flows_without_rates() {
        let services = web((10, 1000), (0, 0));
        let lines = render(
            &services,
            None,
            &Sample::of(&services, Instant::now()),
            Duration::from_secs(1),
        );
        let text = lines.join("\n");
        assert!(text.contains("web  vip 10.0.0.100:80  ratio 30:70"), "{text}");
        let blue = lines.iter().find(|l| l.trim_start().starts_with("blue ")).unwrap();
        assert!(blue.contains(" 30%") && blue.contains("open       4"), "{blue}");
        assert!(blue.contains("new/s        -"), "no rate before a second poll: {blue}");
        let row = lines.iter().find(|l| l.contains("10.0.2.1:80")).unwrap();
        assert!(row.contains("down"), "{row}");
    }

    #[test]
    fn later_frames_show_pool_and_backend_rates() {
        let start = Instant::now();
        let first = web((10, 0), (0, 0));
        let second = web((15, 1536), (5, 0));
        let previous = Sample::of(&first, start);
        let current = Sample::of(&second, start + Duration::from_secs(1));
        let lines = render(&second, Some(&previous), &current, Duration::from_secs(1));
        let blue = lines.iter().find(|l| l.trim_start().starts_with("blue ")).unwrap();
        assert!(blue.contains("new/s      5.0"), "{blue}");
        assert!(blue.contains("1.5 KiB/s"), "{blue}");
        let green_row = lines.iter().find(|l| l.contains("10.0.2.1:80")).unwrap();
        assert!(green_row.contains("5.0"), "{green_row}");
    }

    #[test]
    fn byte_rates_read_in_binary_units() {
        assert_eq!(bytes_per_second(0.0), "0 B/s");
        assert_eq!(bytes_per_second(1023.0), "1023 B/s");
        assert_eq!(bytes_per_second(1536.0), "1.5 KiB/s");
        assert_eq!(bytes_per_second(3.0 * 1024.0 * 1024.0), "3.0 MiB/s");
        assert_eq!(bytes_per_second(5e12), "4656.6 GiB/s");
    }

    #[test]
    fn the_ratio_bar_is_proportional() {
        assert_eq!(bar(0), "[--------------------]");
        assert_eq!(bar(50), "[##########----------]");
        assert_eq!(bar(100), "[####################]");
    }
}
