//! Where managed files really are (symlinks and `..` resolved), and the check that no two
//! managed files are one file under two spellings. Separate because it is the one part of
//! loading that looks at the disk, and `check` runs it again later (a symlink may appear
//! after load), as does the owner-marker code for `state_dir`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{CertConfig, ConfigError, Loc};

/// Removes `.` and resolves `..` textually; only used for the part of a path that does not
/// exist yet (so no symlink can be in it).
pub fn normalize_lexically(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !p.is_absolute() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The real location of a directory: its longest existing ancestor canonicalised (symlinks
/// and `..` resolved by the kernel), the rest normalised lexically. `cache` keeps this O(1)
/// per certificate when thousands share a directory.
fn canonical_dir(dir: &Path, cache: &mut HashMap<PathBuf, PathBuf>) -> PathBuf {
    if let Some(c) = cache.get(dir) {
        return c.clone();
    }
    let mut existing = dir;
    let mut rest = Vec::new();
    let resolved = loop {
        if let Ok(c) = std::fs::canonicalize(existing) {
            break c;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            // `..` at the end, or the root itself does not resolve: fall back to text.
            _ => break normalize_lexically(existing),
        }
    };
    let mut full = resolved;
    for name in rest.iter().rev() {
        full.push(name);
    }
    let full = normalize_lexically(&full);
    cache.insert(dir.to_path_buf(), full.clone());
    full
}

/// Where a managed file really is: the parent directory resolved, plus the file name.
pub fn canonical_file(p: &Path, cache: &mut HashMap<PathBuf, PathBuf>) -> PathBuf {
    let norm = normalize_lexically(p);
    match (norm.parent(), norm.file_name()) {
        (Some(parent), Some(name)) => canonical_dir(parent, cache).join(name),
        _ => norm,
    }
}

/// Finds managed files that are one file under two spellings (`out/../out/a.crt`, a
/// symlinked directory): each renewal of one certificate would overwrite the other's.
/// One pass with a HashMap, so 10,000 certificates cost 10,000 look-ups. Paths written
/// identically are left to `validate`'s own duplicate check, which reports them already.
pub fn path_alias_errors(
    certs: &[CertConfig],
    file: &Path,
    cache: &mut HashMap<PathBuf, PathBuf>,
) -> Vec<ConfigError> {
    let mut seen: HashMap<PathBuf, (&str, &'static str, PathBuf, Loc)> = HashMap::new();
    let mut out = Vec::new();
    for c in certs {
        let files = c.files();
        for (role, p) in files.iter() {
            let k = role.config_key();
            if p.as_os_str().is_empty() {
                continue;
            }
            let real = canonical_file(p, cache);
            let loc = c.loc(k);
            match seen.get(&real) {
                Some((oname, ok, op, oloc)) => {
                    if op == p {
                        continue;
                    }
                    out.push(ConfigError {
                        file: file.to_path_buf(),
                        line: loc.line,
                        column: loc.column,
                        key: format!("cert[{}].{k}", c.name),
                        message: format!(
                            "{} is the same file as cert[{oname}].{ok} = {} ({}:{}): both are {}; \
                             two managed files must not alias, or each renewal overwrites the other",
                            p.display(),
                            op.display(),
                            file.display(),
                            oloc.line,
                            real.display()
                        ),
                    });
                }
                None => {
                    seen.insert(real, (c.name.as_str(), k, p.to_path_buf(), loc));
                }
            }
        }
    }
    out
}
