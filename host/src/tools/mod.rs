//! Tool use in conversations: parsing the tool calls a model emits, in its family's format, and the arithmetic
//! of the built-in calculator tool. (The multi-turn environments that answer calls are issue 15's next step.)

pub mod calculator;
mod calls;

pub use calls::{CallFormat, Parsed, ToolCall};
