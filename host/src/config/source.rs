//! A configuration file as text, as a spanned tree (for line and column of any key) and as a plain table with
//! the command line's `--set` overrides applied.

use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::problem::{ConfigError, ConfigProblem, Location};

/// One `--set section.key=value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub path: Vec<String>,
    pub value: toml::Value,
    /// As written, for messages.
    pub text: String,
}

impl std::str::FromStr for Override {
    type Err = String;

    /// `a.b=value`: the value is read as TOML (`0.1`, `true`, `"x"`, `[1, 2]`), or else taken as a string.
    fn from_str(text: &str) -> Result<Self, String> {
        let (key, raw) = text.split_once('=').ok_or_else(|| format!("`{text}`: expected section.key=value"))?;
        let path: Vec<String> = key.trim().split('.').map(|s| s.trim().to_owned()).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("`{text}`: empty key segment"));
        }
        let raw = raw.trim();
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
        Ok(Override { path, value, text: text.to_owned() })
    }
}

pub struct Source {
    text: String,
    /// The document after overrides.
    pub table: toml::Table,
    overrides: Vec<Override>,
}

impl Source {
    pub fn read(file: &Path, overrides: &[Override]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            problems: vec![ConfigProblem { location: Location::File, path: String::new(), message: format!("cannot read: {e}") }],
        })?;
        Self::parse(file, text, overrides)
    }

    pub fn parse(file: &Path, text: String, overrides: &[Override]) -> Result<Self, ConfigError> {
        let syntax = |e: toml::de::Error, text: &str| {
            let location = e.span().map_or(Location::File, |s| line_column(text, s.start));
            ConfigError {
                file: file.to_owned(),
                problems: vec![ConfigProblem { location, path: String::new(), message: e.message().trim().to_owned() }],
            }
        };
        let mut table: toml::Table = text.parse().map_err(|e| syntax(e, &text))?;
        let mut problems = Vec::new();
        for o in overrides {
            if let Err(message) = apply(&mut table, o) {
                problems.push(ConfigProblem { location: Location::Override(o.text.clone()), path: o.path.join("."), message });
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { file: file.to_owned(), problems });
        }
        Ok(Source { text, table, overrides: overrides.to_vec() })
    }

    /// Where the value at `path` comes from: an override, the key in the file, or its nearest enclosing
    /// table that exists in the file.
    pub fn locate(&self, path: &[&str]) -> Location {
        if let Some(o) = self.overrides.iter().rev().find(|o| o.path.iter().map(String::as_str).eq(path.iter().copied())) {
            return Location::Override(o.text.clone());
        }
        let Ok(root) = DeTable::parse(&self.text) else { return Location::File };
        let mut table = root.get_ref();
        let mut best = Location::File;
        for (i, key) in path.iter().enumerate() {
            let Some((k, v)) = table.get_key_value(*key) else { break };
            // For the last segment point at the key; for tables, at their header (the key's span).
            best = line_column(&self.text, k.span().start);
            match v.get_ref() {
                DeValue::Table(t) if i + 1 < path.len() => table = t,
                _ => break,
            }
        }
        best
    }

    pub fn problem(&self, path: &[&str], message: impl Into<String>) -> ConfigProblem {
        ConfigProblem { location: self.locate(path), path: path.join("."), message: message.into() }
    }
}

fn apply(table: &mut toml::Table, o: &Override) -> Result<(), String> {
    let (last, parents) = o.path.split_last().ok_or("empty key")?;
    let mut at = table;
    for (i, segment) in parents.iter().enumerate() {
        let entry = at.entry(segment.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| format!("`{}` is not a table", o.path[..=i].join(".")))?;
    }
    at.insert(last.clone(), o.value.clone());
    Ok(())
}

fn line_column(text: &str, offset: usize) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Location::Text { line, column }
}
