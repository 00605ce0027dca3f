//! Generates a large certificate inventory for `scripts/bench-scale.sh`: openssl takes
//! minutes for 10,000 certificates, this takes seconds (release build).
//!
//! ```text
//! cargo run --release --example gen_inventory -- OUT_DIR COUNT [--days 90]
//!     [--directory URL] [--ca-bundle PEM] [--http01-listen ADDR]
//!     [--certbot CONFIG_DIR --certbot-account ID] [--certbot-http01-port PORT]
//! ```
//!
//! It writes, under OUT_DIR:
//! - `ca.pem` and `ca.key`: a local CA of the benchmark's own;
//! - `certs/n<i>.pem` (leaf + CA, what certkeeper installs) and `certs/n<i>.key` (mode
//!   0600) for i in 1..=COUNT: P-256 leaves valid `--days` days (from an hour ago), SAN
//!   `n<i>.example`, with an authority key identifier, like a CA's real ones;
//! - `certkeeper.toml` with COUNT `[[cert]]` entries, `state_dir = OUT_DIR/state`,
//!   HTTP-01 on `--http01-listen` and `acme.directory` from `--directory` (or the
//!   `GEN_DIRECTORY` environment variable);
//! - with `--certbot`, certbot lineages for the same certificates in that config dir
//!   (`renewal/n<i>.conf`, `archive/n<i>/*1.pem`, `live/n<i>/*.pem` symlinks), so that a
//!   `certbot renew` pass can be measured over thousands without issuing them.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// The parsed command line.
struct Args {
    out: PathBuf,
    count: usize,
    days: i64,
    directory: String,
    ca_bundle: Option<String>,
    http01_listen: String,
    certbot: Option<PathBuf>,
    certbot_account: String,
    certbot_http01_port: String,
}

fn usage() -> String {
    "usage: gen_inventory OUT_DIR COUNT [--days 90] [--directory URL] [--ca-bundle PEM] \
     [--http01-listen 127.0.0.1:5002] [--certbot CONFIG_DIR --certbot-account ID] \
     [--certbot-http01-port PORT]"
        .into()
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut pos = Vec::new();
    let mut a = Args {
        out: PathBuf::new(),
        count: 0,
        days: 90,
        directory: std::env::var("GEN_DIRECTORY")
            .unwrap_or_else(|_| "https://127.0.0.1:1/dir".into()),
        ca_bundle: None,
        http01_listen: "127.0.0.1:5002".into(),
        certbot: None,
        certbot_account: "0".repeat(32),
        certbot_http01_port: "80".into(),
    };
    while let Some(arg) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--days" => a.days = val()?.parse().map_err(|e| format!("--days: {e}"))?,
            "--directory" => a.directory = val()?,
            "--ca-bundle" => a.ca_bundle = Some(val()?),
            "--http01-listen" => a.http01_listen = val()?,
            "--certbot" => a.certbot = Some(PathBuf::from(val()?)),
            "--certbot-account" => a.certbot_account = val()?,
            "--certbot-http01-port" => a.certbot_http01_port = val()?,
            "-h" | "--help" => return Err(usage()),
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}\n{}", usage())),
            _ => pos.push(arg),
        }
    }
    let [out, count] = <[String; 2]>::try_from(pos).map_err(|_| usage())?;
    a.out = PathBuf::from(out);
    a.count = count.parse().map_err(|e| format!("COUNT: {e}"))?;
    Ok(a)
}

/// The benchmark's CA: its PEM and the issuer that signs the leaves.
fn make_ca(now: OffsetDateTime) -> Result<(String, String, Issuer<'static, KeyPair>), String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "certkeeper bench-scale CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(3650);
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    let key_pem = key.serialize_pem();
    Ok((cert.pem(), key_pem, Issuer::new(p, key)))
}

/// One leaf `n<i>.example`: (leaf PEM, key PEM).
fn make_leaf(
    i: usize,
    issuer: &Issuer<'_, KeyPair>,
    now: OffsetDateTime,
    days: i64,
) -> Result<(String, String), String> {
    let name = format!("n{i}.example");
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = CertificateParams::new(vec![name.clone()]).map_err(|e| e.to_string())?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let mut serial = vec![0x01];
    serial.extend_from_slice(&(i as u64).to_be_bytes());
    p.serial_number = Some(SerialNumber::from(serial));
    p.not_before = now - Duration::hours(1);
    p.not_after = p.not_before + Duration::days(days);
    let cert = p.signed_by(&key, issuer).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `data` to `path` with `mode`, created fresh.
fn write_mode(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
    };
    // Only an existing file costs an unlink (a fresh OUT_DIR is the common case).
    open()
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                fs::remove_file(path).and_then(|()| open())
            } else {
                Err(e)
            }
        })
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// certbot's lineage for certificate `i`: renewal conf, archive files, live symlinks.
fn write_lineage(
    a: &Args,
    dir: &Path,
    i: usize,
    leaf: &str,
    ca: &str,
    key: &str,
) -> Result<(), String> {
    let name = format!("n{i}");
    let archive = dir.join("archive").join(&name);
    let live = dir.join("live").join(&name);
    for d in [&archive, &live] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let full = format!("{leaf}{ca}");
    for (file, data, mode) in [
        ("cert", leaf, 0o644),
        ("chain", ca, 0o644),
        ("fullchain", full.as_str(), 0o644),
        ("privkey", key, 0o600),
    ] {
        write_mode(&archive.join(format!("{file}1.pem")), data.as_bytes(), mode)?;
        let link = live.join(format!("{file}.pem"));
        let _ = fs::remove_file(&link);
        symlink(format!("../../archive/{name}/{file}1.pem"), &link)
            .map_err(|e| format!("{}: {e}", link.display()))?;
    }
    let d = dir.display();
    let conf = format!(
        "# renew_before_expiry = 30 days\nversion = 2.1.0\narchive_dir = {d}/archive/{name}\n\
         cert = {d}/live/{name}/cert.pem\nprivkey = {d}/live/{name}/privkey.pem\n\
         chain = {d}/live/{name}/chain.pem\nfullchain = {d}/live/{name}/fullchain.pem\n\n\
         # Options used in the renewal process\n[renewalparams]\naccount = {acct}\n\
         authenticator = standalone\nserver = {srv}\nkey_type = ecdsa\nelliptic_curve = secp256r1\n\
         pref_challs = http-01,\nhttp01_port = {port}\nhttp01_address = 127.0.0.1\n",
        acct = a.certbot_account,
        srv = a.directory,
        port = a.certbot_http01_port,
    );
    write_mode(
        &dir.join("renewal").join(format!("{name}.conf")),
        conf.as_bytes(),
        0o644,
    )
}

/// Generates certificates `range` (1-based) and writes their files.
fn generate(
    a: &Args,
    range: std::ops::Range<usize>,
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: &str,
    now: OffsetDateTime,
) -> Result<(), String> {
    let certs = a.out.join("certs");
    for i in range {
        let (leaf, key) = make_leaf(i, issuer, now, a.days)?;
        write_mode(
            &certs.join(format!("n{i}.pem")),
            format!("{leaf}{ca_pem}").as_bytes(),
            0o644,
        )?;
        write_mode(&certs.join(format!("n{i}.key")), key.as_bytes(), 0o600)?;
        if let Some(dir) = &a.certbot {
            write_lineage(a, dir, i, &leaf, ca_pem, &key)?;
        }
    }
    Ok(())
}

/// certkeeper.toml with one `[[cert]]` per certificate.
fn config(a: &Args) -> String {
    let out = a.out.display();
    let mut s = format!(
        "# Written by examples/gen_inventory.rs ({} certificates).\nstate_dir = \"{out}/state\"\n\n\
         [acme]\ndirectory = \"{}\"\n",
        a.count, a.directory
    );
    if let Some(b) = &a.ca_bundle {
        let _ = writeln!(s, "ca_bundle = \"{b}\"");
    }
    let _ = write!(
        s,
        "contact = [\"mailto:bench@bench.test\"]\n\n[defaults]\nrenew_before = \"33%\"\n\
         key_type = \"ecdsa-p256\"\nchallenge = \"http-01\"\nhttp01_listen = \"{}\"\n",
        a.http01_listen
    );
    for i in 1..=a.count {
        let _ = write!(
            s,
            "\n[[cert]]\nname = \"n{i}\"\ndomains = [\"n{i}.example\"]\n\
             cert_path = \"{out}/certs/n{i}.pem\"\nkey_path = \"{out}/certs/n{i}.key\"\n"
        );
    }
    s
}

fn run(a: &Args) -> Result<(), String> {
    let now = OffsetDateTime::now_utc();
    fs::create_dir_all(a.out.join("certs")).map_err(|e| format!("{}: {e}", a.out.display()))?;
    if let Some(dir) = &a.certbot {
        fs::create_dir_all(dir.join("renewal")).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let (ca_pem, ca_key, issuer) = make_ca(now)?;
    write_mode(&a.out.join("ca.pem"), ca_pem.as_bytes(), 0o644)?;
    write_mode(&a.out.join("ca.key"), ca_key.as_bytes(), 0o600)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = a.count.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lo = 1 + t * per;
                let hi = (lo + per).min(a.count + 1);
                let (issuer, ca_pem) = (&issuer, ca_pem.as_str());
                sc.spawn(move || generate(a, lo..hi.max(lo), issuer, ca_pem, now))
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| "a generator thread panicked".to_string())?
        })
    })?;
    fs::write(a.out.join("certkeeper.toml"), config(a)).map_err(|e| format!("certkeeper.toml: {e}"))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_inventory: {e}");
            ExitCode::FAILURE
        }
    }
}
