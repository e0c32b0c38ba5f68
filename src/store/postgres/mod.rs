//! `store.postgresql` on tokio-postgres with a deadpool pool.
//!
//! - **Schema**: the numbered files under `migrations/` (compiled in), with
//!   `{inbox}` replaced by the configured table, applied on first use under
//!   a transaction-scoped advisory lock, and recorded in
//!   `perch_schema_migrations`, so sidecars starting together are safe.
//! - **Batching**: concurrent claims (and finishes) are coalesced by a task
//!   into one statement over `UNNEST` arrays: one round trip for many keys.
//! - **Leases** live on the database clock (`now()`), and are renewed every
//!   third of the lease for the keys this sidecar holds.
//! - **Retention**: done and dead rows older than `retention` are deleted in
//!   batches of 5000 every `cleanupInterval`.
//! - **Health**: a `SELECT 1` every 2 s; while it fails, deliveries pause.

//!
//! Files: `pool` (connections and prepared statements), `migrate`
//! (schema), `inbox` (claim, finish, leases, purge SQL), `batcher` (the
//! claim/finish coalescing and how a batch's answer is split), `outbox`
//! (the publish outbox SQL), `upkeep` (health, lease renewal, purge).

mod batcher;
mod inbox;
mod migrate;
mod outbox;
mod pool;
mod upkeep;

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

use super::{Claim, Finish, Key, OutboxDepth, Pass, RelaySend, Store, StoreError};
use crate::message::{BoxFuture, Message};
use crate::store::config::{StoreComponent, StoreKind};
use batcher::{ClaimRequest, FinishRequest};

/// Run on every new connection. The statements are prepared once per
/// connection, and PostgreSQL plans a prepared statement once for good
/// (a "generic plan") after its first five runs: on a new inbox those runs
/// see an empty table, whose best plan is a sequential scan, so every later
/// claim and mark would scan the whole table, slower as it grows (measured:
/// 2.4k marks/s at 80 000 rows, PostgreSQL on a full core). Custom plans
/// are made for each run's arrays and the table as it is then, so the
/// primary key is used once the table is big enough to need it.
const CONNECTION_SETUP: &str = "SET plan_cache_mode = force_custom_plan";

/// The Postgres store.
pub struct PostgresStore {
    pg: Arc<Pg>,
    claims: mpsc::UnboundedSender<ClaimRequest>,
    finishes: mpsc::UnboundedSender<FinishRequest>,
}

/// What the store's parts share: the pool, the table names, this
/// sidecar's lease owner id, and the keys it holds.
struct Pg {
    name: String,
    pool: Pool,
    table: String,
    outbox: String,
    /// This sidecar's lease owner id (new on every start).
    owner_text: String,
    lease: Duration,
    retention: Duration,
    migrated: tokio::sync::Mutex<bool>,
    healthy: AtomicBool,
    /// Keys this sidecar holds a lease on (renewed in the background).
    held: Mutex<BTreeSet<Key>>,
}

impl PostgresStore {
    /// Creates the pool (no connection yet) and the background tasks.
    pub fn new(c: &StoreComponent) -> Result<Self, StoreError> {
        let StoreKind::Postgres {
            connection_string,
            inbox_table,
            outbox_table,
            max_connections,
            cleanup_interval,
        } = &c.kind
        else {
            return Err(StoreError("not a postgres store".into()));
        };
        let config = tokio_postgres::Config::from_str(connection_string)
            .map_err(|e| StoreError(format!("store {}: connectionString: {e}", c.name)))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(*max_connections)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
                Box::pin(async move {
                    // Only speed depends on it: a server without the setting
                    // (PostgreSQL before 12) still gets the connection.
                    if let Err(e) = client.batch_execute(CONNECTION_SETUP).await {
                        tracing::warn!(error = %e, "store connection: `{CONNECTION_SETUP}` failed; claims and marks may slow down as the inbox grows (PostgreSQL 12 or later has the setting)");
                    }
                    Ok(())
                })
            }))
            .build()
            .map_err(|e| StoreError(format!("store {}: pool: {e}", c.name)))?;
        let pg = Arc::new(Pg {
            name: c.name.clone(),
            pool,
            table: inbox_table.clone(),
            outbox: outbox_table.clone(),
            owner_text: uuid::Uuid::new_v4().to_string(),
            lease: c.lease,
            retention: c.retention,
            migrated: tokio::sync::Mutex::new(false),
            healthy: AtomicBool::new(true),
            held: Mutex::new(BTreeSet::new()),
        });
        let (claims, claim_rx) = mpsc::unbounded_channel();
        let (finishes, finish_rx) = mpsc::unbounded_channel();
        crate::util::spawn_watched(
            "store claims",
            batcher::claim_loop(Arc::downgrade(&pg), claim_rx),
        );
        crate::util::spawn_watched(
            "store marks",
            batcher::finish_loop(Arc::downgrade(&pg), finish_rx),
        );
        crate::util::spawn_watched(
            "store upkeep",
            upkeep::upkeep(Arc::downgrade(&pg), *cleanup_interval),
        );
        crate::util::spawn_watched("store lease renewal", upkeep::renew(Arc::downgrade(&pg)));
        Ok(Self {
            pg,
            claims,
            finishes,
        })
    }
}

impl Store for PostgresStore {
    fn claim(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<Vec<Claim>, StoreError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.claims
                .send((keys, tx))
                .map_err(|_| StoreError("store closed".into()))?;
            rx.await.map_err(|_| StoreError("store closed".into()))?
        })
    }

    fn finish(&self, keys: Vec<Key>, how: Finish) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.finishes
                .send((keys, batcher::Mark::Finish(how), tx))
                .map_err(|_| StoreError("store closed".into()))?;
            rx.await.map_err(|_| StoreError("store closed".into()))?
        })
    }

    fn started(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<(), StoreError>> {
        // Queued now, so a caller that does not wait can drop the future.
        let (tx, rx) = oneshot::channel();
        let sent = self.finishes.send((keys, batcher::Mark::Started, tx));
        Box::pin(async move {
            sent.map_err(|_| StoreError("store closed".into()))?;
            rx.await.map_err(|_| StoreError("store closed".into()))??;
            Ok(())
        })
    }

    fn release(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            {
                let mut held = self
                    .pg
                    .held
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for k in &keys {
                    held.remove(k);
                }
            }
            self.pg.set_leases(&keys, true).await
        })
    }

    fn release_held(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let keys: Vec<Key> = std::mem::take(
                &mut *self
                    .pg
                    .held
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
            .into_iter()
            .collect();
            self.pg.set_leases(&keys, true).await?;
            Ok(keys.len())
        })
    }

    fn purge(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { self.pg.purge().await })
    }

    fn outbox_put(
        &self,
        pubsub: &str,
        msgs: Vec<Message>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let pubsub = pubsub.to_owned();
        Box::pin(async move { self.pg.outbox_put(&pubsub, &msgs).await })
    }

    fn outbox_relay<'a>(
        &'a self,
        pubsub: &'a str,
        limit: usize,
        send: RelaySend<'a>,
    ) -> BoxFuture<'a, Result<Pass, StoreError>> {
        Box::pin(self.pg.outbox_relay(pubsub, limit, send))
    }

    fn outbox_depth(&self, pubsub: &str) -> BoxFuture<'_, Result<OutboxDepth, StoreError>> {
        let pubsub = pubsub.to_owned();
        Box::pin(async move { self.pg.outbox_depth(&pubsub).await })
    }

    fn health(&self) -> Result<(), StoreError> {
        if self.pg.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError(format!("store {}: unreachable", self.pg.name)))
        }
    }
}
