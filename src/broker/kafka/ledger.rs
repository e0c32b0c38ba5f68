//! The offset ledger of one partition and its pause policy: pure
//! bookkeeping, no I/O, so every rule that decides what is safe to commit
//! is table-tested here.
//!
//! - Offsets received and not yet finished (waiting or handed out) are
//!   `unfinished`; the commit position is the lowest of them, or the offset
//!   after the highest received when all are finished. Completions arrive in
//!   any order, and no gap is ever committed.
//! - At most `window` records are handed out at once; the rest wait, in
//!   offset order. A record returned unfinished (nack) waits again and is
//!   handed out before any later one.
//! - Waiting is bounded: at `WAIT_MESSAGES` records or `WAIT_BYTES` bytes
//!   the partition is to be paused, and resumed once it is down to half.
//! - A record received again (librdkafka refetching after a pause) is
//!   ignored: it is already waiting, out, or finished.

use std::collections::{BTreeMap, BTreeSet};

/// Per partition, received messages beyond the in-flight window wait here,
/// up to this many (or `WAIT_BYTES`); then the partition is paused.
pub const WAIT_MESSAGES: usize = 2048;
/// Payload bytes that may wait per partition before it is paused.
pub const WAIT_BYTES: usize = 8 << 20;

/// What the consumer should do to the partition's fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Leave it as it is.
    Keep,
    /// Pause fetching: the waiting buffer is full.
    Pause,
    /// Resume fetching from this offset: the buffer is down to half.
    ResumeAt(i64),
}

/// One partition's offsets; `R` is the record kept while it waits.
#[derive(Debug)]
pub struct Ledger<R> {
    unfinished: BTreeSet<i64>,
    waiting: BTreeMap<i64, (R, usize)>,
    waiting_bytes: usize,
    out: usize,
    next: i64,
    stored: i64,
    paused: bool,
}

impl<R> Ledger<R> {
    /// A partition whose first received record is at `offset` (the
    /// committed position it was assigned at).
    pub fn starting_at(offset: i64) -> Self {
        Self {
            unfinished: BTreeSet::new(),
            waiting: BTreeMap::new(),
            waiting_bytes: 0,
            out: 0,
            next: offset,
            stored: offset,
            paused: false,
        }
    }

    /// Takes a received record of `bytes` payload bytes; `false` when it was
    /// received before (and is ignored).
    pub fn receive(&mut self, offset: i64, rec: R, bytes: usize) -> bool {
        if offset < self.next {
            return false;
        }
        self.unfinished.insert(offset);
        self.next = offset + 1;
        self.hold(offset, rec, bytes);
        true
    }

    fn hold(&mut self, offset: i64, rec: R, bytes: usize) {
        self.waiting_bytes += bytes;
        if let Some((_, old)) = self.waiting.insert(offset, (rec, bytes)) {
            self.waiting_bytes -= old;
        }
    }

    /// Hands out the lowest waiting record if fewer than `window` are out.
    pub fn take(&mut self, window: usize) -> Option<(i64, R)> {
        if self.out >= window {
            return None;
        }
        let (offset, (rec, bytes)) = self.waiting.pop_first()?;
        self.waiting_bytes -= bytes;
        self.out += 1;
        Some((offset, rec))
    }

    /// A handed-out record came back unfinished: it waits again.
    pub fn returned(&mut self, offset: i64, rec: R, bytes: usize) {
        self.out = self.out.saturating_sub(1);
        self.hold(offset, rec, bytes);
    }

    /// A handed-out record is finished. Returns the new commit position
    /// when it moved past what was stored (the caller stores it, then calls
    /// [`Ledger::stored`]).
    pub fn finished(&mut self, offset: i64) -> Option<i64> {
        self.out = self.out.saturating_sub(1);
        self.unfinished.remove(&offset);
        let position = self.position();
        (position > self.stored).then_some(position)
    }

    /// The commit position was stored with the consumer.
    pub fn stored(&mut self, position: i64) {
        self.stored = self.stored.max(position);
    }

    /// The lowest unfinished offset, or the next one when all are finished.
    pub fn position(&self) -> i64 {
        self.unfinished.first().copied().unwrap_or(self.next)
    }

    /// Received and not finished (waiting or handed out).
    pub fn unfinished(&self) -> usize {
        self.unfinished.len()
    }

    /// The offset after the highest received.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// What the consumer should do to the partition's fetching now: pause
    /// when the waiting buffer is full, resume (with a seek to the next
    /// offset) when it is down to half. A pause costs a fetch round trip,
    /// so it must be rare, not one per window, and what still waits covers
    /// the refetch. The caller reports what it did with [`Ledger::paused`].
    pub fn flow(&self) -> Flow {
        let n = self.waiting.len();
        let full = n >= WAIT_MESSAGES || self.waiting_bytes >= WAIT_BYTES;
        let low = n <= WAIT_MESSAGES / 2 && self.waiting_bytes <= WAIT_BYTES / 2;
        if full && !self.paused {
            Flow::Pause
        } else if low && self.paused {
            Flow::ResumeAt(self.next)
        } else {
            Flow::Keep
        }
    }

    /// The consumer paused (`true`) or resumed (`false`) the partition.
    pub fn paused(&mut self, paused: bool) {
        self.paused = paused;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a scenario and what the ledger must answer.
    enum Step {
        Receive(i64, bool),
        Take(usize, Option<i64>),
        Finish(i64, Option<i64>),
        Return(i64),
        Position(i64),
    }
    use Step::*;

    fn run(name: &str, start: i64, steps: &[Step]) {
        let mut l: Ledger<i64> = Ledger::starting_at(start);
        for (i, step) in steps.iter().enumerate() {
            let at = format!("{name}, step {i}");
            match *step {
                Receive(o, fresh) => assert_eq!(l.receive(o, o, 10), fresh, "{at}"),
                Take(window, want) => assert_eq!(l.take(window).map(|(o, _)| o), want, "{at}"),
                Finish(o, moved) => {
                    let got = l.finished(o);
                    if let Some(p) = got {
                        l.stored(p);
                    }
                    assert_eq!(got, moved, "{at}");
                }
                Return(o) => l.returned(o, o, 10),
                Position(p) => assert_eq!(l.position(), p, "{at}"),
            }
        }
    }

    #[test]
    fn commit_positions_never_skip_an_unfinished_offset() {
        let cases: &[(&str, i64, &[Step])] = &[
            (
                "in order",
                5,
                &[
                    Receive(5, true),
                    Receive(6, true),
                    Take(2, Some(5)),
                    Take(2, Some(6)),
                    Finish(5, Some(6)),
                    Finish(6, Some(7)),
                    Position(7),
                ],
            ),
            (
                "out of order: the later finish waits for the earlier",
                0,
                &[
                    Receive(0, true),
                    Receive(1, true),
                    Receive(2, true),
                    Take(3, Some(0)),
                    Take(3, Some(1)),
                    Take(3, Some(2)),
                    Finish(2, None),
                    Finish(1, None),
                    Position(0),
                    Finish(0, Some(3)),
                ],
            ),
            (
                "the window holds back the rest",
                0,
                &[
                    Receive(0, true),
                    Receive(1, true),
                    Take(1, Some(0)),
                    Take(1, None),
                    Finish(0, Some(1)),
                    Take(1, Some(1)),
                ],
            ),
            (
                "a nack between acks is handed out again before later ones",
                0,
                &[
                    Receive(0, true),
                    Receive(1, true),
                    Receive(2, true),
                    Take(2, Some(0)),
                    Take(2, Some(1)),
                    Finish(1, None),
                    Return(0),
                    Take(2, Some(0)),
                    Take(2, Some(2)),
                    Finish(2, None),
                    Finish(0, Some(3)),
                ],
            ),
            (
                "a refetched record is ignored",
                0,
                &[
                    Receive(0, true),
                    Take(1, Some(0)),
                    Receive(0, false),
                    Take(1, None),
                    Finish(0, Some(1)),
                    Receive(0, false),
                    Position(1),
                ],
            ),
            (
                "revoked with work in flight: the next owner starts at the committed position",
                0,
                &[
                    Receive(0, true),
                    Receive(1, true),
                    Take(2, Some(0)),
                    Take(2, Some(1)),
                    Finish(1, None),
                    // Revoked here: the ledger is dropped and a new owner
                    // starts at position 0, so offset 0 is delivered again
                    // (and 1, finished but not committable, too).
                    Position(0),
                ],
            ),
        ];
        for (name, start, steps) in cases {
            run(name, *start, steps);
        }
    }

    #[test]
    fn pauses_when_full_and_resumes_at_half_from_the_next_offset() {
        let mut l: Ledger<()> = Ledger::starting_at(0);
        for o in 0..WAIT_MESSAGES as i64 - 1 {
            l.receive(o, (), 1);
        }
        assert_eq!(l.flow(), Flow::Keep, "one short of full");
        l.receive(WAIT_MESSAGES as i64 - 1, (), 1);
        assert_eq!(l.flow(), Flow::Pause, "full by count");
        l.paused(true);
        assert_eq!(l.flow(), Flow::Keep, "already paused");
        while l.waiting.len() > WAIT_MESSAGES / 2 + 1 {
            l.take(usize::MAX);
        }
        assert_eq!(l.flow(), Flow::Keep, "above half: still paused");
        l.take(usize::MAX);
        assert_eq!(l.flow(), Flow::ResumeAt(WAIT_MESSAGES as i64), "at half");
        l.paused(false);
        assert_eq!(l.flow(), Flow::Keep);

        let mut big: Ledger<()> = Ledger::starting_at(0);
        big.receive(0, (), WAIT_BYTES);
        assert_eq!(big.flow(), Flow::Pause, "full by bytes");
    }

    #[test]
    fn a_returned_record_replaces_its_bytes_once() {
        let mut l: Ledger<()> = Ledger::starting_at(0);
        l.receive(0, (), 100);
        let (o, ()) = l.take(1).unwrap();
        assert_eq!(l.waiting_bytes, 0);
        l.returned(o, (), 100);
        assert_eq!((l.waiting_bytes, l.out), (100, 0));
    }
}
