//! The daemon's watch on the fleet's prefix: one range read of `P/certs/` to catch up, then
//! a watch from the revision after it. Every new set wakes that certificate's task (which
//! verifies and installs it), and so does a deleted lock (a replica waiting for a dead
//! orderer takes over at once); the local copy lets passes read the fleet's sets without a request.
//! On any error the copy stops being trusted (passes read etcd directly again), and the
//! watch is restarted with a capped back-off.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

use super::{CertEntry, Fleet, FleetError, Published};

impl Fleet {
    /// Follows `certs/` for the life of the process, sending the name of every
    /// certificate whose set changed.
    pub async fn watch_certs(self: Arc<Self>, wake: UnboundedSender<String>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.follow(&wake).await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(e) => debug!("fleet: watch ended: {e}"),
            }
            self.synced.store(false, Ordering::Relaxed);
            if wake.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.cfg.lease_ttl.max(Duration::from_secs(2)));
            // Keep the lease (and so the node report) alive across etcd outages.
            let _ = self.lease().await;
        }
    }

    /// One range read of every set, used by a one-shot `renew` for the whole pass instead
    /// of one request per certificate (the lock holder still re-reads its own).
    pub async fn prime(&self) -> Result<(), FleetError> {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        self.catch_up(&tx).await?;
        self.synced.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Catches up with one range read, then follows the watch until it fails.
    async fn follow(&self, wake: &UnboundedSender<String>) -> Result<(), FleetError> {
        let rev = self.catch_up(wake).await?;
        // The whole prefix: new sets under certs/, and locks/ deletions, so a replica
        // waiting for a dead orderer's lock tries it the moment the lease drops it.
        let key = self.key("");
        let strip = key.clone();
        let mut stream = self
            .call("watch", |mut c| {
                let key = key.clone();
                async move {
                    let o = WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1);
                    c.watch(key, Some(o)).await
                }
            })
            .await?;
        self.synced.store(true, Ordering::Relaxed);
        debug!(revision = rev, "fleet: watching the fleet's sets");
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(FleetError::Unavailable("the watch stream ended".into())),
                Err(e) => return Err(FleetError::Unavailable(format!("watch: {e}"))),
            };
            if msg.canceled() {
                return Err(FleetError::Unavailable(format!(
                    "watch cancelled: {}",
                    msg.cancel_reason()
                )));
            }
            for ev in msg.events() {
                self.apply(ev, &strip, wake);
            }
        }
    }

    /// Reads every set once into the local copy and wakes the certificates whose set
    /// changed; returns the revision the watch continues from.
    async fn catch_up(&self, wake: &UnboundedSender<String>) -> Result<i64, FleetError> {
        let (items, rev) = self.list("certs/").await?;
        let mut fresh = HashMap::new();
        for (name, bytes, mod_rev) in items {
            match CertEntry::parse(&bytes, &name) {
                Ok(entry) => {
                    fresh.insert(
                        name,
                        Published {
                            revision: mod_rev,
                            entry,
                        },
                    );
                }
                Err(e) => warn!(cert = %name, "fleet: the fleet's set is unusable: {e}"),
            }
        }
        let changed: Vec<String> = {
            let mut cache = self.cache.lock().expect("fleet cache");
            let changed = fresh
                .iter()
                .filter(|(n, p)| cache.get(*n).map(|c| c.revision) != Some(p.revision))
                .map(|(n, _)| n.clone())
                .collect();
            *cache = fresh;
            changed
        };
        for n in changed {
            let _ = wake.send(n);
        }
        Ok(rev)
    }

    /// One watch event: a new set is checked, cached and announced; a deleted one dropped.
    fn apply(&self, ev: &etcd_client::Event, strip: &str, wake: &UnboundedSender<String>) {
        let Some(kv) = ev.kv() else { return };
        let k = String::from_utf8_lossy(kv.key());
        let rest = k.strip_prefix(strip).unwrap_or(&k);
        if let Some(name) = rest.strip_prefix("locks/") {
            if ev.event_type() == EventType::Delete {
                let _ = wake.send(name.to_string());
            }
            return;
        }
        let Some(name) = rest.strip_prefix("certs/").map(str::to_string) else {
            return;
        };
        match ev.event_type() {
            EventType::Put => match CertEntry::parse(kv.value(), &name) {
                Ok(entry) => {
                    let p = Published {
                        revision: kv.mod_revision(),
                        entry,
                    };
                    self.cache
                        .lock()
                        .expect("fleet cache")
                        .insert(name.clone(), p);
                    let _ = wake.send(name);
                }
                Err(e) => warn!(cert = %name, "fleet: the fleet's new set is unusable: {e}"),
            },
            EventType::Delete => {
                self.cache.lock().expect("fleet cache").remove(&name);
            }
        }
    }
}
