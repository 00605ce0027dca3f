//! `[[watch]]`: certificates certkeeper does not issue. They show in `status` (state
//! `watched`) and in the metrics, bad files in a glob are reported one by one, a FIFO never
//! hangs a look, and nothing is ever ordered or written for them.

mod common;

use std::fs;
use std::time::Duration;

use common::daemon::{http_get, parse_prometheus};
use common::*;
use time::OffsetDateTime;

/// A managed certificate that is valid and not due (so `renew` has no reason to reach the
/// CA, which does not exist here), plus a watch over a directory of files.
fn setup(env: &TestEnv) -> (std::path::PathBuf, std::path::PathBuf) {
    let now = OffsetDateTime::now_utc();
    let (cert, key) = env.cert_paths("www");
    let (c, k) = self_signed(
        &["www.example.com"],
        now - time::Duration::days(1),
        now + time::Duration::days(80),
    );
    fs::write(&cert, c).unwrap();
    fs::write(&key, k).unwrap();
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pki = env.path("pki");
    fs::create_dir_all(&pki).unwrap();
    let (long, _) = self_signed(
        &["ldap.internal"],
        now - time::Duration::days(10),
        now + time::Duration::days(355),
    );
    let (soon, _) = self_signed(
        &["vpn.internal"],
        now - time::Duration::days(360),
        now + time::Duration::days(2),
    );
    fs::write(pki.join("ldap.pem"), long).unwrap();
    fs::write(pki.join("vpn.pem"), soon).unwrap();
    fs::write(
        pki.join("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    nix::unistd::mkfifo(&pki.join("fifo.pem"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let body = format!(
        "{}\n{}\n[[watch]]\nname = \"internal-pki\"\npaths = [{}, {}]\nwarn_before = \"14d\"\n",
        env.defaults_http01(""),
        env.cert_block("www", &["www.example.com"], ""),
        toml_str(pki.join("*.pem")),
        toml_str(env.path("vendor/none-*.crt")),
    );
    (env.write_config(&body), pki)
}

#[test]
fn watched_files_show_in_status_one_row_each_and_bad_ones_do_not_stop_the_others() {
    let env = TestEnv::new();
    let (cfg, pki) = setup(&env);
    let rows = env.status_json(&cfg);
    let watched: Vec<_> = rows.iter().filter(|r| r["state"] == "watched").collect();
    let by_file = |f: &str| {
        watched
            .iter()
            .find(|r| r["source"].as_str().unwrap().ends_with(f))
            .unwrap_or_else(|| panic!("no watched row for {f}: {rows:#?}"))
    };
    assert_eq!(watched.len(), 5, "{rows:#?}");
    assert!(watched.iter().all(|r| r["name"] == "internal-pki"));
    let ldap = by_file("ldap.pem");
    assert_eq!(ldap["expiring"], false);
    assert_eq!(ldap["domains"][0], "ldap.internal");
    assert!(ldap["remaining_seconds"].as_i64().unwrap() > 350 * 86400);
    assert!(ldap["error"].is_null());
    let vpn = by_file("vpn.pem");
    assert_eq!(
        vpn["expiring"], true,
        "2 days left is within warn_before = 14d"
    );
    let broken = by_file("broken.pem");
    assert!(
        broken["error"].as_str().unwrap().contains("broken.pem"),
        "{broken}"
    );
    let fifo = by_file("fifo.pem");
    assert!(
        fifo["error"].as_str().unwrap().contains("fifo.pem"),
        "{fifo}"
    );
    let none = by_file("none-*.crt");
    assert!(
        none["error"].as_str().unwrap().contains("no file matches"),
        "{none}"
    );
    // The managed certificate's row is still there and unchanged in shape.
    let www = rows.iter().find(|r| r["name"] == "www").unwrap();
    assert_eq!(www["state"], "valid");

    // The human table lists them too.
    let out = env.run(&cfg, &["status"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("WATCH") && out.stdout.contains("vpn.pem"),
        "{out}"
    );
    assert!(out.stdout.contains("expiring: within warn_before"), "{out}");

    // A renew pass (nothing due) writes the watched series and nothing into the watched
    // directory.
    let before = snapshot(&pki);
    let prom = env.path("certkeeper.prom");
    let out = env.run(&cfg, &["renew", "--metrics-file", prom.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        snapshot(&pki),
        before,
        "nothing is written for a watched certificate"
    );
    assert_eq!(fs::read_dir(&pki).unwrap().count(), 4);
    let text = fs::read_to_string(&prom).unwrap();
    let m = parse_prometheus(&text).unwrap();
    let src = pki.join("vpn.pem").display().to_string();
    let l = [("name", "internal-pki"), ("source", src.as_str())];
    assert_eq!(
        m.get("certkeeper_watched_expiring", &l),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m.get("certkeeper_watched_readable", &l),
        Some(1.0),
        "{text}"
    );
    assert!(
        m.get("certkeeper_watched_not_after_timestamp_seconds", &l)
            .unwrap()
            > 0.0
    );
    let bsrc = pki.join("broken.pem").display().to_string();
    let bl = [("name", "internal-pki"), ("source", bsrc.as_str())];
    assert_eq!(
        m.get("certkeeper_watched_readable", &bl),
        Some(0.0),
        "{text}"
    );
}

/// The daemon's `/metrics` reads the watched files at each scrape, so a file added (or
/// renewed by the other PKI) is seen without a restart or reload.
#[test]
fn the_daemon_sees_a_new_watched_file_without_a_reload() {
    let env = TestEnv::new();
    let (cfg, pki) = setup(&env);
    let text = fs::read_to_string(&cfg).unwrap();
    let port = reserve_ports(1, None);
    let cfg = env.write_raw_config(
        "certkeeper.toml",
        &text.replacen(
            "[acme]",
            &format!("metrics_listen = \"127.0.0.1:{}\"\n\n[acme]", port.0),
            1,
        ),
    );
    let mut d = common::daemon::Daemon::start(&env, "run", &cfg);
    let url = format!("http://127.0.0.1:{}/metrics", port.0);
    assert!(
        wait_for(Duration::from_secs(20), || http_get(&url).0 == 200),
        "{}",
        d.log()
    );
    let now = OffsetDateTime::now_utc();
    let (c, _) = self_signed(&["new.internal"], now, now + time::Duration::days(30));
    fs::write(pki.join("new.pem"), c).unwrap();
    let src = pki.join("new.pem").display().to_string();
    let seen = wait_for(Duration::from_secs(20), || {
        let (_, _, body) = http_get(&url);
        parse_prometheus(&body).ok().and_then(|m| {
            m.get(
                "certkeeper_watched_readable",
                &[("name", "internal-pki"), ("source", src.as_str())],
            )
        }) == Some(1.0)
    });
    assert!(seen, "{}", d.log());
    assert!(d.is_running());
}

/// A watched TLS endpoint: `openssl s_server` serves a certificate with 3 days left, and
/// a listener written in this test accepts and never speaks (a host that hangs). `renew`
/// probes both after its pass; the hang is bounded and does not hide the live one.
#[test]
fn watched_endpoints_are_probed_and_a_hanging_one_is_bounded() {
    let env = TestEnv::new();
    let (cfg, _pki) = setup(&env);
    let now = OffsetDateTime::now_utc();
    let (c, k) = self_signed(
        &["ldap.internal"],
        now - time::Duration::days(87),
        now + time::Duration::days(3),
    );
    let (cp, kp) = (env.path("served.pem"), env.path("served.key"));
    fs::write(&cp, c).unwrap();
    fs::write(&kp, k).unwrap();
    let (port, _lease) = reserve_ports(2, None);
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cp)
        .arg("-key")
        .arg(&kp);
    let _server = Subprocess::spawn("s_server", cmd, env.root());
    let hang = std::net::TcpListener::bind(("127.0.0.1", port + 1)).unwrap();
    assert!(wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let text = fs::read_to_string(&cfg).unwrap();
    let cfg = env.write_raw_config(
        "certkeeper.toml",
        &format!(
            "{text}endpoints = [\"127.0.0.1:{port}\", \"127.0.0.1:{}\"]\n",
            port + 1
        ),
    );
    // Before any probe, the endpoint has a row that says so.
    let rows = env.status_json(&cfg);
    let live = format!("127.0.0.1:{port}");
    let row = |rows: &[serde_json::Value], s: &str| {
        rows.iter()
            .find(|r| r["source"] == s)
            .cloned()
            .unwrap_or_else(|| panic!("no row {s}: {rows:#?}"))
    };
    assert!(
        row(&rows, &live)["error"]
            .as_str()
            .unwrap()
            .contains("not probed yet")
    );
    let t0 = std::time::Instant::now();
    let out = env.run(&cfg, &["renew"]);
    let took = t0.elapsed();
    assert_eq!(out.code, 0, "a watch never fails a pass: {out}");
    eprintln!("renew with a hanging watched endpoint took {took:?}");
    let rows = env.status_json(&cfg);
    let r = row(&rows, &live);
    assert_eq!(r["state"], "watched");
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(
        r["expiring"], true,
        "3 days left of 90 is within 1/6... of 14d: {r}"
    );
    assert_eq!(
        normalize_hex(r["serial"].as_str().unwrap()),
        cert_serial(&cp)
    );
    let h = row(&rows, &format!("127.0.0.1:{}", port + 1));
    assert!(
        h["error"].as_str().unwrap().contains("no answer within"),
        "{h}"
    );
    drop(hang);
}
