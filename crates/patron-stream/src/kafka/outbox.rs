//! The bookkeeping every outbox forwarder shares (dead letters, identity records).
//!
//! An entry gets a sequence number and is **staged** with the next checkpoint. Once that
//! checkpoint committed it is **committed**: only then is it produced (**in flight**), and once
//! the topic acknowledged it, it is **acknowledged** and leaves the store's table with the
//! checkpoint after. A crash before that removal sends it again; each forwarder has its own way
//! of recognising the copy (dead letters: store id and sequence number in the topic; identity
//! records: the receivers' origin marks).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};

use super::dead_letters::{DeliveryLog, warn_limited};
use super::delivery::await_deliveries;

/// How long one round waits for acknowledgements before the writer moves on.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

pub(super) struct Outbox<T> {
    /// What the entries are, for warnings ("dead letter", "identity record").
    what: &'static str,
    next_seq: u64,
    /// Committed and not yet acknowledged, in sequence order.
    committed: BTreeMap<u64, T>,
    /// Staged with the next checkpoint.
    staged: Vec<(u64, T)>,
    in_flight: HashSet<u64>,
    /// Acknowledged; removed from the store's table by the next checkpoint.
    acknowledged: Vec<u64>,
    last_warning: Option<Instant>,
}

impl<T> Outbox<T> {
    /// The outbox as the store holds it: the next sequence number and the committed entries.
    pub(super) fn new(what: &'static str, next_seq: u64, committed: Vec<(u64, T)>) -> Self {
        Self {
            what,
            next_seq,
            committed: committed.into_iter().collect(),
            staged: Vec::new(),
            in_flight: HashSet::new(),
            acknowledged: Vec::new(),
            last_warning: None,
        }
    }

    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Entries committed or staged and not yet acknowledged.
    pub(super) fn pending(&self) -> u64 {
        (self.committed.len() + self.staged.len()) as u64
    }

    /// Whether a checkpoint would change anything for the outbox.
    pub(super) fn has_work(&self) -> bool {
        !self.committed.is_empty() || !self.staged.is_empty() || !self.acknowledged.is_empty()
    }

    /// Stages `entry` with the next checkpoint; returns its sequence number.
    pub(super) fn stage(&mut self, entry: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.staged.push((seq, entry));
        seq
    }

    /// The entries staged since the last [`Self::committed`], from `start`.
    pub(super) fn staged_from(&self, start: usize) -> &[(u64, T)] {
        &self.staged[start..]
    }

    pub(super) fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// The acknowledged entries, to remove from the store with the next checkpoint.
    pub(super) fn take_acknowledged(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.acknowledged)
    }

    /// After a checkpoint: what was staged is committed. False when nothing waits to be sent.
    pub(super) fn committed(&mut self) -> bool {
        self.committed.extend(self.staged.drain(..));
        !(self.committed.is_empty() && self.in_flight.is_empty())
    }

    /// Marks a committed entry as already in the topic (found there after a restart).
    pub(super) fn found_delivered(&mut self, seq: u64) -> bool {
        let found = self.committed.remove(&seq).is_some();
        if found {
            self.acknowledged.push(seq);
        }
        found
    }

    /// Produces every committed entry not in flight with `send` (which enqueues one record whose
    /// opaque is the sequence number), waits for the acknowledgements, and returns the entries
    /// acknowledged with their topic offsets.
    pub(super) fn send_round(
        &mut self,
        producer: &BaseProducer<DeliveryLog>,
        topic: &str,
        mut send: impl FnMut(u64, &T) -> Result<(), KafkaError>,
    ) -> Vec<(u64, i64)> {
        for (seq, entry) in &self.committed {
            if self.in_flight.contains(seq) {
                continue;
            }
            match send(*seq, entry) {
                Ok(()) => {
                    self.in_flight.insert(*seq);
                }
                Err(e) => {
                    let message = format!("{} produce to {topic} failed: {e}", self.what);
                    warn_limited(&mut self.last_warning, message);
                    break;
                }
            }
        }
        await_deliveries(producer, FLUSH_WAIT);
        let mut delivered = Vec::new();
        for (seq, outcome) in producer.context().take() {
            self.in_flight.remove(&seq);
            match outcome {
                Ok(offset) => {
                    self.committed.remove(&seq);
                    self.acknowledged.push(seq);
                    delivered.push((seq, offset));
                }
                Err(e) => {
                    let message = format!("{} {seq} not delivered to {topic}: {e}", self.what);
                    warn_limited(&mut self.last_warning, message);
                }
            }
        }
        delivered
    }

    /// Warns, at most once per 10 s.
    pub(super) fn warn(&mut self, message: String) {
        warn_limited(&mut self.last_warning, message);
    }
}
