//! Routing with CEL (reference 2.4): rules in order, the first whose `match`
//! is true wins; a rule without a match always matches. The only variable is
//! `event`, the whole decoded CloudEvent (data included); JSON numbers are
//! doubles, as in Dapr, so write `int(event.data.amount) > 100` or compare
//! with `100.0`.

use cel::{Context, Program, Value as Cel};

use crate::cloudevents::Envelope;
use crate::config::Route;

/// Compiled rules of one subscription.
pub struct Router {
    /// (compiled match and its source, path); no match means always.
    rules: Vec<(Option<(Program, String)>, String)>,
}

/// Why a rule could not be compiled or evaluated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    /// The expression does not parse.
    #[error("match expression {expr:?} does not compile: {reason}")]
    Compile {
        /// The expression.
        expr: String,
        /// The parser's message.
        reason: String,
    },
    /// The expression failed or did not return a boolean.
    #[error("match expression {expr:?} failed: {reason}")]
    Eval {
        /// The expression.
        expr: String,
        /// What went wrong.
        reason: String,
    },
}

/// Compiles one match expression (config validation checks the same with
/// [`crate::expr::compile`]).
pub fn compile(expr: &str) -> Result<Program, RouteError> {
    crate::expr::compile(expr).map_err(|e| RouteError::Compile {
        expr: expr.to_owned(),
        reason: e.0,
    })
}

impl Router {
    /// Compiles every rule.
    pub fn new(rules: &[Route]) -> Result<Self, RouteError> {
        let rules = rules
            .iter()
            .map(|r| {
                let expr = r.match_expr.trim();
                let program = if expr.is_empty() {
                    None
                } else {
                    Some((compile(expr)?, expr.to_owned()))
                };
                Ok((program, r.path.clone()))
            })
            .collect::<Result<_, RouteError>>()?;
        Ok(Self { rules })
    }

    /// Whether any rule has a match expression (which reads the event).
    pub fn has_rules(&self) -> bool {
        self.rules.iter().any(|(program, _)| program.is_some())
    }

    /// The path for `event`, or `None` when no rule matches.
    pub fn route(&self, event: &Envelope) -> Result<Option<&str>, RouteError> {
        let mut ctx: Option<Context> = None;
        for (program, path) in &self.rules {
            let Some((program, source)) = program else {
                return Ok(Some(path));
            };
            let ctx = ctx.get_or_insert_with(|| {
                let mut c = Context::default();
                c.add_variable_from_value("event", crate::expr::map_to_cel(event));
                c
            });
            let expr = || source.clone();
            match program.execute(ctx) {
                Ok(Cel::Bool(true)) => return Ok(Some(path)),
                Ok(Cel::Bool(false)) => {}
                Ok(other) => {
                    return Err(RouteError::Eval {
                        expr: expr(),
                        reason: format!("returned {other:?}, not a boolean"),
                    })
                }
                Err(e) => {
                    return Err(RouteError::Eval {
                        expr: expr(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn rule(m: &str, p: &str) -> Route {
        Route {
            match_expr: m.into(),
            path: p.into(),
        }
    }

    fn event(v: Value) -> Envelope {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn first_true_rule_wins_then_default() {
        let r = Router::new(&[
            rule(r#"event.type == "widget""#, "/widgets"),
            rule("int(event.data.amount) > 100", "/big"),
            rule(r#"event.data.name.startsWith("ga")"#, "/gadgets"),
            rule("", "/default"),
        ])
        .unwrap();
        let route = |v| r.route(&event(v)).unwrap().map(str::to_owned);
        assert_eq!(
            route(json!({"type": "widget", "data": {"amount": 500}})).as_deref(),
            Some("/widgets")
        );
        assert_eq!(
            route(json!({"type": "x", "data": {"amount": 500, "name": "gadget"}})).as_deref(),
            Some("/big")
        );
        assert_eq!(
            route(json!({"type": "x", "data": {"amount": 5, "name": "gadget"}})).as_deref(),
            Some("/gadgets")
        );
        assert_eq!(
            route(json!({"type": "x", "data": {"amount": 5, "name": "other"}})).as_deref(),
            Some("/default")
        );
    }

    #[test]
    fn no_match_without_default_is_none() {
        let r = Router::new(&[rule(r#"event.type == "a""#, "/a")]).unwrap();
        assert_eq!(r.route(&event(json!({"type": "b"}))).unwrap(), None);
    }

    #[test]
    fn non_boolean_and_bad_expressions_are_errors() {
        let r = Router::new(&[rule("event.type", "/a")]).unwrap();
        assert!(matches!(
            r.route(&event(json!({"type": "b"}))),
            Err(RouteError::Eval { .. })
        ));
        assert!(matches!(
            Router::new(&[rule("event.type ==", "/a")]),
            Err(RouteError::Compile { .. })
        ));
    }

    #[test]
    fn has_and_matches_work() {
        let r = Router::new(&[
            rule(
                r#"has(event.subject) && event.subject.matches("^ord-[0-9]+$")"#,
                "/o",
            ),
            rule("", "/d"),
        ])
        .unwrap();
        assert_eq!(
            r.route(&event(json!({"subject": "ord-12"}))).unwrap(),
            Some("/o")
        );
        assert_eq!(r.route(&event(json!({"id": "1"}))).unwrap(), Some("/d"));
    }
}
