//! The remote API end to end (root): a daemon with `[api]` over TLS in the
//! namespace lab, driven with curl as a CI job would drive it.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use bg_lb::protocol::Reply;
use bg_lb_tests::lab::{NameLab, NameLabConfig, SERVICE};

const BG_LB: &str = env!("CARGO_BIN_EXE_bg-lb-under-test");
const API: &str = "127.0.0.1:9751";
const ADMIN_TOKEN: &str = "admin-0123456789abcdef0123456789";
const VIEWER_TOKEN: &str = "viewer-0123456789abcdef012345678";

/// Token files and a self-signed certificate, removed on drop.
struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("bglb-api-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (name, token) in [("admin.token", ADMIN_TOKEN), ("viewer.token", VIEWER_TOKEN)] {
            let path = dir.join(name);
            fs::write(&path, format!("{token}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ])
            .args([
                "-days",
                "1",
                "-subj",
                "/CN=bg-lb-test",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(dir.join("api.key"))
            .arg("-out")
            .arg(dir.join("api.crt"))
            .output()
            .expect("openssl (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Secrets { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn api_table(&self) -> String {
        format!(
            "[api]\nlisten = \"{API}\"\ntoken_file = \"{}\"\nread_only_token_file = \"{}\"\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            self.path("admin.token").display(),
            self.path("viewer.token").display(),
            self.path("api.crt").display(),
            self.path("api.key").display()
        )
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The lab with 4 backends, the config listing b0, b1 (blue) and b2
/// (green): b3 runs for a test to add.
fn lab(secrets: &Secrets) -> NameLab {
    let tables = secrets.api_table();
    let config = NameLabConfig {
        tables: &tables,
        service: "ratio = \"50:50\"\nlookup_table_size = 251\n",
        listed: Some(3),
        ..NameLabConfig::default()
    };
    NameLab::start(BG_LB, 4, None, &config)
}

/// `curl` in the LB's namespace: the HTTP status and the reply.
fn call(lab: &NameLab, ca: &Path, token: Option<&str>, cmd: &str, body: &str) -> (u16, Reply) {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(["-X", "POST", "--data", body])
        .arg(format!("https://{API}/v1/{cmd}"));
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = lab.topo.lb.ns.run(move || curl.output().expect("curl"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (reply, status) = text.trim_end().rsplit_once('\n').expect("body and status");
    let reply = serde_json::from_str(reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
    (status.parse().unwrap(), reply)
}

#[test]
fn the_admin_token_changes_the_ratio_while_missing_wrong_and_read_only_tokens_change_nothing() {
    let secrets = Secrets::new("tokens");
    let lab = lab(&secrets);
    let ca = secrets.path("api.crt");
    let to_green = r#"{"service":"web","ratio":"0:100"}"#;
    for token in [None, Some("admin-0123456789abcdef012345678X"), Some(VIEWER_TOKEN)] {
        let (status, reply) = call(&lab, &ca, token, "ratio", to_green);
        let expected = if token == Some(VIEWER_TOKEN) { 403 } else { 401 };
        assert_eq!(status, expected, "{token:?}: {reply:?}");
        assert!(!reply.ok);
    }
    assert_eq!(lab.daemon.status(SERVICE).ratio.to_string(), "50:50", "no effect");
    let log = lab.daemon.log();
    assert!(
        log.contains("remote API request refused"),
        "the refusal is logged:\n{log}"
    );

    let (status, reply) = call(&lab, &ca, Some(VIEWER_TOKEN), "status", r#"{"service":"web"}"#);
    assert_eq!(status, 200, "{reply:?}");
    assert_eq!(reply.services.unwrap()[0].ratio.to_string(), "50:50");

    let (status, reply) = call(&lab, &ca, Some(ADMIN_TOKEN), "ratio", to_green);
    assert_eq!(status, 200, "{reply:?}");
    assert_eq!(lab.daemon.status(SERVICE).ratio.to_string(), "0:100");
    assert!(lab.names(20).iter().all(|n| n == "b2"), "new connections go green");

    // The daemon's refusal comes back as the admin socket's error.
    let (status, reply) = call(
        &lab,
        &ca,
        Some(ADMIN_TOKEN),
        "promote",
        r#"{"service":"nope","pool":"blue"}"#,
    );
    assert_eq!(status, 409);
    assert!(reply.error.unwrap().contains("no service \"nope\""));
}

#[test]
fn a_backend_added_through_the_api_serves_survives_a_restart_and_drains_when_removed() {
    let secrets = Secrets::new("backends");
    let mut lab = lab(&secrets);
    let ca = secrets.path("api.crt");
    let b3 = lab.backend_addr(3);

    let bad = format!(r#"{{"service":"web","address":"{b3}","pool":"green","weight":5000}}"#);
    let (status, reply) = call(&lab, &ca, Some(ADMIN_TOKEN), "backend-add", &bad);
    assert_eq!(status, 409, "{reply:?}");
    assert!(reply.error.unwrap().contains("weight 5000"), "checked like the config");

    let add = format!(r#"{{"service":"web","address":"{b3}","pool":"green"}}"#);
    let (status, reply) = call(&lab, &ca, Some(ADMIN_TOKEN), "backend-add", &add);
    assert_eq!(status, 200, "{reply:?}");
    let added = |lab: &NameLab| {
        let status = lab.daemon.status(SERVICE);
        status
            .backends
            .iter()
            .find(|b| b.address == b3.into())
            .map(|b| b.added_at_runtime)
    };
    assert_eq!(added(&lab), Some(true));
    assert!(lab.daemon.ctl_ok(&["status"]).contains("(added at runtime)"));
    let served = |lab: &NameLab| lab.names(60).iter().filter(|n| *n == "b3").count();
    assert!(served(&lab) > 0, "the added backend takes new connections");

    lab.daemon.terminate();
    lab.daemon.spawn();
    assert_eq!(added(&lab), Some(true), "persisted across the restart");
    assert!(served(&lab) > 0, "and serving after it");

    // Removed over the admin socket, the other way in.
    let address = b3.to_string();
    lab.daemon.ctl_ok(&["backend-remove", SERVICE, &address]);
    assert_eq!(added(&lab), None);
    assert_eq!(served(&lab), 0, "no new connection for a removed backend");
    lab.daemon.terminate();
    lab.daemon.spawn();
    assert_eq!(added(&lab), None, "the removal persisted too");

    let out = lab
        .daemon
        .ctl(&["backend-remove", SERVICE, &lab.backend_addr(0).to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is in the config file"));
}
