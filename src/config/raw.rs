//! The config file's shape as serde reads it from TOML: every field optional where the
//! file may omit it, and wrapped in `Spanned` so validation can point at its line. Kept
//! apart from the validated types so that nothing outside `config` ever sees a half-checked
//! value, and `deny_unknown_fields` catches typos before validation starts.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::parse::{HumanDuration, MaxNewOrders, Parsed};
use super::{KeyType, Layout, Mode, RenewBefore, Secret};

/// `challenge = "http-01" | "dns-01"`, before the keys it needs are looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(super) enum ChallengeKind {
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
        pub(super) struct $name {
            $($extra)*
            pub(super) renew_before: Option<Spanned<Parsed<RenewBefore>>>,
            pub(super) key_type: Option<Spanned<Parsed<KeyType>>>,
            pub(super) challenge: Option<Spanned<ChallengeKind>>,
            pub(super) http01_listen: Option<Spanned<String>>,
            pub(super) http01_webroot: Option<Spanned<PathBuf>>,
            pub(super) dns01_hook: Option<Spanned<Vec<String>>>,
            pub(super) reload: Option<Spanned<Vec<Vec<String>>>>,
            pub(super) hook_timeout: Option<Spanned<Parsed<HumanDuration>>>,
            pub(super) key_mode: Option<Spanned<Mode>>,
            pub(super) cert_mode: Option<Spanned<Mode>>,
            pub(super) owner: Option<Spanned<String>>,
            pub(super) group: Option<Spanned<String>>,
            pub(super) profile: Option<Spanned<String>>,
            pub(super) reload_signal: Option<Spanned<RawReloadSignal>>,
            pub(super) layout: Option<Spanned<Layout>>,
            pub(super) max_orders_per_cert: Option<Spanned<u32>>,
            pub(super) verify_timeout: Option<Spanned<Parsed<HumanDuration>>>,
            pub(super) warn_before: Option<Spanned<Parsed<RenewBefore>>>,
        }
    };
}

/// `reload_signal = { pidfile = ..., signal = ... }` with the signal still a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReloadSignal {
    pub(super) pidfile: PathBuf,
    #[serde(default = "default_signal")]
    pub(super) signal: String,
}

fn default_signal() -> String {
    "HUP".into()
}

cert_options!(
    /// `[defaults]`: the per-certificate options every `[[cert]]` inherits.
    #[derive(Default)]
    struct RawDefaults {}
);
cert_options!(
    /// One `[[cert]]` section.
    struct RawCert {
        pub(super) name: Spanned<String>,
        pub(super) domains: Spanned<Vec<String>>,
        pub(super) cert_path: Spanned<PathBuf>,
        pub(super) key_path: Spanned<PathBuf>,
        pub(super) chain_path: Option<Spanned<PathBuf>>,
        pub(super) bundle_path: Option<Spanned<PathBuf>>,
        /// Each entry a `"host:port"` string or an inline table; checked in validation
        /// (an untagged enum would only say "did not match any variant").
        pub(super) verify: Option<Spanned<Vec<Spanned<toml::Value>>>>,
        pub(super) fallback: Option<Spanned<Vec<Spanned<RawCa>>>>,
    }
);

/// The `[acme]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    pub(super) directory: Spanned<String>,
    #[serde(default)]
    pub(super) contact: Vec<String>,
    pub(super) ca_bundle: Option<Spanned<PathBuf>>,
    pub(super) max_new_orders: Option<Spanned<Parsed<MaxNewOrders>>>,
    pub(super) replaces_exempt: Option<Spanned<bool>>,
    pub(super) eab_kid: Option<Spanned<String>>,
    pub(super) eab_hmac_key: Option<Spanned<Secret>>,
    pub(super) request_timeout: Option<Spanned<Parsed<HumanDuration>>>,
    pub(super) order_timeout: Option<Spanned<Parsed<HumanDuration>>>,
    pub(super) max_concurrent_orders: Option<Spanned<u32>>,
    pub(super) fallback: Option<Spanned<Vec<Spanned<RawCa>>>>,
    pub(super) fallback_after_failures: Option<Spanned<u32>>,
    pub(super) fallback_before: Option<Spanned<Parsed<RenewBefore>>>,
}

/// One entry of a `fallback` list (in `[acme]` or a `[[cert]]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCa {
    pub(super) directory: Spanned<String>,
    pub(super) contact: Option<Vec<String>>,
    pub(super) ca_bundle: Option<Spanned<PathBuf>>,
    pub(super) eab_kid: Option<Spanned<String>>,
    pub(super) eab_hmac_key: Option<Spanned<Secret>>,
    pub(super) profile: Option<Spanned<String>>,
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) state_dir: Option<Spanned<PathBuf>>,
    pub(super) metrics_listen: Option<Spanned<String>>,
    pub(super) acme: Spanned<RawAcme>,
    #[serde(default)]
    pub(super) defaults: RawDefaults,
    #[serde(default, rename = "cert")]
    pub(super) certs: Vec<Spanned<RawCert>>,
    pub(super) strict_modes: Option<Spanned<bool>>,
    #[serde(default, rename = "watch")]
    pub(super) watches: Vec<Spanned<RawWatch>>,
    pub(super) notify: Option<Spanned<RawNotify>>,
    pub(super) cluster: Option<Spanned<RawCluster>>,
}

/// The `[cluster]` section (fleet mode), before endpoints and the seal key are checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    #[serde(default)]
    pub(super) etcd: Vec<Spanned<String>>,
    pub(super) prefix: Option<Spanned<String>>,
    pub(super) node_name: Option<Spanned<String>>,
    pub(super) lease_ttl: Option<Spanned<Parsed<HumanDuration>>>,
    pub(super) seal_key_file: Option<Spanned<PathBuf>>,
    pub(super) emergency_before: Option<Spanned<Parsed<RenewBefore>>>,
    pub(super) request_timeout: Option<Spanned<Parsed<HumanDuration>>>,
    pub(super) ca_bundle: Option<Spanned<PathBuf>>,
    pub(super) client_cert: Option<Spanned<PathBuf>>,
    pub(super) client_key: Option<Spanned<PathBuf>>,
    pub(super) user: Option<Spanned<String>>,
    pub(super) password: Option<Spanned<String>>,
}

/// One `[[watch]]` section: a certificate certkeeper does not issue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) paths: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) endpoints: Vec<Spanned<toml::Value>>,
    pub(super) warn_before: Option<Spanned<Parsed<RenewBefore>>>,
}

/// The `[notify]` section, before the webhook URL and the hooks are checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    #[serde(default)]
    pub(super) hooks: Vec<Vec<String>>,
    pub(super) webhook: Option<Spanned<String>>,
    pub(super) ca_bundle: Option<Spanned<PathBuf>>,
    pub(super) timeout: Option<Spanned<Parsed<HumanDuration>>>,
    pub(super) remind_every: Option<Spanned<Parsed<HumanDuration>>>,
}
