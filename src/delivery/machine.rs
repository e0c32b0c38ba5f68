//! The per-message state machine, as pure decisions: what the claim's
//! answer means before the app is called, and what the end of the
//! attempts means for the store and the broker. `process` carries them out;
//! every rule that decides whether a message is acked, dead-lettered,
//! released or left for redelivery is table-tested here.
//!
//! ```text
//! claim ──duplicate──> ack without delivery
//!   │  ──shutdown──> leave (unacked)
//!   │  ──claimed more often than the policy allows──> dead letter, mark dead
//!   v
//! deliver (attempts, retries) ──success──> mark done, ack
//!                             ──drop──> dead letter, mark dead, ack
//!                             ──retries exhausted──> dead letter, mark dead, ack
//!                             ──shutdown, revoked──> release the claim, leave (unacked)
//! ```

use super::outcome::Outcome;
use super::retry::RetryEnd;
use crate::store::Finish;

/// The idempotency store's answer to a claim, as the engine saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// No store (or no key): nothing was claimed.
    Unclaimed,
    /// This sidecar owns the key; the `attempts`-th claim of it.
    Owned {
        /// How many times the key was claimed, this claim included.
        attempts: u32,
    },
    /// The key is done: the event was delivered (or dropped) before.
    Duplicate,
    /// Shutdown came while waiting for the claim.
    Stopped,
}

/// What to do before the app is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// Call the app; `claimed` when a key is held and must be finished.
    Deliver { claimed: bool },
    /// Acknowledge without delivery (counted as a duplicate).
    AckDuplicate,
    /// Leave the message unacknowledged for redelivery.
    Leave,
    /// Earlier attempts were cut short (crashes) more often than the retry
    /// policy allows: dead-letter it and mark the key dead.
    DeadLetterOverclaimed,
}

/// What a claim means, given the retry policy's `max_retries` (`None`:
/// retry forever).
pub fn before_delivery(claim: Claimed, max_retries: Option<u32>) -> Before {
    match claim {
        Claimed::Unclaimed => Before::Deliver { claimed: false },
        Claimed::Duplicate => Before::AckDuplicate,
        Claimed::Stopped => Before::Leave,
        Claimed::Owned { attempts } => {
            let limit = max_retries.map(|r| r + 1);
            if limit.is_some_and(|l| attempts > l) {
                Before::DeadLetterOverclaimed
            } else {
                Before::Deliver { claimed: true }
            }
        }
    }
}

/// What to do once the attempts ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Mark the key (if claimed), then acknowledge.
    Ack { mark: Option<Finish> },
    /// Publish to the dead-letter topic (or, without one, skip that), mark
    /// the key (if claimed), then acknowledge.
    DeadLetter { mark: Option<Finish> },
    /// Give the claim back at once (so another sidecar may take it) and
    /// leave the message unacknowledged.
    Release,
    /// Leave the message unacknowledged.
    Leave,
}

/// What the end of the attempts means; `claimed` when a key is held.
pub fn after_delivery(end: &RetryEnd<Outcome>, claimed: bool) -> After {
    let mark = |how| claimed.then_some(how);
    match end {
        RetryEnd::Done(Outcome::Success) => After::Ack {
            mark: mark(Finish::Done),
        },
        // An app DROP (or 404) is final for this delivery, but the event
        // was not processed: the key is dead, so a replay of the dead
        // letter reaches the app again (`perch dlq replay`).
        RetryEnd::Done(_) => After::DeadLetter {
            mark: mark(Finish::Dead),
        },
        RetryEnd::Exhausted(_) => After::DeadLetter {
            mark: mark(Finish::Dead),
        },
        // Shutdown, or a revoked partition or dead channel, is not
        // exhaustion: the message goes back to the broker for its next owner.
        RetryEnd::Stopped | RetryEnd::Revoked if claimed => After::Release,
        RetryEnd::Stopped | RetryEnd::Revoked => After::Leave,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_app_is_called() {
        use Before::*;
        use Claimed::*;
        let cases = [
            (Unclaimed, Some(5), Deliver { claimed: false }),
            (Owned { attempts: 1 }, Some(5), Deliver { claimed: true }),
            (Owned { attempts: 6 }, Some(5), Deliver { claimed: true }),
            (Owned { attempts: 7 }, Some(5), DeadLetterOverclaimed),
            (Owned { attempts: 1 }, Some(0), Deliver { claimed: true }),
            (Owned { attempts: 2 }, Some(0), DeadLetterOverclaimed),
            (Owned { attempts: 1000 }, None, Deliver { claimed: true }),
            (Duplicate, Some(5), AckDuplicate),
            (Stopped, Some(5), Leave),
        ];
        for (claim, max_retries, want) in cases {
            assert_eq!(
                before_delivery(claim, max_retries),
                want,
                "{claim:?}, max_retries {max_retries:?}"
            );
        }
    }

    #[test]
    fn after_the_attempts_end() {
        use After::*;
        let success = RetryEnd::Done(Outcome::Success);
        let dropped = RetryEnd::Done(Outcome::Drop("app answered DROP".into()));
        let exhausted = RetryEnd::Exhausted("5 retries".into());
        let stopped = RetryEnd::Stopped;
        let revoked = RetryEnd::Revoked;
        let cases = [
            (
                &success,
                true,
                Ack {
                    mark: Some(Finish::Done),
                },
            ),
            (&success, false, Ack { mark: None }),
            (
                &dropped,
                true,
                DeadLetter {
                    mark: Some(Finish::Dead),
                },
            ),
            (&dropped, false, DeadLetter { mark: None }),
            (
                &exhausted,
                true,
                DeadLetter {
                    mark: Some(Finish::Dead),
                },
            ),
            (&exhausted, false, DeadLetter { mark: None }),
            (&stopped, true, Release),
            (&stopped, false, Leave),
            (&revoked, true, Release),
            (&revoked, false, Leave),
        ];
        for (end, claimed, want) in cases {
            assert_eq!(
                after_delivery(end, claimed),
                want,
                "{end:?}, claimed {claimed}"
            );
        }
    }
}
