//! Claims and finishes coalesced: concurrent requests are gathered by a
//! task into one statement (up to `BATCH` keys), and the statement's answer
//! is split back to each request in order; a failed statement fails every
//! request of its batch with the same error (none is answered wrongly, and
//! each caller retries on its own).

use std::sync::Weak;

use tokio::sync::{mpsc, oneshot};

use super::Pg;
use crate::store::{Claim, Finish, Key, StoreError};

/// Most keys in one statement.
const BATCH: usize = 512;

/// Keys to claim, and where their answers go.
pub(super) type ClaimRequest = (Vec<Key>, oneshot::Sender<Result<Vec<Claim>, StoreError>>);
/// What a mark request writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    /// The key ends (done or dead).
    Finish(Finish),
    /// Its delivery reached the app: one more attempt.
    Started,
}

/// Keys to mark, how, and where their answers go.
pub(super) type FinishRequest = (
    Vec<Key>,
    Mark,
    oneshot::Sender<Result<Vec<bool>, StoreError>>,
);

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
pub(super) async fn claim_loop(pg: Weak<Pg>, mut rx: mpsc::UnboundedReceiver<ClaimRequest>) {
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
        let Some(s) = pg.upgrade() else { return };
        let keys: Vec<Key> = batch.iter().flat_map(|(k, _)| k.iter().cloned()).collect();
        let result = s.claim(&keys).await;
        answer(
            &result,
            batch.into_iter().map(|(k, reply)| (k.len(), reply)),
        );
    }
}

/// Serves finish requests, many per statement (one per finish kind).
pub(super) async fn finish_loop(pg: Weak<Pg>, mut rx: mpsc::UnboundedReceiver<FinishRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(s) = pg.upgrade() else { return };
        let mut batch = skip_ended_starts(batch);
        // Started before finished: a delivery's start is sent before its
        // finish, and a finished key no longer takes a start.
        for how in [
            Mark::Started,
            Mark::Finish(Finish::Done),
            Mark::Finish(Finish::Dead),
        ] {
            let (group, rest): (Vec<_>, Vec<_>) = batch.into_iter().partition(|r| r.1 == how);
            batch = rest;
            if group.is_empty() {
                continue;
            }
            let keys: Vec<Key> = group.iter().flat_map(|r| r.0.iter().cloned()).collect();
            let result = match how {
                Mark::Finish(f) => s.finish(&keys, f).await,
                Mark::Started => s.started(&keys).await,
            };
            answer(
                &result,
                group.into_iter().map(|(k, _, reply)| (k.len(), reply)),
            );
        }
    }
}

/// Drops the starts of keys that the same batch also finishes: their
/// rows end in this round, and an attempt count is only read by a later
/// claim, which a finished key never gets (a replayed dead letter starts
/// counting again). A delivery that reached the app and was answered
/// before its start was written then costs one row update, not two. A
/// start request with nothing left is answered at once.
fn skip_ended_starts(batch: Vec<FinishRequest>) -> Vec<FinishRequest> {
    if !batch.iter().any(|r| r.1 == Mark::Started) {
        return batch;
    }
    let ended: std::collections::BTreeSet<Key> = batch
        .iter()
        .filter(|r| matches!(r.1, Mark::Finish(_)))
        .flat_map(|r| r.0.iter().cloned())
        .collect();
    if ended.is_empty() {
        return batch;
    }
    batch
        .into_iter()
        .filter_map(|(keys, how, reply)| {
            if how != Mark::Started {
                return Some((keys, how, reply));
            }
            let n = keys.len();
            let keys: Vec<Key> = keys.into_iter().filter(|k| !ended.contains(k)).collect();
            if keys.is_empty() {
                let _ = reply.send(Ok(vec![true; n]));
                return None;
            }
            // `started` answers one flag per key: the kept ones' answer
            // stands for the request.
            Some((keys, how, reply))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `result` to requests of `sizes` keys; returns what each got.
    fn split(
        result: Result<Vec<u32>, StoreError>,
        sizes: &[usize],
    ) -> Vec<Result<Vec<u32>, StoreError>> {
        let (txs, rxs): (Vec<_>, Vec<_>) = sizes.iter().map(|_| oneshot::channel()).unzip();
        answer(&result, sizes.iter().copied().zip(txs));
        rxs.into_iter()
            .map(|mut rx| rx.try_recv().expect("answered"))
            .collect()
    }

    #[test]
    fn a_batch_answer_goes_back_to_each_request_in_order() {
        let got = split(Ok(vec![1, 2, 3, 4, 5, 6]), &[1, 3, 0, 2]);
        let got: Vec<Vec<u32>> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, [vec![1], vec![2, 3, 4], vec![], vec![5, 6]]);
    }

    fn k(n: u32) -> Key {
        Key {
            subscriber: "app/pubsub/orders".into(),
            msg_key: format!("ce:{n}"),
        }
    }

    #[test]
    fn a_start_of_a_key_finished_in_the_same_batch_is_not_written() {
        let (tx_a, mut rx_a) = oneshot::channel();
        let (tx_b, mut rx_b) = oneshot::channel();
        let (tx_c, _rx_c) = oneshot::channel();
        let (tx_d, _rx_d) = oneshot::channel();
        let batch: Vec<FinishRequest> = vec![
            // Both keys of this start end below: answered, not written.
            (vec![k(1), k(2)], Mark::Started, tx_a),
            // One of two ends: only the other is written.
            (vec![k(3), k(4)], Mark::Started, tx_b),
            (vec![k(1), k(3)], Mark::Finish(Finish::Done), tx_c),
            (vec![k(2)], Mark::Finish(Finish::Dead), tx_d),
        ];
        let kept = skip_ended_starts(batch);
        let shapes: Vec<(Vec<Key>, Mark)> = kept.iter().map(|r| (r.0.clone(), r.1)).collect();
        assert_eq!(
            shapes,
            [
                (vec![k(4)], Mark::Started),
                (vec![k(1), k(3)], Mark::Finish(Finish::Done)),
                (vec![k(2)], Mark::Finish(Finish::Dead)),
            ]
        );
        assert_eq!(
            rx_a.try_recv().expect("answered at once").unwrap(),
            [true, true]
        );
        assert!(rx_b.try_recv().is_err(), "still to be written");
    }

    #[test]
    fn starts_alone_are_all_written() {
        let (tx, _rx) = oneshot::channel();
        let kept = skip_ended_starts(vec![(vec![k(1)], Mark::Started, tx)]);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, [k(1)]);
    }

    #[test]
    fn a_batch_whose_statement_failed_fails_every_request() {
        let err = StoreError("store inbox: connection refused".into());
        let got = split(Err(err.clone()), &[2, 1, 3]);
        assert_eq!(got.len(), 3);
        for r in got {
            assert_eq!(r.unwrap_err().0, err.0);
        }
    }
}
