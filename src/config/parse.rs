//! Value parsers for config strings: durations, renewal thresholds, key types, file modes,
//! signals and DNS names. Pure functions of a string, kept apart from the TOML shapes and
//! from validation so each can be unit-tested without a config file around it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::timefmt::format_duration;
use serde::{Deserialize, Deserializer};

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
pub(super) struct Parsed<T>(pub(super) T);

impl<'de, T: FromStr<Err = String>> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Parsed).map_err(serde::de::Error::custom)
    }
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

/// A duration as `parse_duration` reads it, for `Parsed<HumanDuration>` fields.
#[derive(Debug, Clone, Copy)]
pub(super) struct HumanDuration(pub(super) Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(HumanDuration)
    }
}

/// Checks a DNS name (optionally a leading wildcard) well enough to catch typos.
pub(super) fn check_domain(d: &str) -> Result<(), String> {
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

/// `acme.max_new_orders`: at most `orders` new orders per sliding `window`, the way CAs
/// state their rate limits (Let's Encrypt: 300 new orders per account per 3 hours), so the
/// agent stops before the CA starts refusing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLimit {
    /// New orders allowed inside one window (at least 1).
    pub orders: u32,
    /// The sliding window.
    pub window: Duration,
}

impl Default for OrderLimit {
    /// Let's Encrypt's default limit: 300 new orders per 3 hours.
    fn default() -> Self {
        Self {
            orders: 300,
            window: Duration::from_secs(3 * 3600),
        }
    }
}

impl fmt::Display for OrderLimit {
    /// "300 per 3h", as the deferral messages show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {}", self.orders, format_duration(self.window))
    }
}

/// `max_new_orders` as written: a limit, or `"unlimited"` for a CA without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MaxNewOrders(pub(super) Option<OrderLimit>);

impl FromStr for MaxNewOrders {
    type Err = String;

    /// `"N/DURATION"` (e.g. `"300/3h"`, `"2/20s"`) or `"unlimited"`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "unlimited" {
            return Ok(Self(None));
        }
        let hint = "expected \"N/DURATION\" such as \"300/3h\", or \"unlimited\"";
        let Some((n, window)) = s.split_once('/') else {
            return Err(format!("invalid order limit {s:?}; {hint}"));
        };
        let orders: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("invalid order limit {s:?}: {n:?} is not a count; {hint}"))?;
        if orders == 0 {
            return Err(format!(
                "order limit {s:?} allows no order at all; use at least 1, or \"unlimited\" to turn the budget off"
            ));
        }
        let window = parse_duration(window).map_err(|e| format!("{e}; {hint}"))?;
        Ok(Self(Some(OrderLimit { orders, window })))
    }
}

/// Splits an endpoint `host:port` (IPv6 as `[::1]:443`), so a typo in a `verify` entry
/// is a config error instead of a probe that can never connect.
pub fn parse_endpoint(addr: &str) -> Result<(String, u16), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} has no port (write host:port)"));
    };
    let host = match host.strip_prefix('[') {
        Some(h) => h
            .strip_suffix(']')
            .ok_or_else(|| format!("{addr:?}: unbalanced '[' in the host"))?,
        None if host.contains(':') => {
            return Err(format!("{addr:?}: write an IPv6 address as [addr]:port"));
        }
        None => host,
    };
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    match port.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok((host.to_string(), p as u16)),
        _ => Err(format!("{addr:?}: {port:?} is not a port (1-65535)")),
    }
}

#[cfg(test)]
mod order_limit_tests {
    use super::*;

    #[test]
    fn parses_counts_per_window_and_unlimited() {
        let l = "300/3h".parse::<MaxNewOrders>().unwrap().0.unwrap();
        assert_eq!(l, OrderLimit::default());
        assert_eq!(l.to_string(), "300 per 3h");
        let l = " 2 / 20s ".parse::<MaxNewOrders>().unwrap().0.unwrap();
        assert_eq!((l.orders, l.window), (2, Duration::from_secs(20)));
        assert_eq!("unlimited".parse::<MaxNewOrders>().unwrap().0, None);
    }

    #[test]
    fn rejects_malformed_limits_with_a_hint() {
        for (bad, says) in [
            ("300", "N/DURATION"),
            ("0/3h", "unlimited"),
            ("0", "N/DURATION"),
            ("x/3h", "not a count"),
            ("300/3", "needs a unit"),
            ("300/", "empty duration"),
            ("-1/3h", "not a count"),
            ("none", "N/DURATION"),
        ] {
            let e = bad.parse::<MaxNewOrders>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
