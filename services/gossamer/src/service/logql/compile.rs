//! A log query compiled onto Gossamer's own query: stream selectors, line filters and
//! label filters become terms the planner answers from the index where it can (stream,
//! level and label equality, whole words of a line filter), checked exactly on the
//! candidates (substring and regex over the raw line, Loki's anchored regexes).
//!
//! Loki's label names as Gossamer sees them: `stream` is the stream, `level` and
//! `detected_level` the level, any other name a label (or, after `| json`, a field).

use gossamer_query::{CmpOp as NativeCmp, Expr, Term, ValueOp};
use gossamer_schemas::normalize_level;
use gossamer_schemas::text::tokens;
use regex::Regex;

use super::ast::*;
use super::parse::LogqlError;

/// Matches no event (an id no event has).
fn nothing() -> Expr {
    Expr::Term(Term::Id(uuid::Uuid::nil()))
}

fn not(e: Expr) -> Expr {
    Expr::Not(Box::new(e))
}

fn regex(re: &str) -> Result<Regex, LogqlError> {
    Regex::new(re).map_err(|e| LogqlError::Syntax { col: 1, message: format!("invalid regex {re:?}: {e}") })
}

/// Loki's label regexes match the whole value.
fn anchored(re: &str) -> Result<Regex, LogqlError> {
    regex(&format!("^(?:{re})$"))
}

/// Which of Gossamer's keys a Loki label name is.
enum Key {
    Stream,
    Level,
    /// `__error__`: Gossamer makes no parse errors, so it is always empty.
    Error,
    Label(String),
}

fn key(name: &str) -> Key {
    match name {
        "stream" => Key::Stream,
        "level" | "detected_level" => Key::Level,
        "__error__" | "__error_details__" => Key::Error,
        other => Key::Label(other.to_string()),
    }
}

/// The Gossamer group key for a Loki label name.
pub fn group_key(name: &str) -> String {
    match key(name) {
        Key::Stream => "stream".into(),
        Key::Level => "level".into(),
        Key::Error => "__error__".into(),
        Key::Label(l) => l,
    }
}

fn exists(k: &Key, native: &str) -> Expr {
    match k {
        Key::Stream => Expr::All,
        Key::Level => Expr::Term(Term::Exists("level".into())),
        Key::Error => nothing(),
        Key::Label(_) => Expr::Term(Term::Exists(native.to_string())),
    }
}

/// `name = value` (text) where `native` is the key to ask for: `labels.x` in a selector,
/// `x` (label, else field) in a label filter.
fn text_eq(k: &Key, native: &str, value: &str) -> Result<Expr, LogqlError> {
    if value.is_empty() {
        return Ok(not(exists(k, native)));
    }
    Ok(match k {
        Key::Stream if !value.contains('*') => Expr::Term(Term::Stream(value.to_string())),
        Key::Stream => Expr::Term(Term::Field { key: "stream".into(), op: ValueOp::Regex(anchored(&regex::escape(value))?) }),
        Key::Level => Expr::Term(Term::Level(normalize_level(value))),
        Key::Error => nothing(),
        Key::Label(_) => Expr::Term(Term::Field { key: native.to_string(), op: ValueOp::Eq(value.to_string()) }),
    })
}

fn text_re(k: &Key, native: &str, re: &str) -> Result<Expr, LogqlError> {
    let r = anchored(re)?;
    let empty_too = r.is_match("");
    let m = match k {
        Key::Stream => Expr::Term(Term::Field { key: "stream".into(), op: ValueOp::Regex(r) }),
        Key::Level => Expr::Term(Term::Field { key: "level".into(), op: ValueOp::Regex(r) }),
        Key::Error => return Ok(if empty_too { Expr::All } else { nothing() }),
        Key::Label(_) => Expr::Term(Term::Field { key: native.to_string(), op: ValueOp::Regex(r) }),
    };
    Ok(if empty_too { Expr::Or(vec![not(exists(k, native)), m]) } else { m })
}

fn matcher(m: &Matcher) -> Result<Expr, LogqlError> {
    let k = key(&m.name);
    let native = format!("labels.{}", m.name);
    Ok(match m.op {
        MatchOp::Eq => text_eq(&k, &native, &m.value)?,
        MatchOp::Ne => not(text_eq(&k, &native, &m.value)?),
        MatchOp::Re => text_re(&k, &native, &m.value)?,
        MatchOp::Nre => not(text_re(&k, &native, &m.value)?),
    })
}

/// `|= "text"`: the raw line contains `text` (case-sensitive). The words the text holds
/// whole (not cut at either end) must be message tokens, which the index answers; the
/// substring itself is checked on those candidates.
fn contains(text: &str) -> Result<Expr, LogqlError> {
    if text.is_empty() {
        return Ok(Expr::All);
    }
    let mut parts = Vec::new();
    // Tokens of the text with a non-token character on both sides inside it.
    let words = tokens(text);
    let first_cut = text.chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_');
    let last_cut = text.chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_');
    let lo = usize::from(first_cut);
    let hi = words.len().saturating_sub(usize::from(last_cut));
    for w in words.iter().take(hi).skip(lo) {
        parts.push(Expr::Term(Term::Word(w.clone())));
    }
    parts.push(Expr::Term(Term::Field { key: "message".into(), op: ValueOp::Regex(regex(&regex::escape(text))?) }));
    Ok(if parts.len() == 1 { parts.pop().unwrap_or(Expr::All) } else { Expr::And(parts) })
}

fn line(op: LineOp, value: &str) -> Result<Expr, LogqlError> {
    let re = |v: &str| -> Result<Expr, LogqlError> { Ok(Expr::Term(Term::Field { key: "message".into(), op: ValueOp::Regex(regex(v)?) })) };
    Ok(match op {
        LineOp::Contains => contains(value)?,
        LineOp::NotContains if value.is_empty() => nothing(),
        LineOp::NotContains => not(re(&regex::escape(value))?),
        LineOp::Matches => re(value)?,
        LineOp::NotMatches => not(re(value)?),
    })
}

fn number_eq(native: &str, n: f64) -> Expr {
    Expr::And(vec![
        Expr::Term(Term::Field { key: native.into(), op: ValueOp::Cmp(NativeCmp::Ge, n) }),
        Expr::Term(Term::Field { key: native.into(), op: ValueOp::Cmp(NativeCmp::Le, n) }),
    ])
}

/// `key=value` in a logfmt line, the value bare or quoted.
fn logfmt_pair(name: &str, value_re: &str) -> Result<Expr, LogqlError> {
    let k = regex::escape(name);
    let re = format!(r#"(?:^|\s){k}=(?:"(?:{value_re})"|(?:{value_re}))(?:\s|$)"#);
    Ok(Expr::Term(Term::Field { key: "message".into(), op: ValueOp::Regex(regex(&re)?) }))
}

fn label_filter(f: &LabelFilter, logfmt: bool) -> Result<Expr, LogqlError> {
    Ok(match f {
        LabelFilter::And(a, b) => Expr::And(vec![label_filter(a, logfmt)?, label_filter(b, logfmt)?]),
        LabelFilter::Or(a, b) => Expr::Or(vec![label_filter(a, logfmt)?, label_filter(b, logfmt)?]),
        LabelFilter::Text { name, op, value } => {
            let k = key(name);
            let native = name.as_str();
            // After `| logfmt`, a plain line's pairs count as labels too.
            let from_line = |value_re: &str| -> Result<Option<Expr>, LogqlError> {
                Ok(if logfmt && matches!(k, Key::Label(_)) && !value.is_empty() { Some(logfmt_pair(name, value_re)?) } else { None })
            };
            let either = |a: Expr, b: Option<Expr>| match b {
                Some(b) => Expr::Or(vec![a, b]),
                None => a,
            };
            match op {
                CmpOp::Eq => either(text_eq(&k, native, value)?, from_line(&regex::escape(value))?),
                CmpOp::Ne => not(either(text_eq(&k, native, value)?, from_line(&regex::escape(value))?)),
                CmpOp::Re => either(text_re(&k, native, value)?, from_line(value)?),
                CmpOp::Nre => not(either(text_re(&k, native, value)?, from_line(value)?)),
                _ => return Err(LogqlError::Unsupported(format!("comparing label {name} with a string by order"))),
            }
        }
        LabelFilter::Number { name, op, value } => {
            if logfmt {
                return Err(LogqlError::Unsupported(format!("a numeric filter on `{name}` after `| logfmt`: filter with a string or a regex")));
            }
            let native = group_key(name);
            let cmp = |c| Expr::Term(Term::Field { key: native.clone(), op: ValueOp::Cmp(c, *value) });
            match op {
                CmpOp::Eq => number_eq(&native, *value),
                CmpOp::Ne => not(number_eq(&native, *value)),
                CmpOp::Gt => cmp(NativeCmp::Gt),
                CmpOp::Ge => cmp(NativeCmp::Ge),
                CmpOp::Lt => cmp(NativeCmp::Lt),
                CmpOp::Le => cmp(NativeCmp::Le),
                CmpOp::Re | CmpOp::Nre => return Err(LogqlError::Syntax { col: 1, message: format!("a regex match on {name} needs a string") }),
            }
        }
    })
}

/// The native query for a log query's selector and filters.
pub fn compile(q: &LogQuery) -> Result<Expr, LogqlError> {
    let mut parts = Vec::new();
    for m in &q.selector {
        parts.push(matcher(m)?);
    }
    let mut logfmt = false;
    for s in &q.stages {
        match s {
            Stage::Line { op, value } => parts.push(line(*op, value)?),
            Stage::Json | Stage::Drop(_) | Stage::Unwrap(_) => {}
            Stage::Logfmt => logfmt = true,
            Stage::Labels(f) => parts.push(label_filter(f, logfmt)?),
        }
    }
    if !q.selector.iter().any(|m| match m.op {
        MatchOp::Eq => !m.value.is_empty(),
        MatchOp::Re => !anchored(&m.value).map(|r| r.is_match("")).unwrap_or(true),
        _ => false,
    }) {
        // Loki's own rule: a selector must name something.
        return Err(LogqlError::Syntax { col: 1, message: "queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will".into() });
    }
    let parts: Vec<Expr> = parts
        .into_iter()
        .flat_map(|p| match p {
            Expr::And(xs) => xs,
            Expr::All => vec![],
            other => vec![other],
        })
        .collect();
    Ok(match parts.len() {
        0 => Expr::All,
        1 => parts.into_iter().next().unwrap_or(Expr::All),
        _ => Expr::And(parts),
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;
    use gossamer_schemas::Event;

    fn native(q: &str) -> String {
        let Query::Logs(l) = parse(q).unwrap() else { panic!() };
        let e = compile(&l).unwrap();
        let text = e.to_string();
        // What is sent to the shards parses back.
        gossamer_query::parse(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
        text
    }

    fn event(stream: &str, level: &str, labels: &[(&str, &str)], message: &str) -> Event {
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::now_v7(), "ts": 1, "stream": stream, "level": level, "message": message, "fields": {},
            "labels": labels.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect::<serde_json::Map<_, _>>(),
        }))
        .unwrap();
        e.fields = serde_json::json!({"status": 503, "route": "/pay"}).as_object().cloned().unwrap_or_default();
        e
    }

    fn hits(q: &str, e: &Event) -> bool {
        gossamer_query::parse(&native(q)).unwrap().matches(e)
    }

    #[test]
    fn selectors_use_the_index_terms() {
        assert_eq!(native(r#"{stream="loghub.apache"}"#), "stream:loghub.apache");
        assert_eq!(native(r#"{app="web", level="WARNING"}"#), "(labels.app:web level:warn)");
        assert_eq!(native(r#"{stream="a"} |= "connection reset by" "#), r#"(stream:a reset message:~"connection reset by")"#);
    }

    #[test]
    fn compiled_queries_match_as_loki_does() {
        let e = event("pay.api", "error", &[("app", "web"), ("env", "prod")], r#"GET /pay status=503 took="12ms" Connection reset"#);
        assert!(hits(r#"{app="web"}"#, &e));
        assert!(hits(r#"{app=~"w.b", env!="dev"}"#, &e));
        assert!(!hits(r#"{app=~"w"}"#, &e), "label regexes are anchored");
        assert!(hits(r#"{stream=~"pay\\..*"}"#, &e));
        assert!(hits(r#"{app="web", missing=""}"#, &e));
        assert!(!hits(r#"{app="web", env=""}"#, &e));
        assert!(hits(r#"{app="web"} |= "onnection res""#, &e), "line filters are substrings");
        assert!(!hits(r#"{app="web"} |= "connection""#, &e), "and case-sensitive");
        assert!(hits(r#"{app="web"} |~ "(?i)connection" != "timeout""#, &e));
        assert!(!hits(r#"{app="web"} !~ "status=5\\d\\d""#, &e));
        assert!(hits(r#"{app="web"} | json | status >= 500 | route="/pay""#, &e));
        assert!(!hits(r#"{app="web"} | json | status < 500"#, &e));
        assert!(hits(r#"{app="web"} | json | status == 503 or status == 404"#, &e));
        assert!(hits(r#"{app="web"} | logfmt | status="503" | took=~"1.ms""#, &e));
        assert!(!hits(r#"{app="web"} | logfmt | status="50""#, &e));
        assert!(hits(r#"{app="web"} | __error__="" | level="error""#, &e));
        assert!(hits(r#"{level=~"err.*", detected_level!="info"}"#, &e));
    }

    #[test]
    fn selectors_must_name_something() {
        let Query::Logs(l) = parse(r#"{app=~".*"}"#).unwrap() else { panic!() };
        assert!(compile(&l).is_err());
        let Query::Logs(l) = parse(r#"{app!="x"}"#).unwrap() else { panic!() };
        assert!(compile(&l).is_err());
    }
}
