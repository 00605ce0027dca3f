//! Telling a person (`[notify]`): since Let's Encrypt stopped sending expiry e-mails, an
//! exit code in a journal nobody reads is all a failing renewal leaves. After each pass
//! the problems of each certificate are compared with the ones already notified (kept in
//! `state_dir/notify/<name>.json`): a new problem is sent once, a lasting one is reminded
//! every `remind_every`, and one that went away is sent as `resolved`. A delivery that
//! fails stays in the certificate's outbox and is retried on the next run; it never
//! blocks or fails the renewal, and every delivery is bounded by `notify.timeout`.
//!
//! Above `report` in the layout: the problems are read off the same facts as `status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::config::{CertConfig, Config, NotifyConfig, effective_warn};
use crate::policy::CertState;
use crate::report::{self, Facts};
use crate::state::EndpointState;
use crate::timefmt::{format_duration, rfc3339};

/// At most this many undelivered notifications are kept per certificate (the oldest go
/// first, with a warning), so a receiver that is down for months cannot grow the state.
pub const MAX_OUTBOX: usize = 100;
/// At most this much of a webhook's answer is read.
const WEBHOOK_ANSWER_LIMIT: usize = 64 * 1024;

/// One problem as it is now: a stable key (`expiring:127.0.0.1:443` for one endpoint),
/// the event it is sent as, and the sentence a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Unique per certificate; what "the same problem" means.
    pub key: String,
    /// `renewal_failed`, `not_served`, `expiring`, `hook_failed`, `ca_fallback`.
    pub event: &'static str,
    /// What is wrong, with the certificate's name.
    pub message: String,
}

/// A problem that was notified and has not gone away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Active {
    /// The event it was sent as.
    pub event: String,
    /// When it began.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// When it was last sent (first time or reminder).
    #[serde(with = "time::serde::rfc3339")]
    pub last_sent: OffsetDateTime,
    /// Its latest message.
    pub message: String,
}

/// What is sent: the JSON on a notify hook's stdin and the webhook's body (with `text`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `renewal_failed`, `not_served`, `expiring`, `hook_failed` or `resolved`.
    pub event: String,
    /// The certificate (or `[[watch]]`) name.
    pub name: String,
    /// The sentence for a person; the webhook's `text` is this with the host.
    pub message: String,
    /// For `resolved`: the event that went away.
    pub problem: Option<String>,
    /// When the problem began.
    pub since: String,
    /// A reminder of a problem already sent.
    pub reminder: bool,
    /// The host certkeeper runs on.
    pub host: String,
}

/// One notification owed to one channel (`hook:0`, `webhook`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owed {
    /// The channel.
    pub channel: String,
    /// The notification.
    pub event: Event,
}

/// What is remembered per certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// Problems notified and still present, by key.
    #[serde(default)]
    pub active: BTreeMap<String, Active>,
    /// Notifications not delivered yet.
    #[serde(default)]
    pub outbox: Vec<Owed>,
}

/// The pure step: the problems now against those notified. Returns the events to send
/// (new problems, reminders, resolutions) and updates `state.active`.
pub fn step(
    state: &mut AlertState,
    name: &str,
    now_problems: &[Problem],
    now: OffsetDateTime,
    remind_every: Duration,
    host: &str,
) -> Vec<Event> {
    let mut out = Vec::new();
    let event = |event: &str, message: &str, since, reminder, problem: Option<String>| Event {
        event: event.to_string(),
        name: name.to_string(),
        message: message.to_string(),
        problem,
        since: rfc3339(since),
        reminder,
        host: host.to_string(),
    };
    for p in now_problems {
        match state.active.get_mut(&p.key) {
            None => {
                out.push(event(p.event, &p.message, now, false, None));
                let a = Active {
                    event: p.event.into(),
                    since: now,
                    last_sent: now,
                    message: p.message.clone(),
                };
                state.active.insert(p.key.clone(), a);
            }
            Some(a) => {
                a.message = p.message.clone();
                if now - a.last_sent >= remind_every {
                    a.last_sent = now;
                    out.push(event(p.event, &p.message, a.since, true, None));
                }
            }
        }
    }
    let gone: Vec<String> = state
        .active
        .keys()
        .filter(|k| !now_problems.iter().any(|p| &p.key == *k))
        .cloned()
        .collect();
    for k in gone {
        let a = state.active.remove(&k).expect("listed above");
        let msg = format!("resolved: {}", a.message);
        out.push(event("resolved", &msg, a.since, false, Some(a.event)));
    }
    out
}

/// The problems of one managed certificate, read off its facts.
pub fn cert_problems(cert: &CertConfig, f: &Facts) -> Vec<Problem> {
    let row = report::status_row(f);
    let rec = &f.record;
    let mut out = Vec::new();
    let p = |key: &str, event, message: String| Problem {
        key: key.into(),
        event,
        message,
    };
    if rec.failures >= 2 {
        let why = rec.last_error.as_deref().unwrap_or("unknown error");
        let msg = format!(
            "renewal of {} failed {} times in a row: {why}",
            cert.name, rec.failures
        );
        out.push(p("renewal_failed", "renewal_failed", msg));
    }
    if row.state == CertState::NotServed {
        let why = rec
            .last_error
            .as_deref()
            .unwrap_or("an endpoint serves another certificate");
        out.push(p(
            "not_served",
            "not_served",
            format!("{}: {why}", cert.name),
        ));
    }
    if rec.hooks_pending {
        let why = rec.last_error.as_deref().unwrap_or("reload hook failed");
        out.push(p(
            "hook_failed",
            "hook_failed",
            format!("{}: {why}", cert.name),
        ));
    }
    if let Some(from) = &rec.fallback_from {
        let to = rec.ca.as_deref().unwrap_or("the primary CA");
        let msg = format!(
            "{}: renewal kept failing at {from}; the next orders go to {to} (back to the primary after a success)",
            cert.name
        );
        out.push(p("ca_fallback", "ca_fallback", msg));
    }
    out.extend(expiring(cert, f));
    out
}

/// `expiring`: the installed certificate, or one an endpoint serves, is within
/// `warn_before` of its not-after (so no renewal has replaced it in time).
fn expiring(cert: &CertConfig, f: &Facts) -> Vec<Problem> {
    let Some(info) = f.disk.info() else {
        return Vec::new();
    };
    let lifetime = Duration::try_from(info.lifetime()).unwrap_or_default();
    let warn = effective_warn(cert.warn_before, cert.renew_before, lifetime);
    let within = |na: OffsetDateTime| na - f.now <= warn;
    let left = |na: OffsetDateTime| {
        let s = (na - f.now).whole_seconds();
        if s <= 0 {
            "expired".to_string()
        } else {
            format!(
                "expires in {}",
                format_duration(Duration::from_secs(s as u64))
            )
        }
    };
    let mut out = Vec::new();
    if within(info.not_after) {
        out.push(Problem {
            key: "expiring".into(),
            event: "expiring",
            message: format!(
                "certificate {} {} (not after {}) and has not been renewed",
                cert.name,
                left(info.not_after),
                rfc3339(info.not_after)
            ),
        });
    }
    for e in &f.record.endpoints {
        let Some(na) = e.served_not_after.filter(|na| within(*na)) else {
            continue;
        };
        if e.result == EndpointState::Live && na == info.not_after {
            continue; // the same certificate, already reported above
        }
        out.push(Problem {
            key: format!("expiring:{}", e.addr),
            event: "expiring",
            message: format!(
                "{} serves a certificate for {} that {} (not after {})",
                e.addr,
                cert.name,
                left(na),
                rfc3339(na)
            ),
        });
    }
    out
}

/// The file of one name's notification state.
fn state_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("notify").join(format!("{name}.json"))
}

fn load(path: &Path) -> AlertState {
    crate::fsx::read_regular(path, crate::fsx::PEM_LIMIT, false)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(path: &Path, st: &AlertState) {
    let body = serde_json::to_vec_pretty(st).expect("plain data serializes");
    let r = std::fs::create_dir_all(crate::fsx::parent(path))
        .and_then(|()| crate::fsx::write_atomic(path, &body, 0o600, None));
    if let Err(e) = r {
        warn!("cannot record notifications in {}: {e}", path.display());
    }
}

/// After a pass: the problems of these certificates (and of every `[[watch]]` when
/// `watches`), notified as they change. Does nothing (and costs nothing) without `[notify]`.
pub async fn after_pass(cfg: &Config, names: &[String], watches: bool, now: OffsetDateTime) {
    let Some(n) = &cfg.notify else {
        return;
    };
    let certs: Vec<CertConfig> = cfg
        .certs
        .iter()
        .filter(|c| names.contains(&c.name))
        .cloned()
        .collect();
    let c2 = cfg.clone();
    let looked = tokio::task::spawn_blocking(move || {
        let facts = report::gather(&c2, &certs, now);
        let mut per: Vec<(String, Vec<Problem>)> = certs
            .iter()
            .zip(&facts)
            .map(|(c, f)| (c.name.clone(), cert_problems(c, f)))
            .collect();
        if watches {
            per.extend(watch_problems(&c2, now));
        }
        per
    })
    .await;
    let Ok(per) = looked else {
        return;
    };
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (name, problems) in per {
        let path = state_file(&cfg.state_dir, &name);
        let mut st = load(&path);
        let before = st.clone();
        let events = step(&mut st, &name, &problems, now, n.remind_every, &host);
        queue(&mut st, n, events);
        deliver(n, &name, &mut st.outbox).await;
        if st != before {
            save(&path, &st);
        }
    }
}

/// The `expiring` problems of each `[[watch]]` (one per file or endpoint).
fn watch_problems(cfg: &Config, now: OffsetDateTime) -> Vec<(String, Vec<Problem>)> {
    cfg.watches
        .iter()
        .map(|w| {
            let problems = crate::watched::look(w, &cfg.state_dir)
                .into_iter()
                .filter(|x| x.expiring(now))
                .filter_map(|x| {
                    let info = x.found.as_ref().ok()?;
                    Some(Problem {
                        key: format!("expiring:{}", x.source),
                        event: "expiring",
                        message: format!(
                            "watched certificate {} ({}) expires at {}",
                            x.source,
                            w.name,
                            rfc3339(info.not_after)
                        ),
                    })
                })
                .collect();
            (w.name.clone(), problems)
        })
        .collect()
}

/// Puts each event in the outbox once per channel, dropping the oldest past [`MAX_OUTBOX`].
fn queue(st: &mut AlertState, n: &NotifyConfig, events: Vec<Event>) {
    let mut channels: Vec<String> = (0..n.hooks.len()).map(|i| format!("hook:{i}")).collect();
    if n.webhook.is_some() {
        channels.push("webhook".into());
    }
    for e in events {
        info!(name = %e.name, event = %e.event, "notify: {}", e.message);
        for c in &channels {
            st.outbox.push(Owed {
                channel: c.clone(),
                event: e.clone(),
            });
        }
    }
    if st.outbox.len() > MAX_OUTBOX {
        let drop = st.outbox.len() - MAX_OUTBOX;
        warn!("{drop} undelivered notification(s) dropped (more than {MAX_OUTBOX} owed)");
        st.outbox.drain(..drop);
    }
}

/// Tries every owed notification; those that fail stay for the next run.
async fn deliver(n: &NotifyConfig, name: &str, outbox: &mut Vec<Owed>) {
    let mut left = Vec::new();
    for o in std::mem::take(outbox) {
        let r = match o.channel.strip_prefix("hook:") {
            Some(i) => match i.parse::<usize>().ok().and_then(|i| n.hooks.get(i)) {
                Some(argv) => send_hook(argv, &o.event, n.timeout).await,
                None => Ok(()), // the hook was removed from the config
            },
            None => match &n.webhook {
                Some(url) => send_webhook(url, n, &o.event).await,
                None => Ok(()),
            },
        };
        if let Err(e) = r {
            warn!(name, channel = %o.channel, "notification not delivered (retried next run): {e}");
            left.push(o);
        }
    }
    *outbox = left;
}

/// A notify hook: the event JSON on stdin, `CERTKEEPER_EVENT` and `CERTKEEPER_NAME` set.
async fn send_hook(argv: &[String], e: &Event, timeout: Duration) -> Result<(), String> {
    let env = [
        ("CERTKEEPER_EVENT", e.event.clone()),
        ("CERTKEEPER_NAME", e.name.clone()),
        ("CERTKEEPER_MESSAGE", e.message.clone()),
    ];
    let json = serde_json::to_vec(e).expect("plain data serializes");
    crate::hooks::run("notify", &e.name, argv, &env, Some(json), timeout)
        .await
        .map_err(|e| e.to_string())
}

/// The webhook: a JSON POST with `text` (Slack, Mattermost, Teams) and the event's
/// fields. Its URL is a secret of its own: only its host is ever logged.
async fn send_webhook(url: &str, n: &NotifyConfig, e: &Event) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "the webhook URL does not parse".to_string())?;
    let host = uri.host().unwrap_or("?").to_string();
    let mut body = serde_json::to_value(e).expect("plain data serializes");
    body["text"] = serde_json::Value::String(format!("certkeeper on {}: {}", e.host, e.message));
    let client = webhook_client(n).map_err(|m| format!("webhook {host}: {m}"))?;
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .map_err(|e| format!("webhook {host}: {e}"))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{e}"))?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), WEBHOOK_ANSWER_LIMIT);
        let _ = http_body_util::BodyExt::collect(limited).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    match tokio::time::timeout(n.timeout, exchange).await {
        Ok(r) => r.map_err(|m| format!("webhook {host}: {m}")),
        Err(_) => Err(format!(
            "webhook {host}: no answer within {}",
            format_duration(n.timeout)
        )),
    }
}

type WebhookClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// An http/https client trusting the system's roots and `notify.ca_bundle`.
fn webhook_client(n: &NotifyConfig) -> Result<WebhookClient, String> {
    let roots = crate::inventory::trust_roots(n.ca_bundle.as_deref(), "notify.ca_bundle")?;
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
    conn.enforce_http(false);
    conn.set_connect_timeout(Some(n.timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(conn);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn prob(key: &str) -> Problem {
        Problem {
            key: key.into(),
            event: "renewal_failed",
            message: format!("{key} happened"),
        }
    }

    #[test]
    fn one_event_per_change_a_daily_reminder_and_one_resolved() {
        let mut st = AlertState::default();
        let day = Duration::from_secs(86400);
        let t0 = datetime!(2026-12-01 0:00 UTC);
        let sent = |st: &mut AlertState, ps: &[Problem], t| step(st, "www", ps, t, day, "h");
        let e = sent(&mut st, &[prob("renewal_failed")], t0);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].event.as_str(), e[0].reminder),
            ("renewal_failed", false)
        );
        // Still failing an hour and 23 hours later: nothing new.
        assert!(
            sent(
                &mut st,
                &[prob("renewal_failed")],
                t0 + time::Duration::hours(1)
            )
            .is_empty()
        );
        assert!(
            sent(
                &mut st,
                &[prob("renewal_failed")],
                t0 + time::Duration::hours(23)
            )
            .is_empty()
        );
        // A day later: one reminder, with the original start.
        let e = sent(
            &mut st,
            &[prob("renewal_failed")],
            t0 + time::Duration::hours(24),
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].reminder);
        assert_eq!(e[0].since, rfc3339(t0));
        // A second problem appears while the first lasts: only it is sent.
        let both = [prob("renewal_failed"), prob("expiring")];
        let e = sent(&mut st, &both, t0 + time::Duration::hours(25));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].message, "expiring happened");
        // Both go away: one resolved each, then silence.
        let e = sent(&mut st, &[], t0 + time::Duration::hours(26));
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|e| e.event == "resolved"));
        assert!(
            e.iter()
                .any(|e| e.problem.as_deref() == Some("renewal_failed"))
        );
        assert!(sent(&mut st, &[], t0 + time::Duration::hours(27)).is_empty());
        assert!(st.active.is_empty());
    }

    #[test]
    fn the_outbox_is_per_channel_and_bounded() {
        let n = NotifyConfig {
            hooks: vec![vec!["/bin/true".into()]],
            webhook: Some("https://hooks.example.com/x".into()),
            ca_bundle: None,
            timeout: Duration::from_secs(1),
            remind_every: Duration::from_secs(86400),
        };
        let mut st = AlertState::default();
        let e = step(
            &mut st,
            "www",
            &[prob("a")],
            datetime!(2026-12-01 0:00 UTC),
            n.remind_every,
            "h",
        );
        queue(&mut st, &n, e);
        let ch: Vec<&str> = st.outbox.iter().map(|o| o.channel.as_str()).collect();
        assert_eq!(ch, ["hook:0", "webhook"]);
        let many: Vec<Event> = (0..MAX_OUTBOX)
            .map(|_| st.outbox[0].event.clone())
            .collect();
        queue(&mut st, &n, many);
        assert_eq!(st.outbox.len(), MAX_OUTBOX);
    }
}
