//! File watching: the parent directories of every managed file and of the config are
//! watched (so atomic renames and Kubernetes `..data` swaps are seen), and each event is
//! mapped to the certificates, or the config, it concerns.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

use crate::config::Config;

/// What a batch of file events means.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Dirty {
    pub(super) certs: HashSet<String>,
    pub(super) config: bool,
}

/// Maps watched file names to the certificates (or the config) they belong to.
#[derive(Debug, Default)]
pub(super) struct WatchMap {
    files: HashMap<PathBuf, Vec<String>>,
    dirs: HashMap<PathBuf, Vec<String>>,
    config: PathBuf,
}

impl WatchMap {
    pub(super) fn new(cfg: &Config, config_path: &Path) -> Self {
        let mut m = Self {
            config: absolute(config_path),
            ..Self::default()
        };
        for c in &cfg.certs {
            for (_, p) in c.files().iter() {
                m.files
                    .entry(p.to_path_buf())
                    .or_default()
                    .push(c.name.clone());
                if let Some(d) = p.parent() {
                    let v = m.dirs.entry(d.to_path_buf()).or_default();
                    if !v.contains(&c.name) {
                        v.push(c.name.clone());
                    }
                }
            }
        }
        m
    }

    pub(super) fn watch_dirs(&self) -> HashSet<PathBuf> {
        let mut d: HashSet<PathBuf> = self.dirs.keys().cloned().collect();
        if let Some(p) = self.config.parent() {
            d.insert(p.to_path_buf());
        }
        d
    }

    /// Which certificates an event concerns. Reads (open/close-nowrite) are ignored, or our
    /// own inspection of the files would wake us forever.
    pub(super) fn classify(&self, ev: &notify::Event, out: &mut Dirty) {
        use notify::event::{AccessKind, AccessMode};
        match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return,
            _ => {}
        }
        for p in &ev.paths {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
            // Kubernetes swaps a `..data` symlink to update a mounted volume.
            let k8s_swap = name.as_deref().is_some_and(|n| n.starts_with(".."));
            if *p == self.config || (k8s_swap && Some(dir.as_path()) == self.config.parent()) {
                out.config = true;
            }
            if let Some(names) = self.files.get(p) {
                out.certs.extend(names.iter().cloned());
            } else if k8s_swap && let Some(names) = self.dirs.get(&dir) {
                out.certs.extend(names.iter().cloned());
            }
        }
    }
}

/// The watcher and what it watches.
pub(super) struct Watch {
    watcher: notify::RecommendedWatcher,
    pub(super) dirs: HashSet<PathBuf>,
    pub(super) map: WatchMap,
}

impl Watch {
    /// Watches the parent directories of the config's files (and of the config file).
    pub(super) fn update(&mut self, cfg: &Config, config_path: &Path) {
        self.map = WatchMap::new(cfg, config_path);
        let want = self.map.watch_dirs();
        for d in self.dirs.difference(&want) {
            let _ = self.watcher.unwatch(d);
        }
        let mut have = HashSet::new();
        for d in &want {
            if self.dirs.contains(d) {
                have.insert(d.clone());
                continue;
            }
            match self.watcher.watch(d, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    have.insert(d.clone());
                }
                Err(e) => warn!(dir = %d.display(), "cannot watch directory: {e}"),
            }
        }
        self.dirs = have;
    }
}

impl Watch {
    /// A watcher sending its events to `tx`, watching what `cfg` names.
    pub(super) fn start(
        cfg: &Config,
        config_path: &Path,
        tx: mpsc::UnboundedSender<notify::Event>,
    ) -> Result<Self, notify::Error> {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let _ = tx.send(ev);
            }
        })?;
        let mut w = Self {
            watcher,
            dirs: HashSet::new(),
            map: WatchMap::default(),
        };
        w.update(cfg, config_path);
        Ok(w)
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn file_events_map_to_certificates() {
        let src = r#"
state_dir = "/tmp/s"
[acme]
directory = "https://127.0.0.1:1/dir"
[defaults]
http01_listen = "127.0.0.1:1"
[[cert]]
name = "a"
domains = ["a.example"]
cert_path = "/tls/a.pem"
key_path = "/tls/a.key"
[[cert]]
name = "b"
domains = ["b.example"]
cert_path = "/other/b.pem"
key_path = "/other/b.key"
"#;
        let cfg =
            Config::from_str_at(src, Path::new("/etc/ck/ck.toml"), Path::new("/etc/ck")).unwrap();
        let m = WatchMap::new(&cfg, Path::new("/etc/ck/ck.toml"));
        let ev = |kind: EventKind, p: &str| notify::Event::new(kind).add_path(PathBuf::from(p));
        use notify::event::{
            AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode,
        };
        let cases: Vec<(notify::Event, Vec<&str>, bool)> = vec![
            (
                ev(EventKind::Remove(RemoveKind::File), "/tls/a.pem"),
                vec!["a"],
                false,
            ),
            (
                ev(
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                    "/other/b.key",
                ),
                vec!["b"],
                false,
            ),
            (
                ev(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    "/tls/a.key",
                ),
                vec!["a"],
                false,
            ),
            // Our own reads must never wake us.
            (
                ev(
                    EventKind::Access(AccessKind::Open(AccessMode::Read)),
                    "/tls/a.pem",
                ),
                vec![],
                false,
            ),
            // Backups and temp files are not watched files.
            (
                ev(EventKind::Create(CreateKind::File), "/tls/a.pem.prev"),
                vec![],
                false,
            ),
            (
                ev(
                    EventKind::Create(CreateKind::File),
                    "/tls/.a.pem.certkeeper-tmp.1",
                ),
                vec![],
                false,
            ),
            // Kubernetes swaps ..data: everything in that directory.
            (
                ev(EventKind::Create(CreateKind::Any), "/tls/..data"),
                vec!["a"],
                false,
            ),
            (
                ev(EventKind::Modify(ModifyKind::Any), "/etc/ck/ck.toml"),
                vec![],
                true,
            ),
            (
                ev(EventKind::Create(CreateKind::Any), "/etc/ck/..data"),
                vec![],
                true,
            ),
        ];
        for (e, certs, config) in cases {
            let mut d = Dirty::default();
            m.classify(&e, &mut d);
            let want: HashSet<String> = certs.iter().map(|s| s.to_string()).collect();
            assert_eq!((d.certs, d.config), (want, config), "{e:?}");
        }
    }
}
