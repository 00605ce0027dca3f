//! Test harness for certkeeper's binary tests against a real ACME CA.
//!
//! Every test gets its own temp dir and its own block of six ports, and, when
//! it needs one, its own Pebble + pebble-challtestsrv pair (see
//! `/work/shared/TESTING.md` for the recipe). The processes are owned by
//! [`Subprocess`] guards and killed in `Drop`; their output goes to files in
//! the temp dir and is printed when a test panics.
//!
//! The binary is driven through `CARGO_BIN_EXE_certkeeper` with
//! `CERTKEEPER_CONFIG` removed from its environment.

#![allow(dead_code, unreachable_pub)]

pub mod a2c;
pub mod daemon;
pub mod etcd;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_certkeeper");

/// The DNS-01 hook shipped in the repository.
pub const DNS_HOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hooks/dns-challtestsrv");

/// How long any single certkeeper invocation may take before the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// The six ports one Pebble instance needs.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Pebble's ACME listener (`/dir`).
    pub acme: u16,
    /// Pebble's management listener (`/roots/0`, `/intermediates/0`).
    pub mgmt: u16,
    /// Where Pebble's validator fetches HTTP-01 challenges.
    pub http: u16,
    /// Where Pebble's validator connects for TLS-ALPN-01 (unused, but must be unique).
    pub tls: u16,
    /// challtestsrv's DNS server (UDP and TCP).
    pub dns: u16,
    /// challtestsrv's management API (`/set-txt`, `/clear-txt`).
    pub dns_mgmt: u16,
}

/// Where every test process on this machine reserves its ports: `<port>.lock`, held
/// with `flock` for as long as the port is in use. Under nextest every test is its own
/// process, so an in-process counter cannot keep two tests apart; the kernel drops the
/// lock when the holder exits, however it exits, so a crashed test frees its ports.
pub const PORT_LOCK_DIR: &str = "/tmp/certkeeper-test-ports";

/// The ports handed out: below Linux's default ephemeral range (32768-60999), so
/// neither an outgoing connection's source port nor anyone's `bind(0)` takes one of
/// ours while we are not listening on it (a CA that is down, a refusing hostile CA).
const PORT_RANGE: std::ops::RangeInclusive<u16> = 20000..=32759;

/// Reserved ports, released (unlocked) on drop. Keep it as long as the ports are used.
#[derive(Debug)]
pub struct PortLease {
    _locks: Vec<File>,
}

/// The flock'd reservation file of `port`, or `None` when another test holds it.
fn lock_port(port: u16) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = Path::new(PORT_LOCK_DIR);
    if !dir.exists() {
        let _ = fs::create_dir_all(dir);
        // Shared by every user's test runs (like /tmp itself).
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o1777));
    }
    let path = dir.join(format!("{port}.lock"));
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(&path)
        .or_else(|_| File::open(&path))
        .unwrap_or_else(|e| panic!("port reservation file {}: {e}", path.display()));
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(file)
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `n` consecutive ports, reserved for this process (see [`PORT_LOCK_DIR`]) and free
/// right now for TCP (the one at offset `udp_at` for UDP too), and their lease. The search
/// starts at a block picked from the pid and the clock, so parallel tests rarely even
/// contend for a lock; something else listening (a developer's Pebble) is skipped.
pub fn reserve_ports(n: u16, udp_at: Option<u16>) -> (u16, PortLease) {
    let blocks = (PORT_RANGE.end() - PORT_RANGE.start() + 1) / n;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let first = (std::process::id().wrapping_mul(7919) ^ nanos) % u32::from(blocks);
    for k in 0..u32::from(blocks) {
        let block = ((first + k) % u32::from(blocks)) as u16;
        let p = PORT_RANGE.start() + block * n;
        let mut locks = Vec::new();
        for port in p..p + n {
            match lock_port(port) {
                Some(f) => locks.push(f),
                None => break,
            }
        }
        if locks.len() == usize::from(n)
            && (p..p + n).all(port_free)
            && udp_at.is_none_or(|o| UdpSocket::bind(("127.0.0.1", p + o)).is_ok())
        {
            return (p, PortLease { _locks: locks });
        }
    }
    panic!("no block of {n} free test ports in {PORT_RANGE:?} (reservations in {PORT_LOCK_DIR})");
}

/// Leases taken by [`Ports::allocate`], held until the process exits.
static PROCESS_LEASES: Mutex<Vec<PortLease>> = Mutex::new(Vec::new());

impl Ports {
    /// A fresh block of six ports, reserved across processes until the returned lease is
    /// dropped (see [`reserve_ports`]); the DNS port is free for UDP too.
    pub fn reserve() -> (Self, PortLease) {
        let (p, lease) = reserve_ports(6, Some(4));
        let ports = Self {
            acme: p,
            mgmt: p + 1,
            http: p + 2,
            tls: p + 3,
            dns: p + 4,
            dns_mgmt: p + 5,
        };
        (ports, lease)
    }

    /// [`Self::reserve`] for callers without a place to keep the lease: it is held
    /// until this process exits.
    pub fn allocate() -> Self {
        let (ports, lease) = Self::reserve();
        PROCESS_LEASES.lock().unwrap().push(lease);
        ports
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A child process that is killed (and reaped) when dropped.
pub struct Subprocess {
    pub name: String,
    child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Subprocess {
    /// Spawn `cmd` with stdout/stderr going to `<dir>/<name>.stdout|stderr`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Self {
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout_path).unwrap())
            .stderr(File::create(&stderr_path).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
        Self {
            name: name.to_owned(),
            child,
            stdout_path,
            stderr_path,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Print the captured output (used when a test fails).
    pub fn dump(&self) {
        eprintln!(
            "===== {} (pid {}) stdout =====\n{}",
            self.name,
            self.child.id(),
            self.stdout()
        );
        eprintln!("===== {} stderr =====\n{}", self.name, self.stderr());
    }
}

impl Drop for Subprocess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Pebble's HTTPS certificate
// ---------------------------------------------------------------------------

/// Write `ca.pem`, `leaf.pem` and `leaf.key` (a CA and a CA:FALSE serverAuth
/// leaf for localhost / 127.0.0.1 signed by it) into `dir`.
pub fn write_tls_certs(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "certkeeper test CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    leaf_params.distinguished_name = dn;
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    fs::write(dir.join("leaf.pem"), leaf_cert.pem()).unwrap();
    fs::write(dir.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
}

// ---------------------------------------------------------------------------
// Pebble
// ---------------------------------------------------------------------------

/// Knobs for one Pebble instance.
#[derive(Debug, Clone)]
pub struct PebbleOpts {
    /// `certificateValidityPeriod`, in seconds.
    pub validity_secs: u64,
    /// `PEBBLE_WFE_NONCEREJECT`; `None` keeps Pebble's default of 5%.
    pub nonce_reject: Option<u32>,
    /// `externalAccountBindingRequired` with these (kid, base64url HMAC key) pairs.
    pub eab_keys: Option<Vec<(String, String)>>,
    /// `domainBlocklist`: names Pebble rejects with `rejectedIdentifier`.
    pub blocklist: Vec<String>,
}

impl Default for PebbleOpts {
    fn default() -> Self {
        Self {
            validity_secs: 3600,
            nonce_reject: None,
            eab_keys: None,
            blocklist: Vec::new(),
        }
    }
}

/// A running Pebble + pebble-challtestsrv pair.
pub struct Pebble {
    pub ports: Ports,
    /// The CA that signed Pebble's HTTPS certificate (the config's `ca_bundle`).
    pub ca_pem: PathBuf,
    dir: PathBuf,
    // Drop order: pebble first, then the DNS server it uses.
    pebble: Subprocess,
    challtestsrv: Subprocess,
}

/// `pebble` on `<dir>/pebble.json`, resolving through challtestsrv on
/// `ports.dns`, with random validation sleeps off and Pebble's default 5%
/// nonce rejection (the caller may set `PEBBLE_WFE_NONCEREJECT`).
fn pebble_command(dir: &Path, ports: Ports) -> Command {
    let mut cmd = Command::new("pebble");
    cmd.arg("-config")
        .arg(dir.join("pebble.json"))
        .arg("-dnsserver")
        .arg(format!("127.0.0.1:{}", ports.dns))
        .current_dir(dir)
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env_remove("PEBBLE_VA_ALWAYS_VALID")
        .env_remove("PEBBLE_WFE_NONCEREJECT");
    cmd
}

fn wait_tcp(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(25));
    }
    false
}

impl Pebble {
    /// Start challtestsrv and Pebble in `dir` (which receives their config,
    /// TLS material and logs) and wait until Pebble's directory answers.
    pub fn start(dir: &Path, ports: Ports, opts: &PebbleOpts) -> Self {
        fs::create_dir_all(dir).unwrap();
        write_tls_certs(dir);
        let ca_pem = dir.join("ca.pem");

        let mut pebble_cfg = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{}", ports.acme),
            "managementListenAddress": format!("127.0.0.1:{}", ports.mgmt),
            "certificate": dir.join("leaf.pem"),
            "privateKey": dir.join("leaf.key"),
            "httpPort": ports.http,
            "tlsPort": ports.tls,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": opts.eab_keys.is_some(),
            "certificateValidityPeriod": opts.validity_secs,
            "domainBlocklist": opts.blocklist,
        });
        if let Some(keys) = &opts.eab_keys {
            let map: serde_json::Map<String, Value> = keys
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            pebble_cfg["externalAccountMACKeys"] = Value::Object(map);
        }
        let cfg_path = dir.join("pebble.json");
        fs::write(
            &cfg_path,
            serde_json::to_string_pretty(&serde_json::json!({ "pebble": pebble_cfg })).unwrap(),
        )
        .unwrap();

        let mut cmd = Command::new("pebble-challtestsrv");
        cmd.args([
            "-dns01",
            &format!("127.0.0.1:{}", ports.dns),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", ports.dns_mgmt),
            "-defaultIPv6",
            "",
        ]);
        let mut challtestsrv = Subprocess::spawn("challtestsrv", cmd, dir);

        let mut cmd = pebble_command(dir, ports);
        if let Some(n) = opts.nonce_reject {
            cmd.env("PEBBLE_WFE_NONCEREJECT", n.to_string());
        }
        let mut pebble = Subprocess::spawn("pebble", cmd, dir);

        let timeout = Duration::from_secs(20);
        let ok_dns = wait_tcp(ports.dns_mgmt, timeout);
        if !ok_dns || !challtestsrv.is_running() {
            challtestsrv.dump();
            panic!("pebble-challtestsrv did not start on {ports:?}");
        }
        let start = Instant::now();
        loop {
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "5", "--cacert"])
                .arg(&ca_pem)
                .arg(format!("https://127.0.0.1:{}/dir", ports.acme))
                .output()
                .expect("curl");
            if out.status.success() {
                break;
            }
            if !pebble.is_running() || start.elapsed() > timeout {
                pebble.dump();
                challtestsrv.dump();
                panic!("pebble did not start on {ports:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        assert!(wait_tcp(ports.mgmt, timeout), "pebble management port");

        Self {
            ports,
            ca_pem,
            dir: dir.to_owned(),
            pebble,
            challtestsrv,
        }
    }

    /// `https://127.0.0.1:<acme>/dir`
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.ports.acme)
    }

    /// The challtestsrv management API, as the DNS hook takes it.
    pub fn challtestsrv_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.dns_mgmt)
    }

    /// GET a path on Pebble's management interface.
    pub fn mgmt_get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "10", "--cacert"])
            .arg(&self.ca_pem)
            .arg(format!("https://127.0.0.1:{}{path}", self.ports.mgmt))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "GET {path} on pebble's management port failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Write Pebble's root and intermediate to `<dir>/pebble-root.pem` and
    /// `<dir>/pebble-intermediate.pem` and return their paths.
    pub fn fetch_roots(&self) -> (PathBuf, PathBuf) {
        let root = self.dir.join("pebble-root.pem");
        let inter = self.dir.join("pebble-intermediate.pem");
        fs::write(&root, self.mgmt_get("/roots/0")).unwrap();
        fs::write(&inter, self.mgmt_get("/intermediates/0")).unwrap();
        (root, inter)
    }

    /// Assert that the full chain in `fullchain` (leaf first) chains to
    /// Pebble's current root.
    pub fn assert_chain_verifies(&self, fullchain: &Path) {
        let (root, _inter) = self.fetch_roots();
        let blocks = pem_blocks(&fs::read_to_string(fullchain).unwrap());
        assert!(
            blocks.len() >= 2,
            "{} holds {} certificate(s); expected leaf + chain",
            fullchain.display(),
            blocks.len()
        );
        let leaf = self.dir.join("verify-leaf.pem");
        let rest = self.dir.join("verify-untrusted.pem");
        fs::write(&leaf, &blocks[0]).unwrap();
        fs::write(&rest, blocks[1..].concat()).unwrap();
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root)
            .arg("-untrusted")
            .arg(&rest)
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chain in {} does not verify against Pebble's root: {}{}",
            fullchain.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops Pebble and starts it again with the same config and HTTPS certificate: a new
    /// CA in all but its address, which has forgotten every account and order (Pebble
    /// keeps them in memory). `log()` then shows the new process only.
    pub fn restart(&mut self, log_name: &str) {
        let stopped = Subprocess::spawn("pebble-stopped", Command::new("true"), &self.dir);
        drop(std::mem::replace(&mut self.pebble, stopped));
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.ports.acme)).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(10), "pebble still up");
            thread::sleep(Duration::from_millis(20));
        }
        self.pebble = Subprocess::spawn(log_name, pebble_command(&self.dir, self.ports), &self.dir);
        assert!(
            wait_tcp(self.ports.acme, Duration::from_secs(20)),
            "pebble did not restart on {:?}",
            self.ports
        );
    }

    /// Everything Pebble has logged so far (stdout, then stderr). Pebble 2.4 logs one
    /// line per new order (`Added order "<id>" to the db`), per finalization it accepts
    /// (`Order <id> is fully authorized. Processing finalization`) and per issued
    /// certificate (`Issued certificate serial <hex> for order <id>`), but not every request.
    pub fn log(&self) -> String {
        format!("{}{}", self.pebble.stdout(), self.pebble.stderr())
    }

    /// Print Pebble's and challtestsrv's logs.
    pub fn dump(&self) {
        self.pebble.dump();
        self.challtestsrv.dump();
    }
}

// ---------------------------------------------------------------------------
// The per-test environment
// ---------------------------------------------------------------------------

/// A temp dir, a port block, maybe a Pebble, and helpers to configure and run
/// certkeeper in it.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub ports: Ports,
    pub pebble: Option<Pebble>,
    /// The `[acme] directory` written into configs.
    pub directory: String,
    /// Extra lines appended to every `[acme]` table (e.g. EAB).
    pub acme_extra: String,
    /// Outputs of certkeeper runs so far, printed on failure.
    log: Mutex<Vec<String>>,
    /// Keeps `ports` reserved against other test processes while the env lives.
    _port_lease: PortLease,
}

/// The outcome of one certkeeper run.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit code, or -1 if killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout followed by stderr.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl TestEnv {
    /// A temp dir and ports, no CA. `directory` points at a closed port.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("certkeeper-test-")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("work")).unwrap();
        let (ports, port_lease) = Ports::reserve();
        Self {
            directory: format!("https://127.0.0.1:{}/dir", ports.acme),
            dir,
            ports,
            pebble: None,
            acme_extra: String::new(),
            log: Mutex::new(Vec::new()),
            _port_lease: port_lease,
        }
    }

    /// A temp dir with a running Pebble.
    pub fn with_pebble(opts: PebbleOpts) -> Self {
        let mut env = Self::new();
        let pebble = Pebble::start(&env.dir.path().join("pebble"), env.ports, &opts);
        env.directory = pebble.directory_url();
        env.pebble = Some(pebble);
        env
    }

    pub fn pebble(&self) -> &Pebble {
        self.pebble.as_ref().expect("this test has no pebble")
    }

    /// The temp dir's root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `<tmp>/work/<rel>`: where certificates, state and configs live.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("work").join(rel)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// The CA bundle that makes Pebble's HTTPS trusted (a fresh one for
    /// CA-less tests, so the config is valid).
    pub fn ca_bundle(&self) -> PathBuf {
        match &self.pebble {
            Some(p) => p.ca_pem.clone(),
            None => {
                let p = self.dir.path().join("ca.pem");
                if !p.exists() {
                    write_tls_certs(self.dir.path());
                }
                p
            }
        }
    }

    /// The standard head of a config: `state_dir` and `[acme]`.
    pub fn config_head(&self) -> String {
        self.config_head_in(&self.state_dir(), &self.acme_extra)
    }

    /// A config head with this `state_dir` and these extra `[acme]` lines.
    pub fn config_head_in(&self, state_dir: &Path, acme_extra: &str) -> String {
        format!(
            "state_dir = {}\n\n[acme]\ndirectory = {}\nca_bundle = {}\n{}\n",
            toml_str(state_dir),
            toml_str(&self.directory),
            toml_str(self.ca_bundle()),
            acme_extra,
        )
    }

    /// Write `<work>/<file>` with the standard head followed by `body`
    /// (`[defaults]` and `[[cert]]` tables).
    pub fn write_config_named(&self, file: &str, body: &str) -> PathBuf {
        self.write_raw_config(file, &format!("{}\n{}", self.config_head(), body))
    }

    /// Write `<work>/<file>` with exactly `text`.
    pub fn write_raw_config(&self, file: &str, text: &str) -> PathBuf {
        let p = self.path(file);
        fs::write(&p, text).unwrap();
        p
    }

    /// Write `<work>/certkeeper.toml` (see [`Self::write_config_named`]).
    pub fn write_config(&self, body: &str) -> PathBuf {
        self.write_config_named("certkeeper.toml", body)
    }

    /// A `[defaults]` table using the built-in HTTP-01 responder on the
    /// validator's port, plus `extra` lines.
    pub fn defaults_http01(&self, extra: &str) -> String {
        http01_defaults(self.ports.http, extra)
    }

    /// `<work>/certs/<name>.pem` and `<work>/certs/<name>.key`.
    pub fn cert_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.path("certs");
        fs::create_dir_all(&d).unwrap();
        (d.join(format!("{name}.pem")), d.join(format!("{name}.key")))
    }

    /// A `[[cert]]` table with paths from [`Self::cert_paths`] plus `extra` lines.
    pub fn cert_block(&self, name: &str, domains: &[&str], extra: &str) -> String {
        let (cert, key) = self.cert_paths(name);
        let domains: Vec<String> = domains.iter().map(toml_str).collect();
        format!(
            "[[cert]]\nname = {}\ndomains = [{}]\ncert_path = {}\nkey_path = {}\n{extra}\n",
            toml_str(name),
            domains.join(", "),
            toml_str(&cert),
            toml_str(&key),
        )
    }

    fn base_command(&self, cfg: Option<&Path>, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        if let Some(cfg) = cfg {
            cmd.arg("-c").arg(cfg);
        }
        cmd.args(args)
            .current_dir(self.path(""))
            .env_remove("CERTKEEPER_CONFIG")
            .env_remove("CERTKEEPER_FAULT")
            .env_remove("RUST_LOG");
        cmd
    }

    /// Run `certkeeper -c <cfg> <args>`.
    pub fn run(&self, cfg: &Path, args: &[&str]) -> Output {
        self.run_env(cfg, args, &[])
    }

    /// Run `certkeeper -c <cfg> <args>` with extra environment variables.
    pub fn run_env(&self, cfg: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = self.base_command(Some(cfg), args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        self.run_command(cmd, args)
    }

    /// Run `certkeeper <args>` without `-c`.
    pub fn run_no_config(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = self.base_command(None, args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        self.run_command(cmd, args)
    }

    fn run_command(&self, cmd: Command, args: &[&str]) -> Output {
        let start = Instant::now();
        let out = run_with_timeout(cmd, RUN_TIMEOUT);
        self.log.lock().unwrap().push(format!(
            "$ certkeeper {} ({:.2}s)\n{out}",
            args.join(" "),
            start.elapsed().as_secs_f64()
        ));
        out
    }

    /// Start `certkeeper -c <cfg> <args>` in the background.
    pub fn spawn(&self, name: &str, cfg: &Path, args: &[&str]) -> Subprocess {
        self.spawn_env(name, cfg, args, &[])
    }

    /// Start `certkeeper -c <cfg> <args>` in the background with extra environment.
    pub fn spawn_env(
        &self,
        name: &str,
        cfg: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Subprocess {
        let mut cmd = self.base_command(Some(cfg), args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Subprocess::spawn(name, cmd, self.dir.path())
    }

    /// `certkeeper -c <cfg> status --json`, parsed; asserts exit code 0.
    pub fn status_json(&self, cfg: &Path) -> Vec<Value> {
        let out = self.run(cfg, &["status", "--json"]);
        assert_eq!(out.code, 0, "status --json failed:\n{out}");
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{out}"));
        v.as_array()
            .unwrap_or_else(|| panic!("status --json is not an array:\n{out}"))
            .clone()
    }

    /// The `status --json` entry named `name`.
    pub fn status_of(&self, cfg: &Path, name: &str) -> Value {
        self.status_json(cfg)
            .into_iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no status entry named {name}"))
    }

    /// Write a `sh` script to `<work>/<name>`, mode 0755.
    pub fn write_script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Print everything this test ran and Pebble's logs.
    pub fn dump(&self) {
        for entry in self.log.lock().unwrap().iter() {
            eprintln!("{entry}");
        }
        if let Some(p) = &self.pebble {
            p.dump();
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "===== test failed; temp dir {} =====",
                self.root().display()
            );
            self.dump();
        }
    }
}

/// Run a command, capturing stdout/stderr, failing the test after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let h_out = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let h_err = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&h_err.join().unwrap()).into_owned();
            panic!("{cmd:?} did not finish within {timeout:?}; stderr:\n{stderr}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&h_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&h_err.join().unwrap()).into_owned();
    Output {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

// ---------------------------------------------------------------------------
// Certificates and files
// ---------------------------------------------------------------------------

/// A `[defaults]` table using the built-in HTTP-01 responder on
/// `127.0.0.1:<port>`, plus `extra` lines.
///
/// `max_orders_per_cert` is raised: many tests renew one certificate again and again on
/// purpose (crash points, layouts, modes), which the circuit breaker would refuse after
/// three. The breaker itself is tested in `tests/budget.rs`, which sets its own limit.
pub fn http01_defaults(port: u16, extra: &str) -> String {
    format!(
        "[defaults]\nchallenge = \"http-01\"\nhttp01_listen = \"127.0.0.1:{port}\"\nmax_orders_per_cert = 1000\n{extra}\n"
    )
}

/// A TOML basic string for `s` (JSON string escaping is valid TOML).
pub fn toml_str(s: impl AsRef<std::ffi::OsStr>) -> String {
    serde_json::to_string(&s.as_ref().to_string_lossy()).unwrap()
}

/// The PEM blocks in `text`, each with its BEGIN/END lines and a trailing newline.
pub fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END ") {
            if let Some(c) = cur.take() {
                blocks.push(c);
            }
        }
    }
    blocks
}

fn openssl(args: &[&str], path: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .arg("-in")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} -in {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The public key (PEM SPKI) of the first certificate in `cert`.
pub fn cert_pubkey(cert: &Path) -> String {
    openssl(&["x509", "-noout", "-pubkey"], cert)
}

/// The public key (PEM SPKI) of the private key in `key`.
pub fn key_pubkey(key: &Path) -> String {
    openssl(&["pkey", "-pubout"], key)
}

/// Assert that `key` is the private key of the leaf in `cert`.
pub fn assert_key_matches(cert: &Path, key: &Path) {
    assert_eq!(
        cert_pubkey(cert),
        key_pubkey(key),
        "key {} does not match certificate {}",
        key.display(),
        cert.display()
    );
}

/// Does `key` belong to the leaf in `cert`?
pub fn key_matches(cert: &Path, key: &Path) -> bool {
    cert_pubkey(cert) == key_pubkey(key)
}

/// The serial of the leaf, as upper-case hex without leading zeros.
pub fn cert_serial(cert: &Path) -> String {
    let s = openssl(&["x509", "-noout", "-serial"], cert);
    normalize_hex(s.trim().trim_start_matches("serial="))
}

/// Upper-case hex with colons, `0x` and leading zeros removed.
pub fn normalize_hex(s: &str) -> String {
    let s: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_uppercase();
    let t = s.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

/// `openssl pkey -noout -text` of a private key (algorithm and size).
pub fn key_text(key: &Path) -> String {
    openssl(&["pkey", "-noout", "-text"], key)
}

/// A self-signed certificate for `domains` valid from `not_before` to
/// `not_after`, and its key, as PEM.
pub fn self_signed(
    domains: &[&str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(domains.iter().map(|d| d.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Is a process with this pid still alive (and not a zombie)?
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // the state follows the ")" that closes the command name
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
    }
}

/// The leaf's DNS SANs.
pub fn cert_sans(cert: &Path) -> Vec<String> {
    let text = openssl(&["x509", "-noout", "-ext", "subjectAltName"], cert);
    let mut sans: Vec<String> = text
        .split([',', '\n'])
        .filter_map(|part| part.trim().strip_prefix("DNS:").map(str::to_owned))
        .collect();
    sans.sort();
    sans
}

/// The leaf's notAfter.
pub fn cert_not_after(cert: &Path) -> OffsetDateTime {
    openssl_date(&openssl(&["x509", "-noout", "-enddate"], cert), "notAfter=")
}

/// The leaf's notBefore.
pub fn cert_not_before(cert: &Path) -> OffsetDateTime {
    openssl_date(
        &openssl(&["x509", "-noout", "-startdate"], cert),
        "notBefore=",
    )
}

fn openssl_date(text: &str, prefix: &str) -> OffsetDateTime {
    // e.g. "notAfter=Nov 25 10:31:07 2025 GMT"
    let s = text.trim().trim_start_matches(prefix);
    let fmt = time::macros::format_description!(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
    );
    time::PrimitiveDateTime::parse(s, &fmt)
        .unwrap_or_else(|e| panic!("cannot parse openssl date {s:?}: {e}"))
        .assume_utc()
}

/// Parse an RFC 3339 timestamp from a JSON value, with a useful panic.
pub fn rfc3339(v: &Value, what: &str) -> OffsetDateTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    OffsetDateTime::parse(s, &Rfc3339)
        .unwrap_or_else(|e| panic!("{what} = {s:?} is not RFC 3339: {e}"))
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Read a file, with a useful panic.
pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The lines of a text file (none when it is missing), e.g. what a hook
/// appended to a log.
pub fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every regular file under `root`, with its contents.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(&path, out);
            } else if ft.is_file() {
                out.insert(path.clone(), fs::read(&path).unwrap_or_default());
            }
        }
    }
    walk(root, &mut out);
    out
}

/// Poll `cond` every 20 ms for at most `timeout`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

// ---------------------------------------------------------------------------
// A tiny static file server for webroot HTTP-01
// ---------------------------------------------------------------------------

/// Serves files under `root` over plain HTTP/1.0-style responses, one thread
/// per connection. Records each request as `(path, status)`.
pub struct StaticServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub hits: Arc<Mutex<Vec<(String, u16)>>>,
}

impl StaticServer {
    pub fn start(root: &Path, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("static server bind 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let root = root.to_owned();
        let (stop2, hits2) = (stop.clone(), hits.clone());
        let handle = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let root = root.clone();
                let hits = hits2.clone();
                thread::spawn(move || serve_one(stream, &root, &hits));
            }
        });
        Self {
            addr,
            stop,
            handle: Some(handle),
            hits,
        }
    }

    /// Requests answered with 200 whose path starts with `prefix`.
    pub fn ok_hits(&self, prefix: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, s)| *s == 200 && p.starts_with(prefix))
            .count()
    }
}

fn serve_one(mut stream: TcpStream, root: &Path, hits: &Mutex<Vec<(String, u16)>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let req = String::from_utf8_lossy(&buf);
    let mut parts = req.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/").to_owned();
    let rel = path.trim_start_matches('/');
    let file = if method == "GET" && !rel.split('/').any(|c| c == ".." || c.is_empty()) {
        fs::read(root.join(rel)).ok()
    } else {
        None
    };
    let (status, body) = match file {
        Some(b) => (200u16, b),
        None => (404u16, b"not found\n".to_vec()),
    };
    hits.lock().unwrap().push((path, status));
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// A fake "CA" that accepts TCP connections and drops them, counting them
// ---------------------------------------------------------------------------

/// Listens on a port, accepts every connection and closes it at once: an
/// unreachable CA whose contacts can be counted.
pub struct DeadCa {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub connections: Arc<AtomicUsize>,
}

impl DeadCa {
    pub fn start(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop2, conns2) = (stop.clone(), connections.clone());
        let handle = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = stream {
                    conns2.fetch_add(1, Ordering::SeqCst);
                    drop(s);
                }
            }
        });
        Self {
            addr,
            stop,
            handle: Some(handle),
            connections,
        }
    }

    pub fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for DeadCa {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// DNS: ask challtestsrv for TXT records
// ---------------------------------------------------------------------------

/// The number of TXT answers challtestsrv's DNS server on `port` gives for `name`.
pub fn txt_answer_count(port: u16, name: &str) -> u16 {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 16, 0, 1]);
    sock.send_to(&q, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("DNS answer from challtestsrv");
    assert!(n >= 12 && buf[0] == 0x12 && buf[1] == 0x34, "bad DNS reply");
    u16::from_be_bytes([buf[6], buf[7]])
}

// ---------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------

/// Every string found anywhere in a JSON value (array elements, object values).
pub fn json_strings(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// The current time.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}
