//! CEL expressions (a subscription's routing `match`, a circuit breaker's
//! `trip`), compiled in one place with the parser's first line as the
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
