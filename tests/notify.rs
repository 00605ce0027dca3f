//! `[notify]`: a recording notify hook and a local HTTPS webhook receiver (written in this
//! test with rustls and an rcgen certificate, standing in for Slack/Mattermost/Teams, which
//! the test cannot reach; `notify.ca_bundle` trusts it). A Pebble outage sends exactly one
//! `renewal_failed` and one `resolved`; a webhook that answers 500 or hangs changes no
//! outcome, and what it missed is delivered on a later run, once.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;
use time::OffsetDateTime;

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// The receiver: records each POST body it answers 200 to; `FAIL` answers 500, `HANG`
/// reads the request and never answers.
struct Receiver {
    port: u16,
    mode: Arc<AtomicU8>,
    bodies: Arc<Mutex<Vec<Value>>>,
    ca: std::path::PathBuf,
}

impl Receiver {
    fn start(dir: &std::path::Path) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join("receiver.pem");
        fs::write(&ca, cert.pem()).unwrap();
        let tls = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (mode, bodies) = (
            Arc::new(AtomicU8::new(OK)),
            Arc::new(Mutex::new(Vec::new())),
        );
        let (m, b) = (mode.clone(), bodies.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (tls, m, b) = (tls.clone(), m.clone(), b.clone());
                std::thread::spawn(move || serve(s, tls, &m, &b));
            }
        });
        Self {
            port,
            mode,
            bodies,
            ca,
        }
    }

    fn url(&self) -> String {
        format!(
            "https://127.0.0.1:{}/services/T000/B000/SECRETPART",
            self.port
        )
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

fn serve(
    s: std::net::TcpStream,
    tls: Arc<rustls::ServerConfig>,
    mode: &AtomicU8,
    bodies: &Mutex<Vec<Value>>,
) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ServerConnection::new(tls).unwrap();
    let mut t = rustls::StreamOwned::new(conn, s);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, len) = loop {
        let Ok(n) = t.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, len);
        }
    };
    while buf.len() < head_end + len {
        match t.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    match mode.load(Ordering::SeqCst) {
        HANG => std::thread::sleep(Duration::from_secs(60)),
        FAIL => {
            let _ = t.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
        _ => {
            let body: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
            bodies.lock().unwrap().push(body);
            let _ =
                t.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    }
    let _ = t.flush();
}

/// The events the recording hook got, one JSON object per line.
fn hook_events(env: &TestEnv) -> Vec<Value> {
    fs::read_to_string(env.path("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn notify_table(env: &TestEnv, r: &Receiver, extra: &str) -> String {
    let hook = env.write_script(
        "record-event",
        &format!(
            "cat >> {}\necho >> {}",
            toml_str(env.path("events.jsonl")).trim_matches('"'),
            toml_str(env.path("events.jsonl")).trim_matches('"')
        ),
    );
    format!(
        "[notify]\nhooks = [[{}]]\nwebhook = {}\nca_bundle = {}\n{extra}\n",
        toml_str(&hook),
        toml_str(r.url()),
        toml_str(&r.ca),
    )
}

fn events_named<'a>(v: &'a [Value], e: &str) -> Vec<&'a Value> {
    v.iter().filter(|x| x["event"] == e).collect()
}

#[test]
fn an_outage_sends_one_renewal_failed_then_one_resolved() {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    let r = Receiver::start(env.root());
    let body = format!(
        "{}\n{}\n{}",
        notify_table(&env, &r, ""),
        env.defaults_http01(""),
        env.cert_block("www", &["www.example.com"], ""),
    );
    let cfg = env.write_config(&body);
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        hook_events(&env).is_empty(),
        "a healthy issuance notifies nothing"
    );
    env.pebble.as_mut().unwrap().stop_ca();
    let t0 = std::time::Instant::now();
    for i in 0..4 {
        let out = env.run(&cfg, &["renew", "--force"]);
        assert_eq!(out.code, 1, "run {i} with the CA down must fail: {out}");
        let n = events_named(&hook_events(&env), "renewal_failed").len();
        assert_eq!(
            n,
            usize::from(i >= 1),
            "after failure {}: {:#?}",
            i + 1,
            hook_events(&env)
        );
    }
    env.pebble.as_mut().unwrap().restart_ca("pebble2");
    let out = env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "{out}");
    eprintln!("outage of {:?}: 4 failed runs and a recovery", t0.elapsed());
    let hooks = hook_events(&env);
    let names: Vec<&str> = hooks.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["renewal_failed", "resolved"], "{hooks:#?}");
    assert_eq!(hooks[1]["problem"], "renewal_failed");
    assert_eq!(hooks[0]["name"], "www");
    assert!(
        hooks[0]["message"]
            .as_str()
            .unwrap()
            .contains("failed 2 times"),
        "{hooks:#?}"
    );
    let bodies = r.bodies();
    let names: Vec<&str> = bodies
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["renewal_failed", "resolved"], "{bodies:#?}");
    assert!(
        bodies
            .iter()
            .all(|b| b["text"].as_str().unwrap().contains("www"))
    );
    // No secret in any body: not the key, not the webhook URL's secret part.
    let key = fs::read_to_string(env.cert_paths("www").1).unwrap();
    for b in &bodies {
        let s = b.to_string();
        assert!(!s.contains("PRIVATE KEY") && !s.contains(key.lines().nth(1).unwrap()));
        assert!(!s.contains("SECRETPART"));
    }
    // Exactly one outbox entry per channel was ever needed: nothing is left owed.
    let st: Value =
        serde_json::from_slice(&fs::read(env.state_dir().join("notify/www.json")).unwrap())
            .unwrap();
    assert_eq!(st["outbox"].as_array().unwrap().len(), 0, "{st}");
    assert!(st["active"].as_object().unwrap().is_empty(), "{st}");
}

/// No CA at all (the directory points at a closed port): a certificate 2 days before
/// expiry is due, cannot renew, and is within warn_before, so `expiring` is owed.
#[test]
fn a_webhook_that_fails_or_hangs_changes_nothing_and_gets_what_it_missed_later() {
    let env = TestEnv::new();
    let r = Receiver::start(env.root());
    let now = OffsetDateTime::now_utc();
    let (cert, key) = env.cert_paths("www");
    let (c, k) = self_signed(
        &["www.example.com"],
        now - time::Duration::days(28),
        now + time::Duration::days(2),
    );
    fs::write(&cert, &c).unwrap();
    fs::write(&key, &k).unwrap();
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let body = format!(
        "{}\n{}\n{}",
        notify_table(&env, &r, "timeout = \"2s\""),
        env.defaults_http01(""),
        env.cert_block("www", &["www.example.com"], ""),
    );
    let cfg = env.write_config(&body);
    let certs = env.path("certs");
    r.mode.store(FAIL, Ordering::SeqCst);
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 1, "the CA is down: {out}");
    // (The first pass claims the files with owner markers; from here nothing may change.)
    let before = snapshot(&certs);
    assert_eq!(fs::read(&cert).unwrap(), c.as_bytes());
    assert!(out.stderr.contains("notification not delivered"), "{out}");
    assert!(
        !out.all().contains("SECRETPART"),
        "the webhook URL is a secret: {out}"
    );
    assert_eq!(events_named(&hook_events(&env), "expiring").len(), 1);
    r.mode.store(HANG, Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    let out = env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("no answer within"), "{out}");
    eprintln!("a run with a hanging webhook took {:?}", t0.elapsed());
    assert_eq!(snapshot(&certs), before, "nothing installed is touched");
    assert!(r.bodies().is_empty());
    r.mode.store(OK, Ordering::SeqCst);
    let out = env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 1, "{out}");
    let bodies = r.bodies();
    assert_eq!(
        events_named(&bodies, "expiring").len(),
        1,
        "owed once, delivered once: {bodies:#?}"
    );
    assert_eq!(
        events_named(&bodies, "renewal_failed").len(),
        1,
        "{bodies:#?}"
    );
    // The hook worked all along: it got each event once.
    let hooks = hook_events(&env);
    assert_eq!(events_named(&hooks, "expiring").len(), 1, "{hooks:#?}");
    assert_eq!(
        events_named(&hooks, "renewal_failed").len(),
        1,
        "{hooks:#?}"
    );
    assert!(
        bodies[0]["message"]
            .as_str()
            .unwrap()
            .contains("expires in"),
        "{bodies:#?}"
    );
}

/// The same outage under `certkeeper run`: the CA is down when the daemon starts (no
/// certificate yet), the retry ladder runs at 60x speed (`CERTKEEPER_FAULT_TIME_SCALE`,
/// debug builds), and the daemon notifies from its own passes: one `renewal_failed` after
/// the second failure, one `resolved` once it recovers by itself.
#[test]
fn the_daemon_notifies_an_outage_once_and_its_end_once() {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    env.pebble.as_mut().unwrap().stop_ca();
    let r = Receiver::start(env.root());
    let body = format!(
        "{}\n{}\n{}",
        notify_table(&env, &r, ""),
        env.defaults_http01(""),
        env.cert_block("www", &["www.example.com"], ""),
    );
    let cfg = env.write_config(&body);
    let (cert, _) = env.cert_paths("www");
    let t0 = std::time::Instant::now();
    let mut d = common::daemon::Daemon::start_env(
        &env,
        "daemon",
        &cfg,
        &[("CERTKEEPER_FAULT_TIME_SCALE", "60")],
    );
    let failed = wait_for(Duration::from_secs(60), || {
        !events_named(&hook_events(&env), "renewal_failed").is_empty()
    });
    assert!(failed, "no renewal_failed from the daemon:\n{}", d.log());
    assert_eq!(
        hook_events(&env).len(),
        1,
        "only renewal_failed so far: {:#?}",
        hook_events(&env)
    );
    env.pebble.as_mut().unwrap().restart_ca("pebble2");
    let resolved = wait_for(Duration::from_secs(90), || {
        !events_named(&hook_events(&env), "resolved").is_empty()
    });
    assert!(resolved, "no resolved after the CA came back:\n{}", d.log());
    assert!(cert.exists(), "resolved, but nothing installed");
    eprintln!(
        "FIGURE daemon outage of {:?}: notifications {:?}",
        t0.elapsed(),
        hook_events(&env)
            .iter()
            .map(|e| e["event"].clone())
            .collect::<Vec<_>>()
    );
    // Give a late duplicate the chance to show up, then count.
    std::thread::sleep(Duration::from_secs(2));
    let names: Vec<String> = hook_events(&env)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["renewal_failed", "resolved"], "{}", d.log());
    let bodies: Vec<String> = r
        .bodies()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(bodies, ["renewal_failed", "resolved"]);
    assert!(d.is_running());
}
