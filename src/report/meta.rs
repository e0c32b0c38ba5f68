//! Reading a component's resolved metadata: keys match case-insensitively
//! (as Dapr's), values are trimmed, and problems name `spec.metadata.<key>`.

use std::collections::BTreeMap;

use super::doc::DocCtx;
use crate::util::parse_go_bool;

/// The value of `key`, trimmed.
pub fn lookup(metadata: &BTreeMap<String, String>, key: &str) -> Option<String> {
    metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim().to_owned())
}

/// The field path of a metadata key, for problems.
pub fn field(key: &str) -> String {
    format!("spec.metadata.{key}")
}

/// Reports each key of `unsupported` that is set, with its reason.
pub fn reject_unsupported(
    ctx: &mut DocCtx<'_>,
    metadata: &BTreeMap<String, String>,
    unsupported: &[(&str, &str)],
    broker: &str,
) {
    for (key, why) in unsupported {
        if lookup(metadata, key).is_some() {
            ctx.problem(
                field(key),
                format!("Dapr's {broker} key {key} is not supported by Perch: {why}"),
            );
        }
    }
}

/// A boolean key (Go's spellings), `default` when unset.
pub fn flag(
    ctx: &mut DocCtx<'_>,
    metadata: &BTreeMap<String, String>,
    key: &str,
    default: bool,
) -> bool {
    match lookup(metadata, key) {
        None => default,
        Some(v) => parse_go_bool(&v).unwrap_or_else(|| {
            ctx.problem(field(key), format!("must be true or false, got {v:?}"));
            default
        }),
    }
}
