//! A helper for CEL overloads written over [`cel::objects::Value`]s (pure, no I/O).

use cel::common::value::{CowVal, Val};
use cel::objects::Value;
use cel::ExecutionError;

/// An overload written over [`Value`]s: the arguments converted, the result converted back.
pub fn by_value<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
    f: impl FnOnce(&[Value]) -> Result<Value, ExecutionError>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let values = args
        .iter()
        .map(|a| Value::try_from(a.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let out: Box<dyn Val> = Box::<dyn Val>::try_from(f(&values)?)?;
    Ok(CowVal::Owned(out))
}
