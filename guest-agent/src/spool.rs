//! The spool: samples taken but not yet acknowledged by the bridge.
//!
//! Every sample goes into the spool before it is sent, and leaves it only when the bridge's
//! [`protocol::Ack`] says it is durably recorded. After a reconnect the whole spool is sent
//! again; the bridge drops the ones it already has by (boot id, instance id, seq).
//!
//! **When the spool is full the oldest unacknowledged sample is dropped and counted.** Samples
//! carry cumulative counters, so the next sample still contains all the CPU time the dropped
//! one had: nothing is lost but the time resolution of that stretch. At the default 3600
//! samples and 1 Hz that only happens after an hour without a bridge.

use std::collections::VecDeque;

use protocol::Sample;

/// A bounded FIFO of unacknowledged samples, ordered by `seq`.
#[derive(Debug)]
pub struct Spool {
    /// Unacknowledged samples, oldest first; never longer than `capacity`.
    queue: VecDeque<Sample>,
    /// Most samples kept.
    capacity: usize,
    /// Samples dropped because the spool was full (lifetime of the process).
    dropped: u64,
}

impl Spool {
    /// An empty spool holding at most `capacity` samples (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            queue: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            dropped: 0,
        }
    }

    /// Add a sample; when full, drop the oldest and return it.
    pub fn push(&mut self, sample: Sample) -> Option<Sample> {
        let evicted = if self.queue.len() >= self.capacity {
            self.dropped += 1;
            self.queue.pop_front()
        } else {
            None
        };
        self.queue.push_back(sample);
        evicted
    }

    /// Forget every sample with `seq <= acked`; returns how many were released.
    pub fn ack(&mut self, acked: u64) -> usize {
        let before = self.queue.len();
        while self.queue.front().is_some_and(|s| s.seq <= acked) {
            self.queue.pop_front();
        }
        before - self.queue.len()
    }

    /// Unacknowledged samples, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Sample> {
        self.queue.iter()
    }

    /// Number of unacknowledged samples.
    #[must_use]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether every sample has been acknowledged.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Highest sequence number held.
    #[must_use]
    pub fn last_seq(&self) -> Option<u64> {
        self.queue.back().map(|s| s.seq)
    }

    /// Samples dropped because the spool was full.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The capacity.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use protocol::{ClockReading, MonoNanos, ProcStat, UnixNanos};

    use super::*;

    fn sample(seq: u64) -> Sample {
        Sample {
            seq,
            clock: ClockReading {
                mono_ns: MonoNanos(seq),
                unix_ns: UnixNanos(seq),
            },
            vm: ProcStat::default(),
            containers: Vec::new(),
        }
    }

    #[test]
    fn spool_full_drops_oldest_and_counts() {
        let mut spool = Spool::new(3);
        for seq in 0..5 {
            spool.push(sample(seq));
        }
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.dropped(), 2);
        let seqs: Vec<u64> = spool.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
    }

    #[test]
    fn spool_ack_releases_up_to_and_including_seq() {
        let mut spool = Spool::new(10);
        for seq in 0..5 {
            spool.push(sample(seq));
        }
        assert_eq!(spool.ack(2), 3);
        assert_eq!(spool.iter().map(|s| s.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(spool.ack(1), 0, "an old ack releases nothing");
        assert_eq!(spool.ack(9), 2);
        assert!(spool.is_empty());
    }
}
