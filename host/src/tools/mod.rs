//! Tool use in conversations: parsing the tool calls a model emits, in its family's format. (The multi-turn
//! environments that answer them are issue 15's next step.)

mod calls;

pub use calls::{CallFormat, Parsed, ToolCall};
