//! The §9 text syntax. Terms are ANDed; `OR` binds looser than AND, so `a b OR c` is
//! `(a b) OR c`; `NOT x` and `-x` negate; parentheses group. A bare word is a message
//! token (a word made of several tokens, like `10.0.0.1`, is a phrase of them); `word*`
//! is a prefix; `"two words"` a phrase; `key:value`, `key:>N` (and `>=`, `<`, `<=`),
//! `key:~regex` and `key:"quoted value"` match labels, else fields; `stream:glob`,
//! `level:name` and `id:uuid` are built in.

use std::fmt;

use gossamer_schemas::normalize_level;
use gossamer_schemas::text::tokens;
use regex::Regex;
use uuid::Uuid;

use crate::ast::{CmpOp, Expr, Term, ValueOp};

/// Longest query text accepted.
pub const MAX_QUERY_LEN: usize = 8192;
/// Most terms and operators in one query.
pub const MAX_QUERY_TERMS: usize = 256;

/// A query that does not parse: where (1-based character column) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query error at column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug)]
enum Tok {
    LParen,
    RParen,
    Or,
    And,
    Not,
    Term(Term),
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    _src: &'a str,
}

fn err<T>(column: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError { column: column + 1, message: message.into() })
}

fn ends_bare(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '"')
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Self { chars: src.chars().collect(), pos: 0, _src: src }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn tokens(mut self) -> Result<Vec<(usize, Tok)>, ParseError> {
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            let start = self.pos;
            if c.is_whitespace() {
                self.pos += 1;
            } else if c == '(' {
                self.pos += 1;
                out.push((start, Tok::LParen));
            } else if c == ')' {
                self.pos += 1;
                out.push((start, Tok::RParen));
            } else if c == '"' {
                let text = self.quoted()?;
                out.push((start, Tok::Term(text_term(&text, start, false)?)));
            } else if c == '-' && self.chars.get(start + 1).is_some_and(|n| !n.is_whitespace() && *n != ')') {
                self.pos += 1;
                out.push((start, Tok::Not));
            } else {
                out.push((start, self.bare()?));
            }
        }
        Ok(out)
    }

    /// A quoted string starting at the current `"`; `\"` and `\\` are escapes.
    fn quoted(&mut self) -> Result<String, ParseError> {
        let open = self.pos;
        self.pos += 1;
        let mut s = String::new();
        while let Some(c) = self.peek() {
            self.pos += 1;
            match c {
                '"' => return Ok(s),
                '\\' => match self.peek() {
                    Some(n @ ('"' | '\\')) => {
                        s.push(n);
                        self.pos += 1;
                    }
                    _ => s.push('\\'),
                },
                _ => s.push(c),
            }
        }
        err(open, "expected a closing '\"' for the quote opened here")
    }

    fn bare(&mut self) -> Result<Tok, ParseError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if ends_bare(c) || c == ':' {
                break;
            }
            self.pos += 1;
        }
        let word: String = self.chars[start..self.pos].iter().collect();
        if self.peek() == Some(':') {
            if word.is_empty() {
                return err(start, "expected a field name before ':'");
            }
            self.pos += 1;
            return Ok(Tok::Term(self.key_value(word, start)?));
        }
        Ok(match word.as_str() {
            "OR" => Tok::Or,
            "AND" => Tok::And,
            "NOT" => Tok::Not,
            _ => Tok::Term(text_term(&word, start, true)?),
        })
    }

    /// The value after `key:`; returns the term it makes.
    fn key_value(&mut self, key: String, key_start: usize) -> Result<Term, ParseError> {
        let vstart = self.pos;
        let regex = self.peek() == Some('~');
        if regex {
            self.pos += 1;
        }
        let (raw, quoted) = if self.peek() == Some('"') {
            (self.quoted()?, true)
        } else {
            let s = self.pos;
            let mut depth = 0usize;
            while let Some(c) = self.peek() {
                if c.is_whitespace() || c == '"' || (c == ')' && depth == 0) {
                    break;
                }
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                self.pos += 1;
            }
            (self.chars[s..self.pos].iter().collect::<String>(), false)
        };
        if raw.is_empty() && !quoted {
            return err(vstart, format!("expected a value after '{key}:'"));
        }
        // `key:*`: the key exists (every event has a stream: `stream:*` is every event).
        if raw == "*" && !quoted && !regex && key != "stream" {
            if key.contains('*') {
                return err(key_start, "expected a field name without '*'");
            }
            return Ok(Term::Exists(key));
        }
        let op = if regex {
            let re = Regex::new(&raw).or_else(|e| err(vstart, format!("expected a valid regex: {e}")))?;
            ValueOp::Regex(re)
        } else if quoted {
            ValueOp::Eq(raw)
        } else if let Some((op, rest)) = comparison(&raw) {
            let n: f64 = rest.parse().or_else(|_| err(vstart, format!("expected a number after '{key}:{op}'")))?;
            if !n.is_finite() {
                return err(vstart, format!("expected a finite number after '{key}:{op}'"));
            }
            ValueOp::Cmp(op, n)
        } else {
            ValueOp::Eq(raw)
        };
        match (key.as_str(), op) {
            ("stream", ValueOp::Eq(glob)) => Ok(Term::Stream(glob)),
            ("stream" | "level", op @ ValueOp::Regex(_)) => Ok(Term::Field { key, op }),
            ("stream", _) => err(vstart, "expected a stream name, glob or ~regex after 'stream:'"),
            ("level", ValueOp::Eq(l)) => Ok(Term::Level(normalize_level(&l))),
            ("level", _) => err(vstart, "expected a level name or ~regex after 'level:'"),
            ("id", ValueOp::Eq(s)) => Uuid::parse_str(&s)
                .map(Term::Id)
                .or_else(|_| err(vstart, format!("expected a UUID after 'id:', found {s:?}"))),
            ("id", _) => err(vstart, "expected a UUID after 'id:'"),
            (_, op) => {
                if key.contains('*') {
                    return err(key_start, "expected a field name without '*'");
                }
                Ok(Term::Field { key, op })
            }
        }
    }
}

fn comparison(raw: &str) -> Option<(CmpOp, &str)> {
    for (p, op) in [(">=", CmpOp::Ge), ("<=", CmpOp::Le), (">", CmpOp::Gt), ("<", CmpOp::Lt)] {
        if let Some(rest) = raw.strip_prefix(p) {
            return Some((op, rest));
        }
    }
    None
}

/// A bare word or a quoted phrase as a message term.
fn text_term(text: &str, start: usize, bare: bool) -> Result<Term, ParseError> {
    if bare {
        if let Some(body) = text.strip_suffix('*') {
            let toks = tokens(body);
            return match toks.as_slice() {
                [one] if one.chars().count() == body.chars().count() => Ok(Term::Prefix(one.clone())),
                _ => err(start, "expected letters, digits or '_' before '*'"),
            };
        }
    }
    let mut toks = tokens(text);
    match toks.len() {
        0 if bare => err(start, format!("expected a word with letters or digits, found {text:?}")),
        0 => err(start, "expected a phrase with letters or digits"),
        1 => Ok(Term::Word(toks.remove(0))),
        _ => Ok(Term::Phrase(toks)),
    }
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    i: usize,
    end: usize,
}

impl Parser {
    fn pos(&self) -> usize {
        self.toks.get(self.i).map(|t| t.0).unwrap_or(self.end)
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut xs = vec![self.and()?];
        while matches!(self.toks.get(self.i), Some((_, Tok::Or))) {
            self.i += 1;
            xs.push(self.and()?);
        }
        Ok(if xs.len() == 1 { xs.remove(0) } else { Expr::Or(xs) })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut xs = Vec::new();
        loop {
            match self.toks.get(self.i) {
                None | Some((_, Tok::RParen | Tok::Or)) => break,
                Some((_, Tok::And)) if !xs.is_empty() => self.i += 1,
                _ => xs.push(self.unary()?),
            }
        }
        match xs.len() {
            0 => err(self.pos(), "expected a term"),
            1 => Ok(xs.remove(0)),
            _ => Ok(Expr::And(xs)),
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let pos = self.pos();
        let Some((_, tok)) = self.toks.get_mut(self.i) else {
            return err(pos, "expected a term");
        };
        match tok {
            Tok::Not => {
                self.i += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Tok::LParen => {
                self.i += 1;
                let e = self.or()?;
                match self.toks.get(self.i) {
                    Some((_, Tok::RParen)) => {
                        self.i += 1;
                        Ok(e)
                    }
                    _ => err(self.pos(), format!("expected ')' to close the '(' at column {}", pos + 1)),
                }
            }
            Tok::Term(_) => {
                let Tok::Term(t) = std::mem::replace(tok, Tok::And) else { unreachable!() };
                self.i += 1;
                Ok(Expr::Term(t))
            }
            Tok::RParen | Tok::Or | Tok::And => err(pos, "expected a term"),
        }
    }
}

/// Parses the text syntax; the empty query matches everything.
pub fn parse(q: &str) -> Result<Expr, ParseError> {
    parse_within(q, MAX_QUERY_LEN, MAX_QUERY_TERMS)
}

/// [`parse`] with the node's limits on query bytes and on terms and operators.
pub fn parse_within(q: &str, max_bytes: usize, max_terms: usize) -> Result<Expr, ParseError> {
    if q.len() > max_bytes {
        return err(max_bytes, format!("expected at most {max_bytes} bytes of query (query_limits.max_query_bytes)"));
    }
    let lexer = Lexer::new(q);
    let end = lexer.chars.len();
    let toks = lexer.tokens()?;
    if toks.len() > max_terms {
        return err(toks[max_terms].0, format!("expected at most {max_terms} terms and operators in a query (query_limits.max_query_terms)"));
    }
    if toks.is_empty() {
        return Ok(Expr::All);
    }
    let mut p = Parser { toks, i: 0, end };
    let e = p.or()?;
    if p.i < p.toks.len() {
        return err(p.pos(), "expected an operator or the end of the query, found ')'");
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gossamer_schemas::Event;
    use proptest::prelude::*;

    fn ev(message: &str, level: &str, labels: &[(&str, &str)], fields: serde_json::Value) -> Event {
        Event {
            id: Uuid::from_u128(42),
            ts: 0,
            stream: "payments.api".into(),
            level: level.into(),
            message: message.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            fields: fields.as_object().unwrap().clone(),
        }
    }

    fn m(q: &str, e: &Event) -> bool {
        parse(q).unwrap_or_else(|e| panic!("{q}: {e}")).matches(e)
    }

    #[test]
    fn the_section_9_example() {
        let e = ev(
            "upstream: Connection reset by peer",
            "error",
            &[("service", "payments")],
            serde_json::json!({"latency_ms": 750}),
        );
        assert!(m(r#"level:error service:payments "connection reset" latency_ms:>500"#, &e));
        assert!(!m(r#"level:error service:payments "connection reset" latency_ms:>800"#, &e));
        assert!(!m(r#""reset connection""#, &e));
    }

    #[test]
    fn words_prefixes_boolean_logic() {
        let e = ev("Disk quota exceeded on blk_77", "warn", &[("host", "db-1")], serde_json::json!({"n": "12"}));
        assert!(m("disk", &e));
        assert!(m("DISK quo*", &e));
        assert!(!m("dis", &e));
        assert!(m("blk_77", &e));
        assert!(m("nothing OR quota", &e));
        assert!(m("-nothing quota", &e));
        assert!(m("NOT (nothing OR absent)", &e));
        assert!(!m("disk AND nothing", &e));
        assert!(m("disk nothing OR host:db-1", &e), "OR binds looser than AND");
        assert!(m("host:~^db-\\d$", &e));
        assert!(m("n:>=12 n:<=12 n:12", &e));
        assert!(m("stream:payments.* stream:*api", &e));
        assert!(!m("stream:payments", &e));
        assert!(m("level:WARNING", &e));
        assert!(m("id:00000000-0000-0000-0000-00000000002a", &e));
        assert!(m("labels.host:db-1 -fields.host:db-1", &e));
        assert!(m("", &e));
    }

    /// `key:*` is "the key exists" (as in Kibana's KQL), not a prefix of nothing.
    #[test]
    fn a_star_value_means_the_key_exists() {
        let e = ev("m", "warn", &[("host", "db-1")], serde_json::json!({"latency_ms": 5, "req": {"path": "/"}}));
        assert!(m("level:*", &e));
        assert!(!m("-level:*", &e));
        assert!(m("host:* labels.host:* -fields.host:*", &e));
        assert!(m("latency_ms:* fields.latency_ms:* fields.req.path:*", &e));
        assert!(!m("region:*", &e));
        assert!(m("-region:* stream:*", &e));
        assert!(m("id:*", &e));
        let no_level = ev("m", "", &[], serde_json::json!({}));
        assert!(!m("level:*", &no_level));
        // A quoted star is the value "*"; the printed form parses back to the same.
        let star = ev("m", "info", &[("k", "*")], serde_json::json!({}));
        assert!(m(r#"k:"*""#, &star));
        assert!(!m(r#"k:"*""#, &e));
        for q in ["level:*", "host:*", "fields.a.b:*", r#"k:"*""#] {
            let once = parse(q).unwrap().to_string();
            assert_eq!(parse(&once).unwrap().to_string(), once, "{q}");
        }
        assert_eq!(parse("level:*").unwrap().to_string(), "level:*");
        assert!(parse("a*b:*").is_err(), "a star in the key is refused");
    }

    #[test]
    fn quoted_values_and_dotted_words() {
        let e = ev("from 10.0.0.1 port 22", "info", &[("path", "/a b/c")], serde_json::json!({}));
        assert!(m(r#"path:"/a b/c""#, &e));
        assert!(m("10.0.0.1", &e));
        assert!(!m("10.0.0.2", &e));
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        let e = |q: &str| parse(q).unwrap_err().to_string();
        assert_eq!(e("level:error latency_ms:>abc"), "query error at column 24: expected a number after 'latency_ms:>'");
        assert_eq!(e("(a OR b"), "query error at column 8: expected ')' to close the '(' at column 1");
        assert_eq!(e("a OR"), "query error at column 5: expected a term");
        assert_eq!(e("a )"), "query error at column 3: expected an operator or the end of the query, found ')'");
        assert_eq!(e("\"open"), "query error at column 1: expected a closing '\"' for the quote opened here");
        assert_eq!(e("x:"), "query error at column 3: expected a value after 'x:'");
        assert_eq!(e("id:42"), "query error at column 4: expected a UUID after 'id:', found \"42\"");
        assert!(e("k:~(").starts_with("query error at column 3: expected a valid regex"));
        assert_eq!(e("!!"), "query error at column 1: expected a word with letters or digits, found \"!!\"");
        assert!(e(&"a ".repeat(300)).ends_with("expected at most 256 terms and operators in a query (query_limits.max_query_terms)"));
        assert!(e(&"a".repeat(9000)).ends_with("expected at most 8192 bytes of query (query_limits.max_query_bytes)"));
    }

    #[test]
    fn printing_then_parsing_gives_the_same_query() {
        for q in [
            r#"level:error service:payments "connection reset" latency_ms:>500"#,
            "a (b OR NOT c) -d* stream:x.* path:\"a b\" k:~\"^x\\\"y$\"",
            "id:00000000-0000-0000-0000-00000000002a n:<=-1.5",
        ] {
            let once = parse(q).unwrap().to_string();
            assert_eq!(parse(&once).unwrap().to_string(), once, "{q}");
        }
    }

    proptest! {
        #[test]
        fn no_input_makes_the_parser_panic(q in ".{0,64}") {
            if let Ok(e) = parse(&q) {
                let _ = parse(&e.to_string());
            }
        }

        #[test]
        fn no_query_shaped_input_makes_the_parser_panic(q in "[a-z:\"()~*<>= -]{0,40}") {
            if let Ok(e) = parse(&q) {
                let printed = e.to_string();
                let again = parse(&printed).map(|x| x.to_string());
                prop_assert_eq!(again, Ok(printed));
            }
        }
    }
}
