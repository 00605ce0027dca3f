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

/// Under the `status` table in fleet mode: per certificate, the fleet's revision, where
/// it is installed and who is renewing it.
pub fn fleet_lines(rows: &[StatusRow]) -> String {
    let mut out = String::new();
    for r in rows {
        let Some(f) = &r.fleet else { continue };
        let set = match (f.revision, &f.serial) {
            (Some(rev), Some(serial)) => format!("revision {rev} (serial {serial})"),
            _ => "no set published yet".into(),
        };
        let on = if f.installed_on.is_empty() {
            "nowhere yet".into()
        } else {
            f.installed_on.join(", ")
        };
        let lock = f
            .lock_holder
            .as_ref()
            .map_or(String::new(), |h| format!("; {h} is renewing it"));
        out.push_str(&format!(
            "fleet: {}: {set}, installed on {on}{lock}\n",
            r.name
        ));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::NodeReport;
    use crate::fleet::view::SetSummary;

    fn view() -> FleetView {
        let node = |n: &str, rev: i64| NodeReport {
            node: n.into(),
            updated_at: None,
            installed: [(
                "www".to_string(),
                Installed {
                    revision: rev,
                    serial: "aa".into(),
                },
            )]
            .into(),
        };
        FleetView {
            cluster: "available",
            error: None,
            prefix: "/p".into(),
            node: "a".into(),
            nodes: vec![node("a", 7), node("b", 7), node("c", 5)],
            locks: [("www".to_string(), "b".to_string())].into(),
            certs: [(
                "www".to_string(),
                SetSummary {
                    revision: 7,
                    serial: "aa".into(),
                    not_after: time::OffsetDateTime::UNIX_EPOCH,
                    orderer: "b".into(),
                },
            )]
            .into(),
        }
    }

    fn row(name: &str) -> StatusRow {
        let cfg = crate::config::Config::from_str_at(
            &format!("state_dir = \"/nonexistent/s\"\n[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\n[[cert]]\nname = \"{name}\"\ndomains = [\"a.example\"]\ncert_path = \"/nonexistent/c.pem\"\nkey_path = \"/nonexistent/k.pem\"\nhttp01_listen = \"127.0.0.1:1\"\n"),
            std::path::Path::new("t.toml"),
            std::path::Path::new("/"),
        )
        .unwrap();
        super::super::status(&cfg, time::OffsetDateTime::now_utc()).remove(0)
    }

    /// Only the nodes on the current revision count as installed; the lock holder and
    /// this node's revision are shown.
    #[test]
    fn rows_get_the_fleet_view() {
        let mut rows = vec![row("www"), row("other")];
        add_fleet(&mut rows, &view());
        let f = rows[0].fleet.as_ref().unwrap();
        assert_eq!(f.revision, Some(7));
        assert_eq!(f.installed_on, vec!["a", "b"]);
        assert_eq!(f.lock_holder.as_deref(), Some("b"));
        assert_eq!(f.installed_here, Some(7));
        assert_eq!(rows[1].fleet.as_ref().unwrap().revision, None);
        let lines = fleet_lines(&rows);
        assert!(
            lines.contains(
                "fleet: www: revision 7 (serial aa), installed on a, b; b is renewing it"
            ),
            "{lines}"
        );
        assert!(
            lines.contains("fleet: other: no set published yet"),
            "{lines}"
        );
        let table = cluster_table(&view());
        assert!(
            table.starts_with("cluster: available, 3 nodes under /p"),
            "{table}"
        );
        assert!(table.contains("www@5 (old)"), "{table}");
        assert!(table.contains("lock: www held by b"), "{table}");
    }

    /// Unavailable: the rows say so and carry no fleet cell; the line gives the cause.
    #[test]
    fn unavailable_view() {
        let mut v = view();
        v.cluster = "unavailable";
        v.error = Some("etcd unavailable: no answer".into());
        let mut rows = vec![row("www")];
        add_fleet(&mut rows, &v);
        assert_eq!(rows[0].cluster, Some("unavailable"));
        assert!(rows[0].fleet.is_none());
        assert_eq!(
            cluster_line(&v),
            "cluster: unavailable: etcd unavailable: no answer\n"
        );
        assert!(fleet_lines(&rows).is_empty());
    }
}
