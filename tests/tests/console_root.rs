//! The web console end to end (root): Debian's headless Chromium, driven
//! through chromedriver (WebDriver, with fantoccini), both running inside
//! the LB's namespace, against a daemon with `[api]` in the blue-green lab
//! under load. What the page shows is checked against the daemon's status
//! and the data plane's counts.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use bg_lb::{protocol::BackendHealth, ratio::Pool, shift::ShiftOutcome};
use bg_lb_tests::{
    console::{CONSOLE_LISTEN, ConsoleTokens},
    lab::{BlueGreenLab, LabOptions},
    load::{Load, LoadSpec},
    topology::NetNs,
};
use fantoccini::{Client, ClientBuilder, Locator, key::Key};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const DRIVER: &str = "127.0.0.1:9515";
/// How long the page may take to show what the test waits for.
const PAGE_PATIENCE: Duration = Duration::from_secs(60);

/// chromedriver (and the Chromium it starts) in a namespace, with a
/// throwaway profile; every process is killed by PID and the profile
/// removed on drop, whatever happened.
struct Browser {
    netns: fs::File,
    driver: Child,
    profile: PathBuf,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
}

impl Browser {
    fn start(ns: &NetNs) -> Self {
        let profile = std::env::temp_dir().join(format!("bglb-chromium-{}", std::process::id()));
        let _ = fs::remove_dir_all(&profile);
        fs::create_dir_all(&profile).unwrap();
        let port = DRIVER.rsplit_once(':').unwrap().1;
        let driver = ns.run(move || {
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver (cargo xtask setup installs chromium-driver)")
        });
        let netns = fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut browser = Browser {
            netns,
            driver,
            profile,
            runtime,
            client: None,
        };
        let profile = browser.profile.display().to_string();
        let client = browser.drive(async move {
            let capabilities = json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--window-size=1280,1500", format!("--user-data-dir={profile}")],
                },
            });
            let started = Instant::now();
            loop {
                let connected = ClientBuilder::new(HttpConnector::new())
                    .capabilities(capabilities.as_object().unwrap().clone())
                    .connect(&format!("http://{DRIVER}"))
                    .await;
                match connected {
                    Ok(client) => return client,
                    Err(e) if started.elapsed() > Duration::from_secs(30) => panic!("no WebDriver session: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        browser.client = Some(client);
        browser
    }

    /// Runs `work` on a thread inside the namespace, so every connection it
    /// opens (to chromedriver) is the namespace's.
    fn drive<T: Send>(&self, work: impl Future<Output = T> + Send) -> T {
        thread::scope(|s| {
            s.spawn(|| {
                setns(&self.netns, CloneFlags::CLONE_NEWNET).expect("setns into the LB's namespace");
                self.runtime.block_on(work)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    fn goto(&self, url: &str) {
        self.drive(self.client().goto(url))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Elements matching `css` (none is fine).
    fn count(&self, css: &str) -> usize {
        self.drive(self.client().find_all(Locator::Css(css))).unwrap().len()
    }

    fn text(&self, css: &str) -> String {
        self.drive(async { self.client().find(Locator::Css(css)).await?.text().await })
            .unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    fn click(&self, css: &str) {
        self.drive(async { self.client().find(Locator::Css(css)).await?.click().await })
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    fn type_into(&self, css: &str, text: &str) {
        self.drive(async {
            let input = self.client().find(Locator::Css(css)).await?;
            input.clear().await?;
            input.send_keys(text).await
        })
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Runs an async script (`done` is its callback) in the page.
    fn script(&self, body: &str, args: Vec<Value>) -> Value {
        let script = format!("const done = arguments[arguments.length - 1]; {body}");
        self.drive(self.client().execute_async(&script, args))
            .unwrap_or_else(|e| panic!("script: {e}"))
    }

    /// Polls the text of `css` until `ok` holds; panics with the last text.
    fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self.drive(async { self.client().find(Locator::Css(css)).await?.text().await });
            if let Ok(text) = &text
                && ok(text)
            {
                return text.clone();
            }
            assert!(
                started.elapsed() < PAGE_PATIENCE,
                "{what}: the page shows {text:?} in {css}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn sign_in(&self, token: &str) {
        self.goto(&format!("http://{CONSOLE_LISTEN}/console"));
        self.type_into("#token", token);
        self.click("#login-button");
    }

    fn screenshot(&self) -> Vec<u8> {
        self.drive(self.client().screenshot()).expect("screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.drive(async { tokio::time::timeout(Duration::from_secs(10), client.close()).await });
        }
        // Chromium may outlive a session that failed: kill chromedriver's
        // descendants, then chromedriver, by PID.
        let driver = self.driver.id();
        for pid in descendants(driver).into_iter().rev() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = fs::remove_dir_all(&self.profile);
    }
}

/// Every process below `root`, parents before children.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|&&(_, ppid)| ppid == parent).map(|&(pid, _)| pid));
        i += 1;
    }
    found.remove(0);
    found
}

/// New connections per pool the data plane counted, summed.
fn new_flows(lab: &BlueGreenLab) -> [u64; 2] {
    let status = lab.status();
    [Pool::Blue, Pool::Green].map(|pool| {
        status
            .backends
            .iter()
            .filter(|b| b.pool == pool)
            .map(|b| b.new_flows)
            .sum()
    })
}

/// An action the page could send, forged in the page's own context with
/// `token`: signs a session in and POSTs a drain with its CSRF token. The
/// HTTP statuses of both.
fn forged_drain(browser: &Browser, token: &str) -> Value {
    browser.script(
        r#"const auth = { Authorization: "Bearer " + arguments[0] };
           fetch("/console/session", { method: "POST", headers: auth })
             .then(async (s) => {
               const csrf = s.ok ? (await s.json()).csrf : "none";
               const r = await fetch("/console/cmd/drain", { method: "POST",
                 headers: { ...auth, "X-CSRF-Token": csrf },
                 body: JSON.stringify({ service: "web", pool: "green" }) });
               done([s.status, r.status]);
             });"#,
        vec![json!(token)],
    )
}

#[test]
fn the_console_sets_the_ratio_drains_and_shows_a_shift_rolled_back_while_wrong_and_read_only_tokens_change_nothing() {
    let tokens = ConsoleTokens::new("browser");
    let options = LabOptions {
        check: "tcp",
        tables: tokens.api_table(),
        ..LabOptions::default()
    };
    let mut lab = BlueGreenLab::start(BG_LB, &options);
    let load = Load::start(
        &lab.topo.client.ns,
        LoadSpec {
            vip: lab.live_vip(),
            rate: 100,
            workers: 4,
            long_lived: 6,
            long_lived_lifetime: Duration::from_secs(3),
            long_lived_period: Duration::from_millis(250),
            sources: Vec::new(),
        },
    );
    let browser = Browser::start(&lab.topo.lb.ns);

    // A wrong token: no controls, and what it sends has no effect.
    browser.sign_in("not-the-token-0123456789abcdef");
    let error = browser.wait_text("#login-error", "a wrong token is refused", |t| !t.is_empty());
    assert!(error.contains("not accepted"), "{error}");
    assert_eq!(browser.count("[data-service]"), 0, "nothing of the service is shown");
    assert_eq!(browser.count("#ratio-web, #confirm-web, #drain-green-web"), 0);
    assert_eq!(
        forged_drain(&browser, "not-the-token-0123456789abcdef"),
        json!([401, 401])
    );

    // The read-only token: the live view without the controls; an action
    // it forges, with its own session's CSRF token, is refused.
    browser.sign_in(&tokens.read_only);
    browser.wait_text("#open-blue-web", "the read-only view", |t| t.parse::<u64>().is_ok());
    assert_eq!(
        browser.count("#ratio-web, #confirm-web, #drain-green-web, #shift-start-web"),
        0
    );
    assert_eq!(forged_drain(&browser, &tokens.read_only), json!([200, 403]));
    assert_eq!(lab.status().ratio.to_string(), "50:50", "no effect");
    browser.click("#logout");

    // The admin token: the slider, moved with the keyboard, previews 30:70.
    browser.sign_in(&tokens.admin);
    browser.wait_text("#ratio-value-web", "the slider shows the ratio", |t| t == "50:50");
    browser
        .drive(async {
            let slider = browser.client().find(Locator::Css("#ratio-web")).await?;
            slider
                .send_keys(&format!("{}{}", Key::Home, Key::Right.to_string().repeat(70)))
                .await
        })
        .expect("keys to the slider");
    assert_eq!(browser.text("#ratio-value-web"), "30:70");
    assert_eq!(browser.text("#split-blue-web"), "blue 30%");
    assert_eq!(lab.status().ratio.to_string(), "50:50", "a preview only");
    browser.click("#confirm-web");
    lab.wait(|s| s.ratio.to_string() == "30:70", "the console set 30:70");
    browser.wait_text("#message", "the reply is shown", |t| t.contains("ratio 30:70:"));

    // The split of new connections the data plane counted from then on.
    let before = new_flows(&lab);
    let started = Instant::now();
    let split = loop {
        let now = new_flows(&lab);
        let (blue, green) = (now[0] - before[0], now[1] - before[1]);
        if blue + green >= 600 {
            break blue as f64 / (blue + green) as f64;
        }
        assert!(started.elapsed() < PAGE_PATIENCE, "the load stalled: {now:?}");
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        (0.22..=0.38).contains(&split),
        "blue took {split:.3} of new connections at 30:70"
    );

    // A drain of green, watched on the page until green has no open
    // connection.
    browser.wait_text("#open-green-web", "green carries connections", |t| t != "0");
    browser.click("#drain-green-web");
    lab.wait(|s| s.ratio.to_string() == "100:0", "drained");
    browser.wait_text("#open-green-web", "green drained on the page", |t| t == "0");
    assert_eq!(
        lab.status()
            .backends
            .iter()
            .filter(|b| b.pool == Pool::Green)
            .map(|b| b.open_flows)
            .sum::<u64>(),
        0
    );

    // A faulty green build (TCP checks pass, half its connections reset):
    // a shift to it is rolled back and the page says why.
    for i in BlueGreenLab::pool(Pool::Green) {
        lab.backends[i].redeploy_with(&lab.topo.backends[i].ns, "v2-bad", "live", &["--fail-percent", "50"]);
    }
    lab.wait(|s| s.backends.iter().all(|b| b.health == BackendHealth::Up), "all up");
    browser
        .drive(async {
            browser
                .client()
                .find(Locator::Css("#shift-to-web"))
                .await?
                .select_by_value("green")
                .await
        })
        .expect("shift target");
    browser.type_into("#shift-steps-web", "10,50,100");
    browser.type_into("#shift-interval-web", "30");
    browser.type_into("#shift-max-error-web", "5");
    browser.click("#shift-start-web");
    browser.wait_text("#shift-state-web", "the shift runs", |t| t.contains("running"));
    // Mid-release: the chart holds the drain, the shift its first step.
    thread::sleep(Duration::from_secs(2));
    let png = browser.screenshot();
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    fs::write(&shot, &png).unwrap();
    println!("screenshot: {}", shot.display());
    let reason = browser.wait_text("#shift-reason-web", "the rollback reason", |t| !t.is_empty());
    assert!(reason.contains("green error rate"), "{reason}");
    assert!(browser.text("#shift-state-web").contains("rolled back to 100:0"));
    let status = lab.status();
    assert_eq!(status.ratio.to_string(), "100:0");
    assert!(matches!(
        status.shift.map(|s| s.outcome),
        Some(ShiftOutcome::RolledBack { .. })
    ));

    drop(browser);
    let tally = load.stop();
    assert!(tally.ok > 0, "the load was served");
}
