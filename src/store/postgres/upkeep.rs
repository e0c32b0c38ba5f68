//! Upkeep: a health probe every 2 s (while it fails, deliveries pause),
//! lease renewal every third of the lease for the keys this sidecar holds,
//! and the purge of old done and dead rows every `cleanupInterval`.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use super::Pg;
use crate::store::Key;

/// Health probe every 2 s, lease renewal every lease/3, purge every
/// `cleanup`.
pub(super) async fn upkeep(pg: Weak<Pg>, cleanup: Duration) {
    let mut last_renew = tokio::time::Instant::now();
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
