//! Validation of the fallback CAs: `[acme] fallback`, `fallback_after_failures`,
//! `fallback_before` and a certificate's own `fallback` list. Apart from `validate` so the
//! rules of the second CA are found in one place; every entry is a full CA (directory,
//! contact, trust, EAB, profile), checked like `[acme]` itself.

use std::ops::Range;

use toml::Spanned;

use super::parse::Parsed;
use super::raw::{RawAcme, RawCa, RawCert};
use super::span::Ctx;
use super::validate::{directory_at, eab_at};
use super::{
    AcmeConfig, CaConfig, CertConfig, DEFAULT_FALLBACK_AFTER_FAILURES, DEFAULT_FALLBACK_BEFORE,
    FallbackRule,
};

/// A `fallback` list as written.
type RawList = Spanned<Vec<Spanned<RawCa>>>;

/// `acme.fallback_after_failures` (at least 1, default 3) and `acme.fallback_before`
/// (default a quarter of the lifetime).
pub(super) fn rule(raw: &RawAcme, ctx: &mut Ctx<'_>) -> FallbackRule {
    let after_failures = match &raw.fallback_after_failures {
        None => DEFAULT_FALLBACK_AFTER_FAILURES,
        Some(v) if *v.get_ref() == 0 => {
            ctx.err(
                &v.span(),
                "acme.fallback_after_failures",
                "fallback_after_failures = 0 would leave a CA before trying it; use at least 1 (default 3)",
            );
            DEFAULT_FALLBACK_AFTER_FAILURES
        }
        Some(v) => *v.get_ref(),
    };
    let before = raw
        .fallback_before
        .as_ref()
        .map_or(DEFAULT_FALLBACK_BEFORE, |v| {
            let Parsed(b) = v.get_ref();
            *b
        });
    FallbackRule {
        after_failures,
        before,
    }
}

/// `acme.fallback`, checked against the primary `primary` (directory, contact).
pub(super) fn acme_list(
    raw: Option<&RawList>,
    primary: &CaConfig,
    ctx: &mut Ctx<'_>,
) -> Vec<CaConfig> {
    raw.map(|l| list(l, "acme.fallback", primary, ctx))
        .unwrap_or_default()
}

/// Each certificate's own `fallback` list (replacing `[acme] fallback`; `[]` is none).
pub(super) fn cert_lists(
    raw: &[Spanned<RawCert>],
    certs: &mut [CertConfig],
    acme: &AcmeConfig,
    ctx: &mut Ctx<'_>,
) {
    let primary = acme.primary();
    for (rc, cert) in raw.iter().zip(certs.iter_mut()) {
        if let Some(l) = &rc.get_ref().fallback {
            cert.locs.insert("fallback".into(), ctx.loc(&l.span()));
            let key = format!("cert[{}].fallback", cert.name);
            cert.fallback = Some(list(l, &key, &primary, ctx));
        }
    }
}

/// One list: every entry valid, none the primary, none twice.
fn list(raw: &RawList, key: &str, primary: &CaConfig, ctx: &mut Ctx<'_>) -> Vec<CaConfig> {
    let mut out: Vec<CaConfig> = Vec::new();
    for (i, e) in raw.get_ref().iter().enumerate() {
        let k = format!("{key}[{i}]");
        let ca = entry(e.get_ref(), &k, primary, ctx);
        let span: Range<usize> = e.get_ref().directory.span();
        if ca.directory == primary.directory {
            ctx.err(
                &span,
                format!("{k}.directory"),
                format!(
                    "{} is the primary CA ([acme] directory); a fallback must be another CA",
                    ca.directory
                ),
            );
        } else if out.iter().any(|o| o.directory == ca.directory) {
            ctx.err(
                &span,
                format!("{k}.directory"),
                format!("{} is listed twice", ca.directory),
            );
        }
        out.push(ca);
    }
    out
}

/// One entry; contact defaults to the primary's, the CA bundle does not (another CA is
/// another server).
fn entry(raw: &RawCa, key: &str, primary: &CaConfig, ctx: &mut Ctx<'_>) -> CaConfig {
    let directory = directory_at(&raw.directory, &format!("{key}.directory"), ctx);
    let contact = raw
        .contact
        .clone()
        .unwrap_or_else(|| primary.contact.clone());
    for c in &contact {
        if !c.starts_with("mailto:") {
            ctx.err(
                &raw.directory.span(),
                format!("{key}.contact"),
                format!("contact {c:?} must be a URI such as \"mailto:ops@example.com\""),
            );
        }
    }
    let eab = eab_at(raw.eab_kid.clone(), raw.eab_hmac_key.clone(), key, ctx);
    if let Some(p) = raw
        .profile
        .as_ref()
        .filter(|p| p.get_ref().trim().is_empty())
    {
        ctx.err(&p.span(), format!("{key}.profile"), "must not be empty");
    }
    CaConfig {
        directory,
        contact,
        ca_bundle: raw.ca_bundle.as_ref().map(|b| ctx.path(b.get_ref())),
        eab,
        profile: raw.profile.as_ref().map(|p| p.get_ref().clone()),
    }
}
