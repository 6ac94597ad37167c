//! Text in and out of a model: its tokenizer, its chat template, and streaming detokenization.

mod chat_template;
mod detokenizer;
mod tokenizer;

pub use chat_template::ChatTemplate;
pub use detokenizer::StreamingDetokenizer;
pub use tokenizer::TextTokenizer;
