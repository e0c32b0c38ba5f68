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

/// How Perch treats a Dapr metadata key it does not implement (issue 18:
/// Dapr's documented YAML loads).
#[derive(Debug, Clone, Copy)]
pub enum DaprKey {
    /// Accepted whatever its value, with one warning at start-up saying
    /// what Perch does instead.
    Ignored(&'static str),
    /// Accepted without a word when off (`false`, `0` or empty: Dapr's
    /// default); on, it asks for something Perch does not do, which is an
    /// error giving this reason.
    OffOnly(&'static str),
}

/// What Perch does instead of a component's own retries.
pub const SIDECAR_RETRIES: &str = "the sidecar owns retries: the Resiliency policy's inbound retry (default 5 retries), then the dead-letter topic";

/// The component retry keys Dapr documents for Kafka and RabbitMQ alike.
pub const BACKOFF_KEYS: &[(&str, DaprKey)] = &[
    ("backOffPolicy", DaprKey::Ignored(SIDECAR_RETRIES)),
    ("backOffDuration", DaprKey::Ignored(SIDECAR_RETRIES)),
    ("backOffMaxRetries", DaprKey::Ignored(SIDECAR_RETRIES)),
    ("backOffInitialInterval", DaprKey::Ignored(SIDECAR_RETRIES)),
    ("backOffMaxInterval", DaprKey::Ignored(SIDECAR_RETRIES)),
    ("backOffMultiplier", DaprKey::Ignored(SIDECAR_RETRIES)),
    (
        "backOffRandomizationFactor",
        DaprKey::Ignored(SIDECAR_RETRIES),
    ),
    ("backOffMaxElapsedTime", DaprKey::Ignored(SIDECAR_RETRIES)),
];

/// Applies `table` to the keys set in `metadata`: warnings for ignored
/// keys, problems for features asked for that Perch does not have.
pub fn dapr_keys(
    ctx: &mut DocCtx<'_>,
    metadata: &BTreeMap<String, String>,
    table: &[(&str, DaprKey)],
    broker: &str,
) {
    for (key, how) in table {
        let Some(v) = lookup(metadata, key) else {
            continue;
        };
        match how {
            DaprKey::Ignored(instead) => ctx.warn(
                field(key),
                format!("Dapr's {broker} key {key} is ignored by Perch: {instead}"),
            ),
            DaprKey::OffOnly(why) => {
                let off = v.is_empty() || v == "0" || parse_go_bool(&v) == Some(false);
                if !off {
                    ctx.problem(
                        field(key),
                        format!("{v:?} asks for something Perch does not do: {why}"),
                    );
                }
            }
        }
    }
}

/// The valid key closest to `key` (edit distance at most a third of its
/// length, and at least 1 off), for "did you mean" in unknown-key errors.
pub fn did_you_mean<'k>(key: &str, valid: &[&'k str]) -> Option<&'k str> {
    let key = key.to_ascii_lowercase();
    valid
        .iter()
        .map(|v| (edit_distance(&key, &v.to_ascii_lowercase()), *v))
        .filter(|(d, _)| *d <= (key.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
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

/// A whole-number key from `min` to `max`, `None` when unset (or wrong,
/// with a problem naming the key and the range).
pub fn whole_number(
    ctx: &mut DocCtx<'_>,
    metadata: &BTreeMap<String, String>,
    key: &str,
    min: i64,
    max: i64,
) -> Option<i64> {
    let v = lookup(metadata, key).filter(|v| !v.is_empty())?;
    match v.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            ctx.problem(
                field(key),
                format!("must be a whole number from {min} to {max}, got {v:?}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_name_the_key_a_typo_meant() {
        let valid = [
            "deletedWhenUnused",
            "durable",
            "reconnectWaitSeconds",
            "maxLen",
        ];
        assert_eq!(
            did_you_mean("deleteWhenUnused", &valid),
            Some("deletedWhenUnused")
        );
        assert_eq!(did_you_mean("DURABEL", &valid), Some("durable"));
        assert_eq!(
            did_you_mean("reconectWaitSeconds", &valid),
            Some("reconnectWaitSeconds")
        );
        assert_eq!(did_you_mean("somethingElse", &valid), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
