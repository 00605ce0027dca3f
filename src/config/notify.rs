//! `[notify]` and `warn_before`: the alerting keys, validated apart from the renewal keys
//! so the rules about where alerts go (an http(s) webhook, non-empty hook argv lists) and
//! when they start (after the renewal point) sit next to each other.

use std::path::Path;

use toml::Spanned;

use super::parse::{HumanDuration, Parsed};
use super::raw::RawNotify;
use super::span::Ctx;
use super::{
    DEFAULT_NOTIFY_TIMEOUT, DEFAULT_REMIND_EVERY, DEFAULT_WARN_BEFORE, Loc, NotifyConfig,
    RenewBefore,
};

/// The `[notify]` section.
pub(super) fn notify_section(
    raw: Spanned<RawNotify>,
    ctx: &mut Ctx<'_>,
    locs: &mut std::collections::BTreeMap<String, Loc>,
) -> NotifyConfig {
    let span = raw.span();
    locs.insert("notify".into(), ctx.loc(&span));
    let raw = raw.into_inner();
    for argv in &raw.hooks {
        if argv.first().is_none_or(|p| p.is_empty()) {
            ctx.err(
                &span,
                "notify.hooks",
                "each notify hook must be a non-empty argv list such as [\"/etc/certkeeper/hooks/notify-mail\"]",
            );
        }
    }
    let hooks = raw
        .hooks
        .into_iter()
        .map(|mut argv| {
            if argv.first().is_some_and(|p| p.contains('/')) {
                argv[0] = ctx.path(Path::new(&argv[0])).to_string_lossy().into_owned();
            }
            argv
        })
        .collect();
    let webhook = raw.webhook.map(|w| {
        if let Err(m) = check_webhook(w.get_ref()) {
            ctx.err(&w.span(), "notify.webhook", m);
        }
        w.into_inner()
    });
    let ca_bundle = raw.ca_bundle.map(|b| ctx.path(b.get_ref()));
    let dur = |v: Option<Spanned<Parsed<HumanDuration>>>, d| v.map_or(d, |v| v.get_ref().0.0);
    NotifyConfig {
        hooks,
        webhook,
        ca_bundle,
        timeout: dur(raw.timeout, DEFAULT_NOTIFY_TIMEOUT),
        remind_every: dur(raw.remind_every, DEFAULT_REMIND_EVERY),
    }
}

/// A webhook URL must be `http://` or `https://` with a host. The message never repeats
/// the URL: Slack's and Teams' URLs are themselves the secret.
fn check_webhook(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| {
        "is not a URL such as \"https://hooks.example.com/T000/B000\" (value not shown)".to_string()
    })?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        Some(other) => {
            return Err(format!(
                "scheme {other:?} is not supported: the webhook must be an https:// or http:// URL"
            ));
        }
        None => return Err("must be an https:// or http:// URL (value not shown)".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host (value not shown)".into());
    }
    Ok(())
}

/// `warn_before`, defaulted to 1/6 of the lifetime. When it is written in the same form as
/// `renew_before` (both fractions or both durations) it must be smaller, i.e. after the
/// renewal point. Mixed forms depend on the lifetime, so they are accepted here and
/// [`effective_warn`] keeps the warning after the renewal point at run time.
pub(super) fn warn_before(
    raw: Option<&Spanned<Parsed<RenewBefore>>>,
    renew: RenewBefore,
    key: String,
    ctx: &mut Ctx<'_>,
) -> RenewBefore {
    let Some(raw) = raw else {
        return DEFAULT_WARN_BEFORE;
    };
    let warn = raw.get_ref().0;
    let too_early = match (warn, renew) {
        (RenewBefore::Fraction(w), RenewBefore::Fraction(r)) => w >= r,
        (RenewBefore::Remaining(w), RenewBefore::Remaining(r)) => w >= r,
        _ => false,
    };
    if too_early {
        ctx.err(
            &raw.span(),
            key,
            format!(
                "warn_before ({warn}) must be after the renewal point, i.e. less than renew_before ({renew}); otherwise the warning fires before renewal had its chance"
            ),
        );
    }
    warn
}

/// How long before not-after the `expiring` warning starts, for a certificate of this
/// lifetime: `warn_before`, unless that is not after the renewal point (a mixed form, or
/// the default with a small `renew_before`), then half of the renewal threshold.
pub fn effective_warn(
    warn: RenewBefore,
    renew: RenewBefore,
    lifetime: std::time::Duration,
) -> std::time::Duration {
    let resolve = |r: RenewBefore| match r {
        RenewBefore::Fraction(f) => lifetime.mul_f64(f),
        RenewBefore::Remaining(d) => d,
    };
    let (w, r) = (resolve(warn), resolve(renew));
    if w < r { w } else { r / 2 }
}
