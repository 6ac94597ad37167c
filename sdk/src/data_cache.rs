//! Data cache policies: whether and where tokenized datasets are kept. The host tokenizes and serializes;
//! a policy decides when tokenization happens and stores the blobs under keys the host derives from the
//! tokenizer, the chat template and the data file's contents.

use crate::PluginError;

pub trait DataCachePolicy {
    /// Tokenize the whole dataset before training (true) or each row on first use (false).
    fn tokenize_eagerly(&self) -> bool;
    /// Keep tokenized rows in memory after first use.
    fn memoize(&self) -> bool;
    /// A blob stored under `key` earlier, if any.
    fn load(&mut self, key: &str) -> Result<Option<Vec<u8>>, PluginError>;
    /// Stores a blob under `key`, replacing any earlier one.
    fn store(&mut self, key: &str, data: &[u8]) -> Result<(), PluginError>;
}
