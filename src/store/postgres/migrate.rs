//! The schema: numbered SQL files under `migrations/` (compiled in), with
//! `{inbox}` and `{outbox}` replaced by the configured tables, applied on
//! first use under a transaction-scoped advisory lock and recorded in
//! `perch_schema_migrations`, so sidecars starting together are safe.

/// The migrations, in order: (version, SQL with `{inbox}`).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../migrations/001_inbox.sql")),
    (2, include_str!("../../../migrations/002_outbox.sql")),
    (3, include_str!("../../../migrations/003_outbox_parked.sql")),
    (
        4,
        include_str!("../../../migrations/004_inbox_hot_marks.sql"),
    ),
];

/// Applies the migrations not yet recorded for `table`.
pub(super) async fn migrate(
    client: &deadpool_postgres::Client,
    table: &str,
    outbox: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS perch_schema_migrations (
                 inbox_table text NOT NULL, version integer NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (inbox_table, version))",
        )
        .await
        .or_else(|e| {
            // Two sidecars creating it at once: one wins, the other sees a
            // unique violation on the catalog; the table exists either way.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    let tx_sql = "BEGIN; SELECT pg_advisory_xact_lock(7352410001);";
    client.batch_execute(tx_sql).await?;
    let result = async {
        for (version, sql) in MIGRATIONS {
            let applied = client
                .query_opt(
                    "SELECT 1 FROM perch_schema_migrations WHERE inbox_table = $1 AND version = $2",
                    &[&table, version],
                )
                .await?
                .is_some();
            if !applied {
                client
                    .batch_execute(&sql.replace("{inbox}", table).replace("{outbox}", outbox))
                    .await?;
                client
                    .execute(
                        "INSERT INTO perch_schema_migrations (inbox_table, version) VALUES ($1, $2)",
                        &[&table, version],
                    )
                    .await?;
                tracing::info!(%table, version, "store migration applied");
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    match result {
        Ok(()) => client.batch_execute("COMMIT").await,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}
