//! Raw TOML shapes -> the validated [`Config`]: aliases resolved, defaults applied, relative
//! paths made absolute, and every problem collected with its location (validation goes on
//! after the first error so `check` can list them all). One function per section, so each
//! rule is found next to the key it is about; the messages are the operator's interface.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::alias::path_alias_errors;
use super::parse::{HumanDuration, Parsed, check_domain};
use super::raw::{ChallengeKind, RawAcme, RawCert, RawConfig, RawDefaults};
use super::span::Ctx;
use super::{
    AcmeConfig, CertConfig, Challenge, Config, DEFAULT_ORDER_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_STATE_DIR, Eab, LETSENCRYPT, LETSENCRYPT_STAGING, Loc, ReloadSignal, Secret, ZEROSSL,
    parse_signal,
};
use crate::timefmt::format_duration;

/// Key -> where it was written.
type Locs = BTreeMap<String, Loc>;
/// `request_timeout` / `order_timeout` as read.
type RawTimeout = Spanned<Parsed<HumanDuration>>;

/// Validates a parsed file; problems go to `ctx.errors` and the returned value is only
/// meaningful when there are none.
pub(super) fn validate(raw: RawConfig, ctx: &mut Ctx<'_>) -> Config {
    let RawConfig {
        state_dir,
        metrics_listen,
        acme,
        defaults,
        certs,
        strict_modes,
        watches,
        notify,
        cluster,
    } = raw;
    let mut locs = BTreeMap::new();
    let state_dir = match &state_dir {
        Some(s) => {
            locs.insert("state_dir".into(), ctx.loc(&s.span()));
            ctx.path(s.get_ref())
        }
        None => PathBuf::from(DEFAULT_STATE_DIR),
    };
    let metrics_listen = metrics_listen_addr(metrics_listen.as_ref(), ctx, &mut locs);
    let acme = acme_section(acme, ctx, &mut locs);
    let mut certs_v = cert_sections(&certs, &defaults, ctx);
    super::fallback::cert_lists(&certs, &mut certs_v, &acme, ctx);
    let certs = certs_v;
    ctx.errors
        .extend(path_alias_errors(&certs, ctx.file, &mut HashMap::new()));
    let watches = super::watch::watch_sections(&watches, &certs, ctx);
    let notify = notify.map(|n| super::notify::notify_section(n, ctx, &mut locs));
    let cluster = cluster.map(|c| super::cluster::cluster_section(c, ctx, &mut locs));
    let strict_modes = strict_modes.as_ref().is_some_and(|s| {
        locs.insert("strict_modes".into(), ctx.loc(&s.span()));
        *s.get_ref()
    });
    Config {
        strict_modes,
        path: ctx.file.to_path_buf(),
        state_dir,
        acme,
        certs,
        metrics_listen,
        locs,
        watches,
        notify,
        cluster,
    }
}

/// `metrics_listen`: a socket address.
fn metrics_listen_addr(
    m: Option<&Spanned<String>>,
    ctx: &mut Ctx<'_>,
    locs: &mut Locs,
) -> Option<SocketAddr> {
    let m = m?;
    locs.insert("metrics_listen".into(), ctx.loc(&m.span()));
    match m.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            ctx.err(
                &m.span(),
                "metrics_listen",
                format!(
                    "{:?} is not an address such as \"127.0.0.1:9814\"",
                    m.get_ref()
                ),
            );
            None
        }
    }
}

/// The `[acme]` section.
fn acme_section(raw: Spanned<RawAcme>, ctx: &mut Ctx<'_>, locs: &mut Locs) -> AcmeConfig {
    let acme_span = raw.span();
    let acme_raw = raw.into_inner();
    let directory = acme_directory(&acme_raw.directory, ctx);
    for c in &acme_raw.contact {
        if !c.starts_with("mailto:") {
            ctx.err(
                &acme_span,
                "acme.contact",
                format!("contact {c:?} must be a URI such as \"mailto:ops@example.com\""),
            );
        }
    }
    let ca_bundle = acme_raw.ca_bundle.as_ref().map(|b| {
        locs.insert("acme.ca_bundle".into(), ctx.loc(&b.span()));
        ctx.path(b.get_ref())
    });
    let (max_new_orders, replaces_exempt) = super::limits::acme_limits(&acme_raw, ctx, locs);
    let eab = eab(acme_raw.eab_kid.clone(), acme_raw.eab_hmac_key.clone(), ctx);
    let fallback_rule = super::fallback::rule(&acme_raw, ctx);
    let (request_timeout, order_timeout) = acme_timeouts(
        acme_raw.request_timeout.as_ref(),
        acme_raw.order_timeout.as_ref(),
        &acme_span,
        ctx,
    );
    let mut acme = AcmeConfig {
        directory,
        contact: acme_raw.contact,
        ca_bundle,
        eab,
        fallback: Vec::new(),
        fallback_rule,
        max_new_orders,
        replaces_exempt,
        request_timeout,
        order_timeout,
        max_concurrent_orders: match acme_raw.max_concurrent_orders.map(|v| *v.get_ref()) {
            None => super::DEFAULT_MAX_CONCURRENT_ORDERS,
            Some(0) => tokio::sync::Semaphore::MAX_PERMITS,
            Some(n) => (n as usize).min(tokio::sync::Semaphore::MAX_PERMITS),
        },
    };
    let primary = acme.primary();
    if let Some(l) = &acme_raw.fallback {
        locs.insert("acme.fallback".into(), ctx.loc(&l.span()));
    }
    acme.fallback = super::fallback::acme_list(acme_raw.fallback.as_ref(), &primary, ctx);
    acme
}

/// `acme.directory`: an https URL or one of the known aliases.
fn acme_directory(raw: &Spanned<String>, ctx: &mut Ctx<'_>) -> String {
    directory_at(raw, "acme.directory", ctx)
}

/// A CA directory at `key` (`acme.directory` or a fallback's): an https URL or one of
/// the known aliases.
pub(super) fn directory_at(raw: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) -> String {
    let dir = raw.get_ref().trim().to_string();
    match dir.as_str() {
        "letsencrypt" => LETSENCRYPT.to_string(),
        "letsencrypt-staging" => LETSENCRYPT_STAGING.to_string(),
        "zerossl" => ZEROSSL.to_string(),
        d if d.starts_with("https://") => d.to_string(),
        d => {
            ctx.err(
                &raw.span(),
                key,
                format!(
                    "{d:?} is not an https:// URL nor one of the aliases letsencrypt, letsencrypt-staging, zerossl"
                ),
            );
            d.to_string()
        }
    }
}

/// `acme.eab_kid` + `acme.eab_hmac_key`: both or neither; the key's value is never shown.
fn eab(
    kid: Option<Spanned<String>>,
    key: Option<Spanned<Secret>>,
    ctx: &mut Ctx<'_>,
) -> Option<Eab> {
    eab_at(kid, key, "acme", ctx)
}

/// `<at>.eab_kid` + `<at>.eab_hmac_key` (`[acme]` or a fallback entry): both or neither.
pub(super) fn eab_at(
    kid: Option<Spanned<String>>,
    key: Option<Spanned<Secret>>,
    at: &str,
    ctx: &mut Ctx<'_>,
) -> Option<Eab> {
    match (kid, key) {
        (None, None) => None,
        (Some(kid), Some(key)) => {
            use base64::Engine;
            let k = key.get_ref().expose().trim_end_matches('=');
            if base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(k)
                .is_err()
            {
                ctx.err(
                    &key.span(),
                    format!("{at}.eab_hmac_key"),
                    "is not base64url (as the CA hands it out); value not shown",
                );
            }
            Some(Eab {
                kid: kid.into_inner(),
                hmac_key: key.into_inner(),
            })
        }
        (Some(kid), None) => {
            ctx.err(
                &kid.span(),
                format!("{at}.eab_kid"),
                "eab_kid is set but eab_hmac_key is missing",
            );
            None
        }
        (None, Some(key)) => {
            ctx.err(
                &key.span(),
                format!("{at}.eab_hmac_key"),
                "eab_hmac_key is set but eab_kid is missing",
            );
            None
        }
    }
}

/// `acme.request_timeout` and `acme.order_timeout`, defaulted; an order must outlast one
/// request or it could never finish.
fn acme_timeouts(
    request: Option<&RawTimeout>,
    order: Option<&RawTimeout>,
    acme_span: &Range<usize>,
    ctx: &mut Ctx<'_>,
) -> (Duration, Duration) {
    let request_timeout = request.map_or(DEFAULT_REQUEST_TIMEOUT, |v| v.get_ref().0.0);
    let order_timeout = order.map_or(DEFAULT_ORDER_TIMEOUT, |v| v.get_ref().0.0);
    if order_timeout <= request_timeout {
        let span = order.or(request).map_or(acme_span.clone(), |v| v.span());
        ctx.err(
            &span,
            "acme.order_timeout",
            format!(
                "order_timeout ({}) must be longer than request_timeout ({})",
                format_duration(order_timeout),
                format_duration(request_timeout)
            ),
        );
    }
    (request_timeout, order_timeout)
}

/// Names and paths already taken by earlier `[[cert]]` sections, for the duplicate checks.
#[derive(Default)]
struct Taken {
    names: HashSet<String>,
    paths: BTreeMap<PathBuf, String>,
}

/// Every `[[cert]]` section, in file order.
fn cert_sections(raw: &[Spanned<RawCert>], d: &RawDefaults, ctx: &mut Ctx<'_>) -> Vec<CertConfig> {
    let mut taken = Taken::default();
    if raw.is_empty() {
        ctx.err(&(0..0), "cert", "no [[cert]] sections: nothing to manage");
    }
    let mut certs = Vec::new();
    for (i, sc) in raw.iter().enumerate() {
        certs.push(one_cert(i, sc, d, &mut taken, ctx));
    }
    certs
}

/// One `[[cert]]` with its `[defaults]`, and where each of its keys was written.
struct Section<'r> {
    c: &'r RawCert,
    d: &'r RawDefaults,
    /// The whole `[[cert]]` table.
    span: Range<usize>,
    name: String,
    locs: Locs,
}

impl Section<'_> {
    /// The dotted key of one of this certificate's options, for messages.
    fn key(&self, k: &str) -> String {
        format!("cert[{}].{k}", self.name)
    }
}

/// The certificate's own value of an option, else the `[defaults]` one, recording where
/// the chosen value was written.
macro_rules! pick {
    ($s:expr, $ctx:expr, $f:ident) => {{
        let (c, d) = ($s.c, $s.d);
        let v = c.$f.as_ref().or(d.$f.as_ref());
        if let Some(v) = v {
            $s.locs
                .insert(stringify!($f).to_string(), $ctx.loc(&v.span()));
        }
        v
    }};
}

/// One `[[cert]]` section, with every default resolved.
fn one_cert(
    i: usize,
    sc: &Spanned<RawCert>,
    d: &RawDefaults,
    taken: &mut Taken,
    ctx: &mut Ctx<'_>,
) -> CertConfig {
    let c = sc.get_ref();
    let mut s = Section {
        c,
        d,
        span: sc.span(),
        name: c.name.get_ref().clone(),
        locs: BTreeMap::new(),
    };
    s.locs.insert(String::new(), ctx.loc(&s.span));
    cert_name(i, &s, &mut taken.names, ctx);
    cert_domains(&s, ctx);
    let mut files = cert_files(&mut s, &mut taken.paths, ctx);
    let renew_before = pick!(s, ctx, renew_before)
        .map(|v| v.get_ref().0)
        .unwrap_or_default();
    let key_type = pick!(s, ctx, key_type)
        .map(|v| v.get_ref().0)
        .unwrap_or_default();
    let hook_timeout = pick!(s, ctx, hook_timeout)
        .map(|v| v.get_ref().0.0)
        .unwrap_or(Duration::from_secs(60));
    let key_mode = pick!(s, ctx, key_mode)
        .map(|v| v.get_ref().0)
        .unwrap_or(0o600);
    let cert_mode = pick!(s, ctx, cert_mode)
        .map(|v| v.get_ref().0)
        .unwrap_or(0o644);
    check_key_mode(&s, key_mode, ctx);
    let layout = pick!(s, ctx, layout)
        .map(|v| *v.get_ref())
        .unwrap_or_default();
    let owner = pick!(s, ctx, owner).map(|v| v.get_ref().clone());
    let group = pick!(s, ctx, group).map(|v| v.get_ref().clone());
    let profile = pick!(s, ctx, profile).map(|v| v.get_ref().clone());
    let reload_signal = reload_signal(&mut s, ctx);
    let max_orders = pick!(s, ctx, max_orders_per_cert);
    let max_orders_per_cert =
        super::limits::max_orders_per_cert(max_orders, s.key("max_orders_per_cert"), &s.span, ctx);
    let reload = reload_hooks(&mut s, ctx);
    let challenge = challenge(&mut s, ctx);
    let (verify, verify_timeout) = super::verify::section(&mut s.locs, &s.name, c, d, ctx);
    let warn = pick!(s, ctx, warn_before);
    let warn_before = super::notify::warn_before(warn, renew_before, s.key("warn_before"), ctx);
    CertConfig {
        name: s.name,
        domains: c.domains.get_ref().clone(),
        cert_path: files.remove("cert_path").unwrap_or_default(),
        key_path: files.remove("key_path").unwrap_or_default(),
        chain_path: files.remove("chain_path"),
        bundle_path: files.remove("bundle_path"),
        renew_before,
        key_type,
        challenge,
        reload,
        hook_timeout,
        key_mode,
        cert_mode,
        owner,
        group,
        profile,
        reload_signal,
        layout,
        max_orders_per_cert,
        verify,
        verify_timeout,
        warn_before,
        fallback: None,
        locs: s.locs,
    }
}

/// `name`: safe as a file name and unique, since state files and logs are keyed by it.
fn cert_name(i: usize, s: &Section<'_>, names: &mut HashSet<String>, ctx: &mut Ctx<'_>) {
    let name = &s.name;
    let span = s.c.name.span();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        || name.starts_with('.')
    {
        ctx.err(
            &span,
            format!("cert[{i}].name"),
            format!("name {name:?} may only contain letters, digits, '.', '_' and '-'"),
        );
    }
    if !names.insert(name.clone()) {
        ctx.err(
            &span,
            format!("cert[{i}].name"),
            format!("duplicate certificate name {name:?}"),
        );
    }
}

/// `domains`: at least one, each a DNS name, none twice.
fn cert_domains(s: &Section<'_>, ctx: &mut Ctx<'_>) {
    let domains = &s.c.domains;
    if domains.get_ref().is_empty() {
        ctx.err(
            &domains.span(),
            s.key("domains"),
            "must list at least one name",
        );
    }
    let mut seen = HashSet::new();
    for dom in domains.get_ref() {
        if let Err(m) = check_domain(dom) {
            ctx.err(&domains.span(), s.key("domains"), m);
        }
        if !seen.insert(dom) {
            ctx.err(
                &domains.span(),
                s.key("domains"),
                format!("{dom:?} is listed twice"),
            );
        }
    }
}

/// `cert_path`, `key_path`, `chain_path`, `bundle_path`: absolute, file names, and not
/// used by an earlier key (written identically; other spellings are `alias`'s job).
fn cert_files(
    s: &mut Section<'_>,
    paths: &mut BTreeMap<PathBuf, String>,
    ctx: &mut Ctx<'_>,
) -> BTreeMap<&'static str, PathBuf> {
    let c = s.c;
    let file_paths = [
        ("cert_path", Some(&c.cert_path)),
        ("key_path", Some(&c.key_path)),
        ("chain_path", c.chain_path.as_ref()),
        ("bundle_path", c.bundle_path.as_ref()),
    ];
    let mut resolved = BTreeMap::new();
    for (k, p) in file_paths {
        let Some(p) = p else { continue };
        s.locs.insert(k.to_string(), ctx.loc(&p.span()));
        let abs = ctx.path(p.get_ref());
        if abs.file_name().is_none() || abs.to_string_lossy().ends_with('/') {
            ctx.err(&p.span(), s.key(k), "must name a file, not a directory");
        }
        if let Some(other) = paths.insert(abs.clone(), format!("{}.{k}", s.name)) {
            ctx.err(
                &p.span(),
                s.key(k),
                format!("{} is also used by {other}", abs.display()),
            );
        }
        resolved.insert(k, abs);
    }
    resolved
}

/// `key_mode` must not let everyone read the private key.
fn check_key_mode(s: &Section<'_>, key_mode: u32, ctx: &mut Ctx<'_>) {
    if key_mode & 0o007 != 0 {
        let span =
            s.c.key_mode
                .as_ref()
                .or(s.d.key_mode.as_ref())
                .unwrap()
                .span();
        ctx.err(
            &span,
            s.key("key_mode"),
            format!(
                "key_mode {key_mode:04o} makes the private key readable by everyone; use a group (e.g. 0640 with group = ...)"
            ),
        );
    }
}

/// `reload_signal`: a pidfile and a signal name or number.
fn reload_signal(s: &mut Section<'_>, ctx: &mut Ctx<'_>) -> Option<ReloadSignal> {
    let rs = pick!(s, ctx, reload_signal)?;
    match parse_signal(&rs.get_ref().signal) {
        Ok(signal) => Some(ReloadSignal {
            pidfile: ctx.path(&rs.get_ref().pidfile),
            signal,
        }),
        Err(m) => {
            let span = rs.span();
            ctx.err(&span, s.key("reload_signal"), m);
            None
        }
    }
}

/// `reload`: non-empty argv lists; a program given with a slash resolves like a path.
fn reload_hooks(s: &mut Section<'_>, ctx: &mut Ctx<'_>) -> Vec<Vec<String>> {
    let reload = pick!(s, ctx, reload)
        .map(|v| v.get_ref().clone())
        .unwrap_or_default();
    for argv in &reload {
        if argv.is_empty() || argv[0].is_empty() {
            let span = s.c.reload.as_ref().or(s.d.reload.as_ref()).unwrap().span();
            ctx.err(&span, s.key("reload"), "each reload hook must be a non-empty argv list such as [\"systemctl\", \"reload\", \"nginx\"]");
        }
    }
    reload
        .into_iter()
        .map(|mut argv| {
            if argv.first().is_some_and(|p| p.contains('/')) {
                argv[0] = ctx.path(Path::new(&argv[0])).to_string_lossy().into_owned();
            }
            argv
        })
        .collect()
}

/// `challenge` and the keys it needs; wildcards need dns-01.
fn challenge(s: &mut Section<'_>, ctx: &mut Ctx<'_>) -> Challenge {
    let (c, d) = (s.c, s.d);
    let kind = pick!(s, ctx, challenge)
        .map(|v| *v.get_ref())
        .unwrap_or(ChallengeKind::Http01);
    // A cert that sets either http01 key overrides both defaults.
    let (listen, webroot) = if c.http01_listen.is_some() || c.http01_webroot.is_some() {
        (c.http01_listen.as_ref(), c.http01_webroot.as_ref())
    } else {
        (d.http01_listen.as_ref(), d.http01_webroot.as_ref())
    };
    let dns_hook = pick!(s, ctx, dns01_hook);
    let challenge_span = c
        .challenge
        .as_ref()
        .map(|v| v.span())
        .unwrap_or(s.span.clone());
    let challenge = match kind {
        ChallengeKind::Http01 => http01(s, listen, webroot, &challenge_span, ctx),
        ChallengeKind::Dns01 => dns01(s, dns_hook, &challenge_span, ctx),
    };
    if !matches!(challenge, Challenge::Dns01Hook(_))
        && c.domains.get_ref().iter().any(|d| d.starts_with("*."))
    {
        ctx.err(
            &c.domains.span(),
            s.key("domains"),
            "wildcard names can only be validated with challenge = \"dns-01\"",
        );
    }
    challenge
}

/// http-01: exactly one of `http01_listen` (an address) and `http01_webroot`.
fn http01(
    s: &mut Section<'_>,
    listen: Option<&Spanned<String>>,
    webroot: Option<&Spanned<PathBuf>>,
    challenge_span: &Range<usize>,
    ctx: &mut Ctx<'_>,
) -> Challenge {
    let fallback = Challenge::Http01Listen(SocketAddr::from(([0, 0, 0, 0], 80)));
    match (listen, webroot) {
        (Some(l), None) => {
            s.locs.insert("http01_listen".into(), ctx.loc(&l.span()));
            match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => Challenge::Http01Listen(a),
                Err(_) => {
                    ctx.err(
                        &l.span(),
                        s.key("http01_listen"),
                        format!(
                            "{:?} is not an address such as \"[::]:80\" or \"127.0.0.1:5002\"",
                            l.get_ref()
                        ),
                    );
                    fallback
                }
            }
        }
        (None, Some(w)) => {
            s.locs.insert("http01_webroot".into(), ctx.loc(&w.span()));
            Challenge::Http01Webroot(ctx.path(w.get_ref()))
        }
        (Some(l), Some(_)) => {
            ctx.err(
                &l.span(),
                s.key("http01_listen"),
                "set either http01_listen or http01_webroot, not both",
            );
            fallback
        }
        (None, None) => {
            ctx.err(
                challenge_span,
                s.key("challenge"),
                "http-01 needs http01_listen (built-in responder) or http01_webroot",
            );
            fallback
        }
    }
}

/// dns-01: a non-empty `dns01_hook` argv; a program given with a slash resolves like a path.
fn dns01(
    s: &Section<'_>,
    hook: Option<&Spanned<Vec<String>>>,
    challenge_span: &Range<usize>,
    ctx: &mut Ctx<'_>,
) -> Challenge {
    match hook {
        Some(h) if !h.get_ref().is_empty() && !h.get_ref()[0].is_empty() => {
            let mut argv = h.get_ref().clone();
            if argv[0].contains('/') {
                argv[0] = ctx.path(Path::new(&argv[0])).to_string_lossy().into_owned();
            }
            Challenge::Dns01Hook(argv)
        }
        Some(h) => {
            ctx.err(
                &h.span(),
                s.key("dns01_hook"),
                "must be a non-empty argv list",
            );
            Challenge::Dns01Hook(vec![String::new()])
        }
        None => {
            ctx.err(
                challenge_span,
                s.key("challenge"),
                "dns-01 needs dns01_hook = [\"/path/to/hook\", ...]",
            );
            Challenge::Dns01Hook(vec![String::new()])
        }
    }
}
