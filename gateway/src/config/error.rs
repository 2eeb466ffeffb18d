//! Config errors that name the file, the line and the fix.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a config document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigIssue {
    /// 1-based line and column, when the problem has a place in the document.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: Option<String>,
}

/// Everything wrong with a config document; loading stops at the first syntax error but
/// collects every semantic one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// The document's name (its path, or `<admin>` for a pushed document).
    pub source_name: PathBuf,
    /// The problems, in document order.
    pub issues: Vec<ConfigIssue>,
}

impl ConfigError {
    pub(crate) fn io(path: &Path, err: &std::io::Error) -> Self {
        Self {
            source_name: path.to_owned(),
            issues: vec![ConfigIssue {
                position: None,
                message: format!("cannot read the config file: {err}"),
                fix: Some("check the path given to --config and its permissions".into()),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match issue.position {
                Some((line, col)) => write!(f, "{}:{line}:{col}: ", self.source_name.display())?,
                None => write!(f, "{}: ", self.source_name.display())?,
            }
            write!(f, "error: {}", issue.message)?;
            if let Some(fix) = &issue.fix {
                write!(f, "\n  fix: {fix}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects issues while validating a document, turning byte spans into line:column.
#[derive(Debug)]
pub(crate) struct Issues<'a> {
    text: &'a str,
    issues: Vec<ConfigIssue>,
}

impl<'a> Issues<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            issues: Vec::new(),
        }
    }

    /// Records an issue at `span` (a byte range of the document).
    pub(crate) fn at(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let position = Some(line_col(self.text, span.start));
        self.issues.push(ConfigIssue {
            position,
            message: message.into(),
            fix: Some(fix.into()),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.issues.is_empty()
    }

    pub(crate) fn into_error(mut self, source_name: &Path) -> ConfigError {
        self.issues.sort_by_key(|i| i.position);
        ConfigError {
            source_name: source_name.to_owned(),
            issues: self.issues,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 8), (2, 3));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn display_names_file_line_and_fix() {
        let mut issues = Issues::new("x = 1\ny = 2\n");
        issues.at(6..7, "bad y", "remove y");
        let err = issues.into_error(Path::new("gw.toml"));
        assert_eq!(
            err.to_string(),
            "gw.toml:2:1: error: bad y\n  fix: remove y"
        );
    }
}
