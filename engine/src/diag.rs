//! Diagnostics: what lint reports, with file, line, column and a stable code.

use crate::policy::Location;
use serde::Serialize;
use std::sync::Arc;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look; fails lint only with `--deny-warnings`.
    Warning,
    /// The policy cannot go live.
    Error,
}

impl Severity {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable code such as `cel/unknown-field`.
    pub code: &'static str,
    /// What is wrong, in a sentence.
    pub message: String,
    /// Where; `None` for findings about the repository as a whole.
    pub location: Option<Location>,
    /// Byte length of the offending text at `location`, for carets; 0 for a point.
    #[serde(skip)]
    pub len: usize,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at a location.
    pub fn error(
        code: &'static str,
        message: impl Into<String>,
        location: Option<Location>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            location,
            len: 0,
            help: None,
        }
    }

    /// A warning at a location.
    pub fn warning(
        code: &'static str,
        message: impl Into<String>,
        location: Option<Location>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message, location)
        }
    }

    /// The same with a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The same with the length of the offending text.
    pub fn with_len(mut self, len: usize) -> Self {
        self.len = len;
        self
    }

    /// Whether it is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        write!(
            f,
            "{}[{}]: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, " (help: {help})")?;
        }
        Ok(())
    }
}

/// A location in a file.
pub fn at(file: &Arc<str>, line: usize, column: usize) -> Location {
    Location {
        file: file.clone(),
        line,
        column,
    }
}
