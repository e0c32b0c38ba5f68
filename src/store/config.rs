//! Perch's store components: `store.postgresql` and `store.in-memory`,
//! named by a pub/sub component's `idempotencyStore`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::report::meta::{field, lookup};
use crate::report::DocCtx;
use crate::util::parse_go_duration;

/// Keys of `store.postgresql`.
pub const POSTGRES_KEYS: &[&str] = &[
    "connectionString",
    "inboxTable",
    "outboxTable",
    "retention",
    "leaseDuration",
    "maxConnections",
    "cleanupInterval",
];
/// Keys of `store.in-memory`.
pub const MEMORY_KEYS: &[&str] = &["maxEntries", "retention", "leaseDuration"];

/// Which store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// `store.postgresql`.
    Postgres {
        /// libpq-style connection string or URL.
        connection_string: String,
        /// Inbox table name (default `perch_inbox`).
        inbox_table: String,
        /// Outbox table name (default `perch_outbox`).
        outbox_table: String,
        /// Pool size (default 8).
        max_connections: usize,
        /// How often done rows past retention are deleted (default 1 m).
        cleanup_interval: Duration,
    },
    /// `store.in-memory`: bounded, for the demo and unit tests.
    Memory {
        /// Most keys kept (default 100 000); the oldest done keys go first.
        max_entries: usize,
    },
}

/// A loaded store component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreComponent {
    /// `metadata.name`.
    pub name: String,
    /// Backend and its settings.
    pub kind: StoreKind,
    /// How long `done` keys are kept (default 7 days).
    pub retention: Duration,
    /// How long a claim is held before another sidecar may take it over
    /// (default 5 m; renewed while the delivery runs).
    pub lease: Duration,
}

impl StoreComponent {
    /// The component's `spec.type`.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            StoreKind::Postgres { .. } => "store.postgresql",
            StoreKind::Memory { .. } => "store.in-memory",
        }
    }
}

/// Reads a store component's metadata.
pub fn read(
    ctx: &mut DocCtx<'_>,
    name: &str,
    type_name: &str,
    metadata: &BTreeMap<String, String>,
) -> Option<StoreComponent> {
    let before = ctx.problems.len();
    let get = |k: &str| lookup(metadata, k);
    let duration = |ctx: &mut DocCtx<'_>, key: &str, default: Duration| match get(key) {
        None => default,
        Some(v) => match parse_go_duration(&v) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                ctx.problem(field(key), "must be above zero");
                default
            }
            Err(e) => {
                ctx.problem(field(key), e);
                default
            }
        },
    };
    let count = |ctx: &mut DocCtx<'_>, key: &str, default: usize| match get(key) {
        None => default,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                ctx.problem(
                    field(key),
                    format!("must be a whole number above 0, got {v:?}"),
                );
                default
            }
        },
    };
    let retention = duration(ctx, "retention", Duration::from_secs(7 * 24 * 3600));
    let lease = duration(ctx, "leaseDuration", Duration::from_secs(300));
    let kind = if type_name == "store.postgresql" {
        let connection_string = get("connectionString").unwrap_or_else(|| {
            ctx.problem(
                field("connectionString"),
                "required (e.g. postgres://user@host/db)",
            );
            String::new()
        });
        let inbox_table = get("inboxTable").unwrap_or_else(|| "perch_inbox".into());
        let outbox_table = get("outboxTable").unwrap_or_else(|| "perch_outbox".into());
        let valid = |t: &str| {
            !t.is_empty()
                && t.len() <= 50
                && t.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !t.starts_with(|c: char| c.is_ascii_digit())
        };
        for (key, table) in [("inboxTable", &inbox_table), ("outboxTable", &outbox_table)] {
            if !valid(table) {
                ctx.problem(
                    field(key),
                    format!("must be a lower-case SQL identifier (a-z, 0-9, _), got {table:?}"),
                );
            }
        }
        StoreKind::Postgres {
            connection_string,
            inbox_table,
            outbox_table,
            max_connections: count(ctx, "maxConnections", 8),
            cleanup_interval: duration(ctx, "cleanupInterval", Duration::from_secs(60)),
        }
    } else {
        StoreKind::Memory {
            max_entries: count(ctx, "maxEntries", 100_000),
        }
    };
    (ctx.problems.len() == before).then(|| StoreComponent {
        name: name.to_owned(),
        kind,
        retention,
        lease,
    })
}
