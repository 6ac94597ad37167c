//! Tool use in conversations: parsing the tool calls a model emits, in its family's format, and the arithmetic
//! of the built-in calculator tool (the `environment` module answers the calls).

pub mod calculator;
mod calls;

pub use calls::{CallFormat, Parsed, ToolCall};
