//! Correctness at scale against a real Pebble (issue 8): a pass that renews many
//! certificates at once, within `acme.max_concurrent_orders` or without a limit, orders
//! each certificate exactly once and installs every one correctly; and a pass with
//! nothing due over many certificates costs nothing when the CA is down: one warning,
//! no retries, no state rewritten.
//!
//! Orders are counted in Pebble's own log. Pebble 2.4 does not log every request, but it
//! logs one line per new order (`Added order "<id>" to the db`), one per finalize request
//! it accepts (`Order <id> is fully authorized. Processing finalization`; a finalize it
//! rejects, e.g. for a bad nonce, is refused before that line and finalizes nothing) and
//! one per issued certificate (`Issued certificate serial <hex> for order <id>`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

/// A fleet of certificates in one config.
struct Fleet {
    /// (name, domains), in config order.
    certs: Vec<(String, Vec<String>)>,
    cfg: PathBuf,
}

/// `n` certificates with distinct names, one, two or three domains each (in turn), all
/// through the built-in HTTP-01 responder; `acme_extra` goes into `[acme]`.
fn fleet(env: &mut TestEnv, n: usize, acme_extra: &str) -> Fleet {
    env.acme_extra = acme_extra.to_owned();
    let mut body = env.defaults_http01("");
    let mut certs = Vec::new();
    for i in 0..n {
        let name = format!("site{i:02}");
        let base = format!("{name}.example.com");
        let domains: Vec<String> = match i % 3 {
            0 => vec![base],
            1 => vec![base.clone(), format!("www.{base}")],
            _ => vec![base.clone(), format!("www.{base}"), format!("api.{base}")],
        };
        let refs: Vec<&str> = domains.iter().map(String::as_str).collect();
        body.push_str(&env.cert_block(&name, &refs, ""));
        certs.push((name, domains));
    }
    let cfg = env.write_config(&body);
    Fleet { certs, cfg }
}

/// What Pebble's log says about orders: the ids of new orders, the ids of accepted
/// finalizations, and the issued serials (normalized hex) with their order ids.
#[derive(Debug, Default)]
struct PebbleOrders {
    added: Vec<String>,
    finalized: Vec<String>,
    issued: Vec<(String, String)>,
    /// The most orders open at once: added, and not yet issued, in log order.
    max_open: usize,
}

fn pebble_orders(env: &TestEnv) -> PebbleOrders {
    let mut out = PebbleOrders::default();
    let mut open = HashSet::new();
    for line in env.pebble().log().lines() {
        if let Some(rest) = line.split("Added order \"").nth(1) {
            let id = rest.split('"').next().unwrap().to_owned();
            open.insert(id.clone());
            out.max_open = out.max_open.max(open.len());
            out.added.push(id);
        } else if let Some(rest) = line.split("Order ").nth(1)
            && let Some(id) = rest.strip_suffix(" is fully authorized. Processing finalization")
        {
            out.finalized.push(id.trim().to_owned());
        } else if let Some(rest) = line.split("Issued certificate serial ").nth(1) {
            let (serial, order) = rest
                .split_once(" for order ")
                .unwrap_or_else(|| panic!("unexpected Pebble line: {line}"));
            open.remove(order.trim());
            out.issued
                .push((normalize_hex(serial), order.trim().to_owned()));
        }
    }
    out
}

/// Every certificate of the fleet is installed and correct: the leaf covers exactly its
/// domains, the key is the leaf's, and the chain verifies against Pebble's root.
/// Returns the installed serials by name.
fn assert_all_correct(env: &TestEnv, fleet: &Fleet, out: &Output) -> BTreeMap<String, String> {
    let mut serials = BTreeMap::new();
    for (name, domains) in &fleet.certs {
        let (cert, key) = env.cert_paths(name);
        assert!(
            cert.exists() && key.exists(),
            "{name} not installed:\n{out}"
        );
        let mut want = domains.clone();
        want.sort();
        assert_eq!(cert_sans(&cert), want, "{name}: wrong names");
        assert_key_matches(&cert, &key);
        env.pebble().assert_chain_verifies(&cert);
        serials.insert(name.clone(), cert_serial(&cert));
    }
    serials
}

/// Pebble saw exactly one new order, one accepted finalize and one issuance per
/// certificate, and the serials it issued are exactly the installed ones.
fn assert_one_order_each(env: &TestEnv, serials: &BTreeMap<String, String>) -> PebbleOrders {
    let n = serials.len();
    let orders = pebble_orders(env);
    assert_eq!(orders.added.len(), n, "new orders: {orders:?}");
    assert_eq!(orders.finalized.len(), n, "finalize requests: {orders:?}");
    let distinct: BTreeSet<_> = orders.finalized.iter().collect();
    assert_eq!(
        distinct.len(),
        n,
        "an order was finalized twice: {orders:?}"
    );
    let issued: BTreeSet<String> = orders.issued.iter().map(|(s, _)| s.clone()).collect();
    let installed: BTreeSet<String> = serials.values().cloned().collect();
    assert_eq!(orders.issued.len(), n, "issuances: {orders:?}");
    assert_eq!(
        issued, installed,
        "issued serials are not the installed ones"
    );
    orders
}

/// A second `renew` right after: exit 0, no new order or finalize at Pebble, every serial
/// unchanged.
fn assert_second_run_issues_nothing(
    env: &TestEnv,
    fleet: &Fleet,
    serials: &BTreeMap<String, String>,
) {
    let before = pebble_orders(env);
    let out = env.run(&fleet.cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let after = pebble_orders(env);
    assert_eq!(
        after.added.len(),
        before.added.len(),
        "second run ordered:\n{out}"
    );
    assert_eq!(
        after.finalized.len(),
        before.finalized.len(),
        "second run finalized:\n{out}"
    );
    for (name, serial) in serials {
        assert_eq!(
            &cert_serial(&env.cert_paths(name).0),
            serial,
            "{name} re-issued"
        );
    }
}

/// Twelve due certificates (one to three names each) with `max_concurrent_orders = 4`,
/// in one `renew`: exit 0; every certificate is installed with a leaf covering exactly
/// its names, its own key and a chain to Pebble's root; Pebble's log shows exactly one
/// new order, one accepted finalize and one issuance per certificate, the issued serials
/// are the installed ones, and never more than 4 orders were open at once (an order
/// opens with Pebble's "Added order" line and its slot is released only after the
/// certificate was issued). A second `renew` orders and finalizes nothing.
#[test]
fn concurrent_pass_renews_every_certificate_once() {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    let fleet = fleet(&mut env, 12, "max_concurrent_orders = 4");
    let out = env.run(&fleet.cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let serials = assert_all_correct(&env, &fleet, &out);
    let orders = assert_one_order_each(&env, &serials);
    eprintln!(
        "FIGURE max_concurrent_orders = 4: at most {} orders open at once",
        orders.max_open
    );
    assert!(
        orders.max_open <= 4,
        "{} orders were open at once with max_concurrent_orders = 4: {orders:?}",
        orders.max_open
    );
    assert_second_run_issues_nothing(&env, &fleet, &serials);
}

/// `max_concurrent_orders = 0` means no limit (not zero slots, which would hang): twelve
/// due certificates in one `renew` all end up installed and correct (names, key, chain),
/// exit 0, with exactly one new order, one accepted finalize and one issuance each in
/// Pebble's log; a second `renew` orders nothing.
#[test]
fn unlimited_concurrency_renews_everything() {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    let fleet = fleet(&mut env, 12, "max_concurrent_orders = 0");
    let out = env.run(&fleet.cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let serials = assert_all_correct(&env, &fleet, &out);
    let orders = assert_one_order_each(&env, &serials);
    eprintln!(
        "FIGURE max_concurrent_orders = 0: at most {} orders open at once",
        orders.max_open
    );
    assert_second_run_issues_nothing(&env, &fleet, &serials);
}

/// Size, mtime and inode of every file under `root` except the lock (which every run
/// writes its holder line into): a rewrite, even with the same bytes, changes the mtime,
/// and an atomic replace changes the inode.
fn file_stamps(root: &Path) -> BTreeMap<PathBuf, (u64, i64, i64, u64)> {
    let mut out = BTreeMap::new();
    for path in snapshot(root).into_keys() {
        if path == root.join("lock") {
            continue;
        }
        let m = fs::metadata(&path).unwrap();
        out.insert(path, (m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
    }
    out
}

/// Fifty valid certificates that are not due, and a CA that is down (`acme.directory` at
/// a reserved port nobody listens on: a CA whose ARI support is not yet known, so a pass
/// would want to ask it): `renew` exits 0, every certificate stays "not due" with the
/// same serial, stderr has exactly one line about the CA being unreachable (the ARI
/// warning, not one per certificate), no other line names the dead CA, and no
/// "retrying in" line (no retry against the down CA within the run); no file in the
/// state directory is rewritten (the per-certificate records in `certs/` included).
/// A second pass right after, against a CA that accepts connections and drops them,
/// costs that CA exactly one connection.
///
/// The certificates are issued first in one pass against Pebble, then a no-op pass
/// against Pebble settles each record's last outcome from "renewed" to "not-due" (a real
/// change, so saved once); the pass against the down CA must change nothing.
#[test]
fn ca_down_costs_a_noop_pass_nothing() {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    let fleet = fleet(&mut env, 50, "");
    let out = env.run(&fleet.cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let mut serials = BTreeMap::new();
    for (name, _) in &fleet.certs {
        let (cert, key) = env.cert_paths(name);
        assert!(cert.exists(), "{name} not issued:\n{out}");
        assert_key_matches(&cert, &key);
        serials.insert(name.clone(), cert_serial(&cert));
    }
    assert_eq!(pebble_orders(&env).issued.len(), 50);
    let out = env.run(&fleet.cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        pebble_orders(&env).added.len(),
        50,
        "the no-op pass ordered"
    );

    // The same state and certificates, with the CA down.
    let (dead_port, _lease) = reserve_ports(1, None);
    let dead_addr = format!("127.0.0.1:{dead_port}");
    let pebble_dir = toml_str(&env.directory);
    let dead_dir = toml_str(format!("https://{dead_addr}/dir"));
    let text = fs::read_to_string(&fleet.cfg).unwrap();
    assert!(text.contains(&pebble_dir), "{text}");
    let cfg = env.write_raw_config("down.toml", &text.replace(&pebble_dir, &dead_dir));
    let state = env.state_dir();
    let before = file_stamps(&state);
    assert!(
        before
            .keys()
            .filter(|p| p.starts_with(state.join("certs")))
            .count()
            >= 50,
        "records not where expected: {before:?}"
    );

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let unreachable: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("cannot reach the CA"))
        .collect();
    assert_eq!(
        unreachable.len(),
        1,
        "one warning per pass, not per certificate:\n{out}"
    );
    assert!(unreachable[0].contains("WARN"), "{out}");
    let naming: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains(&dead_addr) || l.contains("unreachable"))
        .collect();
    assert!(naming.len() <= 1, "more lines about the down CA:\n{out}");
    assert!(
        !out.stderr.contains("retrying in"),
        "retried the down CA:\n{out}"
    );
    let after = file_stamps(&state);
    assert_eq!(before, after, "the no-op pass rewrote state:\n{out}");
    for st in env.status_json(&cfg) {
        let name = st["name"].as_str().unwrap();
        assert_eq!(st["last_outcome"], "not-due", "{st}");
        assert_eq!(st["state"], "valid", "{st}");
        assert_eq!(st["failures"], 0, "{st}");
        assert_eq!(
            st["serial"].as_str().map(normalize_hex).as_ref(),
            serials.get(name),
            "{st}"
        );
    }

    // A CA that takes connections and drops them: one connection for the whole pass.
    let dead = DeadCa::start(dead_port);
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.contains("cannot reach the CA"))
            .count(),
        1,
        "{out}"
    );
    assert!(!out.stderr.contains("retrying in"), "{out}");
    assert_eq!(dead.count(), 1, "connections to the down CA:\n{out}");
    assert_eq!(file_stamps(&state), before, "state rewritten:\n{out}");
}
