//! Configuration problems, all reported together with the file, line and column they come from.

use std::{fmt, path::PathBuf};

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// 1-based line and column in the file.
    Text { line: usize, column: usize },
    /// A `--set` override on the command line.
    Override(String),
    /// The whole file (a missing section, a cross-field rule).
    File,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub location: Location,
    /// The dotted key path, e.g. `schedule.min_lr` (empty for the whole document).
    pub path: String,
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        writeln!(f, "{}: {count} problem{}", self.file.display(), if count == 1 { "" } else { "s" })?;
        for p in &self.problems {
            let at = match &p.location {
                Location::Text { line, column } => format!("{}:{line}:{column}", self.file.display()),
                Location::Override(text) => format!("--set {text}"),
                Location::File => self.file.display().to_string(),
            };
            let key = if p.path.is_empty() { String::new() } else { format!("`{}`: ", p.path) };
            writeln!(f, "  {at}: {key}{}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
