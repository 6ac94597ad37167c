//! What a run reports: one JSON object per step (and per evaluation) in `metrics.jsonl`, the same scalars in
//! TensorBoard event files when `[output] report_to` asks for them, a progress bar, and a final summary.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::TrainError;
use crate::{
    config::OutputConfig,
    tensorboard::{EventLog, TensorboardError},
};

pub struct MetricsLog {
    path: PathBuf,
    /// `None` on ranks other than 0, which write nothing.
    file: Option<std::fs::File>,
    tensorboard: Option<EventLog>,
    /// Tokens of every step so far (TRL's `num_tokens`), carried over a resume through the kept records.
    num_tokens: u64,
    /// Every record written, for the plot.
    pub records: Vec<Value>,
}

impl From<TensorboardError> for TrainError {
    fn from(e: TensorboardError) -> Self {
        TrainError::Io { path: e.path, message: e.message }
    }
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` (and the TensorBoard log if `output` asks for it), keeping the records of
    /// steps up to `resume_step` (the rest belonged to a run that did not reach its next checkpoint).
    pub fn open(dir: &Path, resume_step: Option<u64>, output: &OutputConfig) -> Result<Self, TrainError> {
        let path = dir.join("metrics.jsonl");
        if !crate::dist::world().is_main() {
            return Ok(MetricsLog { path, file: None, tensorboard: None, num_tokens: 0, records: Vec::new() });
        }
        let (records, file) = open_jsonl(&path, resume_step)?;
        let file = Some(file);
        let tensorboard = if output.tensorboard() { Some(EventLog::open(&dir.join("tensorboard"), resume_step)?) } else { None };
        let num_tokens = records.iter().rev().find_map(|r| r.get("num_tokens").and_then(Value::as_u64)).unwrap_or(0);
        Ok(MetricsLog { path, file, tensorboard, num_tokens, records })
    }

    /// Appends a record (`step` and scalars; a step's record also has `tokens`, to which `num_tokens`, the
    /// running total, is added here) to metrics.jsonl and, as scalars at its step, to TensorBoard.
    pub fn write(&mut self, mut record: Value) -> Result<(), TrainError> {
        if let Some(tokens) = record.get("tokens").and_then(Value::as_u64) {
            self.num_tokens += tokens;
            record["num_tokens"] = self.num_tokens.into();
        }
        if let Some(file) = &mut self.file {
            writeln!(file, "{record}").map_err(|e| TrainError::Io { path: self.path.clone(), message: e.to_string() })?;
        }
        if let (Some(tb), Some(step), Some(fields)) = (&mut self.tensorboard, record.get("step").and_then(Value::as_u64), record.as_object()) {
            let scalar = |v: &Value| v.as_f64().or_else(|| v.as_bool().map(|b| f64::from(u8::from(b))));
            let scalars: Vec<(&str, f64)> = fields.iter().filter(|(k, _)| *k != "step").filter_map(|(k, v)| Some((k.as_str(), scalar(v)?))).collect();
            tb.scalars(step, &scalars)?;
        }
        self.records.push(record);
        Ok(())
    }

    /// A text summary at `step` in TensorBoard (nothing when it is not reported to).
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<(), TrainError> {
        match &mut self.tensorboard {
            Some(tb) => Ok(tb.text(step, tag, text)?),
            None => Ok(()),
        }
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
    // One bar per run: rank 0's.
    let bar = if crate::dist::world().is_main() { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_position(done);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]") {
        bar.set_style(style);
    }
    bar
}
