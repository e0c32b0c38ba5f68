//! CEL expressions (a subscription's routing `match`, a circuit breaker's
//! `trip`, the injector's webhook `matchConditions` in tests), compiled in one place with the parser's first line as the
//! reason. A leaf: config checks expressions with it at load time, and the
//! delivery engine runs them.

pub use cel::Program;

/// Why an expression does not compile: the parser's first line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// Compiles one CEL expression.
pub fn compile(expr: &str) -> Result<Program, CompileError> {
    Program::compile(expr)
        .map_err(|e| CompileError(e.to_string().lines().next().unwrap_or_default().to_owned()))
}

/// A JSON value as CEL sees it; numbers are doubles, as in Dapr (write
/// `int(event.data.amount) > 100`).
pub fn json_to_cel(v: &serde_json::Value) -> cel::Value {
    use serde_json::Value;
    use std::sync::Arc;
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(m) => map_to_cel(m),
    }
}

/// A JSON object as a CEL map.
pub fn map_to_cel(m: &serde_json::Map<String, serde_json::Value>) -> cel::Value {
    let map: std::collections::HashMap<String, cel::Value> =
        m.iter().map(|(k, v)| (k.clone(), json_to_cel(v))).collect();
    cel::Value::from(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_or_names_the_first_line_of_the_reason() {
        assert!(compile("event.type == 'a'").is_ok());
        let err = compile("event.type ==").unwrap_err();
        assert!(!err.0.is_empty() && !err.0.contains('\n'), "{err:?}");
    }
}
