//! The configuration file: parsed with serde (`RawConfig`, `deny_unknown_fields`), then
//! validated into a [`Config`] with defaults and per-certificate overrides applied.
//!
//! Every error names the file, the line and the key, because an operator reading a timer's
//! failure in the journal must be able to jump straight to the offending line. This module
//! never touches the network and only reads the config file itself; checks of the paths the
//! config names live in [`Config::check_paths`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::fileset::FileSet;
use crate::timefmt::format_duration;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

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
pub struct Secret(String);

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

/// When to renew, as an operator writes it: a share of the lifetime or a fixed duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RenewBefore {
    /// Renew when less than this fraction (0..1) of the total lifetime remains.
    Fraction(f64),
    /// Renew when less than this much time remains.
    Remaining(Duration),
}

impl Default for RenewBefore {
    fn default() -> Self {
        // Let's Encrypt's guidance and certbot/lego's default: 1/3 of the lifetime.
        Self::Fraction(1.0 / 3.0)
    }
}

impl fmt::Display for RenewBefore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fraction(x) => write!(f, "{}%", (x * 1000.0).round() / 10.0),
            Self::Remaining(d) => write!(f, "{}", format_duration(*d)),
        }
    }
}

impl FromStr for RenewBefore {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(pct) = s.strip_suffix('%') {
            let v: f64 = pct
                .trim()
                .parse()
                .map_err(|_| format!("invalid percentage {s:?}; expected e.g. \"33%\""))?;
            if !(v > 0.0 && v < 100.0) {
                return Err(format!(
                    "percentage {s:?} must be greater than 0% and less than 100%"
                ));
            }
            return Ok(Self::Fraction(v / 100.0));
        }
        let d = parse_duration(s).map_err(|e| {
            format!("{e}; expected a percentage of the lifetime (\"33%\") or a duration (\"30d\")")
        })?;
        Ok(Self::Remaining(d))
    }
}

/// Parses durations such as `90s`, `15m`, `12h`, `30d`, `1d12h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut saw_unit = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mult = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return Err(format!("invalid duration {s:?}: unknown unit {c:?}")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: a number must precede {c:?}"))?;
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {s:?} is too large"))?;
        num.clear();
        saw_unit = true;
    }
    if !num.is_empty() || !saw_unit {
        return Err(format!(
            "invalid duration {s:?}: every number needs a unit (s, m, h, d, w)"
        ));
    }
    if total == 0 {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    Ok(Duration::from_secs(total))
}

/// The private key algorithm for new certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on P-256: small, fast, universally supported. The default.
    #[default]
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA 2048 bits, for old clients.
    Rsa2048,
    /// RSA 3072 bits.
    Rsa3072,
    /// RSA 4096 bits.
    Rsa4096,
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ecdsa-p256" => Self::EcdsaP256,
            "ecdsa-p384" => Self::EcdsaP384,
            "rsa-2048" => Self::Rsa2048,
            "rsa-3072" => Self::Rsa3072,
            "rsa-4096" => Self::Rsa4096,
            _ => {
                return Err(format!(
                    "unknown key type {s:?}; expected one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096"
                ));
            }
        })
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
        })
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

/// A file mode given as an octal string (`"0640"`) or TOML integer (`0o640`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(u32),
        }
        let v = match Raw::deserialize(d)? {
            Raw::I(i) => i,
            Raw::S(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid file mode {s:?}; expected octal such as \"0640\""
                ))
            })?,
        };
        if v > 0o7777 {
            return Err(serde::de::Error::custom(format!(
                "file mode {v:o} is out of range"
            )));
        }
        Ok(Self(v))
    }
}

/// A value parsed with `FromStr` whose error becomes a located serde error.
#[derive(Debug, Clone)]
struct Parsed<T>(T);

impl<'de, T: FromStr<Err = String>> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Parsed).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ChallengeKind {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "dns-01")]
    Dns01,
}

/// Declares the per-certificate option fields once, for both `[defaults]` and `[[cert]]`
/// (serde's `flatten` cannot be combined with `deny_unknown_fields`).
macro_rules! cert_options {
    ($(#[$m:meta])* struct $name:ident { $($extra:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($extra)*
            renew_before: Option<Spanned<Parsed<RenewBefore>>>,
            key_type: Option<Spanned<Parsed<KeyType>>>,
            challenge: Option<Spanned<ChallengeKind>>,
            http01_listen: Option<Spanned<String>>,
            http01_webroot: Option<Spanned<PathBuf>>,
            dns01_hook: Option<Spanned<Vec<String>>>,
            reload: Option<Spanned<Vec<Vec<String>>>>,
            hook_timeout: Option<Spanned<Parsed<HumanDuration>>>,
            key_mode: Option<Spanned<Mode>>,
            cert_mode: Option<Spanned<Mode>>,
            owner: Option<Spanned<String>>,
            group: Option<Spanned<String>>,
            profile: Option<Spanned<String>>,
            reload_signal: Option<Spanned<RawReloadSignal>>,
            layout: Option<Spanned<Layout>>,
        }
    };
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReloadSignal {
    pidfile: PathBuf,
    #[serde(default = "default_signal")]
    signal: String,
}

fn default_signal() -> String {
    "HUP".into()
}

/// Built-in reload by signal, for sidecars that share a process namespace with the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSignal {
    /// File holding the server's pid.
    pub pidfile: PathBuf,
    /// Signal to send.
    pub signal: nix::sys::signal::Signal,
}

/// Parses `HUP`, `SIGHUP` or a number into a signal.
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, String> {
    use nix::sys::signal::Signal;
    let t = s.trim().to_ascii_uppercase();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{s:?} is not a signal number"));
    }
    let name = if t.starts_with("SIG") {
        t
    } else {
        format!("SIG{t}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("{s:?} is not a signal name such as \"HUP\" or \"USR1\""))
}

#[derive(Debug, Clone, Copy)]
struct HumanDuration(Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(HumanDuration)
    }
}

cert_options!(
    #[derive(Default)]
    struct RawDefaults {}
);
cert_options!(
    struct RawCert {
        name: Spanned<String>,
        domains: Spanned<Vec<String>>,
        cert_path: Spanned<PathBuf>,
        key_path: Spanned<PathBuf>,
        chain_path: Option<Spanned<PathBuf>>,
        bundle_path: Option<Spanned<PathBuf>>,
    }
);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    directory: Spanned<String>,
    #[serde(default)]
    contact: Vec<String>,
    ca_bundle: Option<Spanned<PathBuf>>,
    eab_kid: Option<Spanned<String>>,
    eab_hmac_key: Option<Spanned<Secret>>,
    request_timeout: Option<Spanned<Parsed<HumanDuration>>>,
    order_timeout: Option<Spanned<Parsed<HumanDuration>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<PathBuf>>,
    metrics_listen: Option<Spanned<String>>,
    acme: Spanned<RawAcme>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default, rename = "cert")]
    certs: Vec<Spanned<RawCert>>,
    strict_modes: Option<Spanned<bool>>,
}

/// External Account Binding credentials, as the CA hands them out.
#[derive(Debug, Clone)]
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
    /// Longest wait for one HTTP exchange with the CA, so a CA that stops answering
    /// fails the run instead of hanging it.
    pub request_timeout: Duration,
    /// Longest time one whole order (including polling) may take.
    pub order_timeout: Duration,
}

/// Default for `acme.request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `acme.order_timeout`.
pub const DEFAULT_ORDER_TIMEOUT: Duration = Duration::from_secs(600);

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
    /// StrictModes); see [`strict_mode_violations`].
    pub strict_modes: bool,
}

/// Default location of `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/certkeeper";

struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
    base: &'a Path,
    errors: Vec<ConfigError>,
    /// Byte offset of the start of every line, so `loc` is a binary search instead of a
    /// scan from the top of the file (which made loading 10,000 certificates quadratic).
    line_starts: Vec<usize>,
}

impl Ctx<'_> {
    fn loc(&self, span: &Range<usize>) -> Loc {
        let offset = span.start.min(self.src.len());
        let i = self.line_starts.partition_point(|&s| s <= offset).max(1) - 1;
        let column = self.src[self.line_starts[i]..offset].chars().count() + 1;
        Loc {
            line: i + 1,
            column,
        }
    }

    fn err(&mut self, span: &Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let loc = self.loc(span);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: loc.line,
            column: loc.column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |i| offset - i - 1) + 1;
    (line, column)
}

/// Reconstructs the dotted key at a byte offset, for serde errors that carry only a span.
fn key_at(src: &str, offset: usize) -> String {
    let offset = offset.min(src.len());
    let line_start = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[offset..].find('\n').map_or(src.len(), |i| offset + i);
    let line = &src[line_start..line_end];
    // The section this line is in: the nearest preceding header.
    let mut section = String::new();
    let mut cert_index = 0usize;
    for l in src[..line_start].lines() {
        let t = l.trim();
        if t.starts_with("[[cert]]") {
            cert_index += 1;
            section = format!("cert[{}]", cert_index - 1);
        } else if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return trimmed
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string();
    }
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    match (section.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => section,
        (false, false) => format!("{section}.{key}"),
    }
}

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
        let raw: RawConfig = toml::from_str(src).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (line, column) = line_col(src, span.start);
            ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                line: line.max(1),
                column,
                key: key_at(src, span.start),
                message: e.message().trim().to_string(),
            }])
        })?;
        let mut ctx = Ctx {
            file,
            src,
            base,
            errors: Vec::new(),
            line_starts: std::iter::once(0)
                .chain(src.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        };
        let cfg = validate(raw, &mut ctx);
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

    /// Checks what the config refers to on this machine: directories, bundle, hooks, users.
    /// Returns every problem, located in the config.
    pub fn check_paths(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let mut push = |loc: Loc, key: String, message: String| {
            out.push(ConfigError {
                file: self.path.clone(),
                line: loc.line,
                column: loc.column,
                key,
                message,
            })
        };
        let top = |k: &str| self.locs.get(k).copied().unwrap_or_default();
        if let Err(m) = dir_usable(&self.state_dir, true) {
            push(top("state_dir"), "state_dir".into(), m);
        }
        if let Some(b) = &self.acme.ca_bundle {
            // Bounded and regular files only: `/dev/zero` or a FIFO here must not hang
            // or exhaust `check`.
            if let Err(e) = crate::fsx::read_regular(b, crate::fsx::PEM_LIMIT, true) {
                push(
                    top("acme.ca_bundle"),
                    "acme.ca_bundle".into(),
                    e.to_string(),
                );
            } else if crate::inventory::read_pem_certs(b).map_or(true, |v| v.is_empty()) {
                push(
                    top("acme.ca_bundle"),
                    "acme.ca_bundle".into(),
                    format!("{} contains no PEM certificate", b.display()),
                );
            }
        }
        for c in &self.certs {
            let key = |k: &str| format!("cert[{}].{k}", c.name);
            let mut paths = vec![("cert_path", &c.cert_path), ("key_path", &c.key_path)];
            if let Some(p) = &c.chain_path {
                paths.push(("chain_path", p));
            }
            if let Some(p) = &c.bundle_path {
                paths.push(("bundle_path", p));
            }
            for (k, p) in paths {
                let parent = p.parent().unwrap_or(Path::new("/"));
                if let Err(m) = dir_usable(parent, false) {
                    push(c.loc(k), key(k), m);
                }
            }
            match &c.challenge {
                Challenge::Http01Webroot(w) => {
                    if let Err(m) = dir_usable(w, false) {
                        push(c.loc("http01_webroot"), key("http01_webroot"), m);
                    }
                }
                Challenge::Dns01Hook(argv) => {
                    if let Err(m) = program_usable(&argv[0]) {
                        push(c.loc("dns01_hook"), key("dns01_hook"), m);
                    }
                }
                Challenge::Http01Listen(_) => {}
            }
            for argv in &c.reload {
                if let Err(m) = program_usable(&argv[0]) {
                    push(c.loc("reload"), key("reload"), m);
                }
            }
            if let Some(o) = &c.owner
                && let Err(m) = crate::store::resolve_owner(Some(o), None)
            {
                push(c.loc("owner"), key("owner"), m);
            }
            if let Some(g) = &c.group
                && let Err(m) = crate::store::resolve_owner(None, Some(g))
            {
                push(c.loc("group"), key("group"), m);
            }
        }
        // Again here, not only at load: a symlink may have been created since.
        out.extend(path_alias_errors(
            &self.certs,
            &self.path,
            &mut HashMap::new(),
        ));
        out
    }
}

fn dir_usable(dir: &Path, may_create: bool) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() {
                Err(format!("directory {} is not writable", dir.display()))
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(_) if may_create => {
            // It will be created; its nearest existing ancestor must be writable.
            let mut p = dir;
            while let Some(parent) = p.parent() {
                if parent.exists() {
                    return dir_usable(parent, false).map_err(|_| {
                        format!(
                            "{} does not exist and cannot be created under {}",
                            dir.display(),
                            parent.display()
                        )
                    });
                }
                p = parent;
            }
            Ok(())
        }
        Err(e) => Err(format!("directory {} does not exist: {e}", dir.display())),
    }
}

fn program_usable(prog: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if prog.contains('/') {
        vec![PathBuf::from(prog)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(prog)).collect())
            .unwrap_or_default()
    };
    for c in &candidates {
        if let Ok(m) = std::fs::metadata(c)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(());
        }
    }
    if prog.contains('/') {
        Err(format!(
            "hook program {prog} does not exist or is not executable"
        ))
    } else {
        Err(format!("hook program {prog:?} is not found in PATH"))
    }
}

/// Checks a DNS name (optionally a leading wildcard) well enough to catch typos.
fn check_domain(d: &str) -> Result<(), String> {
    check_not_ip(d)?;
    let name = d.strip_prefix("*.").unwrap_or(d);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{d:?} is not a valid DNS name"));
    }
    if d != d.to_ascii_lowercase() {
        return Err(format!("{d:?} must be lower case"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{d:?} is not a valid DNS name (bad label {label:?}); wildcards are only allowed as a leading \"*.\""
            ));
        }
    }
    Ok(())
}

/// Rejects IP literals before they reach the CA: certkeeper orders `dns` identifiers only,
/// and a CA either refuses an IP written as a DNS name or needs RFC 8738 `ip` identifiers.
fn check_not_ip(d: &str) -> Result<(), String> {
    let bare = d.trim_start_matches('[').trim_end_matches(']');
    let bare = bare.split('%').next().unwrap_or(bare);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{d:?} is an IP address; IP address identifiers (RFC 8738) are not supported; list DNS names only"
        ));
    }
    Ok(())
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

/// Removes `.` and resolves `..` textually; only used for the part of a path that does not
/// exist yet (so no symlink can be in it).
pub fn normalize_lexically(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !p.is_absolute() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The real location of a directory: its longest existing ancestor canonicalised (symlinks
/// and `..` resolved by the kernel), the rest normalised lexically. `cache` keeps this O(1)
/// per certificate when thousands share a directory.
fn canonical_dir(dir: &Path, cache: &mut HashMap<PathBuf, PathBuf>) -> PathBuf {
    if let Some(c) = cache.get(dir) {
        return c.clone();
    }
    let mut existing = dir;
    let mut rest = Vec::new();
    let resolved = loop {
        if let Ok(c) = std::fs::canonicalize(existing) {
            break c;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            // `..` at the end, or the root itself does not resolve: fall back to text.
            _ => break normalize_lexically(existing),
        }
    };
    let mut full = resolved;
    for name in rest.iter().rev() {
        full.push(name);
    }
    let full = normalize_lexically(&full);
    cache.insert(dir.to_path_buf(), full.clone());
    full
}

/// Where a managed file really is: the parent directory resolved, plus the file name.
pub fn canonical_file(p: &Path, cache: &mut HashMap<PathBuf, PathBuf>) -> PathBuf {
    let norm = normalize_lexically(p);
    match (norm.parent(), norm.file_name()) {
        (Some(parent), Some(name)) => canonical_dir(parent, cache).join(name),
        _ => norm,
    }
}

/// Finds managed files that are one file under two spellings (`out/../out/a.crt`, a
/// symlinked directory): each renewal of one certificate would overwrite the other's.
/// One pass with a HashMap, so 10,000 certificates cost 10,000 look-ups. Paths written
/// identically are left to `validate`'s own duplicate check, which reports them already.
fn path_alias_errors(
    certs: &[CertConfig],
    file: &Path,
    cache: &mut HashMap<PathBuf, PathBuf>,
) -> Vec<ConfigError> {
    let mut seen: HashMap<PathBuf, (&str, &'static str, PathBuf, Loc)> = HashMap::new();
    let mut out = Vec::new();
    for c in certs {
        let files = c.files();
        for (role, p) in files.iter() {
            let k = role.config_key();
            if p.as_os_str().is_empty() {
                continue;
            }
            let real = canonical_file(p, cache);
            let loc = c.loc(k);
            match seen.get(&real) {
                Some((oname, ok, op, oloc)) => {
                    if op == p {
                        continue;
                    }
                    out.push(ConfigError {
                        file: file.to_path_buf(),
                        line: loc.line,
                        column: loc.column,
                        key: format!("cert[{}].{k}", c.name),
                        message: format!(
                            "{} is the same file as cert[{oname}].{ok} = {} ({}:{}): both are {}; \
                             two managed files must not alias, or each renewal overwrites the other",
                            p.display(),
                            op.display(),
                            file.display(),
                            oloc.line,
                            real.display()
                        ),
                    });
                }
                None => {
                    seen.insert(real, (c.name.as_str(), k, p.to_path_buf(), loc));
                }
            }
        }
    }
    out
}

/// Under `strict_modes = true` and when running as root: every path certkeeper trusts that
/// someone other than root could modify. Checked like sshd's StrictModes: the path is
/// resolved (symlinks followed), then it and every ancestor up to `/` must be owned by root
/// and not writable by group or others. A sticky world-writable directory such as `/tmp`
/// is unsafe too: the sticky bit stops others deleting root's entries, but not creating a
/// name root has not created yet, nor does it protect what lies below a non-root-owned
/// entry. A path that does not exist yet is judged by its nearest existing ancestor.
///
/// Checked: the config file (key `config`), `state_dir`, `acme.ca_bundle`, the directory of
/// every managed file, `http01_webroot`, and every hook program (`reload`, `dns01_hook`;
/// bare names are looked up in PATH). Each unsafe path is reported once, with the first
/// key that refers to it.
pub fn strict_mode_violations(cfg: &Config, config_path: &Path) -> Vec<ConfigError> {
    strict_mode_violations_as(cfg, config_path, nix::unistd::geteuid().is_root())
}

/// [`strict_mode_violations`] with the "running as root" answer given, for tests.
pub fn strict_mode_violations_as(
    cfg: &Config,
    config_path: &Path,
    as_root: bool,
) -> Vec<ConfigError> {
    if !cfg.strict_modes || !as_root {
        return Vec::new();
    }
    // (path as configured, config key, location)
    let mut targets: Vec<(PathBuf, String, Loc)> = Vec::new();
    let top = |k: &str| cfg.locs.get(k).copied().unwrap_or_default();
    targets.push((config_path.to_path_buf(), "config".into(), Loc::default()));
    targets.push((cfg.state_dir.clone(), "state_dir".into(), top("state_dir")));
    if let Some(b) = &cfg.acme.ca_bundle {
        targets.push((b.clone(), "acme.ca_bundle".into(), top("acme.ca_bundle")));
    }
    let mut seen_dirs = HashSet::new();
    for c in &cfg.certs {
        let key = |k: &str| format!("cert[{}].{k}", c.name);
        let files = c.files();
        for (role, p) in files.iter() {
            let k = role.config_key();
            let dir = p.parent().unwrap_or(Path::new("/"));
            if seen_dirs.insert(dir.to_path_buf()) {
                targets.push((dir.to_path_buf(), key(k), c.loc(k)));
            }
        }
        match &c.challenge {
            Challenge::Http01Webroot(w) => {
                targets.push((w.clone(), key("http01_webroot"), c.loc("http01_webroot")))
            }
            Challenge::Dns01Hook(argv) => {
                if let Some(p) = resolve_program(&argv[0]) {
                    targets.push((p, key("dns01_hook"), c.loc("dns01_hook")));
                }
            }
            Challenge::Http01Listen(_) => {}
        }
        for argv in &c.reload {
            if let Some(p) = resolve_program(&argv[0]) {
                targets.push((p, key("reload"), c.loc("reload")));
            }
        }
    }
    let mut reported = HashSet::new();
    let mut checked = HashSet::new();
    let mut out = Vec::new();
    for (path, key, loc) in targets {
        let mut p = path.as_path();
        let real = loop {
            if let Ok(r) = std::fs::canonicalize(p) {
                break r;
            }
            match p.parent() {
                Some(parent) => p = parent,
                None => break PathBuf::from("/"),
            }
        };
        for comp in real.ancestors() {
            if !checked.insert(comp.to_path_buf()) {
                // Its ancestors were checked with it.
                break;
            }
            let Some(why) = unsafe_mode(comp) else {
                continue;
            };
            if reported.insert(comp.to_path_buf()) {
                let via = if comp == path {
                    String::new()
                } else {
                    format!(" (on the way to {})", path.display())
                };
                out.push(ConfigError {
                    file: cfg.path.clone(),
                    line: loc.line,
                    column: loc.column,
                    key: key.clone(),
                    message: format!(
                        "strict_modes: {}{via} is {why}; as root certkeeper trusts only paths that root alone can modify (fix with chown root and chmod go-w)",
                        comp.display()
                    ),
                });
            }
        }
    }
    out
}

/// Why `p` is unsafe for root to trust, or `None`.
fn unsafe_mode(p: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) => return Some(format!("not inspectable ({e})")),
    };
    let mode = m.mode() & 0o7777;
    let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(m.uid()))
        .ok()
        .flatten()
        .map_or_else(
            || format!("uid {}", m.uid()),
            |u| format!("{} (uid {})", u.name, m.uid()),
        );
    let mut why = Vec::new();
    if m.uid() != 0 {
        why.push("not owned by root");
    }
    if mode & 0o020 != 0 {
        why.push("group-writable");
    }
    if mode & 0o002 != 0 {
        why.push(if mode & 0o1000 != 0 {
            "world-writable (sticky, still unsafe)"
        } else {
            "world-writable"
        });
    }
    if why.is_empty() {
        return None;
    }
    Some(format!(
        "mode {mode:04o} owned by {owner}: {}",
        why.join(", ")
    ))
}

/// The file a hook argv[0] runs: itself if it has a slash, else the first PATH match.
fn resolve_program(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if prog.is_empty() {
        return None;
    }
    if prog.contains('/') {
        return Some(PathBuf::from(prog));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|c| {
            std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn validate(raw: RawConfig, ctx: &mut Ctx<'_>) -> Config {
    let mut locs = BTreeMap::new();
    let state_dir = match &raw.state_dir {
        Some(s) => {
            locs.insert("state_dir".into(), ctx.loc(&s.span()));
            ctx.path(s.get_ref())
        }
        None => PathBuf::from(DEFAULT_STATE_DIR),
    };

    let metrics_listen = raw.metrics_listen.as_ref().and_then(|m| {
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
    });
    let acme_span = raw.acme.span();
    let acme_raw = raw.acme.into_inner();
    let dir = acme_raw.directory.get_ref().trim().to_string();
    let directory = match dir.as_str() {
        "letsencrypt" => LETSENCRYPT.to_string(),
        "letsencrypt-staging" => LETSENCRYPT_STAGING.to_string(),
        "zerossl" => ZEROSSL.to_string(),
        d if d.starts_with("https://") => d.to_string(),
        d => {
            ctx.err(
                &acme_raw.directory.span(),
                "acme.directory",
                format!(
                    "{d:?} is not an https:// URL nor one of the aliases letsencrypt, letsencrypt-staging, zerossl"
                ),
            );
            d.to_string()
        }
    };
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
    let eab = match (acme_raw.eab_kid, acme_raw.eab_hmac_key) {
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
                    "acme.eab_hmac_key",
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
                "acme.eab_kid",
                "eab_kid is set but eab_hmac_key is missing",
            );
            None
        }
        (None, Some(key)) => {
            ctx.err(
                &key.span(),
                "acme.eab_hmac_key",
                "eab_hmac_key is set but eab_kid is missing",
            );
            None
        }
    };

    let request_timeout = acme_raw
        .request_timeout
        .as_ref()
        .map_or(DEFAULT_REQUEST_TIMEOUT, |v| v.get_ref().0.0);
    let order_timeout = acme_raw
        .order_timeout
        .as_ref()
        .map_or(DEFAULT_ORDER_TIMEOUT, |v| v.get_ref().0.0);
    if order_timeout <= request_timeout {
        let span = acme_raw
            .order_timeout
            .as_ref()
            .or(acme_raw.request_timeout.as_ref())
            .map_or(acme_span.clone(), |v| v.span());
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

    let d = &raw.defaults;
    let mut certs = Vec::new();
    let mut names = HashSet::new();
    let mut paths: BTreeMap<PathBuf, String> = BTreeMap::new();
    if raw.certs.is_empty() {
        ctx.err(&(0..0), "cert", "no [[cert]] sections: nothing to manage");
    }
    for (i, sc) in raw.certs.iter().enumerate() {
        let c = sc.get_ref();
        let name = c.name.get_ref().clone();
        let key = |k: &str| format!("cert[{name}].{k}");
        let mut clocs = BTreeMap::new();
        clocs.insert(String::new(), ctx.loc(&sc.span()));
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            || name.starts_with('.')
        {
            ctx.err(
                &c.name.span(),
                format!("cert[{i}].name"),
                format!("name {name:?} may only contain letters, digits, '.', '_' and '-'"),
            );
        }
        if !names.insert(name.clone()) {
            ctx.err(
                &c.name.span(),
                format!("cert[{i}].name"),
                format!("duplicate certificate name {name:?}"),
            );
        }
        if c.domains.get_ref().is_empty() {
            ctx.err(
                &c.domains.span(),
                key("domains"),
                "must list at least one name",
            );
        }
        let mut seen = HashSet::new();
        for dom in c.domains.get_ref() {
            if let Err(m) = check_domain(dom) {
                ctx.err(&c.domains.span(), key("domains"), m);
            }
            if !seen.insert(dom) {
                ctx.err(
                    &c.domains.span(),
                    key("domains"),
                    format!("{dom:?} is listed twice"),
                );
            }
        }
        let mut file_paths = vec![
            ("cert_path", Some(&c.cert_path)),
            ("key_path", Some(&c.key_path)),
            ("chain_path", c.chain_path.as_ref()),
            ("bundle_path", c.bundle_path.as_ref()),
        ];
        let mut resolved = BTreeMap::new();
        for (k, p) in file_paths.drain(..) {
            let Some(p) = p else { continue };
            clocs.insert(k.to_string(), ctx.loc(&p.span()));
            let abs = ctx.path(p.get_ref());
            if abs.file_name().is_none() || abs.to_string_lossy().ends_with('/') {
                ctx.err(&p.span(), key(k), "must name a file, not a directory");
            }
            if let Some(other) = paths.insert(abs.clone(), format!("{name}.{k}")) {
                ctx.err(
                    &p.span(),
                    key(k),
                    format!("{} is also used by {other}", abs.display()),
                );
            }
            resolved.insert(k, abs);
        }

        macro_rules! pick {
            ($f:ident) => {{
                let v = c.$f.as_ref().or(d.$f.as_ref());
                if let Some(v) = v {
                    clocs.insert(stringify!($f).to_string(), ctx.loc(&v.span()));
                }
                v
            }};
        }
        let renew_before = pick!(renew_before)
            .map(|v| v.get_ref().0)
            .unwrap_or_default();
        let key_type = pick!(key_type).map(|v| v.get_ref().0).unwrap_or_default();
        let hook_timeout = pick!(hook_timeout)
            .map(|v| v.get_ref().0.0)
            .unwrap_or(Duration::from_secs(60));
        let key_mode = pick!(key_mode).map(|v| v.get_ref().0).unwrap_or(0o600);
        let cert_mode = pick!(cert_mode).map(|v| v.get_ref().0).unwrap_or(0o644);
        if key_mode & 0o007 != 0 {
            let span = c.key_mode.as_ref().or(d.key_mode.as_ref()).unwrap().span();
            ctx.err(
                &span,
                key("key_mode"),
                format!(
                    "key_mode {key_mode:04o} makes the private key readable by everyone; use a group (e.g. 0640 with group = ...)"
                ),
            );
        }
        let layout = pick!(layout).map(|v| *v.get_ref()).unwrap_or_default();
        let owner = pick!(owner).map(|v| v.get_ref().clone());
        let group = pick!(group).map(|v| v.get_ref().clone());
        let profile = pick!(profile).map(|v| v.get_ref().clone());
        let reload_signal = match pick!(reload_signal) {
            None => None,
            Some(rs) => match parse_signal(&rs.get_ref().signal) {
                Ok(signal) => Some(ReloadSignal {
                    pidfile: ctx.path(&rs.get_ref().pidfile),
                    signal,
                }),
                Err(m) => {
                    let span = rs.span();
                    ctx.err(&span, key("reload_signal"), m);
                    None
                }
            },
        };
        let reload = pick!(reload)
            .map(|v| v.get_ref().clone())
            .unwrap_or_default();
        for argv in &reload {
            if argv.is_empty() || argv[0].is_empty() {
                let span = c.reload.as_ref().or(d.reload.as_ref()).unwrap().span();
                ctx.err(&span, key("reload"), "each reload hook must be a non-empty argv list such as [\"systemctl\", \"reload\", \"nginx\"]");
            }
        }

        // The challenge: a cert that sets either http01 key overrides both defaults.
        let kind = pick!(challenge)
            .map(|v| *v.get_ref())
            .unwrap_or(ChallengeKind::Http01);
        let (listen, webroot) = if c.http01_listen.is_some() || c.http01_webroot.is_some() {
            (c.http01_listen.as_ref(), c.http01_webroot.as_ref())
        } else {
            (d.http01_listen.as_ref(), d.http01_webroot.as_ref())
        };
        let dns_hook = pick!(dns01_hook);
        let challenge_span = c.challenge.as_ref().map(|s| s.span()).unwrap_or(sc.span());
        let challenge = match kind {
            ChallengeKind::Http01 => match (listen, webroot) {
                (Some(l), None) => {
                    clocs.insert("http01_listen".into(), ctx.loc(&l.span()));
                    match l.get_ref().parse::<SocketAddr>() {
                        Ok(a) => Challenge::Http01Listen(a),
                        Err(_) => {
                            ctx.err(
                                &l.span(),
                                key("http01_listen"),
                                format!(
                                    "{:?} is not an address such as \"[::]:80\" or \"127.0.0.1:5002\"",
                                    l.get_ref()
                                ),
                            );
                            Challenge::Http01Listen(SocketAddr::from(([0, 0, 0, 0], 80)))
                        }
                    }
                }
                (None, Some(w)) => {
                    clocs.insert("http01_webroot".into(), ctx.loc(&w.span()));
                    Challenge::Http01Webroot(ctx.path(w.get_ref()))
                }
                (Some(l), Some(_)) => {
                    ctx.err(
                        &l.span(),
                        key("http01_listen"),
                        "set either http01_listen or http01_webroot, not both",
                    );
                    Challenge::Http01Listen(SocketAddr::from(([0, 0, 0, 0], 80)))
                }
                (None, None) => {
                    ctx.err(
                        &challenge_span,
                        key("challenge"),
                        "http-01 needs http01_listen (built-in responder) or http01_webroot",
                    );
                    Challenge::Http01Listen(SocketAddr::from(([0, 0, 0, 0], 80)))
                }
            },
            ChallengeKind::Dns01 => match dns_hook {
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
                        key("dns01_hook"),
                        "must be a non-empty argv list",
                    );
                    Challenge::Dns01Hook(vec![String::new()])
                }
                None => {
                    ctx.err(
                        &challenge_span,
                        key("challenge"),
                        "dns-01 needs dns01_hook = [\"/path/to/hook\", ...]",
                    );
                    Challenge::Dns01Hook(vec![String::new()])
                }
            },
        };
        if !matches!(challenge, Challenge::Dns01Hook(_))
            && c.domains.get_ref().iter().any(|d| d.starts_with("*."))
        {
            ctx.err(
                &c.domains.span(),
                key("domains"),
                "wildcard names can only be validated with challenge = \"dns-01\"",
            );
        }
        let reload = reload
            .into_iter()
            .map(|mut argv| {
                if argv.first().is_some_and(|p| p.contains('/')) {
                    argv[0] = ctx.path(Path::new(&argv[0])).to_string_lossy().into_owned();
                }
                argv
            })
            .collect();

        certs.push(CertConfig {
            name: name.clone(),
            domains: c.domains.get_ref().clone(),
            cert_path: resolved.remove("cert_path").unwrap_or_default(),
            key_path: resolved.remove("key_path").unwrap_or_default(),
            chain_path: resolved.remove("chain_path"),
            bundle_path: resolved.remove("bundle_path"),
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
            locs: clocs,
        });
    }

    ctx.errors
        .extend(path_alias_errors(&certs, ctx.file, &mut HashMap::new()));
    let strict_modes = raw.strict_modes.as_ref().is_some_and(|s| {
        locs.insert("strict_modes".into(), ctx.loc(&s.span()));
        *s.get_ref()
    });
    Config {
        strict_modes,
        path: ctx.file.to_path_buf(),
        state_dir,
        acme: AcmeConfig {
            directory,
            contact: acme_raw.contact,
            ca_bundle,
            eab,
            request_timeout,
            order_timeout,
        },
        certs,
        metrics_listen,
        locs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            cfg.check_paths()
                .iter()
                .all(|e| !e.message.contains("same file"))
        );
        std::os::unix::fs::symlink(d.join("real"), d.join("later")).unwrap();
        let probs = cfg.check_paths();
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
}
