//! What `status` and `certkeeper cluster status` show of the fleet: the nodes and what
//! each installed, who holds each lock, and the revision of each set. Read with three
//! range requests, each bounded; no write.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;

use super::{CertEntry, Fleet, NodeReport};

/// The fleet as one replica sees it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    /// `available` or `unavailable`.
    pub cluster: &'static str,
    /// Why it is unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The fleet's prefix.
    pub prefix: String,
    /// This replica's node name.
    pub node: String,
    /// Every live node's report.
    pub nodes: Vec<NodeReport>,
    /// Certificate -> node holding its lock.
    pub locks: BTreeMap<String, String>,
    /// Certificate -> its published set.
    pub certs: BTreeMap<String, SetSummary>,
}

/// A published set, without its key.
#[derive(Debug, Clone, Serialize)]
pub struct SetSummary {
    /// The set's revision.
    pub revision: i64,
    /// Its serial.
    pub serial: String,
    /// Its not-after.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Who ordered it.
    pub orderer: String,
}

impl FleetView {
    /// The nodes whose report says they installed this certificate's current revision.
    pub fn installed_on(&self, cert: &str) -> Vec<String> {
        let Some(set) = self.certs.get(cert) else {
            return Vec::new();
        };
        self.nodes
            .iter()
            .filter(|n| {
                n.installed
                    .get(cert)
                    .is_some_and(|i| i.revision == set.revision)
            })
            .map(|n| n.node.clone())
            .collect()
    }
}

impl Fleet {
    /// Reads the fleet's view; etcd trouble gives an `unavailable` view, never an error.
    pub async fn view(&self) -> FleetView {
        let mut v = FleetView {
            cluster: "available",
            error: None,
            prefix: self.cfg.prefix.clone(),
            node: self.cfg.node_name.clone(),
            nodes: Vec::new(),
            locks: BTreeMap::new(),
            certs: BTreeMap::new(),
        };
        let read = async {
            let (nodes, _) = self.list("nodes/").await?;
            let locks = self.locks().await?;
            let (certs, _) = self.list("certs/").await?;
            Ok::<_, super::FleetError>((nodes, locks, certs))
        };
        match read.await {
            Ok((nodes, locks, certs)) => {
                v.nodes = nodes
                    .into_iter()
                    .filter_map(|(_, b, _)| serde_json::from_slice(&b).ok())
                    .collect();
                v.locks = locks.into_iter().collect();
                for (name, bytes, rev) in certs {
                    if let Ok(e) = CertEntry::parse(&bytes, &name) {
                        v.certs.insert(
                            name,
                            SetSummary {
                                revision: rev,
                                serial: e.serial,
                                not_after: e.not_after,
                                orderer: e.orderer,
                            },
                        );
                    }
                }
            }
            Err(e) => {
                v.cluster = "unavailable";
                v.error = Some(e.to_string());
            }
        }
        v
    }
}
