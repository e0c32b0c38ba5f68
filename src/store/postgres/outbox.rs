//! The publish outbox's SQL: keep messages in order, peek the oldest,
//! delete what was relayed, count what waits.

use super::Pg;
use crate::message::Message;
use crate::store::StoreError;

impl Pg {
    /// Keeps `msgs` for `pubsub`, in order, in one statement.
    pub(super) async fn outbox_put(
        &self,
        pubsub: &str,
        msgs: &[Message],
    ) -> Result<(), StoreError> {
        {
            let s = self;
            let client = s.client().await?;
            let pubsubs: Vec<&str> = msgs.iter().map(|_| pubsub).collect();
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
        }
    }

    /// The oldest `limit` kept messages of `pubsub`, with their row ids.
    pub(super) async fn outbox_peek(
        &self,
        pubsub: &str,
        limit: usize,
    ) -> Result<Vec<(i64, Message)>, StoreError> {
        {
            let s = self;
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
        }
    }

    /// Deletes relayed rows.
    pub(super) async fn outbox_delete(&self, ids: &[i64]) -> Result<(), StoreError> {
        {
            let s = self;
            let client = s.client().await?;
            client
                .execute(
                    &format!("DELETE FROM {} WHERE id = ANY($1)", s.outbox),
                    &[&ids],
                )
                .await
                .map_err(|e| s.error(e))?;
            Ok(())
        }
    }

    /// How many messages of `pubsub` are kept.
    pub(super) async fn outbox_depth(&self, pubsub: &str) -> Result<u64, StoreError> {
        {
            let s = self;
            let client = s.client().await?;
            let row = client
                .query_one(
                    &format!("SELECT count(*) FROM {} WHERE pubsub = $1", s.outbox),
                    &[&pubsub],
                )
                .await
                .map_err(|e| s.error(e))?;
            Ok(row.get::<_, i64>(0) as u64)
        }
    }
}
