//! The files one certificate is made of, listed in exactly one place. Every part that
//! walks them (install, inventory, owner markers, the daemon's watch, fingerprints, hook
//! environments) goes through [`FileSet::iter`], so adding a file kind is one edit here.
//! A leaf: it depends on nothing in the crate.

use std::path::{Path, PathBuf};

/// What a managed file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The leaf certificate and its chain (`cert_path`).
    Cert,
    /// The private key (`key_path`).
    Key,
    /// The chain without the leaf (`chain_path`, optional).
    Chain,
    /// Key plus full chain in one file, as haproxy reads it (`bundle_path`, optional).
    Bundle,
}

impl Role {
    /// The config key that names this file, as errors and `status` show it.
    pub fn config_key(self) -> &'static str {
        match self {
            Self::Cert => "cert_path",
            Self::Key => "key_path",
            Self::Chain => "chain_path",
            Self::Bundle => "bundle_path",
        }
    }

    /// Whether the file holds the private key (so it gets `key_mode`, never `cert_mode`).
    pub fn secret(self) -> bool {
        matches!(self, Self::Key | Self::Bundle)
    }

    /// The hook environment variable that carries this file's path.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Cert => "CERTKEEPER_CERT_PATH",
            Self::Key => "CERTKEEPER_KEY_PATH",
            Self::Chain => "CERTKEEPER_CHAIN_PATH",
            Self::Bundle => "CERTKEEPER_BUNDLE_PATH",
        }
    }
}

/// The paths of one certificate's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSet {
    /// Leaf + chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Chain alone, if configured.
    pub chain: Option<PathBuf>,
    /// Key + full chain, if configured.
    pub bundle: Option<PathBuf>,
}

impl FileSet {
    /// The configured files in a fixed order (cert, key, chain, bundle): fingerprints and
    /// install order depend on it.
    pub fn iter(&self) -> impl Iterator<Item = (Role, &Path)> {
        [
            Some((Role::Cert, self.cert.as_path())),
            Some((Role::Key, self.key.as_path())),
            self.chain.as_deref().map(|p| (Role::Chain, p)),
            self.bundle.as_deref().map(|p| (Role::Bundle, p)),
        ]
        .into_iter()
        .flatten()
    }

    /// The path for a role, if that file is configured.
    pub fn get(&self, role: Role) -> Option<&Path> {
        self.iter().find(|(r, _)| *r == role).map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_configured_files_in_fixed_order() {
        let mut s = FileSet {
            cert: "/c".into(),
            key: "/k".into(),
            chain: None,
            bundle: Some("/b".into()),
        };
        let roles: Vec<Role> = s.iter().map(|(r, _)| r).collect();
        assert_eq!(roles, [Role::Cert, Role::Key, Role::Bundle]);
        s.chain = Some("/ch".into());
        let keys: Vec<&str> = s.iter().map(|(r, _)| r.config_key()).collect();
        assert_eq!(keys, ["cert_path", "key_path", "chain_path", "bundle_path"]);
        assert_eq!(s.get(Role::Chain), Some(Path::new("/ch")));
        assert!(Role::Bundle.secret() && Role::Key.secret() && !Role::Chain.secret());
    }
}
