//! `[[watch]]` sections -> [`WatchConfig`]: names unique among watches and certificates,
//! patterns that are valid globs made absolute, and `warn_before`. Its own file because
//! nothing of a managed certificate's validation applies to a watched one.

use std::collections::HashSet;
use std::path::Path;

use toml::Spanned;

use super::raw::RawWatch;
use super::span::Ctx;
use super::{CertConfig, DEFAULT_WATCH_WARN_BEFORE, RenewBefore, WatchConfig};

/// Validates every `[[watch]]`; `certs` are the `[[cert]]` sections, whose names a watch
/// may not reuse (status rows, metrics and notifications are keyed by name).
pub(super) fn watch_sections(
    raw: &[Spanned<RawWatch>],
    certs: &[CertConfig],
    ctx: &mut Ctx<'_>,
) -> Vec<WatchConfig> {
    let cert_names: HashSet<&str> = certs.iter().map(|c| c.name.as_str()).collect();
    let mut seen = HashSet::new();
    raw.iter()
        .map(|w| one_watch(w, &cert_names, &mut seen, ctx))
        .collect()
}

/// One `[[watch]]` section.
fn one_watch(
    sw: &Spanned<RawWatch>,
    cert_names: &HashSet<&str>,
    seen: &mut HashSet<String>,
    ctx: &mut Ctx<'_>,
) -> WatchConfig {
    let w = sw.get_ref();
    let name = w.name.get_ref().trim().to_string();
    let key = |k: &str| format!("watch[{name}].{k}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        ctx.err(
            &w.name.span(),
            "watch.name",
            format!("watch name {name:?} must be non-empty and use only letters, digits, '.', '_' and '-'"),
        );
    } else if cert_names.contains(name.as_str()) {
        ctx.err(
            &w.name.span(),
            "watch.name",
            format!("{name:?} is already the name of a [[cert]]; a watch needs a name of its own"),
        );
    } else if !seen.insert(name.clone()) {
        ctx.err(
            &w.name.span(),
            "watch.name",
            format!("duplicate watch name {name:?}"),
        );
    }
    if w.paths.is_empty() && w.endpoints.is_empty() {
        ctx.err(
            &sw.span(),
            key("paths"),
            "a [[watch]] needs at least one entry in paths or endpoints",
        );
    }
    let endpoints = w
        .endpoints
        .iter()
        .filter_map(|e| super::verify::entry(e, &key("endpoints"), ctx))
        .collect();
    let paths = w
        .paths
        .iter()
        .filter_map(|p| pattern(p, &key("paths"), ctx))
        .collect();
    let warn_before = w
        .warn_before
        .as_ref()
        .map_or(DEFAULT_WATCH_WARN_BEFORE, |v| v.get_ref().0);
    if let (Some(v), RenewBefore::Remaining(d)) = (&w.warn_before, warn_before)
        && d.is_zero()
    {
        ctx.err(
            &v.span(),
            key("warn_before"),
            "warn_before must be longer than 0s",
        );
    }
    WatchConfig {
        name,
        paths,
        endpoints,
        warn_before,
        loc: ctx.loc(&sw.span()),
    }
}

/// A path or glob pattern, made absolute against the config's directory; `None` (with
/// an error) when it is not a valid pattern.
fn pattern(p: &Spanned<String>, key: &str, ctx: &mut Ctx<'_>) -> Option<String> {
    let raw = p.get_ref().trim();
    if raw.is_empty() {
        ctx.err(&p.span(), key, "an empty path");
        return None;
    }
    let abs = ctx.path(Path::new(raw));
    let Some(abs) = abs.to_str().map(str::to_string) else {
        ctx.err(&p.span(), key, format!("{raw:?} is not valid UTF-8"));
        return None;
    };
    match glob::Pattern::new(&abs) {
        Ok(_) => Some(abs),
        Err(e) => {
            ctx.err(
                &p.span(),
                key,
                format!("{raw:?} is not a valid glob pattern: {e}"),
            );
            None
        }
    }
}
