//! The parsed form of a query, how it matches an event, and how it prints back in the
//! text syntax (printing then parsing gives the same expression).

use std::fmt;

use gossamer_schemas::text::tokens;
use gossamer_schemas::Event;
use regex::Regex;
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub enum Expr {
    /// Matches every event (the empty query).
    All,
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Term(Term),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone)]
pub enum ValueOp {
    /// Equal to a label's value, or to a field's value (numbers compare as numbers).
    Eq(String),
    Cmp(CmpOp, f64),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub enum Term {
    /// A message token (lowercased).
    Word(String),
    /// A message token starting with this (lowercased).
    Prefix(String),
    /// Consecutive message tokens (lowercased).
    Phrase(Vec<String>),
    /// `key:value`: a label named `key`, else a field. `stream:~re`, `level:~re` and
    /// `message:~re` match the regex against the stream name, the level and the message.
    Field { key: String, op: ValueOp },
    /// `stream:glob`, `*` matching any run of characters.
    Stream(String),
    /// `level:name`, normalised.
    Level(String),
    Id(Uuid),
    /// `key:*`: the event has a label or field named `key` (`labels.`/`fields.` say
    /// which), or, for `level`, any level.
    Exists(String),
}

/// Per-event work shared by the terms of one match: the message's tokens, computed
/// once and only if a term needs them.
pub struct Matcher<'e> {
    event: &'e Event,
    tokens: Option<Vec<String>>,
}

impl<'e> Matcher<'e> {
    pub fn new(event: &'e Event) -> Self {
        Self { event, tokens: None }
    }

    fn tokens(&mut self) -> &[String] {
        let msg = &self.event.message;
        self.tokens.get_or_insert_with(|| tokens(msg))
    }
}

impl Expr {
    pub fn matches(&self, event: &Event) -> bool {
        self.eval(&mut Matcher::new(event))
    }

    pub fn eval(&self, m: &mut Matcher<'_>) -> bool {
        match self {
            Expr::All => true,
            Expr::And(xs) => xs.iter().all(|x| x.eval(m)),
            Expr::Or(xs) => xs.iter().any(|x| x.eval(m)),
            Expr::Not(x) => !x.eval(m),
            Expr::Term(t) => t.eval(m),
        }
    }
}

impl Term {
    fn eval(&self, m: &mut Matcher<'_>) -> bool {
        let e = m.event;
        match self {
            Term::Word(w) => m.tokens().iter().any(|t| t == w),
            Term::Prefix(p) => m.tokens().iter().any(|t| t.starts_with(p.as_str())),
            Term::Phrase(ws) => {
                let toks = m.tokens();
                !ws.is_empty() && toks.windows(ws.len()).any(|win| win == ws.as_slice())
            }
            Term::Stream(glob) => glob_match(glob, &e.stream),
            Term::Level(l) => e.level == *l,
            Term::Id(id) => e.id == *id,
            Term::Field { key, op } => field_matches(e, key, op),
            Term::Exists(key) => exists(e, key),
        }
    }
}

fn exists(e: &Event, key: &str) -> bool {
    match key {
        "level" => !e.level.is_empty(),
        "id" => true,
        _ => {
            if let Some(k) = key.strip_prefix("labels.") {
                e.labels.contains_key(k)
            } else if let Some(k) = key.strip_prefix("fields.") {
                e.field(k).is_some()
            } else {
                e.labels.contains_key(key) || e.field(key).is_some()
            }
        }
    }
}

fn field_matches(e: &Event, key: &str, op: &ValueOp) -> bool {
    // A regex over the stream name, the level or the message text itself.
    if let ValueOp::Regex(r) = op {
        match key {
            "stream" => return r.is_match(&e.stream),
            "level" => return r.is_match(&e.level),
            "message" => return r.is_match(&e.message),
            _ => {}
        }
    }
    let (label, field) = if let Some(k) = key.strip_prefix("labels.") {
        (e.labels.get(k), None)
    } else if let Some(k) = key.strip_prefix("fields.") {
        (None, e.field(k))
    } else {
        match e.labels.get(key) {
            Some(l) => (Some(l), None),
            None => (None, e.field(key)),
        }
    };
    if let Some(l) = label {
        return match op {
            ValueOp::Eq(v) => l == v,
            ValueOp::Cmp(c, n) => l.trim().parse::<f64>().is_ok_and(|x| compare(x, *c, *n)),
            ValueOp::Regex(r) => r.is_match(l),
        };
    }
    let Some(f) = field else { return false };
    match op {
        ValueOp::Eq(v) => match f {
            Value::String(s) => s == v,
            Value::Number(n) => v.parse::<f64>().ok().zip(n.as_f64()).is_some_and(|(a, b)| a == b),
            Value::Bool(b) => v == if *b { "true" } else { "false" },
            Value::Null => v == "null",
            _ => false,
        },
        ValueOp::Cmp(c, n) => number_of(f).is_some_and(|x| compare(x, *c, *n)),
        ValueOp::Regex(r) => match f {
            Value::String(s) => r.is_match(s),
            Value::Number(_) | Value::Bool(_) => r.is_match(&f.to_string()),
            _ => false,
        },
    }
}

/// A field's numeric value: numbers, and strings that hold one.
pub fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn compare(x: f64, op: CmpOp, n: f64) -> bool {
    match op {
        CmpOp::Gt => x > n,
        CmpOp::Ge => x >= n,
        CmpOp::Lt => x < n,
        CmpOp::Le => x <= n,
    }
}

/// `*` matches any run of characters (dots included); everything else is literal.
pub fn glob_match(glob: &str, s: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Quotes a value when the bare form would not parse back to the same thing.
fn quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.starts_with(['>', '<', '~', '-'])
        && !["OR", "AND", "NOT", "*"].contains(&s)
        && s.chars().all(|c| !c.is_whitespace() && !matches!(c, '(' | ')' | '"' | '\\' | ':'));
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        })
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Word(w) => f.write_str(w),
            Term::Prefix(p) => write!(f, "{p}*"),
            Term::Phrase(ws) => write!(f, "\"{}\"", ws.join(" ")),
            Term::Stream(g) => write!(f, "stream:{}", quoted(g)),
            Term::Level(l) => write!(f, "level:{}", quoted(l)),
            Term::Id(id) => write!(f, "id:{id}"),
            Term::Exists(key) => write!(f, "{key}:*"),
            Term::Field { key, op } => match op {
                ValueOp::Eq(v) => write!(f, "{key}:{}", quoted(v)),
                ValueOp::Cmp(c, n) => write!(f, "{key}:{c}{n}"),
                ValueOp::Regex(r) => write!(f, "{key}:~{}", quoted(r.as_str())),
            },
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, xs: &[Expr], sep: &str| -> fmt::Result {
            f.write_str("(")?;
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                write!(f, "{x}")?;
            }
            f.write_str(")")
        };
        match self {
            Expr::All => Ok(()),
            Expr::And(xs) => join(f, xs, " "),
            Expr::Or(xs) => join(f, xs, " OR "),
            Expr::Not(x) => write!(f, "NOT {x}"),
            Expr::Term(t) => write!(f, "{t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_dots_and_anchor_both_ends() {
        assert!(glob_match("loghub.*", "loghub.hdfs"));
        assert!(glob_match("*.api", "payments.eu.api"));
        assert!(glob_match("a*b*c", "a.x.b.y.c"));
        assert!(!glob_match("a*b*c", "a.c"));
        assert!(!glob_match("loghub.*", "loghub"));
        assert!(glob_match("*", ""));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
