//! acme2certifier 0.46.3 (PyPI) as a second real ACME CA: it has ARI
//! (`renewalInfo`), profiles and EAB, which Pebble 2.4.0 lacks. See the end of
//! `/work/shared/TESTING.md` for the recipe and its quirks.
//!
//! The Python venv lives at `<CARGO_TARGET_DIR or target>/a2c-venv` (or
//! `$CERTKEEPER_A2C_VENV`). `scripts/test.sh` creates it beforehand; if it is
//! missing, the first test that needs it creates it under a file lock so that
//! parallel tests and test binaries don't race.
//!
//! Per test: a temp dir and the test's port block (the ACME port serves
//! `https://127.0.0.1:<port>/directory`), a root and an issuing CA with
//! SKI/AKI (so leaves have an ARI certid), an `acme_srv.cfg`, and a small
//! threaded `wsgiref` runner with TLS from the harness's test CA. The server is
//! killed in `Drop`; its logs are printed when a test fails. [`A2c::restart`]
//! starts it again with changed options on the same database.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::{Subprocess, TestEnv};

/// The acme2certifier release the tests run against.
pub const A2C_VERSION: &str = "0.46.3";

/// Written into the venv once `pip install` has succeeded.
const READY_MARKER: &str = ".certkeeper-a2c-ready";

/// Serves the acme2certifier WSGI app over HTTPS, one thread per request.
/// argv: port, TLS certificate, TLS key. `ACME_SRV_CONFIGFILE` names the config.
const RUNNER_PY: &str = r#"import ssl, sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIServer, WSGIRequestHandler, make_server

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
from acme2certifier.share.acme2certifier_wsgi import application


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Handler(WSGIRequestHandler):
    def get_environ(self):
        env = super().get_environ()
        env["HTTPS"] = "on"  # so the URLs it hands out are https://
        return env


httpd = make_server("127.0.0.1", port, application, server_class=Server, handler_class=Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
# The handshake happens in the request's thread, so a stuck client can't block accept().
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
print(f"acme2certifier listening on https://127.0.0.1:{port}", flush=True)
httpd.serve_forever()
"#;

// ---------------------------------------------------------------------------
// The venv
// ---------------------------------------------------------------------------

/// `$CERTKEEPER_A2C_VENV`, else `<CARGO_TARGET_DIR or <repo>/target>/a2c-venv`
/// (the same rule as `scripts/lib.sh`).
pub fn venv_dir() -> PathBuf {
    if let Some(v) = std::env::var_os("CERTKEEPER_A2C_VENV") {
        return PathBuf::from(v);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => manifest.join(t), // an absolute CARGO_TARGET_DIR replaces the base
        None => manifest.join("target"),
    };
    target.join("a2c-venv")
}

static VENV: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The venv's python, creating the venv first if needed (under a file lock).
pub fn venv_python() -> PathBuf {
    let mut cached = VENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cached.as_ref() {
        return p.clone();
    }
    let venv = venv_dir();
    let python = venv.join("bin/python");
    let ready = venv.join(READY_MARKER);
    let is_ready = || fs::read_to_string(&ready).is_ok_and(|v| v.trim() == A2C_VERSION);
    if !is_ready() {
        let parent = venv.parent().expect("venv has a parent");
        fs::create_dir_all(parent).unwrap();
        let lock_path = parent.join("a2c-venv.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
        let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", lock_path.display()));
        if !is_ready() {
            create_venv(&venv);
            fs::write(&ready, A2C_VERSION).unwrap();
        }
    }
    *cached = Some(python.clone());
    python
}

fn create_venv(venv: &Path) {
    eprintln!(
        "creating the acme2certifier venv at {} (scripts/test.sh does this beforehand)",
        venv.display()
    );
    let _ = fs::remove_dir_all(venv);
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .output()
        .unwrap_or_else(|e| panic!("python3 -m venv: {e} (is python3 installed?)"));
    assert!(
        out.status.success(),
        "python3 -m venv {} failed (on Debian: apt-get install python3-venv, or run scripts/test.sh):\n{}{}",
        venv.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            &format!("acme2certifier=={A2C_VERSION}"),
        ])
        .output()
        .expect("pip");
    assert!(
        out.status.success(),
        "pip install acme2certifier=={A2C_VERSION} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// The issuing CA
// ---------------------------------------------------------------------------

/// Write `root.pem`, `issuing.pem` and `issuing.key` into `dir`: a root and
/// an issuing CA below it, both with a subjectKeyIdentifier, the issuing CA
/// with an authorityKeyIdentifier (acme2certifier derives the leaves' AKI,
/// and so their ARI certid, from them).
pub fn write_issuing_ca(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let now = time::OffsetDateTime::now_utc();
    let ca_params = |cn: &str, path_len: Option<u8>| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(30);
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("certkeeper a2c test root", None);
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let issuing_key = KeyPair::generate().unwrap();
    let mut issuing_params = ca_params("certkeeper a2c test issuing CA", Some(0));
    issuing_params.use_authority_key_identifier_extension = true;
    let issuing = issuing_params
        .signed_by(&issuing_key, &root_issuer)
        .unwrap();

    fs::write(dir.join("root.pem"), root.pem()).unwrap();
    fs::write(dir.join("issuing.pem"), issuing.pem()).unwrap();
    fs::write(dir.join("issuing.key"), issuing_key.serialize_pem()).unwrap();
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// Knobs for one acme2certifier instance.
#[derive(Debug, Clone)]
pub struct A2cOpts {
    /// `[Renewalinfo] renewalthreshold_pctg`: the ARI window starts at
    /// notBefore plus this share of the lifetime and ends at notAfter.
    pub renewal_threshold_pctg: u32,
    /// `[Renewalinfo] renewal_window_duration`: cut the window to this many
    /// seconds after its start (not applied with `renewal_force`).
    pub renewal_window_secs: Option<u64>,
    /// `[Renewalinfo] retry_after_timeout`: the Retry-After on renewalInfo, in seconds.
    pub retry_after_secs: u64,
    /// `[Renewalinfo] renewal_force`: every window is "renew now".
    pub renewal_force: bool,
    /// `[Order] profiles` (name, description), offered in the directory.
    pub profiles: Vec<(String, String)>,
    /// EAB through the JSON key file handler: (kid, base64url HMAC key) pairs.
    pub eab_keys: Option<Vec<(String, String)>>,
    /// `[CAhandler] cert_validity_days` (whole days only).
    pub validity_days: u32,
}

impl Default for A2cOpts {
    fn default() -> Self {
        Self {
            renewal_threshold_pctg: 50,
            renewal_window_secs: None,
            retry_after_secs: 300,
            renewal_force: false,
            profiles: vec![
                ("shortlived".into(), "short-lived certificates".into()),
                ("classic".into(), "the usual lifetime".into()),
            ],
            eab_keys: None,
            validity_days: 1,
        }
    }
}

/// A running acme2certifier.
pub struct A2c {
    /// Its HTTPS port on 127.0.0.1.
    pub port: u16,
    /// Config, CA material, database, runner and logs.
    pub dir: PathBuf,
    /// The CA that signed the server's HTTPS certificate (certkeeper's `ca_bundle`).
    pub tls_ca: PathBuf,
    /// The root of the certificates it issues.
    pub root_pem: PathBuf,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    opts: A2cOpts,
    server: Option<Subprocess>,
    /// Every server process so far (the current one last), kept for their logs.
    old_servers: Vec<(String, PathBuf, PathBuf)>,
    starts: u32,
}

fn curl(args: &[&str], url: &str, ca: &Path) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(args)
        .arg(url)
        .output()
        .expect("curl")
}

impl A2c {
    /// Set up `dir` and start the server on `port`, with HTTPS from the given
    /// CA-signed leaf (`tls_cert`, `tls_key`) for 127.0.0.1 / localhost.
    pub fn start(dir: &Path, port: u16, tls: (&Path, &Path, &Path), opts: A2cOpts) -> Self {
        let python = venv_python();
        fs::create_dir_all(dir.join("certs")).unwrap();
        write_issuing_ca(dir);
        fs::write(dir.join("runner.py"), RUNNER_PY).unwrap();
        let mut a2c = Self {
            port,
            dir: dir.to_owned(),
            tls_ca: tls.0.to_owned(),
            root_pem: dir.join("root.pem"),
            tls_cert: tls.1.to_owned(),
            tls_key: tls.2.to_owned(),
            opts,
            server: None,
            old_servers: Vec::new(),
            starts: 0,
        };
        a2c.launch(&python);
        a2c
    }

    /// The options in force.
    pub fn opts(&self) -> &A2cOpts {
        &self.opts
    }

    /// `https://127.0.0.1:<port>/directory`
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/directory", self.port)
    }

    fn config_text(&self) -> String {
        let d = |name: &str| self.dir.join(name).display().to_string();
        let o = &self.opts;
        let profiles: serde_json::Map<String, Value> = o
            .profiles
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut cfg = String::new();
        let _ = write!(
            cfg,
            "[DEFAULT]\ndebug: True\n\n\
             [Nonce]\nnonce_check_disable: False\n\n\
             [DBhandler]\nhandler_module: acme2certifier.dbhandlers.wsgi_handler\ndbfile: {db}\n\n\
             [CAhandler]\nhandler_module: acme2certifier.cahandlers.openssl_ca_handler\n\
             issuing_ca_key: {key}\nissuing_ca_cert: {cert}\nissuing_ca_crl: {crl}\n\
             ca_cert_chain_list: [\"{root}\"]\ncert_save_path: {certs}\ncert_validity_days: {days}\n\n\
             [Account]\ncontact_check_disable: True\n\n\
             [Challenge]\nchallenge_validation_disable: True\n\n\
             [Order]\nprofiles: {profiles}\nprofiles_check_disable: False\n\n\
             [Renewalinfo]\nrenewalthreshold_pctg: {pctg}\nretry_after_timeout: {retry}\nrenewal_force: {force}\n",
            db = d("acme_srv.db"),
            key = d("issuing.key"),
            cert = d("issuing.pem"),
            crl = d("issuing.crl"),
            root = d("root.pem"),
            certs = d("certs"),
            days = o.validity_days,
            profiles = Value::Object(profiles),
            pctg = o.renewal_threshold_pctg,
            retry = o.retry_after_secs,
            force = if o.renewal_force { "True" } else { "False" },
        );
        if let Some(w) = o.renewal_window_secs {
            let _ = writeln!(cfg, "renewal_window_duration: {w}s");
        }
        if let Some(keys) = &o.eab_keys {
            let map: serde_json::Map<String, Value> = keys
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            fs::write(d("eab_keys.json"), Value::Object(map).to_string()).unwrap();
            let _ = write!(
                cfg,
                "\n[EABhandler]\neab_handler_module: acme2certifier.eabhandlers.json_handler\n\
                 key_file: {}\neab_strict_mode: True\n",
                d("eab_keys.json")
            );
        }
        cfg
    }

    fn launch(&mut self, python: &Path) {
        let cfg_path = self.dir.join("acme_srv.cfg");
        fs::write(&cfg_path, self.config_text()).unwrap();
        self.starts += 1;
        let name = format!("a2c-{}", self.starts);
        let mut cmd = Command::new(python);
        cmd.arg(self.dir.join("runner.py"))
            .arg(self.port.to_string())
            .arg(&self.tls_cert)
            .arg(&self.tls_key)
            .current_dir(&self.dir)
            .env("ACME_SRV_CONFIGFILE", &cfg_path)
            .env("ACME2CERTIFIER_I_KNOW_THE_RISK", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("PYTHONPATH");
        let mut server = Subprocess::spawn(&name, cmd, &self.dir);
        self.old_servers.push((
            name.clone(),
            server.stdout_path.clone(),
            server.stderr_path.clone(),
        ));
        let timeout = Duration::from_secs(30);
        let start = Instant::now();
        loop {
            let out = curl(
                &["-f", "-o", "/dev/null"],
                &self.directory_url(),
                &self.tls_ca,
            );
            if out.status.success() {
                break;
            }
            if !server.is_running() || start.elapsed() > timeout {
                server.dump();
                panic!(
                    "acme2certifier ({name}) did not answer on {} within {timeout:?}",
                    self.directory_url()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.server = Some(server);
    }

    /// Stop the server, apply `change` to the options, rewrite the config and
    /// start it again on the same port and database (accounts, orders and
    /// certificates survive).
    pub fn restart(&mut self, change: impl FnOnce(&mut A2cOpts)) {
        if let Some(mut s) = self.server.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if s.wait_timeout(Duration::from_secs(5)).is_none() {
                drop(s); // SIGKILL + reap
            }
        }
        change(&mut self.opts);
        self.launch(&venv_python());
    }

    /// GET `url` (trusting the server's TLS CA): (status, headers, body).
    pub fn get(&self, url: &str) -> (u16, String, String) {
        let hdr = self
            .dir
            .join(format!("curl-headers-{}", std::process::id()));
        let out = curl(
            &["-D", &hdr.display().to_string(), "-w", "\n%{http_code}"],
            url,
            &self.tls_ca,
        );
        assert!(
            out.status.success(),
            "GET {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        let headers = fs::read_to_string(&hdr).unwrap_or_default();
        (code.trim().parse().unwrap(), headers, body.to_owned())
    }

    /// The directory, parsed.
    pub fn directory(&self) -> Value {
        let (code, _, body) = self.get(&self.directory_url());
        assert_eq!(code, 200, "GET /directory: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `GET <renewalInfo>/<certid>` for the leaf (first certificate) in
    /// `cert_pem`: the parsed body and the Retry-After header in seconds.
    pub fn renewal_info(&self, cert_pem: &Path) -> (Value, Option<u64>) {
        let base = self.directory()["renewalInfo"]
            .as_str()
            .expect("the directory has renewalInfo")
            .to_owned();
        let url = format!("{base}/{}", ari_cert_id(cert_pem));
        let (code, headers, body) = self.get(&url);
        assert_eq!(code, 200, "GET {url}: {body}");
        let retry = headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("retry-after")
                .then(|| v.trim().parse().ok())?
        });
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("renewalInfo body is not JSON ({e}): {body}"));
        (v, retry)
    }

    /// Run one SQL query on the CA's database; rows as `|`-joined lines.
    pub fn sql(&self, query: &str) -> String {
        let script = "import sqlite3, sys\n\
                      con = sqlite3.connect(sys.argv[1])\n\
                      for row in con.execute(sys.argv[2]):\n    \
                          print('|'.join('' if c is None else str(c) for c in row))\n";
        let out = Command::new(venv_python())
            .arg("-c")
            .arg(script)
            .arg(self.dir.join("acme_srv.db"))
            .arg(query)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sql {query:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Print every server process's logs.
    pub fn dump(&self) {
        for (name, out, err) in &self.old_servers {
            eprintln!(
                "===== {name} stdout =====\n{}",
                fs::read_to_string(out).unwrap_or_default()
            );
            let err = fs::read_to_string(err).unwrap_or_default();
            // Debug logging is verbose; the tail is what matters.
            let lines: Vec<&str> = err.lines().collect();
            let from = lines.len().saturating_sub(200);
            eprintln!(
                "===== {name} stderr (last {} of {} lines) =====\n{}",
                lines.len() - from,
                lines.len(),
                lines[from..].join("\n")
            );
        }
        eprintln!("===== acme2certifier dir: {} =====", self.dir.display());
    }
}

impl Drop for A2c {
    fn drop(&mut self) {
        self.server.take(); // kill + reap
        if thread::panicking() {
            self.dump();
        }
    }
}

/// The ARI certificate identifier (RFC 9773 section 4.1) of the first
/// certificate in `cert_pem`: base64url(AKI keyIdentifier) "." base64url(serial).
pub fn ari_cert_id(cert_pem: &Path) -> String {
    use x509_parser::extensions::ParsedExtension;
    let pem = fs::read(cert_pem).unwrap_or_else(|e| panic!("read {}: {e}", cert_pem.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("a PEM certificate");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        })
        .expect("the leaf has an authorityKeyIdentifier");
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(aki),
        URL_SAFE_NO_PAD.encode(cert.tbs_certificate.raw_serial())
    )
}

// ---------------------------------------------------------------------------
// A test environment with acme2certifier as its CA
// ---------------------------------------------------------------------------

/// A [`TestEnv`] whose configs point at a running acme2certifier. Derefs to
/// the `TestEnv`. Field order matters: the server is stopped (and its logs
/// printed on failure) before the temp dir goes away.
pub struct A2cEnv {
    /// The CA.
    pub a2c: A2c,
    /// Temp dir, ports, config writers and the certkeeper runner.
    pub env: TestEnv,
}

impl A2cEnv {
    /// A fresh temp dir and port block with acme2certifier on the block's ACME
    /// port, serving HTTPS with a leaf from the env's test CA (`ca_bundle`).
    pub fn start(opts: A2cOpts) -> Self {
        let mut env = TestEnv::new();
        let ca = env.ca_bundle(); // writes <root>/ca.pem, leaf.pem, leaf.key
        let root = env.root().to_owned();
        let a2c = A2c::start(
            &root.join("a2c"),
            env.ports.acme,
            (&ca, &root.join("leaf.pem"), &root.join("leaf.key")),
            opts,
        );
        env.directory = a2c.directory_url();
        Self { a2c, env }
    }
}

impl Deref for A2cEnv {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.env
    }
}
