//! What a run reports: one JSON object per step (and per evaluation) in `metrics.jsonl`, a progress bar,
//! and a final summary.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::TrainError;

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    /// Every record written, for the plot.
    pub records: Vec<Value>,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl`, keeping the records of steps up to `resume_step` (the rest belonged to a
    /// run that did not reach its next checkpoint).
    pub fn open(dir: &Path, resume_step: Option<u64>) -> Result<Self, TrainError> {
        let path = dir.join("metrics.jsonl");
        let (records, file) = open_jsonl(&path, resume_step)?;
        Ok(MetricsLog { path, file, records })
    }

    pub fn write(&mut self, record: Value) -> Result<(), TrainError> {
        writeln!(self.file, "{record}").map_err(|e| TrainError::Io { path: self.path.clone(), message: e.to_string() })?;
        self.records.push(record);
        Ok(())
    }

    /// (step, value) of every record that has `key`.
    pub fn series(&self, key: &str) -> Vec<(f64, f64)> {
        self.records
            .iter()
            .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
            .collect()
    }
}

/// Opens a per-step JSONL log for appending: empty for a fresh run; on resume, only the lines of steps up to
/// `resume_step` are kept (those after it are run again). Returns the kept records and the file.
pub fn open_jsonl(path: &Path, resume_step: Option<u64>) -> Result<(Vec<Value>, std::fs::File), TrainError> {
    let io = |e: std::io::Error| TrainError::Io { path: path.to_owned(), message: e.to_string() };
    let records: Vec<Value> = match resume_step {
        Some(step) => std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("step").and_then(Value::as_u64).is_some_and(|s| s <= step))
            .collect(),
        None => Vec::new(),
    };
    let mut text = String::new();
    for r in &records {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(io)?;
    let file = std::fs::OpenOptions::new().append(true).open(path).map_err(io)?;
    Ok((records, file))
}

pub fn progress_bar(total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_position(done);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]") {
        bar.set_style(style);
    }
    bar
}
