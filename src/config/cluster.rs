//! `[cluster]`: fleet mode's etcd connection, identity and fleet key. Validated here, next
//! to each other, so the rules that keep a fleet from mixing up replicas (a unique node
//! name, a prefix) and from leaking keys (a 32-byte seal key that must be readable) are
//! found in one place.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawCluster;
use super::span::Ctx;
use super::{ClusterConfig, Loc, RenewBefore, Secret};
use crate::seal::SealKey;

/// Default `cluster.prefix`.
pub const DEFAULT_PREFIX: &str = "/certkeeper/default";
/// Default `cluster.lease_ttl`: a dead orderer's locks are free again after this.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// The shortest `cluster.lease_ttl`: keep-alives go out every third of it.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
/// Default `cluster.request_timeout`: the bound on one etcd request.
pub const DEFAULT_ETCD_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `cluster.emergency_before`: a tenth of the lifetime.
pub const DEFAULT_EMERGENCY_BEFORE: RenewBefore = RenewBefore::Fraction(0.1);

/// The `[cluster]` section.
pub(super) fn cluster_section(
    raw: Spanned<RawCluster>,
    ctx: &mut Ctx<'_>,
    locs: &mut BTreeMap<String, Loc>,
) -> ClusterConfig {
    let span = raw.span();
    locs.insert("cluster".into(), ctx.loc(&span));
    let raw = raw.into_inner();
    let etcd = endpoints(&raw, &span, ctx);
    let prefix = prefix(raw.prefix.as_ref(), ctx);
    let node_name = node_name(raw.node_name.as_ref(), &span, ctx);
    let lease_ttl = raw.lease_ttl.as_ref().map_or(DEFAULT_LEASE_TTL, |t| {
        let d = t.get_ref().0.0;
        if d < MIN_LEASE_TTL {
            ctx.err(
                &t.span(),
                "cluster.lease_ttl",
                "must be at least 2s (keep-alives go out every third of it)",
            );
        }
        d
    });
    let seal_key = seal_key(raw.seal_key_file.as_ref(), &span, ctx);
    let pair = |a: bool, b: bool, what: &str, ctx: &mut Ctx<'_>| {
        if a != b {
            ctx.err(
                &span,
                format!("cluster.{what}"),
                format!("{what} must be given together"),
            );
        }
    };
    pair(
        raw.client_cert.is_some(),
        raw.client_key.is_some(),
        "client_cert and client_key",
        ctx,
    );
    pair(
        raw.user.is_some(),
        raw.password.is_some(),
        "user and password",
        ctx,
    );
    let path = |p: Option<Spanned<PathBuf>>| p.map(|p| ctx.path(p.get_ref()));
    ClusterConfig {
        etcd,
        prefix,
        node_name,
        lease_ttl,
        seal_key: seal_key.map(|(k, _)| k),
        seal_key_file: raw
            .seal_key_file
            .as_ref()
            .map(|p| ctx.path(p.get_ref()))
            .unwrap_or_default(),
        emergency_before: raw
            .emergency_before
            .as_ref()
            .map_or(DEFAULT_EMERGENCY_BEFORE, |e| e.get_ref().0),
        request_timeout: raw
            .request_timeout
            .as_ref()
            .map_or(DEFAULT_ETCD_TIMEOUT, |t| t.get_ref().0.0),
        ca_bundle: path(raw.ca_bundle),
        client_cert: path(raw.client_cert),
        client_key: path(raw.client_key),
        user: raw.user.map(Spanned::into_inner),
        password: raw.password.map(|p| Secret(p.into_inner())),
    }
}

/// `etcd`: at least one `http(s)://host:port`.
fn endpoints(raw: &RawCluster, span: &std::ops::Range<usize>, ctx: &mut Ctx<'_>) -> Vec<String> {
    if raw.etcd.is_empty() {
        ctx.err(
            span,
            "cluster.etcd",
            "at least one etcd endpoint is required, such as [\"https://10.0.0.1:2379\"]",
        );
    }
    for e in &raw.etcd {
        if let Err(m) = check_endpoint(e.get_ref()) {
            ctx.err(&e.span(), "cluster.etcd", m);
        }
    }
    raw.etcd.iter().map(|e| e.get_ref().clone()).collect()
}

/// One etcd endpoint: `http://` or `https://`, a host and a port.
fn check_endpoint(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL such as \"https://10.0.0.1:2379\""))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "{url:?}: an etcd endpoint must be http:// or https://"
        ));
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(format!(
            "{url:?}: an etcd endpoint needs a host and a port (etcd's client port is usually 2379)"
        ));
    }
    Ok(())
}

/// `prefix`: absolute, no trailing slash, no empty segment.
fn prefix(raw: Option<&Spanned<String>>, ctx: &mut Ctx<'_>) -> String {
    let Some(p) = raw else {
        return DEFAULT_PREFIX.into();
    };
    let v = p.get_ref();
    if !v.starts_with('/') || v.ends_with('/') || v.contains("//") || v.len() < 2 {
        ctx.err(&p.span(), "cluster.prefix", format!("{v:?} must look like \"/certkeeper/<fleet>\": it starts with / and does not end with one"));
    }
    v.clone()
}

/// `node_name`: the host name by default; it names this replica's keys.
fn node_name(
    raw: Option<&Spanned<String>>,
    span: &std::ops::Range<usize>,
    ctx: &mut Ctx<'_>,
) -> String {
    let name = raw.map_or_else(
        || {
            hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        },
        |n| n.get_ref().clone(),
    );
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        let at = raw.map_or(span.clone(), Spanned::span);
        ctx.err(&at, "cluster.node_name", format!("{name:?} is not a usable node name: 1-128 characters of letters, digits, '-', '_' and '.'"));
    }
    name
}

/// `seal_key_file`: required, readable, 32 raw bytes.
fn seal_key(
    raw: Option<&Spanned<PathBuf>>,
    span: &std::ops::Range<usize>,
    ctx: &mut Ctx<'_>,
) -> Option<(SealKey, PathBuf)> {
    let Some(raw) = raw else {
        ctx.err(span, "cluster.seal_key_file", "is required: keys are sealed before they reach etcd (create one with `openssl rand -out /etc/certkeeper/fleet.key 32`)");
        return None;
    };
    let path = ctx.path(raw.get_ref());
    match SealKey::read(&path) {
        Ok(k) => Some((k, path)),
        Err(e) => {
            ctx.err(&raw.span(), "cluster.seal_key_file", e.to_string());
            None
        }
    }
}

/// How long before expiry a replica may order alone while etcd is unavailable.
pub fn emergency_point(before: RenewBefore, lifetime: Duration) -> Duration {
    match before {
        RenewBefore::Fraction(f) => lifetime.mul_f64(f),
        RenewBefore::Remaining(d) => d,
    }
}
