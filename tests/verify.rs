//! Verifying that the installed certificate is served (issue 9, part 1), against real
//! servers started by the tests on reserved loopback ports with the files certkeeper
//! writes: nginx (a reload hook that reloads, and one that does nothing), haproxy with
//! `bundle_path`, aiosmtpd with SMTP STARTTLS, a small in-test IMAP responder, and a
//! listener that never speaks.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Runs a server-control command; a missing tool fails the test loudly.
fn run_tool(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An nginx serving `cert`/`key` on 127.0.0.1:`port`, all its files under `dir`.
struct Nginx {
    dir: PathBuf,
}

impl Nginx {
    fn start(dir: &Path, port: u16, cert: &Path, key: &Path) -> Self {
        fs::create_dir_all(dir.join("tmp")).unwrap();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\ndaemon on;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/tmp/body;\n proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fcgi;\n uwsgi_temp_path {d}/tmp/uwsgi;\n scgi_temp_path {d}/tmp/scgi;\n\
             server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {}; return 200 \"ok\"; }}\n}}\n",
            cert.display(),
            key.display()
        );
        fs::write(dir.join("nginx.conf"), conf).unwrap();
        let n = Self {
            dir: dir.to_path_buf(),
        };
        run_tool(&mut n.cmd(&[]));
        n
    }

    fn cmd(&self, extra: &[&str]) -> Command {
        let mut c = Command::new("nginx");
        c.arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(extra);
        c
    }

    /// The reload command line, for a hook.
    fn reload_argv(&self) -> String {
        let s = |p: &Path| toml_str(p);
        format!(
            "[\"nginx\", \"-p\", {}, \"-e\", {}, \"-c\", {}, \"-s\", \"reload\"]",
            s(&self.dir),
            s(&self.dir.join("error.log")),
            s(&self.dir.join("nginx.conf"))
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.cmd(&["-s", "stop"]).output();
    }
}

/// Prints the pass's own verify timings (from install to the verdict), for the report.
fn figures(out: &Output) {
    for l in out.all().lines().filter(|l| l.contains("elapsed_ms")) {
        eprintln!("FIGURE {l}");
    }
}

/// Orders Pebble has added so far (one log line per new order).
fn orders(env: &TestEnv) -> usize {
    env.pebble().log().matches("Added order \"").count()
}

fn endpoint<'a>(row: &'a Value, addr: &str) -> &'a Value {
    row["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints in {row}"))
        .iter()
        .find(|e| e["addr"] == addr)
        .unwrap_or_else(|| panic!("no endpoint {addr} in {row}"))
}

/// Issues `name` once without `verify`, so a server can be started on its files.
fn issue_first(env: &TestEnv, name: &str, extra: &str) {
    let cfg = env.write_config_named(
        "first.toml",
        &format!(
            "{}{}",
            env.defaults_http01(""),
            env.cert_block(name, &[&format!("{name}.example.com")], extra)
        ),
    );
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
}

/// nginx with a hook that really reloads it: after `renew --force` the new certificate
/// is served, and status shows the endpoint live with the new serial.
#[test]
fn nginx_reloaded_is_live() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let (port, _lease) = reserve_ports(1, None);
    issue_first(&env, "www", "");
    let (cert, key) = env.cert_paths("www");
    let nginx = Nginx::start(&env.path("nginx"), port, &cert, &key);
    let addr = format!("127.0.0.1:{port}");
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "www",
            &["www.example.com"],
            &format!("verify = [\"{addr}\"]\nreload = [{}]", nginx.reload_argv())
        )
    ));
    let start = Instant::now();
    let out = env.run(&cfg, &["renew", "--force"]);
    let took = start.elapsed();
    if out.code != 0 {
        env.dump();
    }
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.all()
            .contains("endpoint serves the installed certificate"),
        "{out}"
    );
    let row = env.status_of(&cfg, "www");
    let ep = endpoint(&row, &addr);
    assert_eq!(ep["result"], "live", "{row}");
    assert_eq!(ep["served_serial"], row["serial"], "{row}");
    assert_eq!(row["state"], "valid", "{row}");
    eprintln!("FIGURE renew --force with nginx verify live: {took:?}");
    figures(&out);
}

/// nginx with a hook that does nothing: stale, the hooks run again, still stale, so
/// `not-served` and exit 1; a second `renew` does not order but re-verifies; once nginx
/// really reloads, a run clears it to live.
#[test]
fn nginx_not_reloaded_is_not_served_until_reloaded() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let (port, _lease) = reserve_ports(1, None);
    issue_first(&env, "www", "");
    let (cert, key) = env.cert_paths("www");
    let nginx = Nginx::start(&env.path("nginx"), port, &cert, &key);
    let addr = format!("127.0.0.1:{port}");
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "www",
            &["www.example.com"],
            &format!("verify = [\"{addr}\"]\nverify_timeout = \"3s\"\nreload = [[\"/bin/true\"]]")
        )
    ));
    let start = Instant::now();
    let out = env.run(&cfg, &["renew", "--force"]);
    let took = start.elapsed();
    assert_eq!(out.code, 1, "{out}");
    let row = env.status_of(&cfg, "www");
    let new_serial = row["serial"].as_str().unwrap().to_string();
    let ep = endpoint(&row, &addr);
    assert_eq!(ep["result"], "stale", "{row}");
    assert_ne!(ep["served_serial"], row["serial"], "{row}");
    assert_eq!(row["state"], "not-served", "{row}");
    assert!(
        out.all().contains(&format!(
            "serves serial {}",
            ep["served_serial"].as_str().unwrap()
        )) && out.all().contains(&new_serial),
        "the ERROR names both serials: {out}"
    );
    let table = env.run(&cfg, &["status"]);
    assert!(table.stdout.contains("not-served"), "{table}");
    eprintln!("FIGURE renew --force to not-served (verify_timeout 3s, twice): {took:?}");
    figures(&out);

    let before = orders(&env);
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 1, "still stale: {out}");
    assert_eq!(
        orders(&env),
        before,
        "a not-served certificate is not ordered again"
    );
    assert_eq!(env.status_of(&cfg, "www")["state"], "not-served");

    run_tool(&mut nginx.cmd(&["-s", "reload"]));
    // nginx reloads asynchronously: the single probe of a not-due pass may still see
    // the old workers, in which case the hooks and the retry loop take over.
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(orders(&env), before);
    let row = env.status_of(&cfg, "www");
    assert_eq!(endpoint(&row, &addr)["result"], "live", "{row}");
    assert_eq!(row["state"], "valid", "{row}");
    let m = env.run(
        &cfg,
        &[
            "renew",
            "--metrics-file",
            env.path("m.prom").to_str().unwrap(),
        ],
    );
    assert_eq!(m.code, 0, "{m}");
    let text = fs::read_to_string(env.path("m.prom")).unwrap();
    assert!(
        text.contains(&format!(
            "certkeeper_endpoint_serves_current{{cert=\"www\",endpoint=\"{addr}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("certkeeper_endpoint_not_after_timestamp_seconds{cert=\"www\""),
        "{text}"
    );
}

/// A TLS server config from certkeeper's files, read anew for each connection.
fn tls_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

/// A tiny IMAP responder standing in for Dovecot: `* OK` greeting, `a1 OK` to
/// `a1 STARTTLS`, then TLS (rustls) with certkeeper's files as they are on disk at
/// each connection.
fn imap_responder(listener: TcpListener, cert: PathBuf, key: PathBuf) {
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let (cert, key) = (cert.clone(), key.clone());
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] test ready\r\n")
                    .unwrap();
                let mut line = String::new();
                let mut r = BufReader::new(s.try_clone().unwrap());
                if r.read_line(&mut line).is_err() || !line.starts_with("a1 STARTTLS") {
                    return;
                }
                s.write_all(b"a1 OK Begin TLS negotiation now\r\n").unwrap();
                if !cert.exists() {
                    return;
                }
                let conn = rustls::ServerConnection::new(tls_config(&cert, &key)).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let _ = tls.write_all(b"* OK\r\n");
            });
        }
    });
}

/// A hanging endpoint (a listener in the test that accepts and never speaks) with a
/// short `verify_timeout` is bounded and reported unreachable, without failing the run,
/// and a second certificate in the same run (behind an IMAP STARTTLS responder) is
/// still renewed and verified live.
#[test]
fn hanging_endpoint_is_bounded_and_imap_is_live() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let mut held = Vec::new();
        for c in hang.incoming() {
            held.push(c);
        }
    });
    let imap = TcpListener::bind("127.0.0.1:0").unwrap();
    let imap_addr = imap.local_addr().unwrap().to_string();
    let (mcert, mkey) = env.cert_paths("mail");
    imap_responder(imap, mcert, mkey);
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01("verify_timeout = \"2s\""),
        env.cert_block(
            "www",
            &["www.example.com"],
            &format!("verify = [\"{hang_addr}\"]")
        ),
        env.cert_block(
            "mail",
            &["mail.example.com"],
            &format!("verify = [{{ addr = \"{imap_addr}\", starttls = \"imap\" }}]")
        ),
    ));
    let start = Instant::now();
    let out = env.run(&cfg, &["renew"]);
    let took = start.elapsed();
    if out.code != 0 {
        env.dump();
    }
    assert_eq!(
        out.code, 0,
        "an unreachable endpoint does not fail the renewal: {out}"
    );
    assert!(out.all().contains("endpoint unreachable"), "{out}");
    let www = env.status_of(&cfg, "www");
    let ep = endpoint(&www, &hang_addr);
    assert_eq!(ep["result"], "unreachable", "{www}");
    assert!(
        ep["error"].as_str().unwrap().contains("no answer within"),
        "{www}"
    );
    let mail = env.status_of(&cfg, "mail");
    assert_eq!(endpoint(&mail, &imap_addr)["result"], "live", "{mail}");
    assert_eq!(
        endpoint(&mail, &imap_addr)["served_serial"],
        mail["serial"],
        "{mail}"
    );
    assert!(took < Duration::from_secs(55), "bounded: {took:?}");
    eprintln!("FIGURE renew with a hanging endpoint (verify_timeout 2s): {took:?}");
}

/// A child process killed when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts TCP connections on `port`.
fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// haproxy (master-worker, daemon) serving certkeeper's `bundle_path`; the reload hook
/// sends SIGUSR2 to the master, which re-reads the bundle: live.
#[test]
fn haproxy_bundle_is_live() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let (port, _lease) = reserve_ports(1, None);
    let bundle = env.path("certs/www.bundle.pem");
    let bundle_line = format!("bundle_path = {}", toml_str(&bundle));
    issue_first(&env, "www", &bundle_line);
    let dir = env.path("haproxy");
    fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("haproxy.pid");
    let conf = dir.join("haproxy.cfg");
    fs::write(
        &conf,
        format!(
            "global\n  maxconn 64\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 5s\n  timeout server 5s\n\
             frontend fe\n  bind 127.0.0.1:{port} ssl crt {}\n  http-request return status 200\n",
            bundle.display()
        ),
    )
    .unwrap();
    run_tool(
        Command::new("haproxy")
            .arg("-W")
            .arg("-D")
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(&pidfile),
    );
    let master = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    struct Stop(String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(&self.0).status();
        }
    }
    let _stop = Stop(master.clone());
    wait_listening(port);
    let hook = env.write_script("reload-haproxy", &format!("kill -USR2 {master}"));
    let addr = format!("127.0.0.1:{port}");
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "www",
            &["www.example.com"],
            &format!(
                "{bundle_line}\nverify = [\"{addr}\"]\nreload = [[{}]]",
                toml_str(&hook)
            )
        )
    ));
    let out = env.run(&cfg, &["renew", "--force"]);
    if out.code != 0 {
        env.dump();
    }
    assert_eq!(out.code, 0, "{out}");
    let row = env.status_of(&cfg, "www");
    let ep = endpoint(&row, &addr);
    assert_eq!(ep["result"], "live", "{row}");
    assert_eq!(ep["served_serial"], row["serial"], "{row}");
}

/// The aiosmtpd server: STARTTLS required, the context loaded from certkeeper's files
/// and loaded again on SIGHUP (what `postfix reload` does for Postfix).
const SMTPD: &str = r#"
import signal, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
signal.signal(signal.SIGHUP, lambda *a: ctx.load_cert_chain(cert, key))
c = Controller(Sink(), hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True)
c.start()
print("ready", flush=True)
while True:
    time.sleep(1)
"#;

/// A real SMTP server (Debian's python3-aiosmtpd) with STARTTLS: after the reload hook
/// (SIGHUP) the new certificate is served through STARTTLS: live.
#[test]
fn smtp_starttls_is_live() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let (port, _lease) = reserve_ports(1, None);
    issue_first(&env, "mail", "");
    let (cert, key) = env.cert_paths("mail");
    let script = env.path("smtpd.py");
    fs::write(&script, SMTPD).unwrap();
    let child = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&cert)
        .arg(&key)
        .arg(port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("/usr/bin/python3 (with aiosmtpd) is required: {e}"));
    let mut child = Child(child);
    let mut ready = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(
        ready.trim(),
        "ready",
        "aiosmtpd did not start (is python3-aiosmtpd installed?)"
    );
    let hook = env.write_script("reload-smtpd", &format!("kill -HUP {}", child.0.id()));
    let addr = format!("127.0.0.1:{port}");
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "mail",
            &["mail.example.com"],
            &format!(
                "verify = [{{ addr = \"{addr}\", starttls = \"smtp\", sni = \"mail.example.com\" }}]\nreload = [[{}]]",
                toml_str(&hook)
            )
        )
    ));
    let out = env.run(&cfg, &["renew", "--force"]);
    if out.code != 0 {
        env.dump();
    }
    assert_eq!(out.code, 0, "{out}");
    let row = env.status_of(&cfg, "mail");
    let ep = endpoint(&row, &addr);
    assert_eq!(ep["result"], "live", "{row}");
    assert_eq!(ep["served_serial"], row["serial"], "{row}");
}

/// `certkeeper run`: the daemon's pass over a certificate that is not due still probes
/// its endpoint (nginx serving the installed files) and records it live, without an
/// order; `status` and the daemon agree.
#[test]
fn daemon_pass_verifies_a_not_due_certificate() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let (port, _lease) = reserve_ports(1, None);
    issue_first(&env, "www", "");
    let (cert, key) = env.cert_paths("www");
    let nginx = Nginx::start(&env.path("nginx"), port, &cert, &key);
    let addr = format!("127.0.0.1:{port}");
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "www",
            &["www.example.com"],
            &format!("verify = [\"{addr}\"]\nreload = [{}]", nginx.reload_argv())
        )
    ));
    let before = orders(&env);
    let mut d = common::daemon::Daemon::start(&env, "run", &cfg);
    assert!(
        d.wait_log(
            Duration::from_secs(30),
            "endpoint serves the installed certificate"
        ),
        "{}",
        d.log()
    );
    assert!(
        d.wait_log(Duration::from_secs(10), "verified 1 endpoint(s)"),
        "{}",
        d.log()
    );
    // The record is written right after the pass's log lines.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = env.status_of(&cfg, "www");
        if row["endpoints"].as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(endpoint(&row, &addr)["result"], "live", "{row}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no endpoint result recorded: {row}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(orders(&env), before, "a not-due certificate is not ordered");
}
