//! The full-text functions `match(message, 'words')` (every word's tokens, anywhere)
//! and `phrase(message, 'two words')` (the tokens in a row). Pushed down they become
//! the native query's terms; evaluated by the engine (under an `OR`, say) they run that
//! same native query on each message, so both ways give the same answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use gossamer_schemas::text::tokens;
use gossamer_schemas::Event;

/// The native query for `match` or `phrase` of `text`; `None` when the text has no
/// token (nothing to look for).
pub fn native(function: &str, text: &str) -> Option<String> {
    let words = tokens(text);
    if words.is_empty() {
        return None;
    }
    Some(match function {
        "phrase" => format!("\"{}\"", words.join(" ")),
        _ => words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" "),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TextMatch {
    name: &'static str,
    signature: Signature,
}

/// `match(message, 'words')`.
pub fn match_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(TextMatch { name: "match", signature: Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Immutable) })
}

/// `phrase(message, 'two words')`.
pub fn phrase_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(TextMatch { name: "phrase", signature: Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Immutable) })
}

fn message_event(message: &str) -> Event {
    Event {
        id: uuid::Uuid::nil(),
        ts: 0,
        stream: String::new(),
        level: String::new(),
        message: message.to_string(),
        labels: BTreeMap::new(),
        fields: serde_json::Map::new(),
    }
}

impl ScalarUDFImpl for TextMatch {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [messages, text] = args.args.as_slice() else {
            return exec_err!("{}(message, 'text') takes two arguments", self.name);
        };
        let ColumnarValue::Scalar(ScalarValue::Utf8(Some(text))) = text else {
            return plan_err!("the text {}() looks for must be a string literal", self.name);
        };
        // No token: nothing to look for, so every message has it.
        let query = match native(self.name, text) {
            Some(q) => Some(gossamer_query::parse(&q).map_err(|e| datafusion::common::DataFusionError::Plan(e.to_string()))?),
            None => None,
        };
        let test = |m: Option<&str>| m.map(|m| query.as_ref().is_none_or(|q| q.matches(&message_event(m))));
        match messages {
            ColumnarValue::Scalar(ScalarValue::Utf8(m)) => Ok(ColumnarValue::Scalar(ScalarValue::Boolean(test(m.as_deref())))),
            ColumnarValue::Array(a) => {
                let strings = a.as_string::<i32>();
                let out: BooleanArray = (0..strings.len()).map(|i| test(strings.is_valid(i).then(|| strings.value(i)))).collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
            _ => exec_err!("{}() takes the message column", self.name),
        }
    }
}
