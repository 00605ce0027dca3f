//! Falling back to a second CA, against two real Pebbles: each is an independent CA
//! (its own HTTPS certificate, its own roots), both validating HTTP-01 against the same
//! built-in responder. The primary is stopped to make it fail, and restarted (a new,
//! empty CA on the same ports) to come back.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::*;
use serde_json::Value;

/// Two CAs: the test env's Pebble (the primary) and a second one on its own ports, whose
/// validator fetches HTTP-01 from the primary's port, where the responder listens.
struct TwoCas {
    env: TestEnv,
    fallback: Pebble,
    _lease: PortLease,
}

impl TwoCas {
    fn start() -> Self {
        let env = TestEnv::with_pebble(PebbleOpts::default());
        let (mut ports, lease) = Ports::reserve();
        ports.http = env.ports.http;
        let fallback = Pebble::start(&env.root().join("fallback"), ports, &PebbleOpts::default());
        Self {
            env,
            fallback,
            _lease: lease,
        }
    }

    /// A config with one certificate `a`, these `[acme]` fallback settings and these
    /// extra keys (`, key = value`) in the fallback's entry.
    fn config(&mut self, acme_lines: &str, entry_extra: &str) -> std::path::PathBuf {
        self.env.acme_extra = format!(
            "request_timeout = \"3s\"\norder_timeout = \"30s\"\n{acme_lines}\nfallback = [{{ directory = {}, ca_bundle = {}{entry_extra} }}]\n",
            toml_str(self.fallback.directory_url()),
            toml_str(&self.fallback.ca_pem),
        );
        let body = format!(
            "{}\n{}",
            self.env.defaults_http01(""),
            self.env.cert_block("a", &["a.example"], "")
        );
        self.env.write_config(&body)
    }

    fn primary(&mut self) -> &mut Pebble {
        self.env.pebble.as_mut().unwrap()
    }
}

/// Whether the chain in `fullchain` verifies against this Pebble's current root (the
/// non-panicking form of `assert_chain_verifies`, to tell which CA issued it).
fn issued_by(pebble: &Pebble, fullchain: &Path) -> bool {
    let (root, _) = pebble.fetch_roots();
    let blocks = pem_blocks(&std::fs::read_to_string(fullchain).unwrap());
    let dir = fullchain.parent().unwrap();
    let (leaf, rest) = (dir.join("probe-leaf.pem"), dir.join("probe-rest.pem"));
    std::fs::write(&leaf, &blocks[0]).unwrap();
    std::fs::write(&rest, blocks[1..].concat()).unwrap();
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg("-untrusted")
        .arg(&rest)
        .arg(&leaf)
        .output()
        .unwrap()
        .status
        .success()
}

/// The state's record of the CA with this directory (`state/ca/*.json`).
fn ca_record(state: &Path, directory: &str) -> Value {
    std::fs::read_dir(state.join("ca"))
        .unwrap()
        .map(|e| serde_json::from_slice::<Value>(&read(&e.unwrap().path())).unwrap())
        .find(|v| v["directory"] == directory)
        .unwrap_or_else(|| panic!("no CA record for {directory}"))
}

fn field(v: &Value, key: &str) -> Option<String> {
    v[key].as_str().map(str::to_string)
}

/// `fallback_after_failures = 2`: two failed runs against the stopped primary move the
/// certificate, the third is issued by the fallback (its chain verifies against the
/// fallback's root, not the primary's), and status shows the issuer. Then, with the
/// primary back, the next forced renewal goes to the primary again.
#[test]
fn after_failures_the_fallback_issues_and_the_next_renewal_returns_to_the_primary() {
    let mut t = TwoCas::start();
    let cfg = t.config("fallback_after_failures = 2", "");
    // A recording notify hook: the move is notified once, and resolved by the success.
    let events = t.env.path("events.jsonl");
    let hook = t.env.write_script(
        "record",
        &format!(
            "cat >> '{}'; echo >> '{}'",
            events.display(),
            events.display()
        ),
    );
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        format!("{text}\n[notify]\nhooks = [[{}]]\n", toml_str(&hook)),
    )
    .unwrap();
    let notified = |what: &str| -> Vec<Value> {
        fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["event"] == what || e["problem"] == what)
            .collect()
    };
    let (cert, _key) = t.env.cert_paths("a");
    let primary_dir = t.primary().directory_url();
    let fallback_dir = t.fallback.directory_url();

    let out = t.env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "first issuance failed:\n{out}");
    t.primary().assert_chain_verifies(&cert);
    assert_eq!(field(&t.env.status_of(&cfg, "a"), "issuer"), None);
    // Pebble 2.4 offers no ARI, so no order here carries `replaces` whatever the rule:
    // that `replaces` goes only to the issuing CA is unit-tested in src/pass/budget.rs
    // (`replaces_goes_only_to_the_issuing_ca`). This checks the premise, so the test
    // says so if a later Pebble changes it.
    let out = t.env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "no-op run failed:\n{out}");
    let ca = ca_record(&t.env.state_dir(), &primary_dir);
    assert_eq!(ca["ari_supported"], false, "Pebble now offers ARI: {ca}");

    t.primary().stop_ca();
    let t0 = Instant::now();
    let out = t.env.run(&cfg, &["renew", "--force"]);
    assert_ne!(
        out.code, 0,
        "renewal with the primary down succeeded:\n{out}"
    );
    let st = t.env.status_of(&cfg, "a");
    assert_eq!(field(&st, "ca"), None, "moved after one failure: {st}");

    let out = t.env.run(&cfg, &["renew", "--force"]);
    assert_ne!(
        out.code, 0,
        "renewal with the primary down succeeded:\n{out}"
    );
    assert!(
        out.all().contains("moving the certificate"),
        "no WARN:\n{out}"
    );
    let st = t.env.status_of(&cfg, "a");
    assert_eq!(
        field(&st, "ca").as_deref(),
        Some(fallback_dir.as_str()),
        "{st}"
    );
    assert_eq!(
        field(&st, "fallback_from").as_deref(),
        Some(primary_dir.as_str())
    );

    let out = t.env.run(&cfg, &["renew", "--force"]);
    let took = t0.elapsed();
    assert_eq!(out.code, 0, "renewal at the fallback failed:\n{out}");
    t.fallback.assert_chain_verifies(&cert);
    let st = t.env.status_of(&cfg, "a");
    assert_eq!(
        field(&st, "issuer").as_deref(),
        Some(fallback_dir.as_str()),
        "{st}"
    );
    assert_eq!(field(&st, "ca"), None, "{st}");
    assert!(t.fallback.log().contains("Issued certificate serial"));
    let moved = notified("ca_fallback");
    assert_eq!(
        moved.len(),
        2,
        "one ca_fallback, then its resolved: {moved:#?}"
    );
    assert_eq!(
        (moved[0]["event"].as_str(), moved[1]["event"].as_str()),
        (Some("ca_fallback"), Some("resolved"))
    );
    assert!(
        moved[0]["message"]
            .as_str()
            .unwrap()
            .contains(&fallback_dir),
        "{moved:#?}"
    );
    eprintln!(
        "FIGURE first failure to issuance at the fallback (fallback_after_failures = 2, 3 runs): {:.1}s",
        took.as_secs_f64()
    );

    t.primary().restart_ca("pebble-back");
    let out = t.env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "renewal with the primary back failed:\n{out}");
    t.primary().assert_chain_verifies(&cert);
    assert!(
        !issued_by(&t.fallback, &cert),
        "still issued by the fallback"
    );
    let st = t.env.status_of(&cfg, "a");
    assert_eq!(field(&st, "issuer"), None, "{st}");
}

/// `fallback_before = "2h"` with one-hour certificates: the remaining lifetime is under
/// it, so the first failure already moves the next attempt to the fallback, although
/// `fallback_after_failures` is far off. The fallback's profile, which it does not
/// offer, is left out with a WARN.
#[test]
fn under_fallback_before_the_first_failure_moves_the_certificate() {
    let mut t = TwoCas::start();
    let cfg = t.config(
        "fallback_after_failures = 10\nfallback_before = \"2h\"",
        ", profile = \"shortlived\"",
    );
    let (cert, _key) = t.env.cert_paths("a");
    let fallback_dir = t.fallback.directory_url();

    let out = t.env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "first issuance failed:\n{out}");
    t.primary().stop_ca();
    let t0 = Instant::now();
    let out = t.env.run(&cfg, &["renew", "--force"]);
    assert_ne!(
        out.code, 0,
        "renewal with the primary down succeeded:\n{out}"
    );
    let st = t.env.status_of(&cfg, "a");
    assert_eq!(
        field(&st, "ca").as_deref(),
        Some(fallback_dir.as_str()),
        "{st}"
    );

    // The entry's profile is not offered by the fallback (Pebble 2.4 lists none): a WARN
    // and an order without it, not a refusal.
    let out = t.env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "renewal at the fallback failed:\n{out}");
    assert!(
        out.all().contains("does not offer profile \"shortlived\""),
        "no WARN about the profile:\n{out}"
    );
    eprintln!(
        "FIGURE first failure to issuance at the fallback (fallback_before, 2 runs): {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    t.fallback.assert_chain_verifies(&cert);
    let st = t.env.status_of(&cfg, "a");
    assert_eq!(
        field(&st, "issuer").as_deref(),
        Some(fallback_dir.as_str()),
        "{st}"
    );
}

/// `check` looks at each fallback's `ca_bundle` too (a fallback is used only when the
/// primary fails: the worst moment to find its bundle missing) and names the fallbacks
/// in its OK line.
#[test]
fn check_reads_fallback_bundles_and_names_the_fallbacks() {
    let mut env = TestEnv::new();
    let missing = env.path("no-such-bundle.pem");
    env.acme_extra = format!(
        "fallback = [{{ directory = \"https://127.0.0.1:1/fallback\", ca_bundle = {} }}]\n",
        toml_str(&missing)
    );
    let body = format!(
        "{}\n{}",
        env.defaults_http01(""),
        env.cert_block("a", &["a.example"], "")
    );
    let cfg = env.write_config(&body);
    let out = env.run(&cfg, &["check"]);
    assert_ne!(
        out.code, 0,
        "a missing fallback bundle passed check:\n{out}"
    );
    assert!(
        out.all().contains("acme.fallback[0].ca_bundle"),
        "the problem does not name the key:\n{out}"
    );

    std::fs::copy(env.ca_bundle(), &missing).unwrap();
    let out = env.run(&cfg, &["check"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("fallback https://127.0.0.1:1/fallback"),
        "{out}"
    );
}
