//! What `certkeeper check` (and, for strict modes, every load and reload) verifies on this
//! machine about the paths, programs and users a config names. Separate from `config`
//! because these checks need the store (user and group lookup) and inventory (PEM parsing)
//! while loading a config must not: keeping them here is what breaks the
//! config -> store/inventory -> config cycle. Every problem is still reported as a
//! [`ConfigError`] located at the key that named the path.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::config::{Challenge, Config, ConfigError, Loc};

/// Why one thing a config names is unusable here; located by [`CheckError::at`].
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A directory certkeeper must write into is read-only for it.
    #[error("directory {} is not writable", .0.display())]
    NotWritable(PathBuf),
    /// Something other than a directory where one is needed.
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A directory that would be created, under an ancestor that does not allow it.
    #[error("{} does not exist and cannot be created under {}", dir.display(), parent.display())]
    CannotCreate {
        /// The missing directory.
        dir: PathBuf,
        /// Its nearest existing ancestor.
        parent: PathBuf,
    },
    /// A directory that must already exist does not.
    #[error("directory {} does not exist: {source}", dir.display())]
    Missing {
        /// The directory.
        dir: PathBuf,
        /// Why it could not be inspected.
        source: std::io::Error,
    },
    /// A hook given by path that cannot be run.
    #[error("hook program {0} does not exist or is not executable")]
    ProgramMissing(String),
    /// A hook given by bare name that no PATH entry provides.
    #[error("hook program {0:?} is not found in PATH")]
    ProgramNotInPath(String),
    /// `acme.ca_bundle` cannot be read (bounded, regular files only).
    #[error("{0}")]
    Unreadable(#[from] crate::fsx::ReadError),
    /// `acme.ca_bundle` holds no certificate, so it would trust nothing.
    #[error("{} contains no PEM certificate", .0.display())]
    NoPemCertificate(PathBuf),
    /// `owner` or `group` does not name an account here.
    #[error("{0}")]
    Account(String),
    /// Under `strict_modes`, a path someone other than root could modify.
    #[error(
        "strict_modes: {}{} is {why}; as root certkeeper trusts only paths that root alone can modify (fix with chown root and chmod go-w)",
        path.display(),
        via(target)
    )]
    UnsafePath {
        /// The unsafe component.
        path: PathBuf,
        /// The configured path it is an ancestor of, when not the same.
        target: Option<PathBuf>,
        /// Mode and owner, and what is wrong with them.
        why: String,
    },
}

fn via(target: &Option<PathBuf>) -> String {
    target
        .as_ref()
        .map_or_else(String::new, |t| format!(" (on the way to {})", t.display()))
}

impl CheckError {
    /// The problem as a config error pointing at the key that named the path.
    pub fn at(self, file: &Path, loc: Loc, key: String) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: loc.line,
            column: loc.column,
            key,
            message: self.to_string(),
        }
    }
}

/// Collects located problems for one config.
struct Found<'a> {
    cfg: &'a Config,
    out: Vec<ConfigError>,
}

impl Found<'_> {
    fn push(&mut self, loc: Loc, key: String, e: CheckError) {
        self.out.push(e.at(&self.cfg.path, loc, key));
    }

    /// Location of a top-level key.
    fn top(&self, k: &str) -> Loc {
        self.cfg.locs.get(k).copied().unwrap_or_default()
    }
}

/// Checks what the config refers to on this machine: directories, bundle, hooks, users.
/// Returns every problem, located in the config.
pub fn paths(cfg: &Config) -> Vec<ConfigError> {
    let mut found = Found {
        cfg,
        out: Vec::new(),
    };
    if let Err(e) = dir_usable(&cfg.state_dir, true) {
        found.push(found.top("state_dir"), "state_dir".into(), e);
    }
    if let Some(b) = &cfg.acme.ca_bundle
        && let Err(e) = ca_bundle_usable(b)
    {
        found.push(found.top("acme.ca_bundle"), "acme.ca_bundle".into(), e);
    }
    for (key, loc, b) in fallback_bundles(cfg) {
        if let Err(e) = ca_bundle_usable(b) {
            found.push(loc, key, e);
        }
    }
    for c in &cfg.certs {
        cert_paths(c, &mut found);
    }
    let mut out = found.out;
    // Again here, not only at load: a symlink may have been created since.
    out.extend(crate::config::path_alias_errors(
        &cfg.certs,
        &cfg.path,
        &mut HashMap::new(),
    ));
    out
}

/// The `ca_bundle` of every fallback CA (`[acme] fallback` and each certificate's own
/// list), with its key and the list's location: a fallback is only tried when the primary
/// fails, which is the worst moment to learn its bundle is unreadable.
fn fallback_bundles(cfg: &Config) -> Vec<(String, Loc, &Path)> {
    let mut out = Vec::new();
    let top = cfg.locs.get("acme.fallback").copied().unwrap_or_default();
    for (i, ca) in cfg.acme.fallback.iter().enumerate() {
        if let Some(b) = &ca.ca_bundle {
            out.push((format!("acme.fallback[{i}].ca_bundle"), top, b.as_path()));
        }
    }
    for c in &cfg.certs {
        let loc = c.locs.get("fallback").copied().unwrap_or_default();
        for (i, ca) in c.fallback.iter().flatten().enumerate() {
            if let Some(b) = &ca.ca_bundle {
                let key = format!("cert[{}].fallback[{i}].ca_bundle", c.name);
                out.push((key, loc, b.as_path()));
            }
        }
    }
    out
}

/// Bounded and regular files only: `/dev/zero` or a FIFO here must not hang or exhaust
/// `check`.
fn ca_bundle_usable(b: &Path) -> Result<(), CheckError> {
    crate::fsx::read_regular(b, crate::fsx::PEM_LIMIT, true)?;
    if crate::inventory::read_pem_certs(b).map_or(true, |v| v.is_empty()) {
        return Err(CheckError::NoPemCertificate(b.to_path_buf()));
    }
    Ok(())
}

/// One certificate's directories, hook programs and accounts.
fn cert_paths(c: &crate::config::CertConfig, found: &mut Found<'_>) {
    let key = |k: &str| format!("cert[{}].{k}", c.name);
    let mut paths = vec![("cert_path", &c.cert_path), ("key_path", &c.key_path)];
    if let Some(p) = &c.chain_path {
        paths.push(("chain_path", p));
    }
    if let Some(p) = &c.bundle_path {
        paths.push(("bundle_path", p));
    }
    for (k, p) in paths {
        let parent = p.parent().unwrap_or(Path::new("/"));
        if let Err(e) = dir_usable(parent, false) {
            found.push(c.loc(k), key(k), e);
        }
    }
    match &c.challenge {
        Challenge::Http01Webroot(w) => {
            if let Err(e) = dir_usable(w, false) {
                found.push(c.loc("http01_webroot"), key("http01_webroot"), e);
            }
        }
        Challenge::Dns01Hook(argv) => {
            if let Err(e) = program_usable(&argv[0]) {
                found.push(c.loc("dns01_hook"), key("dns01_hook"), e);
            }
        }
        Challenge::Http01Listen(_) => {}
    }
    for argv in &c.reload {
        if let Err(e) = program_usable(&argv[0]) {
            found.push(c.loc("reload"), key("reload"), e);
        }
    }
    if let Some(o) = &c.owner
        && let Err(m) = crate::store::resolve_owner(Some(o), None)
    {
        found.push(c.loc("owner"), key("owner"), CheckError::Account(m));
    }
    if let Some(g) = &c.group
        && let Err(m) = crate::store::resolve_owner(None, Some(g))
    {
        found.push(c.loc("group"), key("group"), CheckError::Account(m));
    }
}

/// A directory certkeeper will write into: writable, or (`may_create`) creatable.
fn dir_usable(dir: &Path, may_create: bool) -> Result<(), CheckError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() {
                Err(CheckError::NotWritable(dir.to_path_buf()))
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(CheckError::NotADirectory(dir.to_path_buf())),
        Err(_) if may_create => {
            // It will be created; its nearest existing ancestor must be writable.
            let mut p = dir;
            while let Some(parent) = p.parent() {
                if parent.exists() {
                    return dir_usable(parent, false).map_err(|_| CheckError::CannotCreate {
                        dir: dir.to_path_buf(),
                        parent: parent.to_path_buf(),
                    });
                }
                p = parent;
            }
            Ok(())
        }
        Err(e) => Err(CheckError::Missing {
            dir: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// A hook's argv[0] names an executable file (directly, or through PATH).
fn program_usable(prog: &str) -> Result<(), CheckError> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if prog.contains('/') {
        vec![PathBuf::from(prog)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(prog)).collect())
            .unwrap_or_default()
    };
    for c in &candidates {
        if let Ok(m) = std::fs::metadata(c)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(());
        }
    }
    if prog.contains('/') {
        Err(CheckError::ProgramMissing(prog.to_string()))
    } else {
        Err(CheckError::ProgramNotInPath(prog.to_string()))
    }
}

/// Under `strict_modes = true` and when running as root: every path certkeeper trusts that
/// someone other than root could modify. Checked like sshd's StrictModes: the path is
/// resolved (symlinks followed), then it and every ancestor up to `/` must be owned by root
/// and not writable by group or others. A sticky world-writable directory such as `/tmp`
/// is unsafe too: the sticky bit stops others deleting root's entries, but not creating a
/// name root has not created yet, nor does it protect what lies below a non-root-owned
/// entry. A path that does not exist yet is judged by its nearest existing ancestor.
///
/// Checked: the config file (key `config`), `state_dir`, `acme.ca_bundle`, the directory of
/// every managed file, `http01_webroot`, and every hook program (`reload`, `dns01_hook`;
/// bare names are looked up in PATH). Each unsafe path is reported once, with the first
/// key that refers to it.
pub fn strict_mode_violations(cfg: &Config, config_path: &Path) -> Vec<ConfigError> {
    strict_mode_violations_as(cfg, config_path, nix::unistd::geteuid().is_root())
}

/// [`strict_mode_violations`] with the "running as root" answer given, for tests.
pub fn strict_mode_violations_as(
    cfg: &Config,
    config_path: &Path,
    as_root: bool,
) -> Vec<ConfigError> {
    if !cfg.strict_modes || !as_root {
        return Vec::new();
    }
    let targets = strict_targets(cfg, config_path);
    let mut reported = HashSet::new();
    let mut checked = HashSet::new();
    let mut out = Vec::new();
    for (path, key, loc) in targets {
        let mut p = path.as_path();
        let real = loop {
            if let Ok(r) = std::fs::canonicalize(p) {
                break r;
            }
            match p.parent() {
                Some(parent) => p = parent,
                None => break PathBuf::from("/"),
            }
        };
        for comp in real.ancestors() {
            if !checked.insert(comp.to_path_buf()) {
                // Its ancestors were checked with it.
                break;
            }
            let Some(why) = unsafe_mode(comp) else {
                continue;
            };
            if reported.insert(comp.to_path_buf()) {
                let via = if comp == path {
                    String::new()
                } else {
                    format!(" (on the way to {})", path.display())
                };
                out.push(ConfigError {
                    file: cfg.path.clone(),
                    line: loc.line,
                    column: loc.column,
                    key: key.clone(),
                    message: format!(
                        "strict_modes: {}{via} is {why}; as root certkeeper trusts only paths that root alone can modify (fix with chown root and chmod go-w)",
                        comp.display()
                    ),
                });
            }
        }
    }
    out
}

/// Every path strict_modes checks, as (path as configured, config key, location).
fn strict_targets(cfg: &Config, config_path: &Path) -> Vec<(PathBuf, String, Loc)> {
    let mut targets: Vec<(PathBuf, String, Loc)> = Vec::new();
    let top = |k: &str| cfg.locs.get(k).copied().unwrap_or_default();
    targets.push((config_path.to_path_buf(), "config".into(), Loc::default()));
    targets.push((cfg.state_dir.clone(), "state_dir".into(), top("state_dir")));
    if let Some(b) = &cfg.acme.ca_bundle {
        targets.push((b.clone(), "acme.ca_bundle".into(), top("acme.ca_bundle")));
    }
    let mut seen_dirs = HashSet::new();
    for c in &cfg.certs {
        let key = |k: &str| format!("cert[{}].{k}", c.name);
        let files = c.files();
        for (role, p) in files.iter() {
            let k = role.config_key();
            let dir = p.parent().unwrap_or(Path::new("/"));
            if seen_dirs.insert(dir.to_path_buf()) {
                targets.push((dir.to_path_buf(), key(k), c.loc(k)));
            }
        }
        match &c.challenge {
            Challenge::Http01Webroot(w) => {
                targets.push((w.clone(), key("http01_webroot"), c.loc("http01_webroot")))
            }
            Challenge::Dns01Hook(argv) => {
                if let Some(p) = resolve_program(&argv[0]) {
                    targets.push((p, key("dns01_hook"), c.loc("dns01_hook")));
                }
            }
            Challenge::Http01Listen(_) => {}
        }
        for argv in &c.reload {
            if let Some(p) = resolve_program(&argv[0]) {
                targets.push((p, key("reload"), c.loc("reload")));
            }
        }
    }
    targets
}

/// Why `p` is unsafe for root to trust, or `None`.
fn unsafe_mode(p: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) => return Some(format!("not inspectable ({e})")),
    };
    let mode = m.mode() & 0o7777;
    let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(m.uid()))
        .ok()
        .flatten()
        .map_or_else(
            || format!("uid {}", m.uid()),
            |u| format!("{} (uid {})", u.name, m.uid()),
        );
    let mut why = Vec::new();
    if m.uid() != 0 {
        why.push("not owned by root");
    }
    if mode & 0o020 != 0 {
        why.push("group-writable");
    }
    if mode & 0o002 != 0 {
        why.push(if mode & 0o1000 != 0 {
            "world-writable (sticky, still unsafe)"
        } else {
            "world-writable"
        });
    }
    if why.is_empty() {
        return None;
    }
    Some(format!(
        "mode {mode:04o} owned by {owner}: {}",
        why.join(", ")
    ))
}

/// The file a hook argv[0] runs: itself if it has a slash, else the first PATH match.
fn resolve_program(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if prog.is_empty() {
        return None;
    }
    if prog.contains('/') {
        return Some(PathBuf::from(prog));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|c| {
            std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
