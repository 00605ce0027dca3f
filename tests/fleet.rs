//! Fleet mode on etcd (issue 10): several replicas share one `[cluster]` (a real 3-member
//! etcd 3.4, `tests/common/etcd.rs`) and one real Pebble; each replica is a `certkeeper
//! run` daemon with its own config, `state_dir`, certificate paths and reload hook.
//!
//! The replicas are `r0`, `r1`, `r2`: the same prefix, the same 32-byte seal key file,
//! `lease_ttl = "3s"`. With HTTP-01, `r0` listens on Pebble's `httpPort` (the validator's
//! port) and the others on ports Pebble never contacts, so an order placed by `r1` or `r2`
//! only validates when `r0` serves the token from etcd. Pebble runs with
//! `PEBBLE_AUTHZREUSE=0`, so every order needs a fresh validation. Where a test must act
//! while an order is in flight, the replicas use DNS-01 through a hook that blocks while a
//! gate file exists (and records which node reached it), so the moment is certain.
//!
//! Orders are counted in Pebble's log (one `Added order` line per new order, one
//! `fully authorized. Processing finalization` line per accepted finalize, one `Issued
//! certificate serial` line per certificate). Installed serials are read from the files;
//! a monitor thread records every serial each replica's `cert_path` shows, every 50 ms.
//!
//! The short tests are in the regular suite; the five that wait for real renewals
//! (30-60 s each) are in the fault suite (`cargo nextest run --profile faults --test
//! fleet`); all of them: `cargo nextest run --ignore-default-filter --test fleet`. They run
//! one at a time (test group `fleet` in `.config/nextest.toml`).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::Value;

use common::daemon::*;
use common::etcd::EtcdCluster;
use common::*;

// ---------------------------------------------------------------------------
// The fleet
// ---------------------------------------------------------------------------

/// The fleet's prefix in etcd.
const PREFIX: &str = "/certkeeper/fleet-test";
/// The one certificate every replica manages.
const CERT: &str = "www";
/// Its name.
const DOMAIN: &str = "www.example.com";
/// `cluster.lease_ttl` of every replica.
const LEASE_TTL: Duration = Duration::from_secs(3);

/// How the fleet is set up.
struct FleetOpts {
    /// Pebble's `certificateValidityPeriod`, in seconds.
    validity_secs: u64,
    /// `renew_before` of every replica.
    renew_before: &'static str,
    /// DNS-01 through the gated hook instead of HTTP-01.
    dns01: bool,
    /// Extra lines for every `[cluster]` table.
    cluster_extra: &'static str,
    /// Extra lines for every `[acme]` table.
    acme_extra: &'static str,
}

impl Default for FleetOpts {
    fn default() -> Self {
        Self {
            validity_secs: 3600,
            renew_before: "50%",
            dns01: false,
            cluster_extra: "",
            acme_extra: "",
        }
    }
}

/// One replica: its config, files and daemon.
struct Replica {
    node: String,
    cfg: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// One line per reload hook run: `<serial> <unix time>`.
    reload_log: PathBuf,
    daemon: Option<Daemon>,
    /// Daemons of earlier starts, kept so their logs print when a test fails.
    past: Vec<Daemon>,
}

/// Pebble, etcd and the replicas' configs. Drop order: daemons, then etcd, then Pebble.
struct Fleet {
    replicas: Vec<Replica>,
    etcd: EtcdCluster,
    env: TestEnv,
    seal_key: PathBuf,
    /// While this file exists, the DNS-01 hook blocks before `set` (at most 30 s).
    gate: PathBuf,
    /// The DNS-01 hook appends its node's name here when it reaches the gate.
    marks: PathBuf,
    opts: FleetOpts,
    /// HTTP-01 ports for replicas other than r0.
    extra_ports: u16,
    _extra_lease: PortLease,
}

static PEBBLE_ENV: Once = Once::new();

/// Every order needs a fresh validation: Pebble must not reuse an authorization (its
/// default reuses half of them), or a renewal could skip the challenge under test.
fn no_authz_reuse() {
    PEBBLE_ENV.call_once(|| {
        // SAFETY: called before this test starts any thread or process of its own; std
        // serialises environment access with process spawning, and the value never
        // changes afterwards (every test of this binary sets the same one).
        unsafe { std::env::set_var("PEBBLE_AUTHZREUSE", "0") };
    });
}

impl Fleet {
    /// Pebble (certificates of `validity_secs`), a 3-member etcd, a seal key and the
    /// configs of `r0`, `r1` and `r2` (no daemon started yet).
    fn new(opts: FleetOpts) -> Self {
        no_authz_reuse();
        let env = TestEnv::with_pebble(PebbleOpts {
            validity_secs: opts.validity_secs,
            ..PebbleOpts::default()
        });
        let etcd = EtcdCluster::start(env.root());
        let seal_key = env.path("fleet.key");
        fs::write(&seal_key, random_bytes(32)).unwrap();
        let (extra_ports, extra_lease) = reserve_ports(4, None);
        let mut fleet = Self {
            replicas: Vec::new(),
            etcd,
            gate: env.path("dns-gate"),
            marks: env.path("dns-marks"),
            env,
            seal_key,
            opts,
            extra_ports,
            _extra_lease: extra_lease,
        };
        fleet.write_hooks();
        for i in 0..3 {
            let seal = fleet.seal_key.clone();
            fleet.add_replica(&format!("r{i}"), &seal);
        }
        fleet
    }

    fn write_hooks(&self) {
        self.env.write_script(
            "reload-hook",
            "printf '%s %s\\n' \"$CERTKEEPER_SERIAL\" \"$(date +%s.%N)\" >> \"$1\"",
        );
        self.env.write_script(
            "dns-hook",
            &format!(
                "node=$1; shift\n\
                 if [ \"$2\" = set ] && [ -e '{gate}' ]; then\n\
                 echo \"$node\" >> '{marks}'\n\
                 i=0; while [ -e '{gate}' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
                 fi\n\
                 exec '{hook}' \"$@\"",
                gate = self.gate.display(),
                marks = self.marks.display(),
                hook = DNS_HOOK,
            ),
        );
    }

    /// Write the config of one more replica named `node` with this seal key file; returns
    /// its index. Replica 0 gets Pebble's HTTP-01 port, the others ports of their own.
    fn add_replica(&mut self, node: &str, seal_key: &Path) -> usize {
        let i = self.replicas.len();
        let dir = self.env.path(node);
        fs::create_dir_all(dir.join("certs")).unwrap();
        let (cert, key) = (dir.join("certs/www.pem"), dir.join("certs/www.key"));
        let reload_log = dir.join("reload.log");
        let endpoints: Vec<String> = self.etcd.endpoints().iter().map(toml_str).collect();
        let challenge = if self.opts.dns01 {
            format!(
                "challenge = \"dns-01\"\ndns01_hook = [{}, {}, {}]",
                toml_str(self.env.path("dns-hook")),
                toml_str(node),
                toml_str(self.env.pebble().challtestsrv_url()),
            )
        } else {
            let port = if i == 0 {
                self.env.ports.http
            } else {
                self.extra_ports + i as u16 - 1
            };
            format!("challenge = \"http-01\"\nhttp01_listen = \"127.0.0.1:{port}\"")
        };
        let text = format!(
            "{head}\n[cluster]\netcd = [{endpoints}]\nprefix = {prefix}\nnode_name = {node_s}\n\
             lease_ttl = \"3s\"\nseal_key_file = {seal}\n{extra}\n\n\
             [defaults]\nrenew_before = {rb}\nmax_orders_per_cert = 1000\n\
             reload = [[{hook}, {log}]]\n{challenge}\n\n\
             [[cert]]\nname = {name}\ndomains = [{domain}]\ncert_path = {cert_s}\nkey_path = {key_s}\n",
            head = self
                .env
                .config_head_in(&dir.join("state"), self.opts.acme_extra),
            endpoints = endpoints.join(", "),
            prefix = toml_str(PREFIX),
            node_s = toml_str(node),
            seal = toml_str(seal_key),
            extra = self.opts.cluster_extra,
            rb = toml_str(self.opts.renew_before),
            hook = toml_str(self.env.path("reload-hook")),
            log = toml_str(&reload_log),
            name = toml_str(CERT),
            domain = toml_str(DOMAIN),
            cert_s = toml_str(&cert),
            key_s = toml_str(&key),
        );
        let cfg = self.env.write_raw_config(&format!("{node}.toml"), &text);
        self.replicas.push(Replica {
            node: node.to_owned(),
            cfg,
            cert,
            key,
            reload_log,
            daemon: None,
            past: Vec::new(),
        });
        i
    }

    /// Start replica `i`'s daemon (`certkeeper -v run`, log in `<tmp>/<node>[.<n>].stderr`).
    fn start(&mut self, i: usize) {
        let r = &mut self.replicas[i];
        if let Some(old) = r.daemon.take() {
            r.past.push(old);
        }
        let name = match r.past.len() {
            0 => r.node.clone(),
            n => format!("{}.{n}", r.node),
        };
        let d = Daemon::start(&self.env, &name, &r.cfg);
        self.replicas[i].daemon = Some(d);
    }

    fn start_all(&mut self) {
        for i in 0..self.replicas.len() {
            self.start(i);
        }
    }

    fn daemon(&self, i: usize) -> &Daemon {
        self.replicas[i]
            .daemon
            .as_ref()
            .expect("replica not started")
    }

    fn daemon_mut(&mut self, i: usize) -> &mut Daemon {
        self.replicas[i]
            .daemon
            .as_mut()
            .expect("replica not started")
    }

    /// Index of the replica named `node`.
    fn index(&self, node: &str) -> usize {
        self.replicas
            .iter()
            .position(|r| r.node == node)
            .unwrap_or_else(|| panic!("no replica named {node:?}"))
    }

    /// The serial of replica `i`'s installed set, if its files form a matching set.
    fn serial(&self, i: usize) -> Option<String> {
        valid_set(&self.replicas[i].cert, &self.replicas[i].key)
    }

    /// Wait until replicas `which` all hold the same valid set whose serial is not `old`;
    /// panics with every replica's state after `timeout`.
    fn wait_same_new_set(&self, which: &[usize], old: Option<&str>, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let serials: Vec<Option<String>> = which.iter().map(|&i| self.serial(i)).collect();
            if let Some(Some(first)) = serials.first()
                && Some(first.as_str()) != old
                && serials.iter().all(|s| s.as_ref() == Some(first))
            {
                return first.clone();
            }
            if start.elapsed() > timeout {
                let states: Vec<String> = which
                    .iter()
                    .map(|&i| {
                        format!(
                            "{}: {:?}, `fleet: emergency` x{}, `fleet: published` x{}",
                            self.replicas[i].node,
                            self.serial(i),
                            self.log_count(i, "fleet: emergency"),
                            self.log_count(i, "fleet: published")
                        )
                    })
                    .collect();
                panic!(
                    "the replicas did not all install one new set (old {old:?}) within {timeout:?}:\n  {}\n  set in etcd: {:?}\n  Pebble: {:?}",
                    states.join("\n  "),
                    self.etcd
                        .try_get(&format!("{PREFIX}/certs/{CERT}"))
                        .map(|v| v.map(|v| {
                            let e: Value = serde_json::from_str(&v).unwrap_or_default();
                            format!("serial {} by {}", e["serial"], e["orderer"])
                        })),
                    self.orders(),
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The serials replica `i`'s reload hook was run for, in order.
    fn hook_serials(&self, i: usize) -> Vec<String> {
        lines(&self.replicas[i].reload_log)
            .iter()
            .map(|l| normalize_hex(l.split_whitespace().next().unwrap_or("")))
            .collect()
    }

    /// When replica `i`'s reload hook ran for `serial` (unix seconds), the first time.
    fn hook_time(&self, i: usize, serial: &str) -> Option<f64> {
        lines(&self.replicas[i].reload_log).iter().find_map(|l| {
            let mut p = l.split_whitespace();
            let s = normalize_hex(p.next()?);
            (s == serial).then(|| p.next()?.parse().ok())?
        })
    }

    /// Every log line of replica `i` (all its starts) containing `pat`.
    fn log_count(&self, i: usize, pat: &str) -> usize {
        let r = &self.replicas[i];
        r.past
            .iter()
            .chain(r.daemon.iter())
            .map(|d| count_lines(&d.log(), pat))
            .sum()
    }

    /// `P/certs/www`, parsed.
    fn entry(&self) -> Option<Value> {
        let v = self.etcd.get(&format!("{PREFIX}/certs/{CERT}"))?;
        Some(
            serde_json::from_str(&v)
                .unwrap_or_else(|e| panic!("{PREFIX}/certs/{CERT} is not JSON ({e}): {v}")),
        )
    }

    /// The serial in `P/certs/www`, normalized.
    fn entry_serial(&self) -> Option<String> {
        self.entry()
            .and_then(|e| e["serial"].as_str().map(normalize_hex))
    }

    /// `P/locks/www`: the node holding the lock.
    fn lock_holder(&self) -> Option<String> {
        self.etcd.get(&format!("{PREFIX}/locks/{CERT}"))
    }

    /// What Pebble logged about orders so far.
    fn orders(&self) -> PebbleOrders {
        pebble_orders(&self.env.pebble().log())
    }

    /// Open the gate: the DNS-01 hook goes on.
    fn open_gate(&self) {
        let _ = fs::remove_file(&self.gate);
    }

    /// Close the gate: the next DNS-01 `set` blocks.
    fn close_gate(&self) {
        fs::write(&self.gate, "").unwrap();
    }

    /// Wait until a hook reached the closed gate; returns the node names, in order.
    fn wait_gate_reached(&self, timeout: Duration) -> Vec<String> {
        assert!(
            wait_for(timeout, || !lines(&self.marks).is_empty()),
            "no replica ordered (reached the DNS-01 hook) within {timeout:?}"
        );
        lines(&self.marks)
    }

    /// `certkeeper -c <replica i's cfg> <args>`.
    fn run(&self, i: usize, args: &[&str]) -> Output {
        self.env.run(&self.replicas[i].cfg, args)
    }

    /// A thread that records the serial of every replica's `cert_path` every 50 ms.
    fn monitor(&self) -> Monitor {
        Monitor::start(self.replicas.iter().map(|r| r.cert.clone()).collect())
    }
}

/// `n` bytes from the kernel's CSPRNG.
fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

// ---------------------------------------------------------------------------
// Pebble's log
// ---------------------------------------------------------------------------

/// New orders, accepted finalizations and issued serials (normalized), in log order.
#[derive(Debug, Default, Clone)]
struct PebbleOrders {
    added: Vec<String>,
    finalized: Vec<String>,
    issued: Vec<String>,
}

impl PebbleOrders {
    /// What happened after `before`.
    fn since(&self, before: &Self) -> Self {
        Self {
            added: self.added[before.added.len()..].to_vec(),
            finalized: self.finalized[before.finalized.len()..].to_vec(),
            issued: self.issued[before.issued.len()..].to_vec(),
        }
    }
}

fn pebble_orders(log: &str) -> PebbleOrders {
    let mut out = PebbleOrders::default();
    for line in log.lines() {
        if let Some(rest) = line.split("Added order \"").nth(1) {
            out.added.push(rest.split('"').next().unwrap().to_owned());
        } else if let Some(rest) = line.split("Order ").nth(1)
            && let Some(id) = rest.strip_suffix(" is fully authorized. Processing finalization")
        {
            out.finalized.push(id.trim().to_owned());
        } else if let Some(rest) = line.split("Issued certificate serial ").nth(1) {
            let serial = rest.split_whitespace().next().unwrap_or("");
            out.issued.push(normalize_hex(serial));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The serial monitor
// ---------------------------------------------------------------------------

/// The serial of the first certificate in `path` (no key check; cheap, in-process).
fn file_serial(path: &Path) -> Option<String> {
    let pem = fs::read(path).ok()?;
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = p.parse_x509().ok()?;
    Some(normalize_hex(&cert.raw_serial_as_string()))
}

/// Records, per replica, every change of the serial in its `cert_path`, with the time.
struct Monitor {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Per replica: (seconds since start, serial) at each change.
    seen: Arc<Mutex<Vec<Changes>>>,
}

/// One file's serial changes: (seconds since the monitor started, serial or unreadable).
type Changes = Vec<(f64, Option<String>)>;

impl Monitor {
    fn start(paths: Vec<PathBuf>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![Vec::new(); paths.len()]));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let handle = thread::spawn(move || {
            let t0 = Instant::now();
            while !stop2.load(Ordering::SeqCst) {
                for (i, p) in paths.iter().enumerate() {
                    let s = file_serial(p);
                    let mut seen = seen2.lock().unwrap();
                    if seen[i].last().map(|(_, x)| x) != Some(&s) {
                        seen[i].push((t0.elapsed().as_secs_f64(), s));
                    }
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            handle: Some(handle),
            seen,
        }
    }

    /// Replica `i`'s distinct serials in the order its file showed them (a serial that
    /// comes back after another one appears twice).
    fn sequence(&self, i: usize) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        let mut out: Vec<String> = Vec::new();
        for (_, s) in &seen[i] {
            if let Some(s) = s
                && out.last() != Some(s)
            {
                out.push(s.clone());
            }
        }
        out
    }

    /// When replica `i`'s file first showed `serial` (seconds since the monitor started).
    fn first_seen(&self, i: usize, serial: &str) -> Option<f64> {
        let seen = self.seen.lock().unwrap();
        seen[i]
            .iter()
            .find(|(_, s)| s.as_deref() == Some(serial))
            .map(|(t, _)| *t)
    }

    /// Replica `i`'s sequence never went back: it is a subsequence of `issued` (Pebble's
    /// issuance order) with no serial twice.
    fn assert_never_back(&self, i: usize, node: &str, issued: &[String]) {
        let seq = self.sequence(i);
        let mut pos = 0usize;
        for s in &seq {
            match issued[pos..].iter().position(|x| x == s) {
                Some(k) => pos += k + 1,
                None => panic!(
                    "{node}'s certificate went back to an older serial, or showed one Pebble did not issue: \
                     its files showed {seq:?}, Pebble issued {issued:?}"
                ),
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// (content, mtime, inode) of a file, for "nothing touched it".
fn file_identity(p: &Path) -> (Vec<u8>, SystemTime, u64) {
    let m = fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (read(p), m.modified().unwrap(), m.ino())
}

// ---------------------------------------------------------------------------
// The harness itself
// ---------------------------------------------------------------------------

/// The harness itself: three etcd members start and agree; a key written through the
/// cluster is read back, also after the leader was SIGKILLed (quorum of two) and
/// restarted on its data dir; with two members stopped a put is refused, and once they
/// are back the cluster serves reads and writes again.
#[test]
fn etcd_harness_starts_a_three_member_cluster() {
    let env = TestEnv::new();
    let mut etcd = EtcdCluster::start(env.root());
    assert_eq!(etcd.endpoints().len(), 3);
    etcd.etcdctl(&["put", "/harness/k", "v1"]);
    assert_eq!(etcd.get("/harness/k").as_deref(), Some("v1"));
    let members = etcd.etcdctl(&["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(etcd.leader().is_some(), "no leader");

    // SIGKILL the leader: the other two elect a new one (a put forwarded to the dead
    // leader right after the kill can time out, so wait for health first).
    let leader = etcd.leader().expect("a leader");
    etcd.kill_member(leader);
    assert!(etcd.wait_healthy(Duration::from_secs(20)), "no new leader");
    assert_ne!(etcd.leader(), Some(leader));
    etcd.etcdctl(&["put", "/harness/k", "v2"]);
    assert_eq!(etcd.get("/harness/k").as_deref(), Some("v2"));
    etcd.start_member(leader);
    assert!(etcd.wait_healthy(Duration::from_secs(20)));

    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    etcd.stop_member(others[0]);
    etcd.stop_member(others[1]);
    let out = etcd.etcdctl_output(&["put", "/harness/k", "v3"]);
    assert_ne!(out.code, 0, "a put without quorum succeeded:\n{out}");
    etcd.start_member_no_wait(others[0]);
    etcd.start_member_no_wait(others[1]);
    assert!(
        etcd.wait_healthy(Duration::from_secs(30)),
        "no quorum after restart"
    );
    // The refused put may still have reached the lone member's log and be committed
    // once the others are back (a client timeout is not a rollback in raft).
    let v = etcd.get("/harness/k");
    assert!(matches!(v.as_deref(), Some("v2" | "v3")), "{v:?}");
    etcd.etcdctl(&["put", "/harness/k", "v4"]);
    assert_eq!(
        etcd.get_prefix("/harness/"),
        vec![("/harness/k".to_owned(), "v4".to_owned())]
    );
}

// ---------------------------------------------------------------------------
// Renewals in a steady fleet
// ---------------------------------------------------------------------------

/// Three replicas, 40-second certificates renewed at 50%, over the first issuance and two
/// renewals: each of the three cycles has exactly one new order, one finalize and one
/// issuance at Pebble (one orderer per renewal) and one `fleet: published` line among
/// the replicas; every replica installs every serial (and only those, never going back)
/// within 5 s of the others and runs its reload hook exactly once per serial; the set in
/// etcd is the last serial; renewals come a cycle apart, not in a loop.
#[test]
fn steady_renewals() {
    let mut f = Fleet::new(FleetOpts {
        validity_secs: 40,
        ..FleetOpts::default()
    });
    let mon = f.monitor();
    f.start_all();

    // The first issuance and two renewals, installed on all three replicas.
    let deadline = Duration::from_secs(120);
    let t = Instant::now();
    let serials = loop {
        let seqs: Vec<Vec<String>> = (0..3).map(|i| mon.sequence(i)).collect();
        if seqs.iter().all(|s| s.len() >= 3) {
            break seqs[0][..3].to_vec();
        }
        assert!(
            t.elapsed() < deadline,
            "not 3 serials on every replica within {deadline:?}: {seqs:?}"
        );
        for i in 0..3 {
            assert!(f.daemon_mut(i).is_running(), "r{i} exited");
        }
        thread::sleep(Duration::from_millis(100));
    };
    // The next renewal is ~20 s away: Pebble's log is stable for the checks below.
    let orders = f.orders();
    eprintln!("serials: {serials:?}\nPebble: {orders:?}");
    let distinct: BTreeSet<&String> = serials.iter().collect();
    assert_eq!(distinct.len(), 3, "a serial repeats: {serials:?}");
    assert_eq!(
        orders.issued, serials,
        "Pebble issued other certificates than the three every replica installed"
    );
    assert_eq!(
        orders.finalized.len(),
        3,
        "not exactly one finalize per cycle: {orders:?}"
    );
    assert_eq!(
        orders.added.len(),
        3,
        "not exactly one order per cycle (two replicas ordered the same renewal?): {orders:?}"
    );
    let published: usize = (0..3).map(|i| f.log_count(i, "fleet: published")).sum();
    assert_eq!(published, 3, "\"fleet: published\" lines over three cycles");

    for i in 0..3 {
        let node = f.replicas[i].node.clone();
        mon.assert_never_back(i, &node, &orders.issued);
        assert_eq!(
            mon.sequence(i)[..3],
            serials[..],
            "{node} installed other serials"
        );
        assert!(
            wait_for(Duration::from_secs(10), || f.hook_serials(i).len() >= 3),
            "{node}'s reload hook did not run for every serial: {:?}",
            f.hook_serials(i)
        );
        assert_eq!(
            f.hook_serials(i),
            serials,
            "{node}'s reload hook runs (one per serial, in order)"
        );
    }
    for s in &serials {
        let seen: Vec<f64> = (0..3).map(|i| mon.first_seen(i, s).unwrap()).collect();
        let hooks: Vec<f64> = (0..3).map(|i| f.hook_time(i, s).unwrap()).collect();
        let spread = |v: &[f64]| {
            v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min)
        };
        eprintln!(
            "FIGURE serial {s}: installed at {seen:.2?} s (spread {:.2} s), hooks spread {:.2} s",
            spread(&seen),
            spread(&hooks)
        );
        assert!(
            spread(&seen) <= 5.0,
            "serial {s} installed {seen:?} s: more than 5 s apart"
        );
        assert!(
            spread(&hooks) <= 5.0,
            "serial {s}: reload hooks at {hooks:?}: more than 5 s apart"
        );
    }
    // Renewals a cycle apart (~50% of 40 s), not an early loop.
    for w in serials.windows(2) {
        let gap = mon.first_seen(0, &w[1]).unwrap() - mon.first_seen(0, &w[0]).unwrap();
        assert!(
            gap >= 12.0,
            "renewal {} came {gap:.1} s after the previous",
            w[1]
        );
    }
    assert_eq!(f.entry_serial().as_deref(), Some(serials[2].as_str()));
    for i in 0..3 {
        eprintln!(
            "{}: took the lock {}x, published {}x, installed the fleet's set {}x",
            f.replicas[i].node,
            f.log_count(i, "fleet: took the lock"),
            f.log_count(i, "fleet: published"),
            f.log_count(i, "fleet: installed the fleet's set")
        );
        // A healthy cluster is never reported unavailable (a keep-alive that waits for
        // an answer that never comes would be).
        assert_eq!(
            f.log_count(i, "fleet: etcd unavailable"),
            0,
            "{} reported a healthy etcd unavailable",
            f.replicas[i].node
        );
    }
}

/// Fleet-wide HTTP-01: r0 (on Pebble's HTTP-01 port) already holds a valid Pebble
/// certificate, issued beforehand by a standalone certkeeper, so it has nothing to order;
/// r1, listening on a port Pebble never contacts, has no files and orders. With
/// authorization reuse off, that order validates only if r0's responder serves r1's
/// token from etcd: r1 installs a new certificate, the set in etcd names r1 as its
/// orderer, Pebble saw exactly one new order and one finalize, and r0 installs r1's set.
#[test]
fn http01_token_is_served_by_another_replica() {
    let mut f = Fleet::new(FleetOpts::default());
    // A standalone certkeeper (no [cluster], DNS-01, its own state) issues r0's files.
    let standalone = f.env.write_raw_config(
        "standalone.toml",
        &format!(
            "{}\n[defaults]\nchallenge = \"dns-01\"\ndns01_hook = [{}, {}]\n\n\
             [[cert]]\nname = {}\ndomains = [{}]\ncert_path = {}\nkey_path = {}\n",
            f.env.config_head_in(&f.env.path("standalone-state"), ""),
            toml_str(DNS_HOOK),
            toml_str(f.env.pebble().challtestsrv_url()),
            toml_str(CERT),
            toml_str(DOMAIN),
            toml_str(&f.replicas[0].cert),
            toml_str(&f.replicas[0].key),
        ),
    );
    let out = f.env.run(&standalone, &["renew"]);
    assert_eq!(out.code, 0, "standalone issuance:\n{out}");
    let s0 = f.serial(0).expect("r0's files");
    // The standalone run marked the files as its own (another state_dir); it is done with
    // them, so its marker goes, as the ownership error tells an operator to do.
    let certs0 = f.replicas[0].cert.parent().unwrap().to_owned();
    for e in fs::read_dir(&certs0).unwrap().flatten() {
        if e.file_name().to_string_lossy().contains("certkeeper-owner") {
            fs::remove_file(e.path()).unwrap();
        }
    }
    let before = f.orders();

    f.start(0);
    assert!(
        f.daemon_mut(0)
            .wait_log(Duration::from_secs(15), "scheduled"),
        "r0 did not plan its valid certificate"
    );
    assert_eq!(
        f.orders().added,
        before.added,
        "r0 ordered although its certificate is valid"
    );
    assert_eq!(f.entry(), None, "r0 published a set it did not order");

    f.start(1);
    let (cert1, key1) = (f.replicas[1].cert.clone(), f.replicas[1].key.clone());
    let (s1, took) = wait_new_set(&cert1, &key1, None, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("r1 installed nothing within 30 s"));
    eprintln!(
        "FIGURE r1 issued through r0's responder in {:.2} s",
        took.as_secs_f64()
    );
    assert_ne!(s1, s0);
    f.env.pebble().assert_chain_verifies(&cert1);
    assert!(f.log_count(1, "fleet: took the lock") >= 1);
    let entry = f.entry().expect("the set in etcd");
    assert_eq!(entry["orderer"], "r1", "{entry}");
    assert_eq!(f.entry_serial().as_deref(), Some(s1.as_str()));
    let new = f.orders().since(&before);
    assert_eq!(new.added.len(), 1, "{new:?}");
    assert_eq!(new.finalized.len(), 1, "{new:?}");
    assert_eq!(new.issued, vec![s1.clone()]);

    // r0 follows the fleet: it installs r1's set (a new serial in etcd) and reloads.
    let got = f.wait_same_new_set(&[0, 1], Some(s0.as_str()), Duration::from_secs(10));
    assert_eq!(got, s1);
    assert_eq!(f.hook_serials(0), vec![s1.clone()]);
    assert_eq!(f.orders().added.len(), before.added.len() + 1, "r0 ordered");
}

// ---------------------------------------------------------------------------
// Orderers that die, stall or lose etcd
// ---------------------------------------------------------------------------

/// Start a DNS-01 fleet of 40-second certificates, wait for the first set on all three,
/// close the gate and wait for the renewal's orderer to reach it. Returns (the first
/// serial, the orderer's index, Pebble's log before the renewal).
fn fleet_mid_renewal(f: &mut Fleet) -> (String, usize, PebbleOrders) {
    f.start_all();
    let s1 = f.wait_same_new_set(&[0, 1, 2], None, Duration::from_secs(40));
    let before = f.orders();
    f.close_gate();
    let marks = f.wait_gate_reached(Duration::from_secs(40));
    let holder = f.lock_holder().expect("the orderer holds P/locks/www");
    assert_eq!(marks, vec![holder.clone()], "only the lock holder orders");
    let i = f.index(&holder);
    eprintln!("{holder} holds the lock and is mid-order (in the DNS-01 hook)");
    (s1, i, before)
}

/// SIGKILL the replica that holds `P/locks/www` while it orders (blocked in its DNS-01
/// hook): its lease expires, so the lock is gone or someone else's within lease_ttl + 3 s;
/// another replica completes the renewal (both survivors install one new serial, the set
/// in etcd names a survivor) with at most one extra order at Pebble and exactly one
/// finalize; the killed replica, restarted, installs that set without a new order.
#[test]
fn orderer_killed_mid_order() {
    let mut f = Fleet::new(FleetOpts {
        validity_secs: 40,
        dns01: true,
        ..FleetOpts::default()
    });
    let (s1, victim, before) = fleet_mid_renewal(&mut f);
    let victim_node = f.replicas[victim].node.clone();
    let (st, _) = f
        .daemon_mut(victim)
        .stop_with(Signal::SIGKILL, Duration::from_secs(5));
    assert!(st.is_some(), "the orderer did not die");
    let killed = Instant::now();
    f.open_gate();

    assert!(
        wait_for(LEASE_TTL + Duration::from_secs(3), || f
            .lock_holder()
            .as_deref()
            != Some(victim_node.as_str())),
        "P/locks/www still names the killed {victim_node} {:?} after the kill",
        killed.elapsed()
    );
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let s2 = f.wait_same_new_set(&survivors, Some(s1.as_str()), Duration::from_secs(30));
    eprintln!(
        "FIGURE renewal completed by the survivors {:.2} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let new = f.orders().since(&before);
    eprintln!("Pebble during the renewal: {new:?}");
    assert!(
        (1..=2).contains(&new.added.len()),
        "more than one extra order (or none) for one renewal: {new:?}"
    );
    assert_eq!(new.finalized.len(), 1, "{new:?}");
    assert_eq!(new.issued, vec![s2.clone()]);
    let entry = f.entry().expect("the set in etcd");
    assert_eq!(f.entry_serial().as_deref(), Some(s2.as_str()));
    assert_ne!(entry["orderer"], victim_node.as_str(), "{entry}");
    let resumed = survivors
        .iter()
        .any(|&i| f.log_count(i, "fleet: resuming the order") > 0);
    eprintln!(
        "FIGURE takeover: the log says `fleet: resuming the order`: {resumed}; new orders for the renewal: {}",
        new.added.len()
    );

    // The killed replica comes back and catches up without ordering.
    let orders = f.orders();
    f.start(victim);
    let got = f.wait_same_new_set(&[0, 1, 2], Some(s1.as_str()), Duration::from_secs(20));
    assert_eq!(got, s2);
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        f.orders().added,
        orders.added,
        "the restarted replica ordered"
    );
}

/// SIGSTOP the orderer (blocked in its DNS-01 hook) until well past its lease; another
/// replica takes over and publishes a newer set, which the two running replicas install;
/// then SIGCONT. The stale orderer cannot overwrite anything: the set in etcd is still
/// the one published while it was stopped (same serial, same mod_revision), every
/// replica, the stale one included, ends on that serial, no replica's files ever went
/// back to an older serial or showed a third one, and the stale replica either logs
/// `fleet: lost the fleet lock` or never publishes.
#[test]
fn stale_orderer_cannot_overwrite() {
    let mut f = Fleet::new(FleetOpts {
        validity_secs: 40,
        dns01: true,
        ..FleetOpts::default()
    });
    let mon = f.monitor();
    let (s1, stale, _before) = fleet_mid_renewal(&mut f);
    let stale_node = f.replicas[stale].node.clone();
    f.daemon(stale).signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    f.open_gate();

    let others: Vec<usize> = (0..3).filter(|&i| i != stale).collect();
    let s2 = f.wait_same_new_set(&others, Some(s1.as_str()), Duration::from_secs(30));
    let (rev2, entry2) = cert_key_revision(&f).expect("the set in etcd");
    assert_eq!(entry2.0, s2);
    assert_ne!(entry2.1, stale_node, "the stopped replica published");
    // The lease was last renewed up to one keep-alive period (a third of its TTL) before
    // the stop, so it can expire as early as two thirds of the TTL after it; a new set any
    // earlier would mean a second holder while the first one's lease still ran.
    assert!(
        stopped.elapsed() > LEASE_TTL - LEASE_TTL / 3,
        "the takeover came before the lease could expire"
    );
    assert_eq!(
        f.serial(stale).as_deref(),
        Some(s1.as_str()),
        "a stopped process changed its files"
    );
    eprintln!(
        "{} published {s2} {:.2} s after {stale_node} was stopped",
        entry2.1,
        stopped.elapsed().as_secs_f64()
    );

    let mark = f.daemon(stale).mark();
    f.daemon(stale).signal(Signal::SIGCONT);
    let got = f.wait_same_new_set(&[0, 1, 2], Some(s1.as_str()), Duration::from_secs(20));
    assert_eq!(got, s2, "the replicas did not converge on the newer set");
    // Give the stale orderer time to finish whatever it was doing.
    thread::sleep(Duration::from_secs(8));
    let (rev, entry) = cert_key_revision(&f).expect("the set in etcd");
    assert_eq!(entry.0, s2, "the set in etcd changed after SIGCONT");
    assert_eq!(rev, rev2, "P/certs/www was rewritten after SIGCONT");
    for i in 0..3 {
        assert_eq!(f.serial(i).as_deref(), Some(s2.as_str()), "r{i}'s files");
    }
    let issued = f.orders().issued;
    for i in 0..3 {
        let node = f.replicas[i].node.clone();
        mon.assert_never_back(i, &node, &issued);
        assert_eq!(
            mon.sequence(i),
            vec![s1.clone(), s2.clone()],
            "{node}'s files showed other serials"
        );
    }
    let after = f.daemon(stale).log_since(mark);
    let lost = count_lines(&after, "fleet: lost the fleet lock");
    let published = count_lines(&after, "fleet: published");
    eprintln!(
        "FIGURE the stale orderer after SIGCONT: `lost the fleet lock` x{lost}, `fleet: published` x{published}; Pebble issued {issued:?}"
    );
    assert!(
        lost > 0 || published == 0,
        "the stale orderer logged `fleet: published` without losing the lock:\n{after}"
    );
}

/// `(mod_revision, (serial, orderer))` of `P/certs/www`.
fn cert_key_revision(f: &Fleet) -> Option<(i64, (String, String))> {
    let out = f
        .etcd
        .etcdctl(&["get", &format!("{PREFIX}/certs/{CERT}"), "-w", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let kv = v["kvs"].as_array()?.first()?;
    let rev = kv["mod_revision"].as_i64()?;
    let entry = f.entry()?;
    Some((
        rev,
        (
            normalize_hex(entry["serial"].as_str()?),
            entry["orderer"].as_str()?.to_owned(),
        ),
    ))
}

/// SIGKILL the etcd leader while the orderer is mid-renewal (blocked in its DNS-01
/// hook); the renewal still completes on all three replicas (one new serial everywhere,
/// the same in etcd, issued by Pebble), on the two remaining members.
#[test]
fn etcd_member_killed_during_renewal() {
    let mut f = Fleet::new(FleetOpts {
        validity_secs: 40,
        dns01: true,
        ..FleetOpts::default()
    });
    let mon = f.monitor();
    let (s1, orderer, before) = fleet_mid_renewal(&mut f);
    let leader = f.etcd.leader().expect("an etcd leader");
    f.etcd.kill_member(leader);
    let killed = Instant::now();
    eprintln!("killed etcd member m{leader} (the leader)");
    f.open_gate();

    let s2 = f.wait_same_new_set(&[0, 1, 2], Some(s1.as_str()), Duration::from_secs(40));
    eprintln!(
        "FIGURE renewal on all replicas {:.2} s after the etcd leader was killed (orderer {})",
        killed.elapsed().as_secs_f64(),
        f.replicas[orderer].node
    );
    assert_eq!(f.entry_serial().as_deref(), Some(s2.as_str()));
    let new = f.orders().since(&before);
    eprintln!("Pebble during the renewal: {new:?}");
    assert!(new.issued.contains(&s2), "{new:?}");
    let issued = f.orders().issued;
    for i in 0..3 {
        let node = f.replicas[i].node.clone();
        mon.assert_never_back(i, &node, &issued);
        assert!(
            wait_for(Duration::from_secs(5), || f.hook_serials(i).contains(&s2)),
            "{node} did not run its reload hook for {s2}"
        );
    }
}

/// Stop 2 of the 3 etcd members (no quorum) from right after the first issuance until 8 s
/// after the renewal point (still 24 s before `emergency_before`): during that window no
/// replica deletes or rewrites a file (content, mtime and inode unchanged), no order
/// reaches Pebble, every replica logs `fleet: etcd unavailable`, and `status --json`
/// says `"cluster": "unavailable"` (and `"fleet": null`) on the row. Then the members
/// come back and the fleet converges before the old certificate expires: one new order,
/// one serial on all three replicas and in etcd.
#[test]
fn quorum_lost() {
    let mut f = Fleet::new(FleetOpts {
        validity_secs: 80,
        cluster_extra: "request_timeout = \"2s\"",
        ..FleetOpts::default()
    });
    f.start_all();
    let s1 = f.wait_same_new_set(&[0, 1, 2], None, Duration::from_secs(40));
    let cert0 = f.replicas[0].cert.clone();
    let (nb, na) = (cert_not_before(&cert0), cert_not_after(&cert0));
    let life = (na - nb).as_seconds_f64();
    let due = nb + time::Duration::seconds_f64(life * 0.5);
    let emergency = na - time::Duration::seconds_f64(life * 0.1);
    let window_end = due + time::Duration::seconds(8);
    assert!(window_end + time::Duration::seconds(10) < emergency);
    // Let the hooks and node reports of the first issuance finish.
    thread::sleep(Duration::from_secs(2));

    let files: Vec<PathBuf> = f
        .replicas
        .iter()
        .flat_map(|r| [r.cert.clone(), r.key.clone()])
        .collect();
    let ids: Vec<_> = files.iter().map(|p| file_identity(p)).collect();
    let before = f.orders();
    f.etcd.stop_member(1);
    f.etcd.stop_member(2);
    let marks: Vec<usize> = (0..3).map(|i| f.daemon(i).mark()).collect();
    eprintln!("etcd quorum lost at {}; window ends {window_end}", now());

    let mut status_checked = false;
    while now() < window_end {
        for (p, id) in files.iter().zip(&ids) {
            assert!(
                &file_identity(p) == id,
                "{} was rewritten or replaced while etcd had no quorum",
                p.display()
            );
        }
        if !status_checked && now() > due + time::Duration::seconds(2) {
            for i in 0..3 {
                let out = f.run(i, &["status", "--json"]);
                let v: Value = serde_json::from_str(&out.stdout)
                    .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{out}"));
                let row = v
                    .as_array()
                    .and_then(|a| a.iter().find(|r| r["name"] == CERT))
                    .unwrap_or_else(|| panic!("no row for {CERT}:\n{out}"))
                    .clone();
                assert_eq!(row["cluster"], "unavailable", "r{i}: {row}");
                assert!(row["fleet"].is_null(), "r{i}: {row}");
                eprintln!(
                    "r{i}: status exit code {} with the cluster unavailable",
                    out.code
                );
            }
            status_checked = true;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(
        status_checked,
        "the window closed before status was checked"
    );
    assert_eq!(
        f.orders().added,
        before.added,
        "a replica ordered while etcd had no quorum (before emergency_before)"
    );
    for (i, &mark) in marks.iter().enumerate() {
        let since = f.daemon(i).log_since(mark);
        assert!(
            count_lines(&since, "fleet: etcd unavailable") > 0,
            "r{i} did not log `fleet: etcd unavailable`:\n{since}"
        );
        assert_eq!(count_lines(&since, "fleet: emergency"), 0, "r{i}:\n{since}");
    }

    f.etcd.start_member_no_wait(1);
    f.etcd.start_member_no_wait(2);
    let back = Instant::now();
    assert!(
        f.etcd.wait_healthy(Duration::from_secs(30)),
        "etcd did not recover"
    );
    let left = (na - now()).as_seconds_f64().max(0.0);
    let s2 = f.wait_same_new_set(&[0, 1, 2], Some(s1.as_str()), Duration::from_secs_f64(left));
    eprintln!(
        "FIGURE fleet converged {:.2} s after the members were restarted",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(f.entry_serial().as_deref(), Some(s2.as_str()));
    let new = f.orders().since(&before);
    assert_eq!(new.added.len(), 1, "orders after the outage: {new:?}");
    assert_eq!(new.issued, vec![s2]);
}

// ---------------------------------------------------------------------------
// Joining, sealing, visibility
// ---------------------------------------------------------------------------

/// Two replicas issue; a third started later installs the fleet's current set (the
/// same serial, a matching key, its reload hook run once, `fleet: installed the fleet's
/// set` in its log) without any new order, finalize or issuance at Pebble.
#[test]
fn late_replica_catches_up() {
    let mut f = Fleet::new(FleetOpts::default());
    f.start(0);
    f.start(1);
    let s1 = f.wait_same_new_set(&[0, 1], None, Duration::from_secs(30));
    thread::sleep(Duration::from_secs(1));
    let before = f.orders();
    assert_eq!(before.issued, vec![s1.clone()]);

    f.start(2);
    let s = f.wait_same_new_set(&[0, 1, 2], None, Duration::from_secs(20));
    assert_eq!(s, s1);
    assert_key_matches(&f.replicas[2].cert, &f.replicas[2].key);
    f.env.pebble().assert_chain_verifies(&f.replicas[2].cert);
    assert!(
        wait_for(Duration::from_secs(5), || f.hook_serials(2)
            == vec![s1.clone()]),
        "r2's reload hook: {:?}",
        f.hook_serials(2)
    );
    assert!(f.log_count(2, "fleet: installed the fleet's set") >= 1);
    thread::sleep(Duration::from_secs(3));
    let after = f.orders();
    assert_eq!(after.added, before.added, "the late replica ordered");
    assert_eq!(after.finalized, before.finalized);
    assert_eq!(after.issued, before.issued);
    assert_eq!(f.hook_serials(2), vec![s1]);
}

/// The key never reaches etcd in the clear: `P/certs/www` has a `key_sealed` field that
/// is base64 of more than a nonce and a tag and holds no PEM; nothing under the prefix
/// contains "PRIVATE KEY", a line of the installed key's PEM, its DER in base64 or the PEM
/// itself in base64. The entry's serial and leaf are the installed ones. And the seal is
/// the key file: a replica with another 32-byte seal key never installs the fleet's set.
#[test]
fn key_in_etcd_is_sealed() {
    use base64::Engine;
    let mut f = Fleet::new(FleetOpts::default());
    f.start(0);
    f.start(1);
    let s1 = f.wait_same_new_set(&[0, 1], None, Duration::from_secs(30));

    let raw = f
        .etcd
        .get(&format!("{PREFIX}/certs/{CERT}"))
        .expect("P/certs/www");
    assert!(!raw.contains("PRIVATE KEY"), "{raw}");
    let entry: Value = serde_json::from_str(&raw).unwrap();
    let sealed = entry["key_sealed"]
        .as_str()
        .unwrap_or_else(|| panic!("no key_sealed string: {entry}"));
    assert!(!sealed.contains("BEGIN"), "{sealed}");
    let blob = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sealed))
        .unwrap_or_else(|e| panic!("key_sealed is not base64 ({e}): {sealed}"));
    // A P-256 key is ~120 bytes of DER at least; plus a 12-byte nonce and a 16-byte tag.
    assert!(
        blob.len() >= 12 + 16 + 100,
        "key_sealed is {} bytes",
        blob.len()
    );
    assert_eq!(
        entry["serial"].as_str().map(normalize_hex),
        Some(s1.clone())
    );
    assert!(
        entry["checksum"].as_str().is_some_and(|c| !c.is_empty()),
        "{entry}"
    );
    let leaf = pem_blocks(&String::from_utf8(read(&f.replicas[0].cert)).unwrap())[0].clone();
    let fullchain = entry["fullchain_pem"].as_str().unwrap_or_default();
    assert_eq!(
        pem_blocks(fullchain).first(),
        Some(&leaf),
        "the entry's leaf"
    );

    let dump: String = f
        .etcd
        .get_prefix(&format!("{PREFIX}/"))
        .iter()
        .map(|(k, v)| format!("{k}\n{v}\n"))
        .collect();
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a private key in etcd:\n{dump}"
    );
    let key_pem = String::from_utf8(read(&f.replicas[0].key)).unwrap();
    let body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for line in &body {
        assert!(
            line.len() < 16 || !dump.contains(line),
            "a line of the private key is in etcd: {line}"
        );
    }
    assert!(
        !dump.contains(&body.concat()),
        "the key's DER (base64) is in etcd"
    );
    let pem_b64 = base64::engine::general_purpose::STANDARD.encode(key_pem.as_bytes());
    assert!(
        !dump.contains(&pem_b64[..48]),
        "the key's PEM, base64-encoded, is in etcd"
    );
    let keys: Vec<String> = f
        .etcd
        .get_prefix(&format!("{PREFIX}/"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    eprintln!("keys under the prefix: {keys:?}");

    // A replica with another seal key cannot open the fleet's set.
    let other_key = f.env.path("other.key");
    fs::write(&other_key, random_bytes(32)).unwrap();
    let rx = f.add_replica("rx", &other_key);
    let orders = f.orders();
    f.start(rx);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        assert_ne!(
            file_serial(&f.replicas[rx].cert).as_deref(),
            Some(s1.as_str()),
            "a replica with another seal key installed the fleet's set"
        );
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "rx (wrong seal key): files {:?}; new orders {}; set in etcd {:?}; its fleet lines:\n{}",
        f.serial(rx),
        f.orders().since(&orders).added.len(),
        f.entry_serial(),
        f.daemon(rx)
            .log()
            .lines()
            .filter(|l| l.contains("fleet"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `certkeeper cluster status --json` (exit 0) lists r0, r1 and r2, each with the
/// installed revision and serial of `www`, equal to the revision and serial in `certs`;
/// no lock is left; `status --json` rows say `"cluster": "available"` with the fleet's
/// revision, serial and `installed_on` all three; the table starts with `cluster:
/// available, 3 nodes`. With 2 of 3 members stopped, `cluster status --json` exits 1
/// with `"cluster": "unavailable"` and an error.
#[test]
fn cluster_status_lists_nodes() {
    let mut f = Fleet::new(FleetOpts {
        cluster_extra: "request_timeout = \"2s\"",
        ..FleetOpts::default()
    });
    f.start_all();
    let s1 = f.wait_same_new_set(&[0, 1, 2], None, Duration::from_secs(30));

    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(20), || {
        let out = f.run(1, &["cluster", "status", "--json"]);
        last = out.to_string();
        let Ok(v) = serde_json::from_str::<Value>(&out.stdout) else {
            return false;
        };
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        out.code == 0
            && nodes.len() == 3
            && nodes.iter().all(|n| {
                n["installed"][CERT]["serial"].as_str().map(normalize_hex) == Some(s1.clone())
            })
            && v["locks"].get(CERT).is_none()
    });
    assert!(
        ok,
        "cluster status never listed 3 nodes with {s1} and no lock:\n{last}"
    );
    let out = f.run(1, &["cluster", "status", "--json"]);
    assert_eq!(out.code, 0, "{out}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());
    assert_eq!(v["cluster"], "available");
    assert_eq!(v["prefix"], PREFIX);
    let rev = v["certs"][CERT]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no certs.www.revision: {v}"));
    assert!(rev > 0);
    assert_eq!(
        v["certs"][CERT]["serial"].as_str().map(normalize_hex),
        Some(s1.clone())
    );
    rfc3339(&v["certs"][CERT]["not_after"], "certs.www.not_after");
    let mut names: Vec<String> = Vec::new();
    for n in v["nodes"].as_array().unwrap() {
        names.push(n["node"].as_str().unwrap().to_owned());
        assert_eq!(n["installed"][CERT]["revision"].as_i64(), Some(rev), "{n}");
        rfc3339(&n["updated_at"], "updated_at");
    }
    names.sort();
    assert_eq!(names, ["r0", "r1", "r2"]);

    let st = f.run(2, &["status", "--json"]);
    let rows: Value = serde_json::from_str(&st.stdout).unwrap();
    let row = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == CERT))
        .unwrap_or_else(|| panic!("no row:\n{st}"));
    assert_eq!(row["cluster"], "available", "{row}");
    assert_eq!(row["fleet"]["revision"].as_i64(), Some(rev), "{row}");
    assert_eq!(
        row["fleet"]["serial"].as_str().map(normalize_hex),
        Some(s1.clone()),
        "{row}"
    );
    assert!(row["fleet"]["lock_holder"].is_null(), "{row}");
    let mut on: Vec<String> = row["fleet"]["installed_on"]
        .as_array()
        .unwrap_or_else(|| panic!("no installed_on: {row}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    on.sort();
    assert_eq!(on, ["r0", "r1", "r2"], "{row}");
    let table = f.run(0, &["status"]);

    f.etcd.stop_member(0);
    f.etcd.stop_member(1);
    let out = f.run(1, &["cluster", "status", "--json"]);
    assert_eq!(out.code, 1, "{out}");
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    assert_eq!(v["cluster"], "unavailable", "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");

    // Last, so that a wording difference does not hide the checks above.
    assert!(
        table.stdout.contains("cluster: available, 3 nodes"),
        "the status table does not start with `cluster: available, 3 nodes`:\n{table}"
    );
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// A config with `[cluster]` lines `cluster` (etcd on a closed port) and one certificate.
fn cluster_config(env: &TestEnv, cluster: &str) -> PathBuf {
    let (cert, key) = env.cert_paths(CERT);
    env.write_config(&format!(
        "[cluster]\n{cluster}\n\n[defaults]\nchallenge = \"http-01\"\nhttp01_listen = \"127.0.0.1:{}\"\n\n\
         [[cert]]\nname = {}\ndomains = [{}]\ncert_path = {}\nkey_path = {}\n",
        env.ports.http,
        toml_str(CERT),
        toml_str(DOMAIN),
        toml_str(&cert),
        toml_str(&key),
    ))
}

/// Does `text` name `cfg` as `<cfg>:<line>:`?
fn names_file_and_line(text: &str, cfg: &Path) -> bool {
    let at = format!("{}:", cfg.display());
    text.match_indices(&at).any(|(i, _)| {
        let rest = &text[i + at.len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(':')
    })
}

/// A seal key file of the wrong length (31, 33 or 0 bytes): `certkeeper check` exits
/// non-zero naming the config file with a line, the key `cluster.seal_key_file`, the seal
/// key file itself and "32 bytes".
#[test]
fn seal_key_of_wrong_length_is_refused() {
    let env = TestEnv::new();
    for n in [31usize, 33, 0] {
        let key = env.path(&format!("seal-{n}.key"));
        fs::write(&key, random_bytes(n)).unwrap();
        let cfg = cluster_config(&env, &cluster_base(&env, &key));
        let out = env.run(&cfg, &["check"]);
        assert_ne!(out.code, 0, "a {n}-byte seal key passed check:\n{out}");
        let all = out.all();
        assert!(
            all.contains(&key.display().to_string()),
            "{n} bytes: the file is not named:\n{out}"
        );
        assert!(all.contains("cluster.seal_key_file"), "{n} bytes:\n{out}");
        assert!(
            names_file_and_line(&all, &cfg),
            "{n} bytes: no file:line:\n{out}"
        );
        assert!(
            all.contains("32 bytes"),
            "{n} bytes: no \"32 bytes\":\n{out}"
        );
    }
}

/// `[cluster]` lines: etcd on a closed port, node r0, this seal key file.
fn cluster_base(env: &TestEnv, seal: &Path) -> String {
    format!(
        "etcd = [\"http://127.0.0.1:{}\"]\nnode_name = \"r0\"\nseal_key_file = {}",
        env.ports.acme,
        toml_str(seal)
    )
}

/// Other config errors of `[cluster]`: `certkeeper check` exits non-zero and names the
/// config file with a line and the key for a missing seal key file (named too), a missing
/// `seal_key_file`, an empty `etcd`, an endpoint without http(s)://, a lease_ttl under
/// 2 s, half a client cert/key or user/password pair and an unknown key.
#[test]
fn cluster_config_errors_name_file_line_and_key() {
    let env = TestEnv::new();
    let good_key = env.path("fleet.key");
    fs::write(&good_key, random_bytes(32)).unwrap();
    let base = |seal: &Path| cluster_base(&env, seal);
    let missing = env.path("no-such.key");
    let etcd = format!("etcd = [\"http://127.0.0.1:{}\"]", env.ports.acme);
    let seal = format!("seal_key_file = {}", toml_str(&good_key));
    let cases: Vec<(String, &str, Option<String>)> = vec![
        (
            base(&missing),
            "cluster.seal_key_file",
            Some(missing.display().to_string()),
        ),
        (etcd.clone(), "cluster.seal_key_file", None),
        (format!("etcd = []\n{seal}"), "cluster.etcd", None),
        (
            format!("etcd = [\"127.0.0.1:2379\"]\n{seal}"),
            "cluster.etcd",
            Some("127.0.0.1:2379".into()),
        ),
        (
            format!("etcd = [\"ftp://127.0.0.1:2379\"]\n{seal}"),
            "cluster.etcd",
            None,
        ),
        (
            format!("{etcd}\n{seal}\nlease_ttl = \"1s\""),
            "cluster.lease_ttl",
            None,
        ),
        (
            format!("{etcd}\n{seal}\nclient_cert = \"c.pem\""),
            "client_key",
            None,
        ),
        (format!("{etcd}\n{seal}\nuser = \"ck\""), "password", None),
        (
            format!("{etcd}\n{seal}\netcd_endpoints = []"),
            "etcd_endpoints",
            None,
        ),
    ];
    for (body, key, extra) in cases {
        let cfg = cluster_config(&env, &body);
        let out = env.run(&cfg, &["check"]);
        assert_ne!(out.code, 0, "check accepted:\n{body}\n{out}");
        let all = out.all();
        assert!(all.contains(key), "{key} not named for:\n{body}\n{out}");
        assert!(
            names_file_and_line(&all, &cfg),
            "no file:line for:\n{body}\n{out}"
        );
        if let Some(x) = extra {
            assert!(all.contains(&x), "{x} not named for:\n{body}\n{out}");
        }
    }
}

/// Without `[cluster]` nothing changes: `status --json` rows carry `"cluster": null` and
/// `"fleet": null`, and the table has no `cluster:` line.
#[test]
fn without_cluster_status_says_null() {
    let env = TestEnv::new();
    let body = format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(CERT, &[DOMAIN], "")
    );
    let cfg = env.write_config(&body);
    let out = env.run(&cfg, &["status", "--json"]);
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    let rows = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array:\n{out}"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get("cluster"), Some(&Value::Null), "{}", rows[0]);
    assert_eq!(rows[0].get("fleet"), Some(&Value::Null), "{}", rows[0]);
    let table = env.run(&cfg, &["status"]);
    assert!(!table.stdout.contains("cluster:"), "{table}");
}

/// The fencing token, against a real 3-member etcd through the library itself: a holder
/// whose lease ended behind its back (revoked here with etcdctl, as an expiry while it was
/// SIGSTOPped would) cannot publish, record an order or release the new holder's lock, and
/// the new holder's set stands. (`stale_orderer_cannot_overwrite` shows the same end to
/// end, but there the stale orderer's order usually fails at the CA before it publishes.)
#[test]
fn fenced_writes_of_a_holder_that_lost_its_lease_are_refused() {
    use certkeeper::fleet::{CertEntry, Fleet as CkFleet, FleetError, LockOutcome};
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::start(dir.path());
    let seal = dir.path().join("seal.key");
    fs::write(&seal, [5u8; 32]).unwrap();
    let endpoints: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    let cluster_of = |node: &str| {
        let src = format!(
            "state_dir = \"{d}/s\"\n[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\n[[cert]]\nname = \"www\"\ndomains = [\"a.example\"]\ncert_path = \"{d}/c.pem\"\nkey_path = \"{d}/k.pem\"\nhttp01_listen = \"127.0.0.1:1\"\n[cluster]\netcd = [{e}]\nprefix = \"/fence\"\nnode_name = \"{node}\"\nlease_ttl = \"3s\"\nseal_key_file = \"{s}\"\n",
            d = dir.path().display(),
            e = endpoints.join(", "),
            s = seal.display()
        );
        certkeeper::config::Config::from_str_at(&src, Path::new("t.toml"), dir.path())
            .unwrap()
            .cluster
            .unwrap()
    };
    let entry = |f: &CkFleet, serial: &str| {
        CertEntry {
            v: certkeeper::fleet::entry::ENTRY_VERSION,
            name: "www".into(),
            serial: serial.into(),
            not_after: time::OffsetDateTime::now_utc(),
            fullchain_pem: "chain".into(),
            chain_pem: String::new(),
            key_sealed: f.seal_key_for("www", "key").unwrap(),
            orderer: f.node().into(),
            published_at: time::OffsetDateTime::now_utc(),
            issuer: None,
            checksum: String::new(),
        }
        .seal_checksum()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = CkFleet::new(&cluster_of("a")).unwrap();
        let b = CkFleet::new(&cluster_of("b")).unwrap();
        let LockOutcome::Held(ga) = a.try_lock("www").await.unwrap() else {
            panic!("a did not get the free lock");
        };
        match b.try_lock("www").await.unwrap() {
            LockOutcome::Busy { holder } => assert_eq!(holder, "a"),
            LockOutcome::Held(_) => panic!("b got a lock a holds"),
        }
        // a's lease ends behind its back.
        let json = etcd.etcdctl(&["get", "/fence/locks/www", "-w", "json"]);
        let v: Value = serde_json::from_str(&json).unwrap();
        let lease = v["kvs"][0]["lease"].as_i64().expect("the lock has a lease");
        etcd.etcdctl(&["lease", "revoke", &format!("{lease:x}")]);
        let LockOutcome::Held(gb) = b.try_lock("www").await.unwrap() else {
            panic!("b did not get the lock after a's lease ended");
        };
        assert_ne!(gb.token(), ga.token());
        gb.publish(&entry(&b, "bb")).await.unwrap();
        let stale = ga.publish(&entry(&a, "aa")).await;
        assert!(matches!(stale, Err(FleetError::LostLock(_))), "{stale:?}");
        let stale = ga
            .record_order("https://ca/order/1", "https://ca/dir", "key")
            .await;
        assert!(matches!(stale, Err(FleetError::LostLock(_))), "{stale:?}");
        ga.release().await;
        let current = b.current_fresh("www").await.unwrap().expect("b's set");
        assert_eq!(current.entry.serial, "bb");
        assert_eq!(etcd.get("/fence/locks/www").as_deref(), Some("b"));
        assert!(etcd.get("/fence/orders/www").is_none());
        gb.release().await;
        assert!(etcd.get("/fence/locks/www").is_none());
    });
}

/// The CA forgets the fleet's ACME account (Pebble restarted: a new CA in all but its
/// address). The next renewal must still be one order under one new account that the
/// whole fleet then shares: the orderer creates it, replaces the fleet's lost one in etcd,
/// and no replica backs the fleet off for the lost account.
#[test]
fn a_ca_that_forgot_the_fleet_account_costs_one_new_account() {
    let mut f = Fleet::new(FleetOpts {
        validity_secs: 30,
        ..FleetOpts::default()
    });
    f.start(0);
    f.start(1);
    let s1 = f.wait_same_new_set(&[0, 1], None, Duration::from_secs(30));
    let accounts = |f: &Fleet| f.etcd.get_prefix(&format!("{PREFIX}/accounts/"));
    let before = accounts(&f);
    assert_eq!(before.len(), 1, "one fleet account: {before:?}");
    f.env.pebble.as_mut().unwrap().restart("pebble-2");
    // The renewal point is 15 s into a 30 s certificate.
    let s2 = f.wait_same_new_set(&[0, 1], Some(s1.as_str()), Duration::from_secs(40));
    let after = accounts(&f);
    assert_eq!(after.len(), 1, "one fleet account: {after:?}");
    assert_ne!(
        after[0].1, before[0].1,
        "the lost account is still the fleet's"
    );
    let orders = f.orders();
    assert_eq!(
        orders.issued,
        vec![s2.clone()],
        "issued by the new CA: {orders:?}"
    );
    for i in 0..2 {
        assert_eq!(
            f.log_count(i, "the fleet backs off"),
            0,
            "r{i} backed the fleet off"
        );
    }
    let created: usize = (0..2)
        .map(|i| f.log_count(i, "creating a new account"))
        .sum();
    assert!(created >= 1, "nobody noticed the lost account");
}

/// The order budget is the fleet's: with `max_new_orders = "2/1h"` three replicas together
/// place two orders, and the third renewal is deferred (counted in etcd), where each
/// replica's own count would have allowed two more orders of its own.
#[test]
fn the_order_budget_is_counted_for_the_whole_fleet() {
    let mut f = Fleet::new(FleetOpts {
        validity_secs: 20,
        acme_extra: "max_new_orders = \"2/1h\"",
        ..FleetOpts::default()
    });
    f.start_all();
    let s1 = f.wait_same_new_set(&[0, 1, 2], None, Duration::from_secs(30));
    let s2 = f.wait_same_new_set(&[0, 1, 2], Some(s1.as_str()), Duration::from_secs(30));
    // The third renewal point is 10 s after s2's issuance; give it 6 s more.
    thread::sleep(Duration::from_secs(16));
    let orders = f.orders();
    assert_eq!(
        orders.added.len(),
        2,
        "the fleet overspent its budget: {orders:?}"
    );
    for i in 0..3 {
        assert_eq!(f.serial(i).as_deref(), Some(s2.as_str()), "r{i}");
    }
    let deferred: usize = (0..3).map(|i| f.log_count(i, "order budget")).sum();
    assert!(
        deferred >= 1,
        "no replica said the budget deferred the renewal"
    );
}
