//! The inbox's SQL: claim keys (a new key, or one whose lease expired),
//! mark them done or dead, extend or end leases, purge old rows. Each runs
//! over `UNNEST` arrays, one statement for many keys.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use super::Pg;
use crate::store::{Claim, Finish, Key, StoreError};

impl Pg {
    pub(super) async fn claim(&self, keys: &[Key]) -> Result<Vec<Claim>, StoreError> {
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
                    // `attempts` counts deliveries that reached the app
                    // (see `started`), not claims: a claim returns it + 1.
                    "INSERT INTO {t} AS i (subscriber, msg_key, state, lease_owner, lease_until, attempts)
                     SELECT s, k, 'in_progress', $3::text::uuid, now() + make_interval(secs => $4), 0
                       FROM UNNEST($1::text[], $2::text[]) AS u(s, k)
                     ON CONFLICT (subscriber, msg_key) DO UPDATE
                        SET lease_owner = EXCLUDED.lease_owner,
                            lease_until = EXCLUDED.lease_until,
                            attempts = CASE WHEN i.state = 'dead' THEN 0 ELSE i.attempts END,
                            state = 'in_progress',
                            done_at = NULL
                      WHERE (i.state = 'in_progress' AND i.lease_until < now())
                         -- Dead-lettered, never delivered: a replay is claimed anew.
                         OR i.state = 'dead'
                     RETURNING i.subscriber, i.msg_key, i.attempts + 1"
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
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
                        Some("done") => Claim::Done,
                        _ => Claim::Busy,
                    }
                }
            })
            .collect())
    }

    pub(super) async fn finish(&self, keys: &[Key], how: Finish) -> Result<Vec<bool>, StoreError> {
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
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(keys
            .iter()
            .map(|k| {
                held.remove(k);
                marked.contains(&(k.subscriber.clone(), k.msg_key.clone()))
            })
            .collect())
    }

    /// Counts one attempt for each key (its delivery reached the app),
    /// fenced like `finish`.
    pub(super) async fn started(&self, keys: &[Key]) -> Result<Vec<bool>, StoreError> {
        let client = self.client().await?;
        let subs: Vec<&str> = keys.iter().map(|k| k.subscriber.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.msg_key.as_str()).collect();
        let t = &self.table;
        self.rows(
            &client,
            &format!(
                "UPDATE {t} AS i SET attempts = i.attempts + 1
                   FROM UNNEST($1::text[], $2::text[]) AS u(s, k)
                  WHERE i.subscriber = u.s AND i.msg_key = u.k
                    AND i.lease_owner = $3::text::uuid AND i.state = 'in_progress'"
            ),
            &[&subs, &ids, &self.owner_text],
        )
        .await?;
        Ok(vec![true; keys.len()])
    }

    /// Extends the lease of every key held, or ends it (`release`).
    pub(super) async fn set_leases(&self, keys: &[Key], release: bool) -> Result<(), StoreError> {
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

    pub(super) async fn purge(&self) -> Result<u64, StoreError> {
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
                            WHERE first_seen < now() - make_interval(secs => $1)
                              AND state <> 'in_progress'
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
