//! The `verify` list and `verify_timeout` of one `[[cert]]`: where the installed
//! certificate must be served. Apart from `validate` because each entry is checked by
//! hand (a string or an inline table), so every mistake names its own line.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawCert, RawDefaults};
use super::span::Ctx;
use super::{DEFAULT_VERIFY_TIMEOUT, Endpoint, Loc, Starttls, parse_endpoint};

/// The endpoints and the timeout of one certificate, recording where they were written.
pub(super) fn section(
    locs: &mut BTreeMap<String, Loc>,
    name: &str,
    c: &RawCert,
    d: &RawDefaults,
    ctx: &mut Ctx<'_>,
) -> (Vec<Endpoint>, Duration) {
    let timeout = c.verify_timeout.as_ref().or(d.verify_timeout.as_ref());
    let verify_timeout = match timeout {
        Some(t) => {
            locs.insert("verify_timeout".into(), ctx.loc(&t.span()));
            // `parse_duration` already refuses 0s.
            t.get_ref().0.0
        }
        None => DEFAULT_VERIFY_TIMEOUT,
    };
    let Some(list) = &c.verify else {
        return (Vec::new(), verify_timeout);
    };
    locs.insert("verify".into(), ctx.loc(&list.span()));
    let key = format!("cert[{name}].verify");
    let mut eps: Vec<Endpoint> = Vec::new();
    for e in list.get_ref() {
        let Some(ep) = entry(e, &key, ctx) else {
            continue;
        };
        // Results are kept per address: one address twice would hide one of them.
        if eps.iter().any(|x| x.addr == ep.addr) {
            ctx.err(&e.span(), &key, format!("{:?} is listed twice", ep.addr));
            continue;
        }
        eps.push(ep);
    }
    (eps, verify_timeout)
}

/// One entry: `"host:port"` or `{ addr, starttls, sni }`.
pub(super) fn entry(e: &Spanned<toml::Value>, key: &str, ctx: &mut Ctx<'_>) -> Option<Endpoint> {
    let span = e.span();
    let fail = |ctx: &mut Ctx<'_>, m: String| {
        ctx.err(&span, key, m);
        None
    };
    let (addr, starttls, sni) = match e.get_ref() {
        toml::Value::String(a) => (a.clone(), Starttls::None, None),
        toml::Value::Table(t) => {
            let mut addr = None;
            let mut starttls = Starttls::None;
            let mut sni = None;
            for (k, v) in t {
                match (k.as_str(), v) {
                    ("addr", toml::Value::String(a)) => addr = Some(a.clone()),
                    ("starttls", toml::Value::String(s)) => match s.as_str() {
                        "smtp" => starttls = Starttls::Smtp,
                        "imap" => starttls = Starttls::Imap,
                        other => {
                            let m = format!(
                                "unknown starttls scheme {other:?} (known: \"smtp\", \"imap\")"
                            );
                            return fail(ctx, m);
                        }
                    },
                    ("sni", toml::Value::String(s)) if !s.is_empty() => sni = Some(s.clone()),
                    ("addr" | "starttls" | "sni", _) => {
                        return fail(ctx, format!("{k} must be a non-empty string"));
                    }
                    _ => {
                        let m = format!("unknown key {k:?} (known: addr, starttls, sni)");
                        return fail(ctx, m);
                    }
                }
            }
            let Some(addr) = addr else {
                return fail(ctx, "an entry needs addr = \"host:port\"".into());
            };
            (addr, starttls, sni)
        }
        _ => return fail(ctx, "an entry is \"host:port\" or { addr = ... }".into()),
    };
    if addr.trim().is_empty() {
        return fail(ctx, "empty endpoint".into());
    }
    match parse_endpoint(&addr) {
        Ok((host, port)) => Some(Endpoint {
            addr,
            host,
            port,
            starttls,
            sni,
        }),
        Err(m) => fail(ctx, m),
    }
}
