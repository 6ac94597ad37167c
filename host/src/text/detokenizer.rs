use tokenizers::Tokenizer;

/// Turns a growing token sequence into text pieces as soon as they are complete: a token that ends inside a
/// multi-byte character (or a merge the next token changes) is held back until the text is stable.
pub struct StreamingDetokenizer<'a> {
    tokenizer: &'a Tokenizer,
    tokens: Vec<u32>,
    /// Tokens already turned into emitted text start at `read` (decoding from `prefix` gives context).
    prefix: usize,
    read: usize,
}

impl<'a> StreamingDetokenizer<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        StreamingDetokenizer { tokenizer, tokens: Vec::new(), prefix: 0, read: 0 }
    }

    fn decode(&self, from: usize) -> String {
        self.tokenizer.decode(&self.tokens[from..], false).unwrap_or_default()
    }

    /// Adds a token; returns the newly completed text, possibly empty.
    pub fn push(&mut self, token: u32) -> String {
        self.tokens.push(token);
        let before = self.decode_range(self.prefix, self.read);
        let now = self.decode(self.prefix);
        if now.len() > before.len() && !now.ends_with('\u{fffd}') && now.starts_with(&before) {
            let piece = now[before.len()..].to_owned();
            self.prefix = self.read;
            self.read = self.tokens.len();
            piece
        } else {
            String::new()
        }
    }

    fn decode_range(&self, from: usize, to: usize) -> String {
        self.tokenizer.decode(&self.tokens[from..to], false).unwrap_or_default()
    }

    /// Whatever is still held back (at the end of generation).
    pub fn finish(&mut self) -> String {
        let before = self.decode_range(self.prefix, self.read);
        let now = self.decode(self.prefix);
        self.prefix = self.tokens.len();
        self.read = self.tokens.len();
        now.get(before.len()..).unwrap_or_default().to_owned()
    }
}
