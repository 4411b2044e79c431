//! A LogQL parser for the subset the Loki door answers. What it does not know it refuses
//! with an error naming the part (`unsupported LogQL: ...`), never guessing.

use super::ast::*;

/// Why a query was refused: it does not parse, or it uses LogQL outside the subset.
#[derive(Debug, Clone, PartialEq)]
pub enum LogqlError {
    Syntax { col: usize, message: String },
    Unsupported(String),
}

impl std::fmt::Display for LogqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Loki's own wording, which Grafana shows as it is.
            LogqlError::Syntax { col, message } => write!(f, "parse error at line 1, col {col}: syntax error: {message}"),
            LogqlError::Unsupported(what) => write!(f, "unsupported LogQL: {what} (Gossamer's Loki API answers a subset of LogQL; see the README)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    /// A duration in nanoseconds (`5m`, `1h30m`, `250ms`).
    Duration(i64),
    /// A byte size (`10KB`, `1MiB`).
    Bytes(f64),
    Punct(&'static str),
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "{s}"),
            Tok::Str(s) => write!(f, "{s:?}"),
            Tok::Num(n) => write!(f, "{n}"),
            Tok::Duration(d) => write!(f, "{d}ns"),
            Tok::Bytes(b) => write!(f, "{b}B"),
            Tok::Punct(p) => write!(f, "{p}"),
        }
    }
}

const PUNCTS: [&str; 25] = [
    "|=", "|~", "!=", "!~", "=~", "==", ">=", "<=", "|", "=", ">", "<", "{", "}", "(", ")", "[", "]", ",", "+", "-", "*", "/", "%", "^",
];

fn syntax<T>(col: usize, message: impl Into<String>) -> Result<T, LogqlError> {
    Err(LogqlError::Syntax { col, message: message.into() })
}

fn unsupported<T>(what: impl Into<String>) -> Result<T, LogqlError> {
    Err(LogqlError::Unsupported(what.into()))
}

/// A duration such as `5m`, `1h30m`, `1.5s` in nanoseconds.
pub fn duration_ns(text: &str) -> Option<i64> {
    let mut total: f64 = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86400e9,
            "w" => 604800e9,
            "y" => 365.0 * 86400e9,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    (total.is_finite() && total < i64::MAX as f64).then_some(total as i64)
}

fn bytes_of(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let n: f64 = text[..split].parse().ok()?;
    let mult = match text[split..].to_ascii_uppercase().as_str() {
        "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * mult)
}

fn lex(q: &str) -> Result<Vec<(Tok, usize)>, LogqlError> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return syntax(col, "unterminated string"),
                    Some('"') => break,
                    Some('\\') => {
                        i += 1;
                        match chars.get(i) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some(&o) => s.push(o),
                            None => return syntax(col, "unterminated string"),
                        }
                    }
                    Some(&o) => s.push(o),
                }
                i += 1;
            }
            i += 1;
            out.push((Tok::Str(s), col));
            continue;
        }
        if c == '`' {
            let end = chars[i + 1..].iter().position(|&c| c == '`').ok_or(LogqlError::Syntax { col, message: "unterminated raw string".into() })?;
            out.push((Tok::Str(chars[i + 1..i + 1 + end].iter().collect()), col));
            i += end + 2;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == 'µ') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let tok = if let Ok(n) = text.parse::<f64>() {
                Tok::Num(n)
            } else if let Some(d) = duration_ns(&text) {
                Tok::Duration(d)
            } else if let Some(b) = bytes_of(&text) {
                Tok::Bytes(b)
            } else {
                return syntax(col, format!("unexpected {text:?}: not a number, duration or byte size"));
            };
            out.push((tok, col));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), col));
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match PUNCTS.iter().find(|p| rest.starts_with(**p)) {
            Some(p) => {
                out.push((Tok::Punct(p), col));
                i += p.chars().count();
            }
            None => return syntax(col, format!("unexpected character {c:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
    end_col: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(t, _)| t)
    }

    fn peek2(&self) -> Option<&Tok> {
        self.toks.get(self.at + 1).map(|(t, _)| t)
    }

    fn col(&self) -> usize {
        self.toks.get(self.at).map(|(_, c)| *c).unwrap_or(self.end_col)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        t
    }

    fn is(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Tok::Punct(q)) if *q == p)
    }

    fn is_ident(&self, name: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s == name)
    }

    fn unexpected<T>(&self, wanted: &str) -> Result<T, LogqlError> {
        match self.peek() {
            Some(t) => syntax(self.col(), format!("unexpected {t}, expecting {wanted}")),
            None => syntax(self.col(), format!("unexpected end of query, expecting {wanted}")),
        }
    }

    fn expect(&mut self, p: &str) -> Result<(), LogqlError> {
        if self.is(p) {
            self.at += 1;
            Ok(())
        } else {
            self.unexpected(&format!("'{p}'"))
        }
    }

    fn ident(&mut self, wanted: &str) -> Result<String, LogqlError> {
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            _ => self.unexpected(wanted),
        }
    }

    fn string(&mut self) -> Result<String, LogqlError> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            _ => self.unexpected("a string"),
        }
    }

    fn number(&mut self) -> Result<f64, LogqlError> {
        let neg = if self.is("-") {
            self.at += 1;
            true
        } else {
            false
        };
        match self.peek() {
            Some(Tok::Num(n)) => {
                let n = *n;
                self.at += 1;
                Ok(if neg { -n } else { n })
            }
            _ => self.unexpected("a number"),
        }
    }

    fn query(&mut self) -> Result<Query, LogqlError> {
        if self.is("{") {
            let q = self.log_query()?;
            if self.peek().is_some() {
                return self.unexpected("'|' or the end of the query");
            }
            return Ok(Query::Logs(q));
        }
        let m = self.expr(0)?;
        if self.peek().is_some() {
            return self.unexpected("an operator or the end of the query");
        }
        Ok(Query::Metric(m))
    }

    fn binop(&self) -> Option<BinOp> {
        Some(match self.peek()? {
            Tok::Punct("+") => BinOp::Add,
            Tok::Punct("-") => BinOp::Sub,
            Tok::Punct("*") => BinOp::Mul,
            Tok::Punct("/") => BinOp::Div,
            Tok::Punct("%") => BinOp::Mod,
            Tok::Punct("^") => BinOp::Pow,
            Tok::Punct("==") => BinOp::Eq,
            Tok::Punct("!=") => BinOp::Ne,
            Tok::Punct(">") => BinOp::Gt,
            Tok::Punct(">=") => BinOp::Ge,
            Tok::Punct("<") => BinOp::Lt,
            Tok::Punct("<=") => BinOp::Le,
            Tok::Ident(s) if s == "or" || s == "and" || s == "unless" => return None,
            _ => return None,
        })
    }

    /// Precedence climbing over the binary operators (`^` binds right).
    fn expr(&mut self, min: u8) -> Result<Metric, LogqlError> {
        let mut lhs = self.unary()?;
        loop {
            if let Some(Tok::Ident(s)) = self.peek() {
                if s == "or" || s == "and" || s == "unless" {
                    return unsupported(format!("the set operator `{s}`"));
                }
            }
            let Some(op) = self.binop() else { break };
            let prec = op.precedence();
            if prec < min {
                break;
            }
            self.at += 1;
            let keep_bool = if self.is_ident("bool") {
                self.at += 1;
                true
            } else {
                false
            };
            if self.is_ident("on") || self.is_ident("ignoring") || self.is_ident("group_left") || self.is_ident("group_right") {
                return unsupported("vector matching (`on`, `ignoring`, `group_left`, `group_right`)");
            }
            let next_min = if op == BinOp::Pow { prec } else { prec + 1 };
            let rhs = self.expr(next_min)?;
            lhs = Metric::Binary { op, keep_bool, lhs: Box::new(lhs), rhs: Box::new(rhs) };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Metric, LogqlError> {
        if self.is("-") {
            if let Some(Tok::Num(_)) = self.peek2() {
                return Ok(Metric::Scalar(self.number()?));
            }
            self.at += 1;
            let inner = self.unary()?;
            return Ok(Metric::Binary { op: BinOp::Mul, keep_bool: false, lhs: Box::new(Metric::Scalar(-1.0)), rhs: Box::new(inner) });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Metric, LogqlError> {
        let col = self.col();
        match self.peek().cloned() {
            Some(Tok::Punct("(")) => {
                self.at += 1;
                let m = self.expr(0)?;
                self.expect(")")?;
                Ok(m)
            }
            Some(Tok::Num(n)) => {
                self.at += 1;
                Ok(Metric::Scalar(n))
            }
            Some(Tok::Punct("{")) => syntax(col, "a log query is not a metric: wrap it in a range function such as count_over_time({...}[5m])"),
            Some(Tok::Ident(name)) => {
                self.at += 1;
                if name == "vector" {
                    self.expect("(")?;
                    let n = self.number()?;
                    self.expect(")")?;
                    return Ok(Metric::Vector(n));
                }
                if let Some(func) = RangeFn::from_name(&name) {
                    return self.range_fn(func);
                }
                if let Some(op) = AggOp::from_name(&name) {
                    return self.agg(op);
                }
                match name.as_str() {
                    "first_over_time" | "last_over_time" | "stddev_over_time" | "stdvar_over_time" | "absent_over_time" | "stddev" | "stdvar"
                    | "sort" | "sort_desc" | "label_replace" | "label_join" | "scalar" | "sum_over_time_by" => unsupported(format!("the function `{name}`")),
                    _ => syntax(col, format!("unexpected {name}")),
                }
            }
            _ => self.unexpected("a metric expression"),
        }
    }

    fn grouping(&mut self) -> Result<Option<Grouping>, LogqlError> {
        let without = if self.is_ident("by") {
            false
        } else if self.is_ident("without") {
            true
        } else {
            return Ok(None);
        };
        self.at += 1;
        self.expect("(")?;
        let mut labels = Vec::new();
        while !self.is(")") {
            labels.push(self.ident("a label name")?);
            if !self.is(")") {
                self.expect(",")?;
            }
        }
        self.at += 1;
        Ok(Some(Grouping { without, labels }))
    }

    fn range_fn(&mut self, func: RangeFn) -> Result<Metric, LogqlError> {
        self.expect("(")?;
        let param = if func == RangeFn::QuantileOverTime {
            let q = self.number()?;
            self.expect(",")?;
            Some(q)
        } else {
            None
        };
        let paren = self.is("(");
        if paren {
            self.at += 1;
        }
        let query = self.log_query()?;
        if paren {
            self.expect(")")?;
        }
        self.expect("[")?;
        let range_ns = match self.next() {
            Some(Tok::Duration(d)) if d > 0 => d,
            _ => {
                self.at -= 1;
                return self.unexpected("a duration such as 5m");
            }
        };
        self.expect("]")?;
        if self.is_ident("offset") {
            return unsupported("`offset`");
        }
        self.expect(")")?;
        let grouping = self.grouping()?;
        match (func.unwraps(), query.unwrap()) {
            (true, None) => return syntax(self.col(), format!("{func:?} needs `| unwrap <label>` before the range").replace("OverTime", "_over_time").to_lowercase()),
            (false, Some(_)) if func != RangeFn::Rate => return unsupported("`| unwrap` with a function that counts lines or bytes"),
            (false, Some(_)) => return unsupported("rate over an unwrapped value"),
            _ => {}
        }
        if grouping.is_some() && !func.unwraps() {
            return syntax(self.col(), "grouping is only allowed after an unwrapped range function");
        }
        Ok(Metric::Range { func, param, query, range_ns, grouping })
    }

    fn agg(&mut self, op: AggOp) -> Result<Metric, LogqlError> {
        let mut grouping = self.grouping()?;
        self.expect("(")?;
        let param = if matches!(op, AggOp::Topk | AggOp::Bottomk) {
            let k = self.number()?;
            self.expect(",")?;
            Some(k)
        } else {
            None
        };
        let inner = self.expr(0)?;
        self.expect(")")?;
        if grouping.is_none() {
            grouping = self.grouping()?;
        }
        Ok(Metric::Agg { op, param, grouping, inner: Box::new(inner) })
    }

    fn log_query(&mut self) -> Result<LogQuery, LogqlError> {
        self.expect("{")?;
        let mut selector = Vec::new();
        while !self.is("}") {
            let name = self.ident("a label name")?;
            let op = match self.next() {
                Some(Tok::Punct("=")) => MatchOp::Eq,
                Some(Tok::Punct("!=")) => MatchOp::Ne,
                Some(Tok::Punct("=~")) => MatchOp::Re,
                Some(Tok::Punct("!~")) => MatchOp::Nre,
                _ => {
                    self.at -= 1;
                    return self.unexpected("=, !=, =~ or !~");
                }
            };
            let value = self.string()?;
            selector.push(Matcher { name, op, value });
            if !self.is("}") {
                self.expect(",")?;
            }
        }
        self.at += 1;
        if selector.is_empty() {
            return syntax(self.col(), "queries require at least one matcher");
        }
        let mut stages = Vec::new();
        loop {
            let line = match self.peek() {
                Some(Tok::Punct("|=")) => Some(LineOp::Contains),
                Some(Tok::Punct("!=")) => Some(LineOp::NotContains),
                Some(Tok::Punct("|~")) => Some(LineOp::Matches),
                Some(Tok::Punct("!~")) => Some(LineOp::NotMatches),
                _ => None,
            };
            if let Some(op) = line {
                self.at += 1;
                if self.is_ident("ip") {
                    return unsupported("the `ip()` line filter");
                }
                let value = self.string()?;
                stages.push(Stage::Line { op, value });
                // `|= "a" or "b"`
                if self.is_ident("or") {
                    return unsupported("`or` between line filters");
                }
                continue;
            }
            if !self.is("|") {
                break;
            }
            self.at += 1;
            let col = self.col();
            match self.peek().cloned() {
                Some(Tok::Ident(name)) if matches!(self.peek2(), Some(Tok::Punct(p)) if ["=", "!=", "=~", "!~", "==", ">", ">=", "<", "<="].contains(p)) || name == "__error__" => {
                    let _ = name;
                    stages.push(Stage::Labels(self.label_filter()?));
                }
                Some(Tok::Punct("(")) => stages.push(Stage::Labels(self.label_filter()?)),
                Some(Tok::Ident(name)) => {
                    self.at += 1;
                    match name.as_str() {
                        "json" | "logfmt" => {
                            if matches!(self.peek(), Some(Tok::Ident(_)) | Some(Tok::Punct("-"))) {
                                return unsupported(format!("`| {name}` with parameters or flags"));
                            }
                            stages.push(if name == "json" { Stage::Json } else { Stage::Logfmt });
                        }
                        "unwrap" => {
                            let field = self.ident("a label name after unwrap")?;
                            if self.is("(") {
                                return unsupported(format!("`| unwrap {field}(...)`"));
                            }
                            stages.push(Stage::Unwrap(field));
                        }
                        "drop" => {
                            let mut names = vec![self.ident("a label name after drop")?];
                            while self.is(",") {
                                self.at += 1;
                                names.push(self.ident("a label name")?);
                            }
                            if self.is("=") || self.is("=~") {
                                return unsupported("`| drop` with a matcher");
                            }
                            stages.push(Stage::Drop(names));
                        }
                        "line_format" | "label_format" | "pattern" | "regexp" | "unpack" | "keep" | "decolorize" | "distinct" => {
                            return unsupported(format!("`| {name}`"));
                        }
                        _ => return syntax(col, format!("unexpected {name} after '|'")),
                    }
                }
                _ => return self.unexpected("a parser, a label filter or unwrap after '|'"),
            }
        }
        Ok(LogQuery { selector, stages })
    }

    fn label_filter(&mut self) -> Result<LabelFilter, LogqlError> {
        let mut lhs = self.label_and()?;
        while self.is_ident("or") {
            self.at += 1;
            let rhs = self.label_and()?;
            lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_and(&mut self) -> Result<LabelFilter, LogqlError> {
        let mut lhs = self.label_atom()?;
        loop {
            if self.is_ident("and") || self.is(",") {
                self.at += 1;
            } else if !(matches!(self.peek(), Some(Tok::Ident(s)) if s != "or") || self.is("(")) {
                break;
            }
            let rhs = self.label_atom()?;
            lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_atom(&mut self) -> Result<LabelFilter, LogqlError> {
        if self.is("(") {
            self.at += 1;
            let f = self.label_filter()?;
            self.expect(")")?;
            return Ok(f);
        }
        let name = self.ident("a label name")?;
        let op = match self.next() {
            Some(Tok::Punct("=" | "==")) => CmpOp::Eq,
            Some(Tok::Punct("!=")) => CmpOp::Ne,
            Some(Tok::Punct("=~")) => CmpOp::Re,
            Some(Tok::Punct("!~")) => CmpOp::Nre,
            Some(Tok::Punct(">")) => CmpOp::Gt,
            Some(Tok::Punct(">=")) => CmpOp::Ge,
            Some(Tok::Punct("<")) => CmpOp::Lt,
            Some(Tok::Punct("<=")) => CmpOp::Le,
            _ => {
                self.at -= 1;
                return self.unexpected("a comparison");
            }
        };
        match self.next() {
            Some(Tok::Str(value)) => {
                if matches!(op, CmpOp::Gt | CmpOp::Ge | CmpOp::Lt | CmpOp::Le) {
                    return unsupported(format!("comparing label {name} with a string by order"));
                }
                Ok(LabelFilter::Text { name, op, value })
            }
            Some(Tok::Num(value)) | Some(Tok::Bytes(value)) => {
                if matches!(op, CmpOp::Re | CmpOp::Nre) {
                    return syntax(self.col(), "a regex match needs a string");
                }
                Ok(LabelFilter::Number { name, op, value })
            }
            Some(Tok::Duration(d)) => Ok(LabelFilter::Number { name, op, value: d as f64 / 1e9 }),
            Some(Tok::Punct("-")) => match self.next() {
                Some(Tok::Num(value)) => Ok(LabelFilter::Number { name, op, value: -value }),
                _ => {
                    self.at -= 1;
                    self.unexpected("a number")
                }
            },
            _ => {
                self.at -= 1;
                self.unexpected("a string or a number")
            }
        }
    }
}

/// Parses a LogQL query.
pub fn parse(q: &str) -> Result<Query, LogqlError> {
    let toks = lex(q)?;
    let mut p = Parser { toks, at: 0, end_col: q.chars().count() + 1 };
    if p.peek().is_none() {
        return syntax(1, "empty query");
    }
    p.query()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_queries_with_every_stage() {
        let Query::Logs(q) = parse(r#"{app="web", env!="dev", host=~"db-.*"} |= "error" != "timeout" |~ `5\d\d` | json | status >= 500 and method="GET" | drop __error__"#).unwrap() else {
            panic!("not a log query")
        };
        assert_eq!(q.selector.len(), 3);
        assert_eq!(q.selector[2], Matcher { name: "host".into(), op: MatchOp::Re, value: "db-.*".into() });
        assert_eq!(q.stages[0], Stage::Line { op: LineOp::Contains, value: "error".into() });
        assert_eq!(q.stages[1], Stage::Line { op: LineOp::NotContains, value: "timeout".into() });
        assert_eq!(q.stages[2], Stage::Line { op: LineOp::Matches, value: r"5\d\d".into() });
        assert_eq!(q.stages[3], Stage::Json);
        assert!(matches!(&q.stages[4], Stage::Labels(LabelFilter::And(_, _))));
        assert_eq!(q.stages[5], Stage::Drop(vec!["__error__".into()]));
    }

    #[test]
    fn metric_queries() {
        let Query::Metric(m) = parse(r#"sum by (level) (count_over_time({job="x"} | drop __error__ [1m]))"#).unwrap() else { panic!() };
        let Metric::Agg { op: AggOp::Sum, grouping: Some(g), inner, .. } = m else { panic!("{m:?}") };
        assert_eq!(g, Grouping { without: false, labels: vec!["level".into()] });
        assert!(matches!(*inner, Metric::Range { func: RangeFn::CountOverTime, range_ns: 60_000_000_000, .. }));

        let Query::Metric(m) = parse("vector(1)+vector(1)").unwrap() else { panic!() };
        assert_eq!(m, Metric::Binary { op: BinOp::Add, keep_bool: false, lhs: Box::new(Metric::Vector(1.0)), rhs: Box::new(Metric::Vector(1.0)) });

        let Query::Metric(m) = parse(r#"topk(3, sum(rate({a="b"}[5m])) by (host)) * 2 ^ 2"#).unwrap() else { panic!() };
        let Metric::Binary { op: BinOp::Mul, rhs, .. } = m else { panic!() };
        assert!(matches!(*rhs, Metric::Binary { op: BinOp::Pow, .. }));

        let Query::Metric(m) = parse(r#"quantile_over_time(0.95, {a="b"} | json | unwrap latency_ms [1h30m]) by (route)"#).unwrap() else { panic!() };
        assert!(matches!(m, Metric::Range { func: RangeFn::QuantileOverTime, param: Some(p), range_ns: 5_400_000_000_000, grouping: Some(_), .. } if p == 0.95));
    }

    #[test]
    fn errors_name_the_place_or_the_unsupported_part() {
        let e = parse(r#"{app="web""#).unwrap_err().to_string();
        assert!(e.starts_with("parse error at line 1, col 11"), "{e}");
        assert!(parse("{}").is_err());
        assert!(parse(r#"count_over_time({a="b"})"#).unwrap_err().to_string().contains("expecting '['"));
        for (q, part) in [
            (r#"{a="b"} | line_format "{{.x}}""#, "line_format"),
            (r#"{a="b"} | pattern "<ip> <_>""#, "pattern"),
            (r#"sum(rate({a="b"}[1m])) or vector(0)"#, "or"),
            (r#"rate({a="b"}[1m] offset 1h)"#, "offset"),
            (r#"stddev_over_time({a="b"} | unwrap x [1m])"#, "stddev_over_time"),
            (r#"rate({a="b"}[1m]) / on (x) rate({a="c"}[1m])"#, "vector matching"),
        ] {
            let e = parse(q).unwrap_err();
            assert!(matches!(&e, LogqlError::Unsupported(w) if w.contains(part)), "{q}: {e}");
        }
        assert!(parse(r#"sum_over_time({a="b"}[1m])"#).unwrap_err().to_string().contains("unwrap"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns("5m"), Some(300_000_000_000));
        assert_eq!(duration_ns("1h30m"), Some(5_400_000_000_000));
        assert_eq!(duration_ns("250ms"), Some(250_000_000));
        assert_eq!(duration_ns("1.5s"), Some(1_500_000_000));
        assert_eq!(duration_ns("5x"), None);
    }
}
