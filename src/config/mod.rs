//! The configuration file: parsed with serde into the `raw` types (`deny_unknown_fields`),
//! then validated into a [`Config`] with defaults and per-certificate overrides applied.
//!
//! Every error names the file, the line and the key, because an operator reading a timer's
//! failure in the journal must be able to jump straight to the offending line. This module
//! never touches the network and only reads the config file itself (plus the canonical
//! form of the managed paths, to refuse two spellings of one file); checks of what the
//! config names on this machine (directories, programs, users, strict modes) live in the
//! `check` module, so that loading a config needs nothing from inventory or store.
//!
//! Layout: this file holds the validated types and the entry points; `raw` the serde
//! shapes, `parse` the value parsers, `span` byte offsets to file:line:column:key,
//! `validate` raw -> validated, `alias` canonical paths and the aliasing check.

mod alias;
pub mod cluster;
mod fallback;
mod limits;
mod notify;
mod parse;
mod raw;
mod span;
mod validate;
mod verify;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fileset::FileSet;
use serde::Deserialize;

pub use alias::{canonical_file, normalize_lexically, path_alias_errors};
pub use notify::effective_warn;
pub use parse::{
    KeyType, Mode, OrderLimit, RenewBefore, parse_duration, parse_endpoint, parse_signal,
};

/// Where the config is read from when neither `--config` nor `CERTKEEPER_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/certkeeper/certkeeper.toml";

/// Let's Encrypt's production directory, behind the `letsencrypt` alias.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory, behind the `letsencrypt-staging` alias.
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// ZeroSSL's directory, behind the `zerossl` alias (it requires EAB).
pub const ZEROSSL: &str = "https://acme.zerossl.com/v2/DV90";

/// One problem in a config file, located precisely enough to fix it without guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, or 0 when the problem is not tied to a line (e.g. unreadable file).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The dotted key path, e.g. `cert[www].renew_before`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else if self.key.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.key,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in one config file; `check` prints every one, `renew` fails on any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A string that must never be printed: Debug and Display show `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub(super) String);

impl Secret {
    /// The secret itself, for the one place that needs it (the ACME account binding).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How a certificate proves control of its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP-01 through the built-in responder on this address.
    Http01Listen(SocketAddr),
    /// HTTP-01 by writing files under `<webroot>/.well-known/acme-challenge/`.
    Http01Webroot(PathBuf),
    /// DNS-01 through this hook argv, run with `set|clear <record> <value>` appended.
    Dns01Hook(Vec<String>),
}

/// How installed files are laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Each path is a regular file, replaced one by one (key first).
    #[default]
    Plain,
    /// Each path is a symlink through one `.<name>.live` link to a versioned directory, so
    /// one rename switches key and certificate together.
    Symlink,
}

/// Built-in reload by signal, for sidecars that share a process namespace with the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSignal {
    /// File holding the server's pid.
    pub pidfile: PathBuf,
    /// Signal to send.
    pub signal: nix::sys::signal::Signal,
}

/// External Account Binding credentials, as the CA hands them out.
#[derive(Debug, Clone, PartialEq)]
pub struct Eab {
    /// The key identifier.
    pub kid: String,
    /// The base64url HMAC key; never logged.
    pub hmac_key: Secret,
}

/// Which ACME CA to use and how to reach it.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The directory URL, with aliases resolved.
    pub directory: String,
    /// Contact URIs for the account.
    pub contact: Vec<String>,
    /// Extra trusted roots for the CA's HTTPS endpoint.
    pub ca_bundle: Option<PathBuf>,
    /// External Account Binding, if the CA requires it.
    pub eab: Option<Eab>,
    /// The CA's rate limit on new orders (`max_new_orders`), kept across runs so the agent
    /// never sends an order the CA would refuse; `None` is `"unlimited"`.
    pub max_new_orders: Option<OrderLimit>,
    /// Renewals that carry ARI `replaces` do not count against `max_new_orders` (Let's
    /// Encrypt exempts them); off by default, since most CAs count every order.
    pub replaces_exempt: bool,
    /// Longest wait for one HTTP exchange with the CA, so a CA that stops answering
    /// fails the run instead of hanging it.
    pub request_timeout: Duration,
    /// Longest time one whole order (including polling) may take.
    pub order_timeout: Duration,
    /// How many orders run at once against this CA (`max_concurrent_orders`; 0 in the
    /// file means no limit): the CA, not certkeeper, should be what limits a big renewal.
    pub max_concurrent_orders: usize,
    /// `fallback`: the CAs to try, in order, when this one keeps failing a certificate,
    /// so an outage of one CA does not let certificates expire.
    pub fallback: Vec<CaConfig>,
    /// `fallback_after_failures` and `fallback_before`: when a certificate moves on.
    pub fallback_rule: FallbackRule,
}

/// When a certificate leaves its current CA for the next one in its list (`[acme]
/// fallback`): a CA that is down or refuses must not take the certificate down with it,
/// but one passing glitch must not move it either.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FallbackRule {
    /// `fallback_after_failures`: consecutive failures at one CA that move the next
    /// attempt on (at least 1).
    pub after_failures: u32,
    /// `fallback_before`: with less than this left of the installed certificate, the
    /// first failure already moves the next attempt on.
    pub before: RenewBefore,
}

/// Default for `fallback_before`: a quarter of the lifetime, below the default renewal
/// point (a third), so a certificate first gets some attempts at its own CA.
pub const DEFAULT_FALLBACK_BEFORE: RenewBefore = RenewBefore::Fraction(0.25);
/// Default for `fallback_after_failures`.
pub const DEFAULT_FALLBACK_AFTER_FAILURES: u32 = 3;

/// One CA a certificate can be ordered from: the primary (`[acme]`) or a `fallback`
/// entry. Each has its own account, trust, EAB and profile, since CAs share none of them.
#[derive(Debug, Clone, PartialEq)]
pub struct CaConfig {
    /// The directory URL, with aliases resolved.
    pub directory: String,
    /// Contact URIs for the account (a fallback without its own uses `[acme]`'s).
    pub contact: Vec<String>,
    /// Extra trusted roots for this CA's HTTPS endpoint (never inherited: another CA
    /// is another server).
    pub ca_bundle: Option<PathBuf>,
    /// External Account Binding for this CA.
    pub eab: Option<Eab>,
    /// The profile to ask this CA for; `None` uses the certificate's own `profile`.
    pub profile: Option<String>,
}

impl AcmeConfig {
    /// The primary CA as a [`CaConfig`], first in every certificate's list.
    pub fn primary(&self) -> CaConfig {
        CaConfig {
            directory: self.directory.clone(),
            contact: self.contact.clone(),
            ca_bundle: self.ca_bundle.clone(),
            eab: self.eab.clone(),
            profile: None,
        }
    }

    /// The CAs a certificate may be ordered from, in order: the primary, then its own
    /// `fallback` list if it has one, else `[acme] fallback`.
    pub fn cas_for(&self, cert: &CertConfig) -> Vec<CaConfig> {
        let mut cas = vec![self.primary()];
        cas.extend(
            cert.fallback
                .as_ref()
                .unwrap_or(&self.fallback)
                .iter()
                .cloned(),
        );
        cas
    }

    /// This config with `ca` as its CA and the run-wide limits kept: what connecting to
    /// one CA of a certificate's list takes.
    pub fn at(&self, ca: &CaConfig) -> Self {
        Self {
            directory: ca.directory.clone(),
            contact: ca.contact.clone(),
            ca_bundle: ca.ca_bundle.clone(),
            eab: ca.eab.clone(),
            fallback: Vec::new(),
            ..self.clone()
        }
    }
}

/// Default for `acme.max_concurrent_orders`: enough to keep a public CA busy without
/// looking like a flood.
pub const DEFAULT_MAX_CONCURRENT_ORDERS: usize = 8;

/// Default for `acme.request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `acme.order_timeout`.
pub const DEFAULT_ORDER_TIMEOUT: Duration = Duration::from_secs(600);

/// Default for `max_orders_per_cert`.
pub const DEFAULT_MAX_ORDERS_PER_CERT: u32 = 3;

/// Default for `verify_timeout`: long enough for a server to finish an asynchronous reload.
pub const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// How a probe reaches TLS on an endpoint: mail servers speak plain text first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Starttls {
    /// TLS from the first byte.
    #[default]
    None,
    /// SMTP (Postfix): EHLO, STARTTLS.
    Smtp,
    /// IMAP (Dovecot): `a1 STARTTLS`.
    Imap,
}

/// One `verify` entry: where a server should be serving this certificate, so the agent
/// can prove the reload really happened instead of trusting the hook's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as written (used in logs, status and metric labels).
    pub addr: String,
    /// The host part (a name is resolved at probe time; brackets removed from IPv6).
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// Plain-text upgrade before TLS, if any.
    pub starttls: Starttls,
    /// The SNI name to send; `None` means the certificate's first domain.
    pub sni: Option<String>,
}

/// A line/column in the config, kept so later checks can point at the right place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// One managed certificate with every default resolved.
#[derive(Debug, Clone)]
pub struct CertConfig {
    /// Unique name; used in logs, state file names and hook environment.
    pub name: String,
    /// The names the certificate must cover (first one is the subject).
    pub domains: Vec<String>,
    /// Leaf + chain.
    pub cert_path: PathBuf,
    /// Private key.
    pub key_path: PathBuf,
    /// The chain alone, if a server wants it separately.
    pub chain_path: Option<PathBuf>,
    /// Key + full chain in one file (haproxy).
    pub bundle_path: Option<PathBuf>,
    /// The renewal threshold.
    pub renew_before: RenewBefore,
    /// Key algorithm for new keys.
    pub key_type: KeyType,
    /// How names are validated.
    pub challenge: Challenge,
    /// Reload hooks, run in order after a successful install.
    pub reload: Vec<Vec<String>>,
    /// Limit for each hook run.
    pub hook_timeout: Duration,
    /// Mode of the key file (and the bundle, which contains the key).
    pub key_mode: u32,
    /// Mode of certificate and chain files.
    pub cert_mode: u32,
    /// Owner for installed files, by name.
    pub owner: Option<String>,
    /// Group for installed files, by name.
    pub group: Option<String>,
    /// ACME profile to request, if the CA offers profiles.
    pub profile: Option<String>,
    /// Signal a pidfile's process after hooks (daemon/sidecar setups).
    pub reload_signal: Option<ReloadSignal>,
    /// Plain files or versioned directories behind one symlink (`layout`).
    pub layout: Layout,
    /// The circuit breaker: at most this many successful orders in 24 hours, whatever the
    /// policy, ARI or the files say, so a renewal loop cannot burn the CA's limits.
    pub max_orders_per_cert: u32,
    /// Endpoints that must serve the installed certificate (`verify`).
    pub verify: Vec<Endpoint>,
    /// How long verifying after an install may retry (`verify_timeout`); also the bound
    /// of one probe.
    pub verify_timeout: Duration,
    /// When an `expiring` notification goes out (`warn_before`): checked at load to lie
    /// after the renewal point, so a warning means renewal has already had its chance.
    pub warn_before: RenewBefore,
    /// This certificate's own `fallback` list, replacing `[acme] fallback` (`Some(vec![])`:
    /// no fallback), for names only some CAs may issue.
    pub fallback: Option<Vec<CaConfig>>,
    /// Where each key of this certificate was written, for pointing errors at lines.
    pub locs: BTreeMap<String, Loc>,
}

impl CertConfig {
    /// The config location of `key` in this certificate's section (or its `[[cert]]` header).
    pub fn loc(&self, key: &str) -> Loc {
        self.locs
            .get(key)
            .or_else(|| self.locs.get(""))
            .copied()
            .unwrap_or_default()
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for error messages).
    pub path: PathBuf,
    /// Account credentials, retry state, staging area and the lock.
    pub state_dir: PathBuf,
    /// The CA.
    pub acme: AcmeConfig,
    /// The managed certificates, in file order.
    pub certs: Vec<CertConfig>,
    /// Serve /metrics and /healthz here (daemon mode).
    pub metrics_listen: Option<SocketAddr>,
    /// Locations of top-level keys.
    pub locs: BTreeMap<String, Loc>,
    /// As root, refuse config, hooks and managed directories others could write (sshd's
    /// StrictModes); enforced by `check::strict_mode_violations` at load and reload.
    pub strict_modes: bool,
    /// Certificates certkeeper watches but never orders or writes (`[[watch]]`).
    pub watches: Vec<WatchConfig>,
    /// Where alerts go (`[notify]`); `None` costs nothing at run time.
    pub notify: Option<NotifyConfig>,
    /// Fleet mode (`[cluster]`): replicas coordinate through etcd; `None` changes nothing.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: several replicas serving the same names order each certificate once,
/// through an etcd lock, and all install what the orderer published.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// etcd client endpoints (`http(s)://host:port`).
    pub etcd: Vec<String>,
    /// Every key this fleet writes lives under it, so fleets can share one etcd.
    pub prefix: String,
    /// This replica's name in locks and reports (the host name by default).
    pub node_name: String,
    /// The lease of this replica's locks: a dead orderer's lock is free after it.
    pub lease_ttl: Duration,
    /// The fleet key private keys are sealed under before they reach etcd (None only
    /// while the config has errors).
    pub seal_key: Option<crate::seal::SealKey>,
    /// Where the fleet key was read from (shown by `check`).
    pub seal_key_file: PathBuf,
    /// Below this much remaining lifetime a replica orders alone when etcd is down.
    pub emergency_before: RenewBefore,
    /// Bound on each etcd request.
    pub request_timeout: Duration,
    /// Extra roots for https:// endpoints.
    pub ca_bundle: Option<PathBuf>,
    /// Client certificate for mTLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// Client key for mTLS.
    pub client_key: Option<PathBuf>,
    /// etcd user (with `password`).
    pub user: Option<String>,
    /// etcd password; never shown.
    pub password: Option<Secret>,
}

/// A certificate from a private PKI or a vendor that no ACME agent renews: certkeeper
/// only shows it and warns before it expires, so it cannot expire unseen.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Unique among watches and certificates; used in status, metrics and notifications.
    pub name: String,
    /// Files or glob patterns (absolute), expanded at every look, so new files are seen.
    pub paths: Vec<String>,
    /// TLS endpoints whose served certificate is watched (same forms as `verify`).
    pub endpoints: Vec<Endpoint>,
    /// How long before its not-after a watched certificate counts as expiring.
    pub warn_before: RenewBefore,
    /// Where the `[[watch]]` section starts.
    pub loc: Loc,
}

/// Default `warn_before` of a watched certificate: a sixth of its lifetime (a week of a
/// 45-day certificate, two months of a one-year one).
pub const DEFAULT_WATCH_WARN_BEFORE: RenewBefore = RenewBefore::Fraction(1.0 / 6.0);

/// `[notify]`: the channels that tell a person a certificate is in trouble, because an
/// exit code in a journal is read by nobody.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// argv lists run with the event JSON on stdin (reload hooks' environment).
    pub hooks: Vec<Vec<String>>,
    /// An http(s) URL that gets a JSON POST with a `text` field (Slack, Mattermost, Teams).
    pub webhook: Option<String>,
    /// Extra trusted roots for the webhook's HTTPS (a private receiver).
    pub ca_bundle: Option<PathBuf>,
    /// Bound on each delivery (one hook run, one webhook request with its answer).
    pub timeout: Duration,
    /// A problem that lasts is notified again this often.
    pub remind_every: Duration,
}

/// Default for `notify.timeout`.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `notify.remind_every`: daily, as the issue asks.
pub const DEFAULT_REMIND_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Default `warn_before`: 1/6 of the lifetime (half of the default renewal threshold).
pub const DEFAULT_WARN_BEFORE: RenewBefore = RenewBefore::Fraction(1.0 / 6.0);

/// Default location of `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/certkeeper";

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigErrors> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_str_at(&src, path, &base)
    }

    /// Parses and validates config text; `file` is only used in messages, `base` resolves
    /// relative paths. Kept separate from `from_file` so tests never need the disk.
    pub fn from_str_at(src: &str, file: &Path, base: &Path) -> Result<Self, ConfigErrors> {
        let raw: raw::RawConfig = toml::from_str(src).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (line, column) = span::line_col(src, span.start);
            ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                line: line.max(1),
                column,
                key: span::key_at(src, span.start),
                message: e.message().trim().to_string(),
            }])
        })?;
        let mut ctx = span::Ctx::new(file, src, base);
        let cfg = validate::validate(raw, &mut ctx);
        if ctx.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(ctx.errors))
        }
    }

    /// Finds certificates by name; unknown names are a usage error naming them.
    pub fn select(&self, names: &[String]) -> Result<Vec<&CertConfig>, String> {
        if names.is_empty() {
            return Ok(self.certs.iter().collect());
        }
        let mut out = Vec::new();
        for n in names {
            match self.certs.iter().find(|c| &c.name == n) {
                Some(c) => out.push(c),
                None => {
                    let known: Vec<_> = self.certs.iter().map(|c| c.name.as_str()).collect();
                    return Err(format!(
                        "no certificate named {n:?} in {} (known: {})",
                        self.path.display(),
                        known.join(", ")
                    ));
                }
            }
        }
        Ok(out)
    }
}

impl CertConfig {
    /// The files this certificate writes: the one list every part walks (see
    /// [`crate::fileset`]), so none can forget one.
    pub fn files(&self) -> FileSet {
        FileSet {
            cert: self.cert_path.clone(),
            key: self.key_path.clone(),
            chain: self.chain_path.clone(),
            bundle: self.bundle_path.clone(),
        }
    }
}
