//! The config's unit tests: parsing, validation errors (file:line:key), aliasing and
//! strict_modes, exercised through the public entry points.

use super::*;
use crate::check::{paths as check_paths_of, strict_mode_violations_as};
use std::path::Path;
use std::time::Duration;

const BASE: &str = r#"
state_dir = "/tmp/ck-state"
[acme]
directory = "letsencrypt"
contact = ["mailto:ops@example.com"]

[defaults]
http01_listen = "[::]:80"

[[cert]]
name = "www"
domains = ["example.com", "www.example.com"]
cert_path = "/etc/tls/www.pem"
key_path = "/etc/tls/www.key"
"#;

fn parse(src: &str) -> Result<Config, ConfigErrors> {
    Config::from_str_at(src, Path::new("test.toml"), Path::new("/etc/certkeeper"))
}

fn first_err(src: &str) -> ConfigError {
    parse(src).unwrap_err().0.remove(0)
}

#[test]
fn valid_config_gets_defaults() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.acme.directory, LETSENCRYPT);
    let w = &c.certs[0];
    assert_eq!(w.renew_before, RenewBefore::Fraction(1.0 / 3.0));
    assert_eq!(w.key_type, KeyType::EcdsaP256);
    assert_eq!(w.key_mode, 0o600);
    assert_eq!(w.cert_mode, 0o644);
    assert_eq!(w.hook_timeout, Duration::from_secs(60));
    assert_eq!(
        w.challenge,
        Challenge::Http01Listen("[::]:80".parse().unwrap())
    );
    assert_eq!(w.loc("cert_path").line, 13);
}

#[test]
fn acme_timeouts_default_parse_and_must_be_ordered() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.acme.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    assert_eq!(c.acme.order_timeout, DEFAULT_ORDER_TIMEOUT);
    let with = |extra: &str| BASE.replace("[defaults]", &format!("{extra}\n[defaults]"));
    let c = parse(&with("request_timeout = \"2s\"\norder_timeout = \"1m\"")).unwrap();
    assert_eq!(c.acme.request_timeout, Duration::from_secs(2));
    assert_eq!(c.acme.order_timeout, Duration::from_secs(60));
    let e = first_err(&with("request_timeout = \"5m\"\norder_timeout = \"1m\""));
    assert_eq!(e.key, "acme.order_timeout");
    assert!(e.message.contains("longer than request_timeout"), "{e}");
    let e = first_err(&with("request_timeout = \"30\""));
    assert!(e.message.contains("unit"), "{e}");
}

#[test]
fn relative_paths_resolve_against_config_dir() {
    let src = BASE.replace("/etc/tls/www.pem", "tls/www.pem");
    let c = parse(&src).unwrap();
    assert_eq!(
        c.certs[0].cert_path,
        Path::new("/etc/certkeeper/tls/www.pem")
    );
}

#[test]
fn cert_overrides_defaults() {
    let src = format!(
        "{BASE}renew_before = \"30d\"\nkey_type = \"rsa-2048\"\nhttp01_webroot = \"/var/www\"\nkey_mode = \"0640\"\n"
    );
    let c = parse(&src).unwrap();
    let w = &c.certs[0];
    assert_eq!(
        w.renew_before,
        RenewBefore::Remaining(Duration::from_secs(30 * 86400))
    );
    assert_eq!(w.key_type, KeyType::Rsa2048);
    assert_eq!(w.challenge, Challenge::Http01Webroot("/var/www".into()));
    assert_eq!(w.key_mode, 0o640);
}

#[test]
fn error_table() {
    // (mutation appended to BASE or replacement, expected line, expected key fragment, message fragment)
    let cases: &[(&str, usize, &str, &str)] = &[
        ("bogus = 1\n", 15, "cert[0].bogus", "unknown field"),
        ("renew_before = \"33\"\n", 15, "renew_before", "unit"),
        (
            "renew_before = \"150%\"\n",
            15,
            "renew_before",
            "less than 100%",
        ),
        ("key_type = \"dsa\"\n", 15, "key_type", "unknown key type"),
        ("hook_timeout = 5\n", 15, "hook_timeout", "string"),
        (
            "key_mode = \"0644\"\n",
            15,
            "cert[www].key_mode",
            "readable by everyone",
        ),
        (
            "challenge = \"dns-01\"\n",
            15,
            "cert[www].challenge",
            "dns01_hook",
        ),
        ("reload = [[]]\n", 15, "cert[www].reload", "non-empty argv"),
        (
            "[[cert]]\nname = \"www\"\ndomains = [\"a.example\"]\ncert_path = \"/x\"\nkey_path = \"/y\"\n",
            16,
            "cert[1].name",
            "duplicate",
        ),
    ];
    for (add, line, key, msg) in cases {
        let src = format!("{BASE}{add}");
        let e = first_err(&src);
        assert_eq!(e.line, *line, "{add:?}: {e}");
        assert!(e.key.contains(key), "{add:?}: key {:?} in {e}", e.key);
        assert!(e.message.contains(msg), "{add:?}: message in {e}");
        assert!(
            e.to_string().starts_with(&format!("test.toml:{line}:")),
            "{e}"
        );
    }
}

#[test]
fn reload_signal_and_metrics_listen() {
    let src = BASE.replace("[acme]", "metrics_listen = \"127.0.0.1:9814\"\n[acme]")
        + "reload_signal = { pidfile = \"/run/nginx.pid\", signal = \"USR1\" }\n";
    let c = parse(&src).unwrap();
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9814".parse().unwrap()));
    let rs = c.certs[0].reload_signal.clone().unwrap();
    assert_eq!(rs.signal, nix::sys::signal::Signal::SIGUSR1);
    assert_eq!(rs.pidfile, Path::new("/run/nginx.pid"));
    let bad = format!("{BASE}reload_signal = {{ pidfile = \"/x\", signal = \"NOPE\" }}\n");
    let e = first_err(&bad);
    assert!(
        e.key.ends_with("reload_signal") && e.message.contains("NOPE"),
        "{e}"
    );
    assert_eq!(
        parse_signal("hup").unwrap(),
        nix::sys::signal::Signal::SIGHUP
    );
    assert_eq!(
        parse_signal("15").unwrap(),
        nix::sys::signal::Signal::SIGTERM
    );
}

#[test]
fn malformed_toml_names_line() {
    let e = first_err("state_dir = \"/x\"\n[acme\n");
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn wrong_type_names_key() {
    let src = BASE.replace(
        "domains = [\"example.com\", \"www.example.com\"]",
        "domains = \"example.com\"",
    );
    let e = first_err(&src);
    assert_eq!(e.line, 12, "{e}");
    assert!(e.key.ends_with("domains"), "{e}");
}

#[test]
fn wildcard_needs_dns01() {
    let src = BASE.replace("\"www.example.com\"", "\"*.example.com\"");
    let e = first_err(&src);
    assert!(e.message.contains("dns-01"), "{e}");
}

#[test]
fn eab_secret_is_never_shown() {
    let src = BASE.replace(
        "contact = [",
        "eab_kid = \"kid-1\"\neab_hmac_key = \"c2VjcmV0LXZhbHVlLTEyMw\"\ncontact = [",
    );
    let c = parse(&src).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("c2VjcmV0LXZhbHVlLTEyMw"), "{dbg}");
    assert!(dbg.contains("***"));
    let bad = BASE.replace(
        "contact = [",
        "eab_kid = \"k\"\neab_hmac_key = \"not base64!!\"\ncontact = [",
    );
    let e = first_err(&bad);
    assert!(!e.to_string().contains("not base64!!"), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(
        parse_duration("1d12h").unwrap(),
        Duration::from_secs(129600)
    );
    assert!(parse_duration("12").is_err());
    assert!(parse_duration("0s").is_err());
    assert!(parse_duration("5y").is_err());
}

#[test]
fn renew_before_parses() {
    assert_eq!(
        "33%".parse::<RenewBefore>().unwrap(),
        RenewBefore::Fraction(0.33)
    );
    assert_eq!(
        "30d".parse::<RenewBefore>().unwrap(),
        RenewBefore::Remaining(Duration::from_secs(30 * 86400))
    );
    assert!("0%".parse::<RenewBefore>().is_err());
}

#[test]
fn shipped_examples_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.extension() == Some(std::ffi::OsStr::new("toml")) {
            Config::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs found in {}", dir.display());
}

fn two_certs(dir: &Path, a: &str, b: &str) -> String {
    format!(
        "state_dir = \"{d}/state\"\n[acme]\ndirectory = \"letsencrypt\"\n[defaults]\nhttp01_listen = \"[::]:80\"\n\
         [[cert]]\nname = \"one\"\ndomains = [\"a.example\"]\ncert_path = \"{a}\"\nkey_path = \"{d}/one.key\"\n\
         [[cert]]\nname = \"two\"\ndomains = [\"b.example\"]\ncert_path = \"{d}/two.pem\"\nkey_path = \"{b}\"\n",
        d = dir.display()
    )
}

#[test]
fn dotdot_alias_is_refused_at_load_naming_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("out")).unwrap();
    let a = d.join("out/a.crt");
    let b = d.join("out/../out/a.crt");
    let src = two_certs(d, a.to_str().unwrap(), b.to_str().unwrap());
    let errs = Config::from_str_at(&src, Path::new("test.toml"), d)
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert_eq!(e.key, "cert[two].key_path", "{e}");
    assert_eq!(e.line, 15, "{e}");
    let m = e.to_string();
    assert!(m.contains("out/../out/a.crt"), "{m}");
    assert!(
        m.contains(&format!("cert[one].cert_path = {}", a.display())),
        "{m}"
    );
    assert!(m.contains("test.toml:9"), "{m}");
    assert!(m.contains("same file"), "{m}");
}

#[test]
fn alias_through_a_directory_that_does_not_exist_yet_is_caught_lexically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = d.join("new/x/a.crt");
    let b = d.join("new/./y/../x/a.crt");
    let src = two_certs(d, a.to_str().unwrap(), b.to_str().unwrap());
    let e = Config::from_str_at(&src, Path::new("t.toml"), d).unwrap_err();
    assert!(e.to_string().contains("same file"), "{e}");
}

#[test]
fn symlinked_directory_alias_is_refused_at_load_and_in_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("real")).unwrap();
    std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
    let a = d.join("real/a.crt");
    let b = d.join("link/a.crt");
    let src = two_certs(d, a.to_str().unwrap(), b.to_str().unwrap());
    let e = Config::from_str_at(&src, Path::new("t.toml"), d).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("link/a.crt") && m.contains("real/a.crt"), "{m}");
    assert!(
        m.contains("cert[one].cert_path") && m.contains("cert[two].key_path"),
        "{m}"
    );

    // A symlink created after load: check_paths finds it.
    let b = d.join("later/a.crt");
    let src = two_certs(d, a.to_str().unwrap(), b.to_str().unwrap());
    let cfg = Config::from_str_at(&src, Path::new("t.toml"), d).unwrap();
    assert!(
        check_paths_of(&cfg)
            .iter()
            .all(|e| !e.message.contains("same file"))
    );
    std::os::unix::fs::symlink(d.join("real"), d.join("later")).unwrap();
    let probs = check_paths_of(&cfg);
    assert!(
        probs
            .iter()
            .any(|e| e.key == "cert[two].key_path" && e.message.contains("same file")),
        "{probs:?}"
    );
}

#[test]
fn alias_within_one_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("out")).unwrap();
    let src = two_certs(d, "out/a.crt", "out/b.key").replace(
        &format!("key_path = \"{}/one.key\"", d.display()),
        "key_path = \"out/../out/a.crt\"",
    );
    let e = Config::from_str_at(&src, Path::new("t.toml"), d).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("cert[one].key_path") && m.contains("cert[one].cert_path"),
        "{m}"
    );
}

#[test]
fn ip_literals_are_refused_with_rfc8738_message() {
    for ip in ["127.0.0.1", "::1", "[::1]", "2001:db8::1"] {
        let src = BASE.replace("\"www.example.com\"", &format!("{ip:?}"));
        let e = first_err(&src);
        assert_eq!(e.key, "cert[www].domains", "{ip}: {e}");
        assert!(
            e.message
                .contains("IP address identifiers (RFC 8738) are not supported"),
            "{ip}: {e}"
        );
    }
    // Names that merely look numeric-ish are still DNS names.
    let src = BASE.replace("\"www.example.com\"", "\"1.2.3.example\"");
    parse(&src).unwrap();
}

fn strict_cfg(d: &Path, strict: bool) -> Config {
    let src = format!(
        "strict_modes = {strict}\nstate_dir = \"{d}/state\"\n[acme]\ndirectory = \"letsencrypt\"\n[defaults]\nhttp01_listen = \"[::]:80\"\n\
         [[cert]]\nname = \"www\"\ndomains = [\"a.example\"]\ncert_path = \"{d}/out/a.pem\"\nkey_path = \"{d}/out/a.key\"\n\
         reload = [[\"{d}/hooks/reload.sh\"]]\n",
        d = d.display()
    );
    Config::from_str_at(&src, &d.join("ck.toml"), d).unwrap()
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree where every path certkeeper trusts is root-owned 0755/0644.
fn strict_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chmod(d, 0o755);
    for sub in ["out", "hooks", "state"] {
        std::fs::create_dir(d.join(sub)).unwrap();
        chmod(&d.join(sub), 0o755);
    }
    std::fs::write(d.join("hooks/reload.sh"), "#!/bin/sh\n").unwrap();
    chmod(&d.join("hooks/reload.sh"), 0o755);
    std::fs::write(d.join("ck.toml"), "").unwrap();
    chmod(&d.join("ck.toml"), 0o644);
    dir
}

/// Only violations inside the test's own tree: the tree's ancestors (e.g. /tmp) are
/// the machine's business.
fn inside(v: &[ConfigError], d: &Path) -> Vec<ConfigError> {
    v.iter()
        .filter(|e| {
            e.message
                .contains(&format!("strict_modes: {}", d.display()))
        })
        .cloned()
        .collect()
}

#[test]
fn strict_modes_accepts_root_owned_tree_and_is_off_by_default_or_when_not_root() {
    let dir = strict_tree();
    let d = dir.path();
    let cfg = strict_cfg(d, true);
    assert!(cfg.strict_modes);
    let v = strict_mode_violations_as(&cfg, &d.join("ck.toml"), true);
    assert!(inside(&v, d).is_empty(), "{v:?}");
    chmod(&d.join("out"), 0o777);
    assert!(!strict_mode_violations_as(&cfg, &d.join("ck.toml"), true).is_empty());
    assert!(strict_mode_violations_as(&cfg, &d.join("ck.toml"), false).is_empty());
    let off = strict_cfg(d, false);
    assert!(strict_mode_violations_as(&off, &d.join("ck.toml"), true).is_empty());
    assert!(!parse(BASE).unwrap().strict_modes);
}

#[test]
fn strict_modes_names_path_mode_owner_and_key() {
    let dir = strict_tree();
    let d = dir.path();
    let cfg = strict_cfg(d, true);
    let cases: &[(&str, u32, &str, &str)] = &[
        ("out", 0o777, "cert[www].cert_path", "world-writable"),
        ("out", 0o775, "cert[www].cert_path", "group-writable"),
        (
            "hooks/reload.sh",
            0o775,
            "cert[www].reload",
            "group-writable",
        ),
        ("hooks", 0o757, "cert[www].reload", "world-writable"),
        ("ck.toml", 0o666, "config", "world-writable"),
        ("state", 0o770, "state_dir", "group-writable"),
        ("out", 0o1777, "cert[www].cert_path", "sticky, still unsafe"),
    ];
    for (rel, mode, key, why) in cases {
        let p = d.join(rel);
        let before = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777
        };
        chmod(&p, *mode);
        let v = inside(
            &strict_mode_violations_as(&cfg, &d.join("ck.toml"), true),
            d,
        );
        chmod(&p, before);
        assert_eq!(v.len(), 1, "{rel} {mode:o}: {v:?}");
        let e = &v[0];
        assert_eq!(e.key, *key, "{e}");
        let m = e.to_string();
        assert!(m.contains(&format!("{} ", p.display())), "{m}");
        assert!(m.contains(&format!("mode {mode:04o}")), "{m}");
        assert!(m.contains("owned by root (uid 0)"), "{m}");
        assert!(m.contains(why), "{m}");
    }
    // An ancestor component is named, with the path it leads to.
    chmod(d, 0o777);
    let v = inside(
        &strict_mode_violations_as(&cfg, &d.join("ck.toml"), true),
        d,
    );
    chmod(d, 0o755);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].message.contains("on the way to"), "{}", v[0]);
}

#[test]
fn strict_modes_flags_files_not_owned_by_root() {
    let dir = strict_tree();
    let d = dir.path();
    let cfg = strict_cfg(d, true);
    nix::unistd::chown(
        &d.join("hooks/reload.sh"),
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
    )
    .unwrap();
    let v = inside(
        &strict_mode_violations_as(&cfg, &d.join("ck.toml"), true),
        d,
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].message.contains("not owned by root") && v[0].message.contains("uid 65534"),
        "{}",
        v[0]
    );
}

/// The order limits: Let's Encrypt's defaults, "N/DURATION", "unlimited", the breaker in
/// `[defaults]` and per certificate, and bad values as located errors.
#[test]
fn order_limits_default_parse_and_errors_name_the_line() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.acme.max_new_orders, Some(OrderLimit::default()));
    assert!(!c.acme.replaces_exempt);
    assert_eq!(c.certs[0].max_orders_per_cert, DEFAULT_MAX_ORDERS_PER_CERT);

    let acme = |extra: &str| BASE.replace("[defaults]", &format!("{extra}\n[defaults]"));
    let c = parse(&acme("max_new_orders = \"2/20s\"\nreplaces_exempt = true")).unwrap();
    assert_eq!(
        c.acme.max_new_orders,
        Some(OrderLimit {
            orders: 2,
            window: Duration::from_secs(20)
        })
    );
    assert!(c.acme.replaces_exempt);
    let c = parse(&acme("max_new_orders = \"unlimited\"")).unwrap();
    assert_eq!(c.acme.max_new_orders, None);

    // Line 7 is the inserted key.
    let e = first_err(&acme("max_new_orders = \"300\""));
    assert!(
        e.to_string().starts_with("test.toml:7:") && e.message.contains("N/DURATION"),
        "{e}"
    );
    let e = first_err(&acme("max_new_orders = \"0/3h\""));
    assert!(
        e.to_string().starts_with("test.toml:7:") && e.message.contains("unlimited"),
        "{e}"
    );

    let d = BASE.replace("[defaults]\n", "[defaults]\nmax_orders_per_cert = 5\n");
    assert_eq!(parse(&d).unwrap().certs[0].max_orders_per_cert, 5);
    let own = format!("{d}max_orders_per_cert = 1\n");
    assert_eq!(parse(&own).unwrap().certs[0].max_orders_per_cert, 1);
    let e = first_err(&format!("{BASE}max_orders_per_cert = 0\n"));
    assert_eq!(e.key, "cert[www].max_orders_per_cert");
    assert_eq!(e.line, 15, "{e}");
    let e = first_err(&format!("{BASE}max_orders_per_cert = -1\n"));
    assert_eq!(e.line, 15, "{e}");
}

#[test]
fn watch_sections_parse_and_bad_ones_name_their_line() {
    let c = parse(&format!(
        "{BASE}\n[[watch]]\nname = \"pki\"\npaths = [\"/etc/pki/*.pem\", \"vendor.crt\"]\nendpoints = [\"10.0.0.5:636\"]\nwarn_before = \"14d\"\n\n[[watch]]\nname = \"bought\"\npaths = [\"/etc/tls/bought.pem\"]\n"
    ))
    .unwrap();
    assert_eq!(c.watches.len(), 2);
    assert_eq!(
        c.watches[0].paths,
        ["/etc/pki/*.pem", "/etc/certkeeper/vendor.crt"]
    );
    assert_eq!(
        c.watches[0].warn_before,
        RenewBefore::Remaining(Duration::from_secs(14 * 86400))
    );
    assert_eq!(c.watches[1].warn_before, DEFAULT_WATCH_WARN_BEFORE);
    assert_eq!(c.watches[0].endpoints[0].port, 636);
    assert!(c.watches[1].endpoints.is_empty());
    let cases = [
        (
            "name = \"www\"\npaths = [\"/a.pem\"]",
            "watch.name",
            "already the name of a [[cert]]",
        ),
        (
            "name = \"a b\"\npaths = [\"/a.pem\"]",
            "watch.name",
            "must be non-empty",
        ),
        ("name = \"p\"", "watch[p].paths", "at least one entry"),
        (
            "name = \"p\"\nendpoints = [\"10.0.0.5\"]",
            "watch[p].endpoints",
            "port",
        ),
        (
            "name = \"p\"\nendpoints = [{ addr = \"h:636\", starttls = \"ldap\" }]",
            "watch[p].endpoints",
            "ldap",
        ),
        (
            "name = \"p\"\npaths = [\"/a/[b.pem\"]",
            "watch[p].paths",
            "not a valid glob",
        ),
        (
            "name = \"p\"\npaths = [\"/a.pem\"]\nwarn_before = \"soon\"",
            "",
            "soon",
        ),
        (
            "name = \"p\"\npaths = [\"/a.pem\"]\nrenew_before = \"1d\"",
            "",
            "unknown field",
        ),
    ];
    for (body, key, msg) in cases {
        let src = format!("{BASE}\n[[watch]]\n{body}\n");
        let e = first_err(&src);
        assert!(e.line >= 16, "{body}: {e}");
        assert!(e.key.starts_with(key), "{body}: {e}");
        assert!(e.message.contains(msg), "{body}: {e}");
    }
    let e = first_err(&format!(
        "{BASE}\n[[watch]]\nname = \"p\"\npaths = [\"/a\"]\n[[watch]]\nname = \"p\"\npaths = [\"/b\"]\n"
    ));
    assert_eq!(
        (e.line, e.message.as_str()),
        (20, "duplicate watch name \"p\"")
    );
}

#[test]
fn verify_endpoints_parse_with_defaults() {
    let src = format!(
        "{BASE}verify = [\"127.0.0.1:443\", {{ addr = \"mail.example.com:25\", starttls = \"smtp\", sni = \"mail.example.com\" }}, {{ addr = \"[::1]:143\", starttls = \"imap\" }}]\n"
    );
    let c = parse(&src).unwrap();
    let w = &c.certs[0];
    assert_eq!(w.verify_timeout, DEFAULT_VERIFY_TIMEOUT);
    assert_eq!(w.verify.len(), 3);
    assert_eq!(
        w.verify[0],
        Endpoint {
            addr: "127.0.0.1:443".into(),
            host: "127.0.0.1".into(),
            port: 443,
            starttls: Starttls::None,
            sni: None,
        }
    );
    assert_eq!(w.verify[1].starttls, Starttls::Smtp);
    assert_eq!(w.verify[1].sni.as_deref(), Some("mail.example.com"));
    assert_eq!(w.verify[2].host, "::1");
    assert_eq!(w.verify[2].starttls, Starttls::Imap);
    let src = format!("{BASE}verify_timeout = \"5s\"\n");
    assert_eq!(
        parse(&src).unwrap().certs[0].verify_timeout,
        Duration::from_secs(5)
    );
    // [defaults] carries verify_timeout too.
    let src = BASE.replace("[defaults]\n", "[defaults]\nverify_timeout = \"7s\"\n");
    assert_eq!(
        parse(&src).unwrap().certs[0].verify_timeout,
        Duration::from_secs(7)
    );
}

#[test]
fn verify_errors_name_the_line() {
    let cases: &[(&str, &str)] = &[
        (
            "verify = [{ addr = \"a.example:25\", starttls = \"pop3\" }]",
            "unknown starttls",
        ),
        ("verify = [\"a.example\"]", "no port"),
        ("verify = [\"a.example:0\"]", "not a port"),
        ("verify = [\"a.example:65536\"]", "not a port"),
        ("verify = [\"a.example:https\"]", "not a port"),
        (
            "verify = [{ addr = \"a.example:25\", tls = true }]",
            "unknown key",
        ),
        ("verify = [\"\"]", "empty endpoint"),
        ("verify = [{ starttls = \"smtp\" }]", "needs addr"),
        (
            "verify = [\"a.example:25\", \"a.example:25\"]",
            "listed twice",
        ),
        ("verify_timeout = \"0s\"", "greater than zero"),
    ];
    for (add, msg) in cases {
        let src = format!("{BASE}\n\n{add}\n");
        let e = first_err(&src);
        assert_eq!(e.line, 17, "{add:?}: {e}");
        assert!(e.key.contains("].verify"), "{add:?}: key in {e}");
        assert!(e.message.contains(msg), "{add:?}: message in {e}");
        assert!(e.to_string().starts_with("test.toml:17:"), "{e}");
    }
}

/// `BASE` with `acme_extra` in `[acme]` and `cert_extra` in the `[[cert]]`.
fn with_fallback(acme_extra: &str, cert_extra: &str) -> String {
    BASE.replace(
        "contact = [\"mailto:ops@example.com\"]\n",
        &format!("contact = [\"mailto:ops@example.com\"]\n{acme_extra}\n"),
    ) + cert_extra
}

#[test]
fn fallback_list_defaults_and_per_cert_override() {
    let c = parse(&with_fallback(
        "fallback = [{ directory = \"zerossl\", eab_kid = \"kid\", eab_hmac_key = \"c2VjcmV0\", profile = \"classic\" }]",
        "",
    ))
    .unwrap();
    assert_eq!(c.acme.fallback.len(), 1);
    let fb = &c.acme.fallback[0];
    assert_eq!(fb.directory, ZEROSSL);
    assert_eq!(fb.contact, vec!["mailto:ops@example.com".to_string()]);
    assert_eq!(fb.profile.as_deref(), Some("classic"));
    assert_eq!(fb.eab.as_ref().unwrap().kid, "kid");
    assert!(!format!("{c:?}").contains("c2VjcmV0"), "EAB key in Debug");
    assert_eq!(c.acme.fallback_rule.after_failures, 3);
    assert_eq!(c.acme.fallback_rule.before, RenewBefore::Fraction(0.25));
    let cas = c.acme.cas_for(&c.certs[0]);
    assert_eq!(cas.len(), 2);
    assert_eq!(cas[0].directory, LETSENCRYPT);
    // A certificate's own empty list means no fallback.
    let c = parse(&with_fallback(
        "fallback = [{ directory = \"zerossl\" }]\nfallback_after_failures = 1\nfallback_before = \"10d\"",
        "fallback = []\n",
    ))
    .unwrap();
    assert_eq!(c.acme.cas_for(&c.certs[0]).len(), 1);
    assert_eq!(c.acme.fallback_rule.after_failures, 1);
    assert_eq!(
        c.acme.fallback_rule.before,
        RenewBefore::Remaining(Duration::from_secs(10 * 86400))
    );
}

#[test]
fn fallback_errors_name_file_line_and_key() {
    let src = with_fallback(
        "fallback = [{ directory = \"zerossl\", eab_kid = \"kid\" }]",
        "",
    );
    let e = first_err(&src);
    assert_eq!(e.key, "acme.fallback[0].eab_kid", "{e}");
    assert_eq!(e.line, 6, "{e}");
    let e = first_err(&with_fallback(
        "fallback = [{ directory = \"zerossl\", eab_hmac_key = \"c2VjcmV0\" }]",
        "",
    ));
    assert_eq!(e.key, "acme.fallback[0].eab_hmac_key", "{e}");
    assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    let e = first_err(&with_fallback(
        "fallback = [{ directory = \"letsencrypt\" }]",
        "",
    ));
    assert!(e.message.contains("primary"), "{e}");
    let e = first_err(&with_fallback(
        "fallback = [{ directory = \"zerossl\", dirctory = \"x\" }]",
        "",
    ));
    assert_eq!(e.line, 6, "{e}");
    assert!(e.message.contains("dirctory"), "{e}");
    let e = first_err(&with_fallback("fallback_after_failures = 0", ""));
    assert_eq!(e.key, "acme.fallback_after_failures", "{e}");
    let src = with_fallback(
        "",
        "fallback = [{ directory = \"http://ca.example/dir\" }]\n",
    );
    let e = first_err(&src);
    assert_eq!(e.key, "cert[www].fallback[0].directory", "{e}");
    assert_eq!(e.line, src.lines().count(), "{e}");
}

/// `[cluster]` with a readable 32-byte seal key: defaults applied, the key never shown.
#[test]
fn cluster_section_defaults_and_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    let src = format!(
        "{BASE}\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode_name = \"a\"\nseal_key_file = \"{}\"\nuser = \"ck\"\npassword = \"hunter2\"\n",
        key.display()
    );
    let c = parse(&src).unwrap();
    let cl = c.cluster.as_ref().unwrap();
    assert_eq!(cl.prefix, cluster::DEFAULT_PREFIX);
    assert_eq!(cl.lease_ttl, Duration::from_secs(15));
    assert_eq!(cl.emergency_before, RenewBefore::Fraction(0.1));
    assert_eq!(cl.request_timeout, Duration::from_secs(5));
    assert!(cl.seal_key.is_some());
    let shown = format!("{cl:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("9, 9, 9"), "{shown}");
    assert!(parse(BASE).unwrap().cluster.is_none());
}

/// Parses BASE plus a `[cluster]` body: the errors and the line the section starts at.
fn cluster_errors(body: &str) -> (ConfigErrors, usize) {
    let src = format!("{BASE}\n[cluster]\n{body}\n");
    (parse(&src).unwrap_err(), BASE.lines().count() + 2)
}

/// Asserts that `body` gives an error for `key` that mentions `what`, at or after the
/// section's line, naming the file.
fn assert_cluster_error(body: &str, key: &str, what: &str) {
    let (errs, first_line) = cluster_errors(body);
    let e = errs
        .0
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("{body}: no error for {key}: {errs}"));
    assert!(e.message.contains(what), "{body}: {}", e.message);
    assert!(
        e.line >= first_line - 1,
        "{body}: line {} < {first_line}",
        e.line
    );
    assert_eq!(e.file, Path::new("test.toml"));
}

/// Endpoints, prefix, node name, lease and the pairs are refused at their line.
#[test]
fn cluster_errors_name_line_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.key");
    std::fs::write(&good, [1u8; 32]).unwrap();
    let g = good.display();
    let with = |extra: &str| format!("etcd = [\"http://x:1\"]\nseal_key_file = \"{g}\"\n{extra}");
    assert_cluster_error(
        &format!("etcd = []\nseal_key_file = \"{g}\""),
        "cluster.etcd",
        "at least one",
    );
    assert_cluster_error(
        &format!("etcd = [\"ftp://x:1\"]\nseal_key_file = \"{g}\""),
        "cluster.etcd",
        "http:// or https://",
    );
    assert_cluster_error(
        &format!("etcd = [\"http://x\"]\nseal_key_file = \"{g}\""),
        "cluster.etcd",
        "port",
    );
    assert_cluster_error(
        &with("lease_ttl = \"1s\""),
        "cluster.lease_ttl",
        "at least 2s",
    );
    assert_cluster_error(
        &with("prefix = \"nope/\""),
        "cluster.prefix",
        "starts with /",
    );
    assert_cluster_error(
        &with("node_name = \"a b\""),
        "cluster.node_name",
        "node name",
    );
    assert_cluster_error(
        &with("client_cert = \"/c.pem\""),
        "cluster.client_cert and client_key",
        "together",
    );
    assert_cluster_error(
        &with("user = \"u\""),
        "cluster.user and password",
        "together",
    );
    let (errs, _) = cluster_errors(&with("leases = 1"));
    assert!(errs.to_string().contains("leases"), "{errs}");
}

/// A seal key that is missing, not a regular file or not 32 bytes is refused at its line.
#[test]
fn cluster_seal_key_errors() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, [1u8; 16]).unwrap();
    let fifo = dir.path().join("fifo.key");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let key = "cluster.seal_key_file";
    assert_cluster_error("etcd = [\"http://x:1\"]", key, "is required");
    for (path, what) in [
        (short.display().to_string(), "16 bytes"),
        (fifo.display().to_string(), "FIFO"),
        (
            format!("{}/missing", dir.path().display()),
            "does not exist",
        ),
    ] {
        assert_cluster_error(
            &format!("etcd = [\"http://x:1\"]\nseal_key_file = \"{path}\""),
            key,
            what,
        );
    }
}

/// The shipped fleet example parses, given a seal key where it names one.
#[test]
fn shipped_fleet_example_parses() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("seal.key");
    std::fs::write(&key, [3u8; 32]).unwrap();
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet/certkeeper.toml");
    let src = std::fs::read_to_string(&p).unwrap().replace(
        "/run/secrets/certkeeper/seal.key",
        &key.display().to_string(),
    );
    let c = Config::from_str_at(&src, &p, Path::new("/etc/certkeeper"))
        .unwrap_or_else(|e| panic!("{e}"));
    let cl = c.cluster.expect("[cluster]");
    assert_eq!(cl.etcd.len(), 3);
    assert_eq!(cl.prefix, "/certkeeper/site");
}
