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
