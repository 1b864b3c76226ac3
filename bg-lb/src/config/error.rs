//! Why a configuration is rejected, and where in the file.

use std::{
    io,
    ops::Range,
    path::{Path, PathBuf},
};

/// Why the configuration was rejected; only the first problem found is reported.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. Not marked `#[source]` because the message already includes it.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    /// Syntax or validation error at a place in the file; `line` and `column` are 1-based.
    #[error("{}:{line}:{column}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
}

impl ConfigError {
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Io { path, .. } | ConfigError::Invalid { path, .. } => path,
        }
    }

    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { line, .. } => Some(*line),
        }
    }

    pub fn column(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { column, .. } => Some(*column),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.as_bytes().get(..offset).unwrap_or_default();
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    // Spans from toml are on char boundaries; fall back to bytes if one is not.
    let column = 1 + text
        .get(line_start..offset)
        .map_or(offset - line_start, |s| s.chars().count());
    (line, column)
}

/// An error before it is tied to a file: a byte span and what is wrong there.
#[derive(Debug)]
pub(super) struct Invalid {
    span: Range<usize>,
    reason: String,
}

impl Invalid {
    pub(super) fn new(span: Range<usize>, reason: impl Into<String>) -> Invalid {
        Invalid {
            span,
            reason: reason.into(),
        }
    }

    pub(super) fn at<T>(span: Range<usize>, reason: impl Into<String>) -> Result<T, Invalid> {
        Err(Invalid::new(span, reason))
    }

    pub(super) fn from_toml(error: &toml::de::Error) -> Invalid {
        // Some messages span lines ("invalid table header\nduplicate key ..."); keep the report on one.
        let reason = error.message().trim().replace('\n', ": ");
        Invalid::new(error.span().unwrap_or(0..0), reason)
    }

    /// Ties the error to the file at `path`, whose contents are `text`.
    pub(super) fn in_file(self, path: &Path, text: &str) -> ConfigError {
        let (line, column) = position(text, self.span.start);
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            reason: self.reason,
        }
    }
}

/// The 1-based line where `span` starts, for messages that point back at an earlier key.
pub(super) fn line_of(text: &str, span: &Range<usize>) -> usize {
    position(text, span.start).0
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{
        parse,
        test_support::{TOP, assert_rejected},
    };

    #[test]
    fn error_display_is_file_line_column_reason() {
        let text = "interface = \"eth0\"\nsnat_address = \"10.0.0.1\"\nmax_flows = 5\n";
        let error = parse(Path::new("/etc/bg-lb.toml"), text).unwrap_err();
        assert_eq!(
            error.to_string(),
            "/etc/bg-lb.toml:3:13: max_flows 5 is out of range 1024..=16777216"
        );
        assert_eq!((error.line(), error.column()), (Some(3), Some(13)));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // Each "é" is two bytes; the stray `x` is the 18th character of line 3.
        let error = parse(Path::new("t.toml"), &format!("{TOP}pin_dir = \"/é/é\" x\n")).unwrap_err();
        assert_eq!((error.line(), error.column()), (Some(3), Some(18)), "{error}");
    }

    #[test]
    fn syntax_errors_are_located() {
        assert_rejected(&format!("{TOP}pin_dir = \"/sys/fs/bpf  # <-\n"), "invalid basic string");
        assert_rejected(&format!("{TOP}max_flows = 1_000_  # <-\n"), "invalid");
        assert_rejected(&format!("{TOP}[admin]\n[admin]  # <-\n"), "duplicate key `admin`");
        assert_rejected(
            &format!("{TOP}interface = \"eth1\"  # <-\n"),
            "duplicate key `interface`",
        );
    }
}
