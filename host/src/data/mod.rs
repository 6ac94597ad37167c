//! Training data: JSONL rows tokenized with the model's tokenizer and chat template, a supervision mask per
//! token, a `DataCachePolicy` plugin deciding when tokenization happens and whether results are kept, and
//! batches bucketed by token count.

mod batches;
mod bytes;
mod cache;
mod packing;
mod prompts;

pub use cache::key as cache_key;
mod rows;
mod tokenize;

use std::path::{Path, PathBuf};

use sdk::DataCachePolicy;
use thiserror::Error;

pub use bytes::ByteReader;
pub use batches::{assemble, collate, plan_epoch, Batch, BatchSize, SplitMix};
pub use packing::{plan_packed_epoch, PackInto, Packed};
pub use prompts::{render_prompt, PromptRow, PromptSet};
pub use rows::{parse_prompt_row, parse_row, read_rows, Prompt, Reply, Row, RowShape, SourcedRow};
pub use tokenize::{tokenize, Example, Item, Masking};

use crate::text::TextTokenizer;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{}:{line}: {message}", path.display())]
    Row { path: PathBuf, line: usize, message: String },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("data cache: {0}")]
    Cache(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataOptions {
    pub masking: Masking,
    pub max_seq_length: usize,
    /// Leave malformed rows out (counted and listed) instead of stopping.
    pub skip_bad_rows: bool,
    /// The rows the loss trains on; others are errors naming their line.
    pub shape: RowShape,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataStats {
    /// Usable rows in the file.
    pub rows: usize,
    /// Rows left out as malformed: (line, why).
    pub bad_rows: Vec<(usize, String)>,
    /// Examples cut at `max_seq_length`.
    pub truncated: usize,
    /// Rows left out because a sequence of theirs has nothing supervised (e.g. the completion was truncated away).
    pub unsupervised: usize,
}

impl DataStats {
    pub fn describe(&self) -> String {
        let mut s = format!("{} rows", self.rows);
        if self.truncated > 0 {
            s.push_str(&format!(", {} truncated at max_seq_length", self.truncated));
        }
        if self.unsupervised > 0 {
            s.push_str(&format!(", {} without supervised tokens left out", self.unsupervised));
        }
        if !self.bad_rows.is_empty() {
            let lines: Vec<String> = self.bad_rows.iter().take(5).map(|(l, _)| l.to_string()).collect();
            s.push_str(&format!(", {} malformed rows skipped (lines {}{})", self.bad_rows.len(), lines.join(", "), if self.bad_rows.len() > 5 { ", ..." } else { "" }));
        }
        s
    }
}

struct Entry {
    line: usize,
    /// Kept while tokenization is still to come (lazy and none policies).
    row: Option<Row>,
    item: Option<Item>,
}

/// A tokenized (or tokenizable) dataset.
pub struct Dataset {
    path: PathBuf,
    entries: Vec<Entry>,
    /// Batching key per entry: its token count (a pair's longer side), whatever the cache policy, so
    /// `max_batch_tokens` and the memory estimate count tokens.
    lengths: Vec<usize>,
    memoize: bool,
    options: DataOptions,
    pub stats: DataStats,
    pub cache_hit: bool,
    /// Identifies the tokenized contents (tokenizer, template, file, options): a key for derived caches.
    pub key: String,
}

fn check_shape(row: &Row, expected: RowShape) -> Result<(), String> {
    if row.shape() != expected {
        return Err(format!("this is one of the {}, but the loss trains on {}", row.shape().describe(), expected.describe()));
    }
    Ok(())
}

impl Dataset {
    pub fn load(path: &Path, t: &TextTokenizer, options: DataOptions, policy: &mut dyn DataCachePolicy, tokenizer_file: &Path) -> Result<Dataset, DataError> {
        let file = |message: String| DataError::File { path: path.to_owned(), message };
        let data = std::fs::read(path).map_err(|e| file(e.to_string()))?;
        let tokenizer_bytes = std::fs::read(tokenizer_file).map_err(|e| file(format!("{}: {e}", tokenizer_file.display())))?;
        let key = cache::key(&[
            b"host-dataset-v2",
            &tokenizer_bytes,
            t.template_source().unwrap_or("").as_bytes(),
            &data,
            format!("{:?} {} {} {:?}", options.masking, options.max_seq_length, options.skip_bad_rows, options.shape).as_bytes(),
        ]);
        let mut dataset = Dataset {
            path: path.to_owned(),
            entries: Vec::new(),
            lengths: Vec::new(),
            memoize: policy.memoize(),
            options,
            stats: DataStats::default(),
            cache_hit: false,
            key: key.clone(),
        };
        if policy.tokenize_eagerly() {
            if let Some(blob) = policy.load(&key).map_err(|e| DataError::Cache(e.to_string()))? {
                if let Some((entries, stats)) = cache::decode(&blob) {
                    dataset.set_tokenized(entries, stats);
                    dataset.cache_hit = true;
                    return Ok(dataset);
                }
            }
        }
        let (rows, bad) = read_rows(path, options.skip_bad_rows)?;
        dataset.stats.rows = rows.len();
        dataset.stats.bad_rows = bad;
        if policy.tokenize_eagerly() {
            let mut entries = Vec::with_capacity(rows.len());
            for r in rows {
                match check_shape(&r.row, options.shape).and_then(|()| tokenize(&r.row, t, options.masking, options.max_seq_length)) {
                    Ok(e) => entries.push((r.line, e)),
                    Err(message) if options.skip_bad_rows => dataset.stats.bad_rows.push((r.line, message)),
                    Err(message) => return Err(DataError::Row { path: path.to_owned(), line: r.line, message }),
                }
            }
            dataset.stats.rows = entries.len();
            dataset.stats.truncated = entries.iter().filter(|(_, e)| e.truncated()).count();
            let before = entries.len();
            entries.retain(|(_, e)| e.usable());
            dataset.stats.unsupervised = before - entries.len();
            policy.store(&key, &cache::encode(&entries, &dataset.stats)).map_err(|e| DataError::Cache(e.to_string()))?;
            dataset.set_tokenized(entries, dataset.stats.clone());
        } else {
            // Tokenized once here for the token counts batching needs (and the same statistics and
            // dropped rows as the eager policies). A memoizing policy keeps these tokens (it would make the
            // same ones on first use); the others keep the row and tokenize it again on each use.
            let mut tokenized = 0;
            for r in rows {
                match check_shape(&r.row, options.shape).and_then(|()| tokenize(&r.row, t, options.masking, options.max_seq_length)) {
                    Ok(e) => {
                        tokenized += 1;
                        dataset.stats.truncated += usize::from(e.truncated());
                        if !e.usable() {
                            dataset.stats.unsupervised += 1;
                            continue;
                        }
                        dataset.lengths.push(e.len());
                        let entry = if dataset.memoize { Entry { line: r.line, row: None, item: Some(e) } } else { Entry { line: r.line, row: Some(r.row), item: None } };
                        dataset.entries.push(entry);
                    }
                    Err(message) if options.skip_bad_rows => dataset.stats.bad_rows.push((r.line, message)),
                    Err(message) => return Err(DataError::Row { path: path.to_owned(), line: r.line, message }),
                }
            }
            dataset.stats.rows = tokenized;
        }
        if dataset.entries.is_empty() {
            return Err(file("no example has a supervised token".into()));
        }
        Ok(dataset)
    }

    fn set_tokenized(&mut self, entries: Vec<(usize, Item)>, stats: DataStats) {
        self.lengths = entries.iter().map(|(_, e)| e.len()).collect();
        self.entries = entries.into_iter().map(|(line, e)| Entry { line, row: None, item: Some(e) }).collect();
        self.stats = stats;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// The source line of entry `i`.
    pub fn line(&self, i: usize) -> usize {
        self.entries[i].line
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The item at `i`, tokenized now if the policy defers it. Every entry has a supervised token: loading
    /// left out those without.
    pub fn item(&mut self, i: usize, t: &TextTokenizer) -> Result<Item, DataError> {
        let entry = &mut self.entries[i];
        if let Some(e) = &entry.item {
            return Ok(e.clone());
        }
        let row = entry.row.as_ref().ok_or_else(|| DataError::Cache("an entry has neither row nor tokens".into()))?;
        let e = tokenize(row, t, self.options.masking, self.options.max_seq_length)
            .map_err(|message| DataError::Row { path: self.path.clone(), line: entry.line, message })?;
        if !e.usable() {
            // Load kept only rows with a supervised token; the same row and tokenizer cannot lose it.
            return Err(DataError::Row { path: self.path.clone(), line: entry.line, message: "tokenizes differently than when the data was loaded".into() });
        }
        if self.memoize {
            entry.item = Some(e.clone());
            entry.row = None;
        }
        Ok(e)
    }
}
