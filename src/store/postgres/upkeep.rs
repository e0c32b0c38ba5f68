//! Upkeep: a health probe every 2 s (while it fails, deliveries pause) and
//! the purge of old done and dead rows every `cleanupInterval`; lease
//! renewal every third of the lease for the keys this sidecar holds, on a
//! task of its own.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use super::Pg;
use crate::store::Key;

/// Health probe every 2 s, and the purge every `cleanup`. Lease renewal
/// is [`renew`], on a task of its own, so a long purge or a slow probe
/// cannot let leases lapse mid-delivery (review F18).
pub(super) async fn upkeep(pg: Weak<Pg>, cleanup: Duration) {
    let mut last_purge = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(s) = pg.upgrade() else { return };
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
        if ok && last_purge.elapsed() >= cleanup {
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

/// Renews the lease of every key this sidecar holds, every third of the
/// lease, until the store is dropped.
pub(super) async fn renew(pg: Weak<Pg>) {
    loop {
        let Some(lease) = pg.upgrade().map(|s| s.lease) else {
            return;
        };
        tokio::time::sleep(lease / 3).await;
        let Some(s) = pg.upgrade() else { return };
        let keys: Vec<Key> = s
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        if let Err(e) = s.set_leases(&keys, false).await {
            tracing::warn!(store = %s.name, error = %e, "lease renewal failed");
        }
    }
}
