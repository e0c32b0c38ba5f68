//! The publish outbox's SQL: keep messages durably and in order; relay
//! passes under a per-pub/sub advisory lock (one sidecar relays a pub/sub
//! at a time, so rows go out once and in order); count what waits.

use super::Pg;
use crate::message::Message;
use crate::store::{OutboxDepth, Pass, RelaySend, Relayed, StoreError};

/// The first half of the relay's advisory lock key (the second is a hash
/// of the outbox table and the pub/sub).
const RELAY_LOCK: i32 = 735_241;

impl Pg {
    /// Keeps `msgs` for `pubsub`, in order, in one statement, in a
    /// transaction that commits synchronously: the publisher is answered
    /// 204 on this commit, so it must survive a PostgreSQL crash even when
    /// the connection asks for `synchronous_commit=off` (advice that is
    /// for the inbox, where a lost mark can only cause a duplicate).
    pub(super) async fn outbox_put(
        &self,
        pubsub: &str,
        msgs: &[Message],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let pubsubs: Vec<&str> = msgs.iter().map(|_| pubsub).collect();
        let topics: Vec<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
        let data: Vec<&[u8]> = msgs.iter().map(|m| m.data.as_ref()).collect();
        let types: Vec<Option<&str>> = msgs.iter().map(|m| m.content_type.as_deref()).collect();
        let metadata: Vec<String> = msgs
            .iter()
            .map(|m| serde_json::to_string(&m.metadata).unwrap_or_default())
            .collect();
        let tx = client.transaction().await.map_err(|e| self.error(e))?;
        tx.batch_execute("SET LOCAL synchronous_commit = on")
            .await
            .map_err(|e| self.error(e))?;
        tx.execute(
            &format!(
                "INSERT INTO {} (pubsub, topic, data, content_type, metadata)
                 SELECT p, t, d, c, m
                   FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[])
                        WITH ORDINALITY AS u(p, t, d, c, m, n)
                  ORDER BY n",
                self.outbox
            ),
            &[&pubsubs, &topics, &data, &types, &metadata],
        )
        .await
        .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))
    }

    /// One relay pass (see [`crate::store::Store::outbox_relay`]): a
    /// transaction holding `pg_try_advisory_xact_lock` for this pub/sub
    /// from the read to the delete. A sidecar that dies mid-pass drops its
    /// connection, which rolls back and frees the lock; its rows are then
    /// relayed again by the next holder (the CloudEvent ids let the
    /// subscribers' inboxes drop the copies).
    pub(super) async fn outbox_relay(
        &self,
        pubsub: &str,
        limit: usize,
        send: RelaySend<'_>,
    ) -> Result<Pass, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.error(e))?;
        let lock_name = format!("{}/{pubsub}", self.outbox);
        let got: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                &[&RELAY_LOCK, &lock_name],
            )
            .await
            .map_err(|e| self.error(e))?
            .get(0);
        if !got {
            return Ok(Pass::Busy);
        }
        let rows = tx
            .query(
                &format!(
                    "SELECT id, topic, data, content_type, metadata FROM {}
                      WHERE pubsub = $1 AND parked IS NULL ORDER BY id LIMIT $2",
                    self.outbox
                ),
                &[&pubsub, &(limit as i64)],
            )
            .await
            .map_err(|e| self.error(e))?;
        let kept: Vec<(i64, Message)> = rows
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
            .collect();
        if kept.is_empty() {
            return Ok(Pass::Relayed(vec![]));
        }
        let answers = send(kept.iter().map(|(_, m)| m.clone()).collect()).await;
        let mut sent = vec![];
        let (mut parked_ids, mut reasons) = (vec![], vec![]);
        for ((id, _), a) in kept.iter().zip(&answers) {
            match a {
                Relayed::Sent => sent.push(*id),
                Relayed::Park(why) => {
                    parked_ids.push(*id);
                    reasons.push(why.clone());
                }
                Relayed::Retry => {}
            }
        }
        if !sent.is_empty() {
            tx.execute(
                &format!("DELETE FROM {} WHERE id = ANY($1)", self.outbox),
                &[&sent],
            )
            .await
            .map_err(|e| self.error(e))?;
        }
        if !parked_ids.is_empty() {
            tx.execute(
                &format!(
                    "UPDATE {} o SET parked = u.why, parked_at = now()
                       FROM UNNEST($1::bigint[], $2::text[]) AS u(id, why)
                      WHERE o.id = u.id",
                    self.outbox
                ),
                &[&parked_ids, &reasons],
            )
            .await
            .map_err(|e| self.error(e))?;
        }
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(Pass::Relayed(crate::store::tally(&kept, &answers)))
    }

    /// What waits per topic, and how many are parked.
    pub(super) async fn outbox_depth(&self, pubsub: &str) -> Result<OutboxDepth, StoreError> {
        let client = self.client().await?;
        let rows = self
            .rows(
                &client,
                &format!(
                    "SELECT topic, count(*) FILTER (WHERE parked IS NULL),
                            count(*) FILTER (WHERE parked IS NOT NULL)
                       FROM {} WHERE pubsub = $1 GROUP BY topic",
                    self.outbox
                ),
                &[&pubsub],
            )
            .await?;
        let mut depth = OutboxDepth::default();
        for r in rows {
            let waiting = r.get::<_, i64>(1) as u64;
            if waiting > 0 {
                depth.waiting.insert(r.get(0), waiting);
            }
            depth.parked += r.get::<_, i64>(2) as u64;
        }
        Ok(depth)
    }
}
