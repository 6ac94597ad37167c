//! TensorBoard event files (`[output] report_to = ["tensorboard"]`): every scalar of a run's metrics at its
//! step, and text summaries (GRPO's sampled completions), in `<run dir>/tensorboard/`. The files are the
//! documented TFRecord container of `Event` protos that TensorFlow, PyTorch's SummaryWriter and TensorBoard
//! itself write and read.
//!
//! A run keeps one event file. A fresh run replaces what an earlier run left; a resumed run keeps the events
//! of steps up to its checkpoint and appends after them, so no step appears twice.

mod proto;
mod record;

use std::{
    fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use prost::Message;

use proto::{Dim, Event, PluginData, Summary, SummaryMetadata, TensorProto, TensorShapeProto, Value, DT_STRING};

#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct TensorboardError {
    pub path: PathBuf,
    pub message: String,
}

pub struct EventLog {
    path: PathBuf,
    out: BufWriter<fs::File>,
}

const PREFIX: &str = "events.out.tfevents.";

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(PREFIX))).collect())
        .unwrap_or_default();
    files.sort();
    files
}

impl EventLog {
    /// Opens the event log in `dir`: a new one, or (resuming at `resume_step`) one holding the summaries of
    /// steps up to it from the files already there.
    pub fn open(dir: &Path, resume_step: Option<u64>) -> Result<Self, TensorboardError> {
        let err = |path: &Path, e: std::io::Error| TensorboardError { path: path.to_owned(), message: e.to_string() };
        fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        let old = event_files(dir);
        let mut kept: Vec<Vec<u8>> = Vec::new();
        if let Some(step) = resume_step {
            for file in &old {
                let bytes = fs::read(file).map_err(|e| err(file, e))?;
                let (records, complete) = record::read_all(&bytes);
                if !complete {
                    eprintln!("{}: ignoring a torn last record (the run stopped while writing it)", file.display());
                }
                for data in records {
                    let event = Event::decode(data).map_err(|e| TensorboardError { path: file.clone(), message: format!("not an Event record: {e}") })?;
                    if event.summary.is_some() && u64::try_from(event.step).is_ok_and(|s| s <= step) {
                        kept.push(data.to_vec());
                    }
                }
            }
        }
        // TensorBoard orders a directory's files by name, i.e. by this timestamp; the host name keeps two
        // machines writing into one shared directory apart, as TensorFlow's writer does.
        let host = fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".to_owned());
        let path = dir.join(format!("{PREFIX}{}.{host}", wall_time() as u64));
        let temp = dir.join(".events.partial");
        {
            let mut out = BufWriter::new(fs::File::create(&temp).map_err(|e| err(&temp, e))?);
            let header = Event { wall_time: wall_time(), file_version: Some("brain.Event:2".to_owned()), ..Default::default() };
            record::write(&mut out, &header.encode_to_vec()).map_err(|e| err(&temp, e))?;
            for data in &kept {
                record::write(&mut out, data).map_err(|e| err(&temp, e))?;
            }
            out.flush().map_err(|e| err(&temp, e))?;
        }
        fs::rename(&temp, &path).map_err(|e| err(&path, e))?;
        for file in old.iter().filter(|f| **f != path) {
            fs::remove_file(file).map_err(|e| err(file, e))?;
        }
        let file = fs::OpenOptions::new().append(true).open(&path).map_err(|e| err(&path, e))?;
        Ok(EventLog { path, out: BufWriter::new(file) })
    }

    fn write(&mut self, step: u64, values: Vec<Value>) -> Result<(), TensorboardError> {
        if values.is_empty() {
            return Ok(());
        }
        let event = Event { wall_time: wall_time(), step: step as i64, summary: Some(Summary { value: values }), ..Default::default() };
        let err = |e: std::io::Error| TensorboardError { path: self.path.clone(), message: e.to_string() };
        record::write(&mut self.out, &event.encode_to_vec()).map_err(err)?;
        // One step's summaries reach the disk before the next step starts.
        self.out.flush().map_err(err)
    }

    /// Writes `(tag, value)` scalars at `step`, one event. Non-finite values are written as they are
    /// (TensorBoard shows NaN), so a diverging run is visible.
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<(), TensorboardError> {
        let values = scalars.iter().map(|(tag, v)| Value { tag: (*tag).to_owned(), simple_value: Some(*v as f32), ..Default::default() }).collect();
        self.write(step, values)
    }

    /// Writes a text summary (markdown, as TensorBoard's text plugin renders it) under `tag` at `step`, in the
    /// layout PyTorch's `add_text` uses: a string tensor of shape [1] tagged for the "text" plugin.
    pub fn text(&mut self, step: u64, tag: &str, text: &str) -> Result<(), TensorboardError> {
        let value = Value {
            tag: tag.to_owned(),
            metadata: Some(SummaryMetadata { plugin_data: Some(PluginData { plugin_name: "text".to_owned(), content: Vec::new() }) }),
            tensor: Some(TensorProto { dtype: DT_STRING, tensor_shape: Some(TensorShapeProto { dim: vec![Dim { size: 1 }] }), string_val: vec![text.as_bytes().to_vec()] }),
            ..Default::default()
        };
        self.write(step, vec![value])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(dir: &Path) -> Vec<(i64, Vec<String>)> {
        let files = event_files(dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let bytes = fs::read(&files[0]).unwrap();
        let (records, complete) = record::read_all(&bytes);
        assert!(complete);
        let events: Vec<Event> = records.iter().map(|r| Event::decode(*r).unwrap()).collect();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        events[1..].iter().map(|e| (e.step, e.summary.as_ref().unwrap().value.iter().map(|v| v.tag.clone()).collect())).collect()
    }

    #[test]
    fn resuming_keeps_the_steps_up_to_the_checkpoint_and_appends_after_them() {
        let dir = std::env::temp_dir().join(format!("host-tb-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut log = EventLog::open(&dir, None).unwrap();
        for step in 1..=4 {
            log.scalars(step, &[("loss", 1.0 / step as f64)]).unwrap();
        }
        log.text(4, "completions", "| a | b |").unwrap();
        drop(log);
        let mut log = EventLog::open(&dir, Some(2)).unwrap();
        log.scalars(3, &[("loss", 0.3), ("grad_norm", 1.0)]).unwrap();
        drop(log);
        let got = steps(&dir);
        assert_eq!(got, vec![(1, vec!["loss".to_owned()]), (2, vec!["loss".to_owned()]), (3, vec!["loss".to_owned(), "grad_norm".to_owned()])]);
        // A fresh run starts over.
        drop(EventLog::open(&dir, None).unwrap());
        assert!(steps(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
