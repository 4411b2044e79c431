//! `approx_percentile(value, 0.95)`: a percentile from a DDSketch with 1% relative
//! accuracy, the sketch `/api/v1/aggregate` uses, so both give the same numbers.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility};
use datafusion::physical_expr::expressions::Literal;
use sketches_ddsketch::{Config, DDSketch};

#[derive(Debug, PartialEq, Eq, Hash)]
struct ApproxPercentile {
    signature: Signature,
}

/// The aggregate `approx_percentile(value, q)`, q in (0, 1).
pub fn approx_percentile_udaf() -> AggregateUDF {
    AggregateUDF::new_from_impl(ApproxPercentile {
        signature: Signature::exact(vec![DataType::Float64, DataType::Float64], Volatility::Immutable),
    })
}

impl AggregateUDFImpl for ApproxPercentile {
    fn name(&self) -> &str {
        "approx_percentile"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let q = args.exprs.get(1).and_then(|e| e.downcast_ref::<Literal>()).map(|l| l.value().clone());
        let q = match q {
            Some(ScalarValue::Float64(Some(q))) if q > 0.0 && q < 1.0 => q,
            Some(other) => return plan_err!("approx_percentile's rank must be a number between 0 and 1, not {other}"),
            None => return plan_err!("approx_percentile's rank must be a literal number between 0 and 1"),
        };
        Ok(Box::new(Sketch { q, sketch: DDSketch::new(Config::defaults()) }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(format!("{}[sketch]", args.name), DataType::Binary, true))])
    }
}

struct Sketch {
    q: f64,
    sketch: DDSketch,
}

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "approx_percentile({}) of {} values", self.q, self.sketch.count())
    }
}

impl Accumulator for Sketch {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(values) = values.first() else { return Ok(()) };
        let values = values.as_primitive::<Float64Type>();
        for v in values.iter().flatten() {
            if v.is_finite() {
                self.sketch.add(v);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        match self.sketch.quantile(self.q) {
            Ok(v) => Ok(ScalarValue::Float64(v)),
            Err(e) => exec_err!("approx_percentile: {e}"),
        }
    }

    fn size(&self) -> usize {
        // The sketch's buckets grow with the spread of the values, to a few KiB.
        std::mem::size_of_val(self) + 4096
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let bytes = rmp_serde::to_vec(&self.sketch).map_err(|e| datafusion::common::DataFusionError::Execution(e.to_string()))?;
        Ok(vec![ScalarValue::Binary(Some(bytes))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(states) = states.first() else { return Ok(()) };
        let states: &BinaryArray = states.as_binary();
        for i in 0..states.len() {
            if states.is_valid(i) {
                let other: DDSketch =
                    rmp_serde::from_slice(states.value(i)).map_err(|e| datafusion::common::DataFusionError::Execution(e.to_string()))?;
                self.sketch.merge(&other).map_err(|e| datafusion::common::DataFusionError::Execution(e.to_string()))?;
            }
        }
        Ok(())
    }
}
