//! The arithmetic the built-in `calculator` tool evaluates: numbers, `+ - * / %`, `^` or `**` (power,
//! right-associative), unary minus and parentheses, with the usual precedence. Nothing else is accepted
//! (no names, no calls), expressions are at most 256 characters and 64 levels deep, and a result that is not a
//! finite number is an error, so a model's call can never hang or crash the tool.

const MAX_LEN: usize = 256;
const MAX_DEPTH: usize = 64;

/// The value of `expression`, or why it has none.
pub fn evaluate(expression: &str) -> Result<f64, String> {
    if expression.len() > MAX_LEN {
        return Err(format!("the expression is longer than {MAX_LEN} characters"));
    }
    let tokens = tokenize(expression)?;
    let mut p = Parser { tokens: &tokens, at: 0, depth: 0 };
    let v = p.sum()?;
    if p.at != tokens.len() {
        return Err(format!("unexpected {} after a complete expression", tokens[p.at]));
    }
    if v.is_finite() { Ok(v) } else { Err("the result is not a finite number".into()) }
}

/// A result as the tool reports it: whole numbers without a fraction, others to 12 significant digits.
pub fn format(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{:.12}", v);
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_owned()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(f64),
    Op(char),
    Open,
    Close,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Num(n) => write!(f, "number {n}"),
            Token::Op(c) => write!(f, "`{c}`"),
            Token::Open => write!(f, "`(`"),
            Token::Close => write!(f, "`)`"),
        }
    }
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '0'..='9' | '.' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.' || chars[i] == '_' || chars[i] == ',') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().filter(|c| **c != '_' && **c != ',').collect();
                out.push(Token::Num(text.parse::<f64>().map_err(|_| format!("`{text}` is not a number"))?));
            }
            '*' if chars.get(i + 1) == Some(&'*') => {
                out.push(Token::Op('^'));
                i += 2;
            }
            '+' | '-' | '*' | '/' | '%' | '^' => {
                out.push(Token::Op(c));
                i += 1;
            }
            'x' | '×' => {
                out.push(Token::Op('*'));
                i += 1;
            }
            '÷' => {
                out.push(Token::Op('/'));
                i += 1;
            }
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            other => return Err(format!("`{other}` is not part of an arithmetic expression")),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn sum(&mut self) -> Result<f64, String> {
        let mut v = self.product()?;
        while let Some(Token::Op(op @ ('+' | '-'))) = self.peek().cloned() {
            self.at += 1;
            let r = self.product()?;
            v = if op == '+' { v + r } else { v - r };
        }
        Ok(v)
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut v = self.unary()?;
        while let Some(Token::Op(op @ ('*' | '/' | '%'))) = self.peek().cloned() {
            self.at += 1;
            let r = self.unary()?;
            v = match op {
                '*' => v * r,
                _ if r == 0.0 => return Err("division by zero".into()),
                '/' => v / r,
                _ => v % r,
            };
        }
        Ok(v)
    }

    fn unary(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some(Token::Op('-')) => {
                self.at += 1;
                self.nested(|p| p.unary()).map(|v| -v)
            }
            Some(Token::Op('+')) => {
                self.at += 1;
                self.nested(|p| p.unary())
            }
            _ => self.power(),
        }
    }

    /// Right-associative: 2^3^2 = 2^9. A unary minus binds looser than the power: -2^2 = -4.
    fn power(&mut self) -> Result<f64, String> {
        let base = self.atom()?;
        if let Some(Token::Op('^')) = self.peek() {
            self.at += 1;
            let exponent = self.nested(|p| p.unary())?;
            return Ok(base.powf(exponent));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<f64, String> {
        match self.peek().cloned() {
            Some(Token::Num(n)) => {
                self.at += 1;
                Ok(n)
            }
            Some(Token::Open) => {
                self.at += 1;
                let v = self.nested(|p| p.sum())?;
                match self.peek() {
                    Some(Token::Close) => {
                        self.at += 1;
                        Ok(v)
                    }
                    _ => Err("a `(` without its `)`".into()),
                }
            }
            Some(t) => Err(format!("expected a number or `(`, found {t}")),
            None => Err("the expression ends where a number was expected".into()),
        }
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Result<f64, String>) -> Result<f64, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("the expression nests deeper than {MAX_DEPTH} levels"));
        }
        let v = f(self);
        self.depth -= 1;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_associativity_and_forms() {
        let cases = [
            ("2 + 3 * 4", 14.0),
            ("(2 + 3) * 4", 20.0),
            ("10 - 4 - 3", 3.0),
            ("2 ^ 3 ^ 2", 512.0),
            ("2 ** 10", 1024.0),
            ("-2 ^ 2", -4.0),
            ("(-2) ^ 2", 4.0),
            ("7 / 2", 3.5),
            ("17 % 5", 2.0),
            ("1,000 + 1", 1001.0),
            ("3 x 4", 12.0),
            ("--3", 3.0),
            ("0.1 + 0.2", 0.1 + 0.2),
        ];
        for (e, want) in cases {
            assert_eq!(evaluate(e), Ok(want), "{e}");
        }
        assert_eq!(format(evaluate("7 * 6").unwrap()), "42");
        assert_eq!(format(evaluate("1 / 3").unwrap()), "0.333333333333");
        assert_eq!(format(evaluate("0.1 + 0.2").unwrap()), "0.3");
        assert_eq!(format(-2.5), "-2.5");
    }

    #[test]
    fn bad_expressions_are_errors_never_hangs() {
        assert_eq!(evaluate("1 / 0"), Err("division by zero".into()));
        assert_eq!(evaluate("5 % 0"), Err("division by zero".into()));
        assert!(evaluate("2 +").unwrap_err().contains("ends where a number was expected"));
        assert!(evaluate("(1 + 2").unwrap_err().contains("without its `)`"));
        assert!(evaluate("1 2").unwrap_err().contains("unexpected number 2"));
        assert!(evaluate("import os").unwrap_err().contains("`i` is not part"));
        assert!(evaluate("10 ^ 400").unwrap_err().contains("not a finite number"));
        assert!(evaluate(&"(".repeat(100)).unwrap_err().contains("deeper than 64"));
        assert!(evaluate(&"1+".repeat(200)).unwrap_err().contains("longer than 256"));
        assert!(evaluate("1.2.3").unwrap_err().contains("not a number"));
    }
}
