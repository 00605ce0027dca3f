//! Byte offsets in the config text -> file:line:column:key, and the validation context
//! that collects located errors. Separate from `validate` because both the serde error
//! path (which only has a span) and every validation step need the same arithmetic.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{ConfigError, Loc};

/// What every validation step needs: where the text came from, to locate and collect
/// errors, and the directory relative paths resolve against.
pub(super) struct Ctx<'a> {
    /// The config file, for messages.
    pub(super) file: &'a Path,
    src: &'a str,
    base: &'a Path,
    /// Every problem found so far, in file order of discovery.
    pub(super) errors: Vec<ConfigError>,
    /// Byte offset of the start of every line, so `loc` is a binary search instead of a
    /// scan from the top of the file (which made loading 10,000 certificates quadratic).
    line_starts: Vec<usize>,
}

impl<'a> Ctx<'a> {
    /// A context with no errors yet; indexes the line starts once.
    pub(super) fn new(file: &'a Path, src: &'a str, base: &'a Path) -> Self {
        Ctx {
            file,
            src,
            base,
            errors: Vec::new(),
            line_starts: std::iter::once(0)
                .chain(src.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        }
    }

    /// The line and column of a span's start.
    pub(super) fn loc(&self, span: &Range<usize>) -> Loc {
        let offset = span.start.min(self.src.len());
        let i = self.line_starts.partition_point(|&s| s <= offset).max(1) - 1;
        let column = self.src[self.line_starts[i]..offset].chars().count() + 1;
        Loc {
            line: i + 1,
            column,
        }
    }

    /// Records one problem at a span.
    pub(super) fn err(
        &mut self,
        span: &Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let loc = self.loc(span);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: loc.line,
            column: loc.column,
            key: key.into(),
            message: message.into(),
        });
    }

    /// A configured path made absolute against the config's directory.
    pub(super) fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

/// The 1-based line and column of a byte offset (for the one serde error, so no index).
pub(super) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |i| offset - i - 1) + 1;
    (line, column)
}

/// Reconstructs the dotted key at a byte offset, for serde errors that carry only a span.
pub(super) fn key_at(src: &str, offset: usize) -> String {
    let offset = offset.min(src.len());
    let line_start = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[offset..].find('\n').map_or(src.len(), |i| offset + i);
    let line = &src[line_start..line_end];
    // The section this line is in: the nearest preceding header.
    let mut section = String::new();
    let mut cert_index = 0usize;
    for l in src[..line_start].lines() {
        let t = l.trim();
        if t.starts_with("[[cert]]") {
            cert_index += 1;
            section = format!("cert[{}]", cert_index - 1);
        } else if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return trimmed
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string();
    }
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    match (section.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => section,
        (false, false) => format!("{section}.{key}"),
    }
}
