//! The ack ledger of one channel: pure bookkeeping that turns finished
//! deliveries into the frames to send, so the rule that decides what a
//! `multiple` ack may cover is table-tested here.
//!
//! Deliveries finish in any order. Nacks go first, one by one (requeued).
//! Then the acks below the oldest delivery still unsettled go as one
//! `multiple` ack on the highest of them (every tag at or below it is
//! settled, so nothing unfinished is covered); the others one by one, so a
//! slow message never holds back the others' acks.

use std::collections::BTreeSet;

/// A frame to send on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `basic.nack` with requeue.
    Nack(u64),
    /// `basic.ack`; `multiple` covers every tag at or below.
    Ack { tag: u64, multiple: bool },
}

/// The deliveries handed out on one channel and not yet settled.
#[derive(Debug, Default)]
pub struct AckLedger {
    unsettled: BTreeSet<u64>,
}

impl AckLedger {
    /// A delivery was handed out.
    pub fn delivered(&mut self, tag: u64) {
        self.unsettled.insert(tag);
    }

    /// True when every delivery handed out is settled.
    pub fn is_empty(&self) -> bool {
        self.unsettled.is_empty()
    }

    /// Settles a batch of finished deliveries (`true`: ack, `false`: nack)
    /// and returns the frames to send, in order.
    pub fn settle(&mut self, batch: impl IntoIterator<Item = (u64, bool)>) -> Vec<Frame> {
        let mut frames = vec![];
        let mut acks = vec![];
        for (tag, ack) in batch {
            self.unsettled.remove(&tag);
            if ack {
                acks.push(tag);
            } else {
                frames.push(Frame::Nack(tag));
            }
        }
        acks.sort_unstable();
        let oldest = self.unsettled.first().copied().unwrap_or(u64::MAX);
        let below = acks.partition_point(|t| *t < oldest);
        if let Some(&last) = acks[..below].last() {
            frames.push(Frame::Ack {
                tag: last,
                multiple: below > 1,
            });
        }
        frames.extend(acks[below..].iter().map(|&tag| Frame::Ack {
            tag,
            multiple: false,
        }));
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Frame::*;

    fn one(tag: u64) -> Frame {
        Ack {
            tag,
            multiple: false,
        }
    }
    fn all_to(tag: u64) -> Frame {
        Ack {
            tag,
            multiple: true,
        }
    }

    #[test]
    fn a_multiple_ack_never_covers_an_unsettled_delivery() {
        // (name, delivered, batches of (tag, ack), frames per batch)
        type Case = (
            &'static str,
            &'static [u64],
            &'static [&'static [(u64, bool)]],
            Vec<Vec<Frame>>,
        );
        let cases: Vec<Case> = vec![
            (
                "all finished in order: one multiple ack",
                &[1, 2, 3],
                &[&[(1, true), (2, true), (3, true)]],
                vec![vec![all_to(3)]],
            ),
            (
                "one finished: a single ack, not multiple",
                &[1, 2],
                &[&[(1, true)]],
                vec![vec![one(1)]],
            ),
            (
                "finished above the oldest unsettled: one by one",
                &[1, 2, 3],
                &[&[(2, true), (3, true)], &[(1, true)]],
                vec![vec![one(2), one(3)], vec![one(1)]],
            ),
            (
                "below and above the oldest unsettled",
                &[1, 2, 3, 4],
                &[&[(4, true), (1, true), (2, true)]],
                vec![vec![all_to(2), one(4)]],
            ),
            (
                "a nack between acks goes first and is not covered",
                &[1, 2, 3],
                &[&[(1, true), (2, false), (3, true)]],
                vec![vec![Nack(2), all_to(3)]],
            ),
            (
                "a nack alone",
                &[1, 2],
                &[&[(2, false)]],
                vec![vec![Nack(2)]],
            ),
            ("an empty batch sends nothing", &[1], &[&[]], vec![vec![]]),
        ];
        for (name, delivered, batches, want) in &cases {
            let mut l = AckLedger::default();
            for &t in *delivered {
                l.delivered(t);
            }
            for (i, (batch, frames)) in batches.iter().zip(want.iter()).enumerate() {
                assert_eq!(
                    l.settle(batch.iter().copied()),
                    *frames,
                    "{name}, batch {i}"
                );
            }
        }
    }

    #[test]
    fn empty_once_everything_handed_out_is_settled() {
        let mut l = AckLedger::default();
        l.delivered(7);
        l.delivered(8);
        l.settle([(8, true)]);
        assert!(!l.is_empty());
        l.settle([(7, false)]);
        assert!(l.is_empty());
    }
}
