//! `perch dlq` on Redis: the dead letters are the entries of the
//! dead-letter stream the app's group has not finished. A session reads
//! them as a consumer of the group of its own, `perch-dlq`: first what
//! earlier sessions read and left (its pending entries, from id 0), then
//! what the group has not read yet (`>`), up to the stream's last entry
//! when the session opened. A removed (replayed) entry is acked; the
//! others stay pending under `perch-dlq`, listed again by the next session
//! (and, if a subscriber of the dead-letter topic runs in the group, taken
//! over by it after its `processingTimeout`). The group is created at the
//! stream's start if it is not there yet, as a subscriber would.

use std::collections::VecDeque;

use redis::aio::ConnectionManager;
use redis::streams::{StreamId, StreamReadReply};

use super::consumer::{create_group, id_key};
use super::entry;
use crate::broker::{BoxFuture, BrokerError, DeadLetters, Peeked};

/// The consumer name `perch dlq` reads as.
const READER: &str = "perch-dlq";

pub(super) struct RedisDeadLetters {
    conn: ConnectionManager,
    stream: String,
    group: String,
    /// Read ahead, not yet returned.
    ahead: VecDeque<StreamId>,
    /// Where the next read starts: pending from this id, or new (`None`).
    from: Option<String>,
    /// The stream's last entry when the session opened.
    end: (u64, u64),
    done: bool,
    last: Option<String>,
}

fn unavailable(e: redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(format!("redis: {e}"))
}

/// Opens the dead letters of `stream` for `group`.
pub(super) async fn open(
    mut conn: ConnectionManager,
    stream: &str,
    group: &str,
) -> Result<Box<dyn DeadLetters>, BrokerError> {
    let last: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    let Some((last_id, _)) = last.into_iter().next() else {
        return Err(BrokerError::Rejected(format!(
            "no dead letters: stream {stream} is empty or does not exist (--topic names the dead-letter topic, by default {{topic}}.dlq; --pubsub the component)"
        )));
    };
    create_group(&mut conn, stream, group)
        .await
        .map_err(unavailable)?;
    Ok(Box::new(RedisDeadLetters {
        conn,
        stream: stream.to_owned(),
        group: group.to_owned(),
        ahead: VecDeque::new(),
        from: Some("0".into()),
        end: id_key(&last_id),
        done: false,
        last: None,
    }))
}

impl RedisDeadLetters {
    /// Reads the next page into `ahead`; false when nothing is left.
    async fn fill(&mut self) -> Result<bool, BrokerError> {
        while self.ahead.is_empty() && !self.done {
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(READER)
                .arg("COUNT")
                .arg(100)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(self.from.as_deref().unwrap_or(">"))
                .query_async(&mut self.conn)
                .await
                .map_err(unavailable)?;
            let page: Vec<StreamId> = reply
                .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                .unwrap_or_default();
            match (&self.from, page.last()) {
                // Pending entries first, page by page; then new ones.
                (Some(_), Some(l)) => self.from = Some(l.id.clone()),
                (Some(_), None) => {
                    self.from = None;
                    continue;
                }
                (None, None) => self.done = true,
                (None, Some(_)) => {}
            }
            for e in page {
                if id_key(&e.id) > self.end {
                    // Came after the session opened: left for the next.
                    self.done = true;
                    break;
                }
                // An entry deleted from the stream while pending.
                if !e.map.is_empty() {
                    self.ahead.push_back(e);
                }
            }
        }
        Ok(!self.ahead.is_empty())
    }
}

impl DeadLetters for RedisDeadLetters {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Peeked>, BrokerError>> {
        Box::pin(async move {
            if !self.fill().await? {
                return Ok(None);
            }
            let Some(e) = self.ahead.pop_front() else {
                return Ok(None);
            };
            let d = entry::decode(&e.id, e.map);
            let ms = id_key(&e.id).0;
            self.last = Some(e.id);
            Ok(Some(Peeked {
                data: d.data,
                content_type: d.content_type,
                metadata: d.metadata,
                timestamp_ms: i64::try_from(ms).ok(),
            }))
        })
    }

    fn remove(&mut self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let Some(id) = self.last.take() else {
                return Ok(());
            };
            redis::cmd("XACK")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&id)
                .query_async::<i64>(&mut self.conn)
                .await
                .map(drop)
                .map_err(|e| BrokerError::Unavailable(format!("redis: ack: {e}")))
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        // What was not removed stays pending under `perch-dlq`.
        Box::pin(async {})
    }
}
