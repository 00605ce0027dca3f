//! The shipped alert rules (examples/prometheus/): `promtool check rules` and `promtool test
//! rules` (Debian's prometheus package) pass, and every certkeeper metric the rules use is
//! one that a real `certkeeper renew --metrics-file` writes, so renaming a metric cannot
//! silently break an operator's alerts.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::parse_prometheus;
use common::*;
use time::OffsetDateTime;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus")
}

fn promtool(args: &[&str]) -> Output {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(rules_dir());
    run_with_timeout(cmd, Duration::from_secs(60))
}

#[test]
fn the_alert_rules_are_valid_and_their_unit_tests_pass() {
    let out = promtool(&["check", "rules", "certkeeper-rules.yml"]);
    assert_eq!(
        out.code, 0,
        "promtool check rules (is Debian's prometheus installed?):\n{out}"
    );
    let out = promtool(&["test", "rules", "certkeeper-rules.test.yml"]);
    assert_eq!(out.code, 0, "promtool test rules:\n{out}");
    assert!(out.all().contains("SUCCESS"), "{out}");
}

/// Every `certkeeper_*` name in the rules, by scanning the rules text.
fn metric_names_in_rules() -> Vec<String> {
    let text = fs::read_to_string(rules_dir().join("certkeeper-rules.yml")).unwrap();
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("certkeeper_"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_metric_the_rules_use_is_exported() {
    let env = TestEnv::new();
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
    let (port, _lease) = reserve_ports(1, None);
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let _server = Subprocess::spawn("s_server", cmd, env.root());
    assert!(wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    fs::write(env.path("watched.pem"), fs::read(&cert).unwrap()).unwrap();
    let body = format!(
        "{}\n{}\n[[watch]]\nname = \"pki\"\npaths = [{}]\n",
        env.defaults_http01(""),
        env.cert_block(
            "www",
            &["www.example.com"],
            &format!("verify = [\"127.0.0.1:{port}\"]")
        ),
        toml_str(env.path("watched.pem")),
    );
    let cfg = env.write_config(&body);
    let prom = env.path("certkeeper.prom");
    let out = env.run(&cfg, &["renew", "--metrics-file", prom.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
    let text = fs::read_to_string(&prom).unwrap();
    let exposition = parse_prometheus(&text).unwrap();
    let names = metric_names_in_rules();
    assert!(names.len() >= 6, "{names:?}");
    for n in &names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} "))),
            "the rules use {n}, which certkeeper does not export:\n{text}"
        );
    }
    // The endpoint check really ran: the live endpoint serves the installed certificate.
    let ep = format!("127.0.0.1:{port}");
    assert_eq!(
        exposition.get(
            "certkeeper_endpoint_serves_current",
            &[("cert", "www"), ("endpoint", ep.as_str())]
        ),
        Some(1.0),
        "{text}"
    );
}
