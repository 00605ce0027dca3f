//! One orderer per certificate: `P/locks/<cert>` is created in a transaction only when it
//! does not exist, under the node's lease, so it vanishes when the holder dies. Its
//! create_revision is the fencing token: every write the holder makes compares it in the
//! same transaction, so a holder whose lease expired (paused, partitioned) can no longer
//! write anything, whatever it believes.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tracing::{debug, warn};

use super::{CertEntry, Fleet, FleetError, Ladder, OrderEntry};

/// The result of trying to take a certificate's lock.
#[derive(Debug)]
pub enum LockOutcome {
    /// This node holds it.
    Held(LockGuard),
    /// Another node holds it.
    Busy {
        /// Its node name.
        holder: String,
    },
}

/// A held lock. Released with [`LockGuard::release`]; dropped unreleased (a cancelled
/// task), it is released in the background, and in any case with the node's lease.
#[derive(Debug)]
pub struct LockGuard {
    fleet: Arc<Fleet>,
    name: String,
    /// The lock key's create_revision: the fencing token.
    token: i64,
    released: bool,
}

impl Fleet {
    /// Tries to take the lock of certificate `name`, without waiting.
    pub async fn try_lock(self: &Arc<Self>, name: &str) -> Result<LockOutcome, FleetError> {
        let lease = self.lease().await?;
        let key = self.key(&format!("locks/{name}"));
        let node = self.node().to_string();
        let (won, token, holder) = self
            .call("lock", |mut c| {
                let (key, node) = (key.clone(), node.clone());
                async move {
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            key.clone(),
                            node,
                            Some(PutOptions::new().with_lease(lease)),
                        )])
                        .or_else([TxnOp::get(key, None)]);
                    let r = c.txn(txn).await?;
                    let rev = r.header().map_or(0, |h| h.revision());
                    let holder = r.op_responses().into_iter().find_map(|op| match op {
                        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                            let who = String::from_utf8_lossy(kv.value()).into_owned();
                            (who, kv.create_revision(), kv.lease())
                        }),
                        _ => None,
                    });
                    Ok((r.succeeded(), rev, holder))
                }
            })
            .await?;
        let mut token = token;
        if !won {
            match holder {
                // Our own lock, under our own lease: a try that timed out on one endpoint
                // after etcd applied it, repeated on the next one.
                Some((who, created, l)) if who == self.node() && l == lease => token = created,
                Some((who, _, _)) => return Ok(LockOutcome::Busy { holder: who }),
                None => {
                    return Ok(LockOutcome::Busy {
                        holder: "(released meanwhile)".into(),
                    });
                }
            }
        }
        debug!(cert = name, token, "fleet: lock taken");
        Ok(LockOutcome::Held(LockGuard {
            fleet: self.clone(),
            name: name.to_string(),
            token,
            released: false,
        }))
    }

    /// The node holding each lock (certificate -> node).
    pub async fn locks(&self) -> Result<Vec<(String, String)>, FleetError> {
        let (items, _) = self.list("locks/").await?;
        Ok(items
            .into_iter()
            .map(|(n, v, _)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect())
    }

    /// The order a previous holder left in flight for `name`, if any (its key unsealed
    /// by the caller through [`Fleet::open_order_key`]).
    pub async fn order_in_flight(&self, name: &str) -> Result<Option<OrderEntry>, FleetError> {
        self.get_json(&format!("orders/{name}")).await
    }

    /// Opens the sealed key of an order in flight.
    pub fn open_order_key(&self, name: &str, o: &OrderEntry) -> Result<String, FleetError> {
        let aad = self.key(&format!("orders/{name}"));
        let key = self
            .seal_key()
            .open(&o.key_sealed, &aad)
            .map_err(|e| FleetError::Corrupt(format!("{aad}: {e}")))?;
        String::from_utf8(key).map_err(|_| FleetError::Corrupt(format!("{aad}: not text")))
    }
}

impl LockGuard {
    /// The fencing token (the lock key's create_revision).
    pub fn token(&self) -> i64 {
        self.token
    }

    /// Runs `ops` only while this node still holds the lock.
    async fn fenced(&self, what: &str, ops: Vec<TxnOp>) -> Result<i64, FleetError> {
        let key = self.fleet.key(&format!("locks/{}", self.name));
        let token = self.token;
        let (ok, rev) = self
            .fleet
            .call(what, |mut c| {
                let (key, ops) = (key.clone(), ops.clone());
                async move {
                    let txn = Txn::new()
                        .when([Compare::create_revision(key, CompareOp::Equal, token)])
                        .and_then(ops);
                    let r = c.txn(txn).await?;
                    Ok((r.succeeded(), r.header().map_or(0, |h| h.revision())))
                }
            })
            .await?;
        if ok {
            Ok(rev)
        } else {
            Err(FleetError::LostLock(self.name.clone()))
        }
    }

    /// Records the order in flight (its URL and sealed key) for a takeover.
    pub async fn record_order(
        &self,
        url: &str,
        directory: &str,
        key_pem: &str,
    ) -> Result<(), FleetError> {
        let rest = format!("orders/{}", self.name);
        let aad = self.fleet.key(&rest);
        let key_sealed = self
            .fleet
            .seal_key()
            .seal(key_pem.as_bytes(), &aad)
            .map_err(|e| FleetError::Corrupt(e.to_string()))?;
        let o = OrderEntry {
            url: url.to_string(),
            directory: directory.to_string(),
            key_sealed,
            node: self.fleet.node().to_string(),
            started_at: time::OffsetDateTime::now_utc(),
        };
        let put = TxnOp::put(aad, serde_json::to_vec(&o).unwrap_or_default(), None);
        self.fenced("record order", vec![put]).await.map(|_| ())
    }

    /// Publishes the new set and clears the order in flight and the ladder, in one fenced
    /// transaction. Returns the set's revision.
    pub async fn publish(&self, entry: &CertEntry) -> Result<i64, FleetError> {
        let f = &self.fleet;
        let ops = vec![
            TxnOp::put(
                f.key(&format!("certs/{}", self.name)),
                serde_json::to_vec(entry).unwrap_or_default(),
                None,
            ),
            TxnOp::delete(f.key(&format!("orders/{}", self.name)), None),
            TxnOp::delete(f.key(&format!("ladder/{}", self.name)), None),
        ];
        self.fenced("publish", ops).await
    }

    /// Records a failed attempt on the shared ladder and drops the order in flight (the
    /// next attempt orders afresh), fenced.
    pub async fn record_failure(&self, ladder: &Ladder) -> Result<(), FleetError> {
        let f = &self.fleet;
        let ops = vec![
            TxnOp::put(
                f.key(&format!("ladder/{}", self.name)),
                serde_json::to_vec(ladder).unwrap_or_default(),
                None,
            ),
            TxnOp::delete(f.key(&format!("orders/{}", self.name)), None),
        ];
        self.fenced("record failure", ops).await.map(|_| ())
    }

    /// Releases the lock (only if it is still ours).
    pub async fn release(mut self) {
        self.released = true;
        let key = self.fleet.key(&format!("locks/{}", self.name));
        let del = TxnOp::delete(key, None);
        match self.fenced("unlock", vec![del]).await {
            Ok(_) | Err(FleetError::LostLock(_)) => {}
            Err(e) => {
                warn!(cert = %self.name, "fleet: cannot release the lock (it expires with the lease): {e}")
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let g = Self {
            fleet: self.fleet.clone(),
            name: self.name.clone(),
            token: self.token,
            released: true,
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let key = g.fleet.key(&format!("locks/{}", g.name));
                let _ = g.fenced("unlock", vec![TxnOp::delete(key, None)]).await;
            });
        }
    }
}
