//! Fleet mode in `status`, `cluster status` and the metrics: the fleet's view joined to
//! the rows (which node holds each lock, the revision of each set, who installed it), and
//! the node table. Pure: the view was read by [`crate::fleet::Fleet::view`].

use std::collections::BTreeMap;

use super::StatusRow;
use super::status::FleetCell;
use crate::fleet::{FleetView, Installed};
use crate::timefmt::rfc3339;

/// Fills each row's `cluster` and `fleet` from the fleet's view.
pub fn add_fleet(rows: &mut [StatusRow], view: &FleetView) {
    for r in rows {
        r.cluster = Some(view.cluster);
        if view.cluster != "available" {
            continue;
        }
        let set = view.certs.get(&r.name);
        let here = view
            .nodes
            .iter()
            .find(|n| n.node == view.node)
            .and_then(|n| n.installed.get(&r.name))
            .map(|i| i.revision);
        r.fleet = Some(FleetCell {
            revision: set.map(|s| s.revision),
            serial: set.map(|s| s.serial.clone()),
            lock_holder: view.locks.get(&r.name).cloned(),
            installed_on: view.installed_on(&r.name),
            installed_here: here,
        });
    }
}

/// Fills the rows from what this replica knows without asking etcd (the daemon's
/// metrics): whether etcd answered last, and what it installed.
pub fn add_fleet_local(
    rows: &mut [StatusRow],
    available: bool,
    installed: &BTreeMap<String, Installed>,
) {
    for r in rows {
        r.cluster = Some(if available {
            "available"
        } else {
            "unavailable"
        });
        r.fleet = Some(FleetCell {
            installed_here: installed.get(&r.name).map(|i| i.revision),
            ..FleetCell::default()
        });
    }
}

/// The line `status` prints above its table in fleet mode.
pub fn cluster_line(view: &FleetView) -> String {
    match &view.error {
        None => format!(
            "cluster: available, {} node{} under {} (this node: {})\n",
            view.nodes.len(),
            if view.nodes.len() == 1 { "" } else { "s" },
            view.prefix,
            view.node
        ),
        Some(e) => format!("cluster: unavailable: {e}\n"),
    }
}

/// `certkeeper cluster status` for humans: one line per node, then the locks.
pub fn cluster_table(view: &FleetView) -> String {
    let mut out = cluster_line(view);
    if view.error.is_some() {
        return out;
    }
    let mut rows = vec![[
        "NODE".to_string(),
        "UPDATED".into(),
        "INSTALLED (cert@revision)".into(),
    ]];
    for n in &view.nodes {
        let installed: Vec<String> = n
            .installed
            .iter()
            .map(|(c, i)| {
                let current = view.certs.get(c).is_some_and(|s| s.revision == i.revision);
                format!("{c}@{}{}", i.revision, if current { "" } else { " (old)" })
            })
            .collect();
        rows.push([
            n.node.clone(),
            n.updated_at.map_or("-".into(), rfc3339),
            if installed.is_empty() {
                "-".into()
            } else {
                installed.join(" ")
            },
        ]);
    }
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
    for r in rows {
        out.push_str(&format!("{:w0$}  {:w1$}  {}\n", r[0], r[1], r[2]));
    }
    for (cert, node) in &view.locks {
        out.push_str(&format!("lock: {cert} held by {node} (renewing)\n"));
    }
    out
}
