//! Connections: a pooled client with the schema in place, statements
//! prepared once per connection, and errors that mark the store unhealthy.

use std::sync::atomic::Ordering;

use super::migrate::migrate;
use super::Pg;
use crate::store::StoreError;

impl Pg {
    pub(super) fn error(&self, e: impl std::fmt::Display) -> StoreError {
        self.healthy.store(false, Ordering::Release);
        StoreError(format!("store {}: {e}", self.name))
    }

    /// Runs `sql` as a statement prepared once per connection (the cache is
    /// the pooled connection's): one round trip per call instead of a
    /// prepare and an execute.
    pub(super) async fn rows(
        &self,
        client: &deadpool_postgres::Client,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.error(e))?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| self.error(e))
    }

    /// A pooled connection with the schema in place.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        let client = self.pool.get().await.map_err(|e| self.error(e))?;
        let mut migrated = self.migrated.lock().await;
        if !*migrated {
            migrate(&client, &self.table, &self.outbox)
                .await
                .map_err(|e| self.error(format!("migrations: {e}")))?;
            *migrated = true;
        }
        Ok(client)
    }
}
