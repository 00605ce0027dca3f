//! Validation of the keys that bound how many orders certkeeper sends: the per-CA order
//! budget (`acme.max_new_orders`, `acme.replaces_exempt`) and the per-certificate circuit
//! breaker (`max_orders_per_cert`). Apart from `validate` so the rate-limit rules are found
//! in one place.

use std::ops::Range;

use toml::Spanned;

use super::parse::{MaxNewOrders, OrderLimit, Parsed};
use super::raw::RawAcme;
use super::span::Ctx;
use super::{DEFAULT_MAX_ORDERS_PER_CERT, Loc};

/// `acme.max_new_orders` (default Let's Encrypt's 300 per 3h; `"unlimited"` turns it off)
/// and `acme.replaces_exempt` (default false). Parse errors were already located by serde.
pub(super) fn acme_limits(
    raw: &RawAcme,
    ctx: &Ctx<'_>,
    locs: &mut std::collections::BTreeMap<String, Loc>,
) -> (Option<OrderLimit>, bool) {
    let limit = match &raw.max_new_orders {
        Some(v) => {
            locs.insert("acme.max_new_orders".into(), ctx.loc(&v.span()));
            let Parsed(MaxNewOrders(l)) = v.get_ref();
            *l
        }
        None => Some(OrderLimit::default()),
    };
    let exempt = raw.replaces_exempt.as_ref().is_some_and(|v| {
        locs.insert("acme.replaces_exempt".into(), ctx.loc(&v.span()));
        *v.get_ref()
    });
    (limit, exempt)
}

/// `max_orders_per_cert` (default 3): at least 1, since 0 would forbid the first issuance.
pub(super) fn max_orders_per_cert(
    v: Option<&Spanned<u32>>,
    key: String,
    cert_span: &Range<usize>,
    ctx: &mut Ctx<'_>,
) -> u32 {
    match v {
        None => DEFAULT_MAX_ORDERS_PER_CERT,
        Some(v) if *v.get_ref() == 0 => {
            let span = if v.span().is_empty() {
                cert_span.clone()
            } else {
                v.span()
            };
            ctx.err(
                &span,
                key,
                "max_orders_per_cert = 0 would never allow an order; use at least 1 (default 3)",
            );
            DEFAULT_MAX_ORDERS_PER_CERT
        }
        Some(v) => *v.get_ref(),
    }
}
