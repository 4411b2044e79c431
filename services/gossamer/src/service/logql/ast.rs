//! The part of LogQL the Loki door understands, parsed.

/// `=`, `!=`, `=~`, `!~` in a stream selector or a label filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    Nre,
}

/// `name="value"` in a stream selector.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

/// `|=`, `!=`, `|~`, `!~` before a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineOp {
    Contains,
    NotContains,
    Matches,
    NotMatches,
}

/// A comparison in a label filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Re,
    Nre,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LabelFilter {
    /// `name op "text"`.
    Text { name: String, op: CmpOp, value: String },
    /// `name op 12.5` (also a duration or byte size, as a number).
    Number { name: String, op: CmpOp, value: f64 },
    And(Box<LabelFilter>, Box<LabelFilter>),
    Or(Box<LabelFilter>, Box<LabelFilter>),
}

/// A stage after the selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Line { op: LineOp, value: String },
    /// `| json` (fields of JSON events are already fields).
    Json,
    /// `| logfmt`.
    Logfmt,
    Labels(LabelFilter),
    /// `| drop a, b`: labels left out of the answer.
    Drop(Vec<String>),
    /// `| unwrap name`: the number a range function reads.
    Unwrap(String),
}

/// A log query: `{selector} stages...`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogQuery {
    pub selector: Vec<Matcher>,
    pub stages: Vec<Stage>,
}

impl LogQuery {
    pub fn unwrap(&self) -> Option<&str> {
        self.stages.iter().find_map(|s| if let Stage::Unwrap(n) = s { Some(n.as_str()) } else { None })
    }

    pub fn dropped(&self) -> Vec<String> {
        self.stages.iter().filter_map(|s| if let Stage::Drop(n) = s { Some(n.clone()) } else { None }).flatten().collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFn {
    CountOverTime,
    Rate,
    BytesOverTime,
    BytesRate,
    SumOverTime,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    QuantileOverTime,
}

impl RangeFn {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "count_over_time" => Self::CountOverTime,
            "rate" => Self::Rate,
            "bytes_over_time" => Self::BytesOverTime,
            "bytes_rate" => Self::BytesRate,
            "sum_over_time" => Self::SumOverTime,
            "avg_over_time" => Self::AvgOverTime,
            "min_over_time" => Self::MinOverTime,
            "max_over_time" => Self::MaxOverTime,
            "quantile_over_time" => Self::QuantileOverTime,
            _ => return None,
        })
    }

    /// Reads an unwrapped number (and needs `| unwrap`).
    pub fn unwraps(self) -> bool {
        matches!(self, Self::SumOverTime | Self::AvgOverTime | Self::MinOverTime | Self::MaxOverTime | Self::QuantileOverTime)
    }

    /// Sums of its values over sub-ranges add up to its value over the whole range.
    pub fn additive(self) -> bool {
        matches!(self, Self::CountOverTime | Self::Rate | Self::BytesOverTime | Self::BytesRate | Self::SumOverTime)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Topk,
    Bottomk,
}

impl AggOp {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "sum" => Self::Sum,
            "avg" => Self::Avg,
            "min" => Self::Min,
            "max" => Self::Max,
            "count" => Self::Count,
            "topk" => Self::Topk,
            "bottomk" => Self::Bottomk,
            _ => return None,
        })
    }
}

/// `by (a, b)` or `without (a, b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    pub without: bool,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl BinOp {
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Ge | BinOp::Lt | BinOp::Le => 1,
            BinOp::Add | BinOp::Sub => 2,
            BinOp::Mul | BinOp::Div | BinOp::Mod => 3,
            BinOp::Pow => 4,
        }
    }

    pub fn comparison(self) -> bool {
        self.precedence() == 1
    }

    pub fn apply(self, a: f64, b: f64) -> f64 {
        let truth = |t: bool| if t { 1.0 } else { 0.0 };
        match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
            BinOp::Mod => a % b,
            BinOp::Pow => a.powf(b),
            BinOp::Eq => truth(a == b),
            BinOp::Ne => truth(a != b),
            BinOp::Gt => truth(a > b),
            BinOp::Ge => truth(a >= b),
            BinOp::Lt => truth(a < b),
            BinOp::Le => truth(a <= b),
        }
    }
}

/// A metric query.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    Range { func: RangeFn, param: Option<f64>, query: LogQuery, range_ns: i64, grouping: Option<Grouping> },
    Agg { op: AggOp, param: Option<f64>, grouping: Option<Grouping>, inner: Box<Metric> },
    Binary { op: BinOp, keep_bool: bool, lhs: Box<Metric>, rhs: Box<Metric> },
    /// `vector(n)`.
    Vector(f64),
    Scalar(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Logs(LogQuery),
    Metric(Metric),
}
