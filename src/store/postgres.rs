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

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

use super::{Claim, Finish, Key, Store, StoreError};
use crate::broker::{BoxFuture, Message};
use crate::config::store::{StoreComponent, StoreKind};

/// The migrations, in order: (version, SQL with `{inbox}`).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/001_inbox.sql")),
    (2, include_str!("../../migrations/002_outbox.sql")),
];
/// Most keys in one statement.
const BATCH: usize = 512;

type ClaimRequest = (Vec<Key>, oneshot::Sender<Result<Vec<Claim>, StoreError>>);
type FinishRequest = (
    Vec<Key>,
    Finish,
    oneshot::Sender<Result<Vec<bool>, StoreError>>,
);

/// The Postgres store.
pub struct PostgresStore {
    shared: Arc<Shared>,
    claims: mpsc::UnboundedSender<ClaimRequest>,
    finishes: mpsc::UnboundedSender<FinishRequest>,
}

struct Shared {
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
            .build()
            .map_err(|e| StoreError(format!("store {}: pool: {e}", c.name)))?;
        let shared = Arc::new(Shared {
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
        tokio::spawn(claim_loop(Arc::downgrade(&shared), claim_rx));
        tokio::spawn(finish_loop(Arc::downgrade(&shared), finish_rx));
        tokio::spawn(upkeep(Arc::downgrade(&shared), *cleanup_interval));
        Ok(Self {
            shared,
            claims,
            finishes,
        })
    }
}

impl Shared {
    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        self.healthy.store(false, Ordering::Release);
        StoreError(format!("store {}: {e}", self.name))
    }

    /// Runs `sql` as a statement prepared once per connection (the cache is
    /// the pooled connection's): one round trip per call instead of a
    /// prepare and an execute.
    async fn rows(
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
    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
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

    async fn claim(&self, keys: &[Key]) -> Result<Vec<Claim>, StoreError> {
        let client = self.client().await?;
        // A key twice in one batch: the first claims, the others are busy.
        let mut unique: Vec<&Key> = Vec::new();
        let mut seen = BTreeSet::new();
        for k in keys {
            if seen.insert(k) {
                unique.push(k);
            }
        }
        let subs: Vec<&str> = unique.iter().map(|k| k.subscriber.as_str()).collect();
        let ids: Vec<&str> = unique.iter().map(|k| k.msg_key.as_str()).collect();
        let lease = self.lease.as_secs_f64();
        let t = &self.table;
        let claimed = self
            .rows(
                &client,
                &format!(
                    "INSERT INTO {t} AS i (subscriber, msg_key, state, lease_owner, lease_until)
                     SELECT s, k, 'in_progress', $3::text::uuid, now() + make_interval(secs => $4)
                       FROM UNNEST($1::text[], $2::text[]) AS u(s, k)
                     ON CONFLICT (subscriber, msg_key) DO UPDATE
                        SET lease_owner = EXCLUDED.lease_owner,
                            lease_until = EXCLUDED.lease_until,
                            attempts = i.attempts + 1
                      WHERE i.state = 'in_progress' AND i.lease_until < now()
                     RETURNING i.subscriber, i.msg_key, i.attempts"
                ),
                &[&subs, &ids, &self.owner_text, &lease],
            )
            .await?;
        let mut owned: HashMap<(String, String), i32> = claimed
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let mut states: HashMap<(String, String), String> = HashMap::new();
        if owned.len() < unique.len() {
            let rows = self
                .rows(
                    &client,
                    &format!(
                        "SELECT i.subscriber, i.msg_key, i.state FROM {t} i
                           JOIN UNNEST($1::text[], $2::text[]) AS u(s, k)
                             ON i.subscriber = u.s AND i.msg_key = u.k"
                    ),
                    &[&subs, &ids],
                )
                .await?;
            states = rows
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect();
        }
        self.healthy.store(true, Ordering::Release);
        let mut held = self.held.lock().expect("held lock");
        Ok(keys
            .iter()
            .map(|k| {
                let id = (k.subscriber.clone(), k.msg_key.clone());
                if let Some(attempts) = owned.remove(&id) {
                    held.insert(k.clone());
                    Claim::Owned {
                        attempts: attempts.max(1) as u32,
                    }
                } else {
                    match states.get(&id).map(String::as_str) {
                        Some("done" | "dead") => Claim::Done,
                        _ => Claim::Busy,
                    }
                }
            })
            .collect())
    }

    async fn finish(&self, keys: &[Key], how: Finish) -> Result<Vec<bool>, StoreError> {
        let client = self.client().await?;
        let subs: Vec<&str> = keys.iter().map(|k| k.subscriber.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.msg_key.as_str()).collect();
        let state = match how {
            Finish::Done => "done",
            Finish::Dead => "dead",
        };
        let t = &self.table;
        let rows = self
            .rows(
                &client,
                &format!(
                    "UPDATE {t} AS i SET state = $4, done_at = now()
                       FROM UNNEST($1::text[], $2::text[]) AS u(s, k)
                      WHERE i.subscriber = u.s AND i.msg_key = u.k
                        AND i.lease_owner = $3::text::uuid AND i.state = 'in_progress'
                     RETURNING i.subscriber, i.msg_key"
                ),
                &[&subs, &ids, &self.owner_text, &state],
            )
            .await?;
        self.healthy.store(true, Ordering::Release);
        let marked: BTreeSet<(String, String)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut held = self.held.lock().expect("held lock");
        Ok(keys
            .iter()
            .map(|k| {
                held.remove(k);
                marked.contains(&(k.subscriber.clone(), k.msg_key.clone()))
            })
            .collect())
    }

    /// Extends the lease of every key held, or ends it (`release`).
    async fn set_leases(&self, keys: &[Key], release: bool) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let subs: Vec<&str> = keys.iter().map(|k| k.subscriber.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.msg_key.as_str()).collect();
        let secs = if release {
            0.0
        } else {
            self.lease.as_secs_f64()
        };
        let t = &self.table;
        self.rows(
            &client,
            &format!(
                "UPDATE {t} AS i SET lease_until = now() + make_interval(secs => $4)
                       FROM UNNEST($1::text[], $2::text[]) AS u(s, k)
                      WHERE i.subscriber = u.s AND i.msg_key = u.k
                        AND i.lease_owner = $3::text::uuid AND i.state = 'in_progress'"
            ),
            &[&subs, &ids, &self.owner_text, &secs],
        )
        .await?;
        Ok(())
    }

    async fn purge(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let t = &self.table;
        let secs = self.retention.as_secs_f64();
        let mut total = 0;
        loop {
            let n = client
                .execute(
                    &format!(
                        "DELETE FROM {t} WHERE ctid IN (
                           SELECT ctid FROM {t}
                            WHERE state <> 'in_progress'
                              AND done_at < now() - make_interval(secs => $1)
                            LIMIT 5000)"
                    ),
                    &[&secs],
                )
                .await
                .map_err(|e| self.error(e))?;
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }
}

/// Applies the migrations not yet recorded for `table`.
async fn migrate(
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

/// Sends each of a batch's requests (`n` keys each, in order) its slice of
/// the batch's answers, or the batch's error.
fn answer<T: Clone>(
    result: &Result<Vec<T>, StoreError>,
    replies: impl Iterator<Item = (usize, oneshot::Sender<Result<Vec<T>, StoreError>>)>,
) {
    let mut offset = 0;
    for (n, reply) in replies {
        let part = result
            .as_ref()
            .map(|all| all[offset..offset + n].to_vec())
            .map_err(Clone::clone);
        offset += n;
        let _ = reply.send(part);
    }
}

/// Serves claim requests, many per statement.
async fn claim_loop(shared: Weak<Shared>, mut rx: mpsc::UnboundedReceiver<ClaimRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut n = batch[0].0.len();
        while n < BATCH {
            match rx.try_recv() {
                Ok(r) => {
                    n += r.0.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let Some(s) = shared.upgrade() else { return };
        let keys: Vec<Key> = batch.iter().flat_map(|(k, _)| k.iter().cloned()).collect();
        let result = s.claim(&keys).await;
        answer(
            &result,
            batch.into_iter().map(|(k, reply)| (k.len(), reply)),
        );
    }
}

/// Serves finish requests, many per statement (one per finish kind).
async fn finish_loop(shared: Weak<Shared>, mut rx: mpsc::UnboundedReceiver<FinishRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(s) = shared.upgrade() else { return };
        let (done, dead): (Vec<_>, Vec<_>) = batch.into_iter().partition(|r| r.1 == Finish::Done);
        for (how, group) in [(Finish::Done, done), (Finish::Dead, dead)] {
            if group.is_empty() {
                continue;
            }
            let keys: Vec<Key> = group.iter().flat_map(|r| r.0.iter().cloned()).collect();
            let result = s.finish(&keys, how).await;
            answer(
                &result,
                group.into_iter().map(|(k, _, reply)| (k.len(), reply)),
            );
        }
    }
}

/// Health probe every 2 s, lease renewal every lease/3, purge every
/// `cleanup`.
async fn upkeep(shared: Weak<Shared>, cleanup: Duration) {
    let mut last_renew = tokio::time::Instant::now();
    let mut last_purge = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(s) = shared.upgrade() else { return };
        let ok = match s.pool.get().await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        };
        if s.healthy.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                tracing::info!(store = %s.name, "store reachable again; deliveries resume");
            } else {
                tracing::warn!(store = %s.name, "store unreachable; deliveries pause");
            }
        }
        if !ok {
            continue;
        }
        if last_renew.elapsed() >= s.lease / 3 {
            let keys: Vec<Key> = s.held.lock().expect("held lock").iter().cloned().collect();
            if let Err(e) = s.set_leases(&keys, false).await {
                tracing::warn!(store = %s.name, error = %e, "lease renewal failed");
            }
            last_renew = tokio::time::Instant::now();
        }
        if last_purge.elapsed() >= cleanup {
            match s.purge().await {
                Ok(n) if n > 0 => {
                    tracing::info!(store = %s.name, purged = n, "old idempotency keys deleted")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(store = %s.name, error = %e, "purge failed"),
            }
            last_purge = tokio::time::Instant::now();
        }
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
                .send((keys, how, tx))
                .map_err(|_| StoreError("store closed".into()))?;
            rx.await.map_err(|_| StoreError("store closed".into()))?
        })
    }

    fn release(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            {
                let mut held = self.shared.held.lock().expect("held lock");
                for k in &keys {
                    held.remove(k);
                }
            }
            self.shared.set_leases(&keys, true).await
        })
    }

    fn purge(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { self.shared.purge().await })
    }

    fn outbox_put(
        &self,
        pubsub: &str,
        msgs: Vec<Message>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let pubsub = pubsub.to_owned();
        Box::pin(async move {
            let s = &self.shared;
            let client = s.client().await?;
            let pubsubs: Vec<&str> = msgs.iter().map(|_| pubsub.as_str()).collect();
            let topics: Vec<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
            let data: Vec<&[u8]> = msgs.iter().map(|m| m.data.as_ref()).collect();
            let types: Vec<Option<&str>> = msgs.iter().map(|m| m.content_type.as_deref()).collect();
            let metadata: Vec<String> = msgs
                .iter()
                .map(|m| serde_json::to_string(&m.metadata).unwrap_or_default())
                .collect();
            // One statement, so the rows commit together and in order.
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (pubsub, topic, data, content_type, metadata)
                         SELECT p, t, d, c, m
                           FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[])
                                WITH ORDINALITY AS u(p, t, d, c, m, n)
                          ORDER BY n",
                        s.outbox
                    ),
                    &[&pubsubs, &topics, &data, &types, &metadata],
                )
                .await
                .map_err(|e| s.error(e))?;
            Ok(())
        })
    }

    fn outbox_peek(
        &self,
        pubsub: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(i64, Message)>, StoreError>> {
        let pubsub = pubsub.to_owned();
        Box::pin(async move {
            let s = &self.shared;
            let client = s.client().await?;
            let rows = s
                .rows(
                    &client,
                    &format!(
                        "SELECT id, topic, data, content_type, metadata FROM {}
                          WHERE pubsub = $1 ORDER BY id LIMIT $2",
                        s.outbox
                    ),
                    &[&pubsub, &(limit as i64)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let md: String = r.get(4);
                    (
                        r.get::<_, i64>(0),
                        Message {
                            topic: r.get(1),
                            data: bytes::Bytes::from(r.get::<_, Vec<u8>>(2)),
                            content_type: r.get(3),
                            metadata: serde_json::from_str(&md).unwrap_or_default(),
                        },
                    )
                })
                .collect())
        })
    }

    fn outbox_delete(&self, ids: Vec<i64>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let s = &self.shared;
            let client = s.client().await?;
            client
                .execute(
                    &format!("DELETE FROM {} WHERE id = ANY($1)", s.outbox),
                    &[&ids],
                )
                .await
                .map_err(|e| s.error(e))?;
            Ok(())
        })
    }

    fn outbox_depth(&self, pubsub: &str) -> BoxFuture<'_, Result<u64, StoreError>> {
        let pubsub = pubsub.to_owned();
        Box::pin(async move {
            let s = &self.shared;
            let client = s.client().await?;
            let row = client
                .query_one(
                    &format!("SELECT count(*) FROM {} WHERE pubsub = $1", s.outbox),
                    &[&pubsub],
                )
                .await
                .map_err(|e| s.error(e))?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn health(&self) -> Result<(), StoreError> {
        if self.shared.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError(format!(
                "store {}: unreachable",
                self.shared.name
            )))
        }
    }
}
