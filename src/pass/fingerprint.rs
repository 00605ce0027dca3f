//! What a certificate's files hold, as one hash: the daemon compares a file event's
//! result against the fingerprint the pass recorded, so only a real change wakes it.

use crate::config::CertConfig;
use crate::fsx;
use crate::store::NewSet;

/// SHA-256 over a certificate's file set (each file's presence and contents, in the
/// fixed order of [`crate::fileset::FileSet::iter`]).
pub type Fingerprint = [u8; 32];

/// The fingerprint of contents as they are (None for an absent or unreadable file).
pub fn fingerprint_of<'a>(contents: impl IntoIterator<Item = Option<&'a [u8]>>) -> Fingerprint {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for c in contents {
        match c {
            Some(data) => {
                ctx.update(&[1]);
                ctx.update(&(data.len() as u64).to_be_bytes());
                ctx.update(data);
            }
            None => ctx.update(&[0]),
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Reads a certificate's files and fingerprints them. Blocking: call off the async
/// workers. A file that is not a regular file or is over the size limit counts as absent.
pub fn fingerprint_files(cert: &CertConfig) -> Fingerprint {
    fingerprint_read(&read_files(cert))
}

/// What each of a certificate's files held when read once (bounded, regular files only),
/// in the order of [`crate::fileset::FileSet::iter`].
pub(super) type FileReads = Vec<(std::path::PathBuf, Result<Vec<u8>, fsx::ReadError>)>;

/// Reads each of a certificate's files once. Blocking.
pub(super) fn read_files(cert: &CertConfig) -> FileReads {
    cert.files()
        .iter()
        .map(|(_, p)| (p.to_path_buf(), fsx::read_regular(p, fsx::PEM_LIMIT, true)))
        .collect()
}

/// The fingerprint of contents read by [`read_files`].
pub(super) fn fingerprint_read(reads: &FileReads) -> Fingerprint {
    fingerprint_of(
        reads
            .iter()
            .map(|(_, r)| r.as_ref().ok().map(Vec::as_slice)),
    )
}

/// The fingerprint the installed files will have: the same bytes the store writes, so the
/// daemon recognises the echo of an install without reading the files back.
pub(super) fn set_fingerprint(cert: &CertConfig, set: &NewSet) -> Fingerprint {
    use crate::fileset::Role;
    let bundle = format!("{}{}", set.key_pem, set.fullchain_pem);
    let files = cert.files();
    fingerprint_of(files.iter().map(|(role, _)| {
        Some(match role {
            Role::Cert => set.fullchain_pem.as_bytes(),
            Role::Key => set.key_pem.as_bytes(),
            Role::Chain => set.chain_pem.as_bytes(),
            Role::Bundle => bundle.as_bytes(),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_contents_and_absence_apart() {
        let a = fingerprint_of([Some(&b"x"[..]), None]);
        assert_eq!(a, fingerprint_of([Some(&b"x"[..]), None]));
        assert_ne!(a, fingerprint_of([Some(&b"x"[..]), Some(&b""[..])]));
        assert_ne!(a, fingerprint_of([None, Some(&b"x"[..])]));
        assert_ne!(
            fingerprint_of([Some(&b"ab"[..]), Some(&b"c"[..])]),
            fingerprint_of([Some(&b"a"[..]), Some(&b"bc"[..])])
        );
    }
}
