//! Live ingest status and metrics, shared between the pipeline threads and the HTTP API.
//!
//! The pipeline writes; `/v1/status`, `/readyz` and `/metrics` read. Committed figures change
//! only after a checkpoint commits, so the status never reports progress that a crash could
//! take back.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use patron_store::StoreCounters;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// What a partition is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Assigned to this instance and being read.
    Reading,
    /// Read up to the end the broker last reported.
    CaughtUp,
    /// Stopped on an error that needs an operator (the store is ahead of the log).
    Stopped,
    /// No longer assigned to this instance; figures are as of the release.
    Released,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    /// The next offset durably committed in the store.
    pub committed_offset: u64,
    /// The next offset applied in memory (committed at the next checkpoint).
    pub applied_offset: u64,
    /// The log end from the latest fetch response (not ListOffsets; see DESIGN.md, Brokers).
    pub high_watermark: Option<u64>,
    /// `high_watermark - committed_offset`.
    pub lag: Option<u64>,
    pub state: PartitionState,
    /// Why a partition is stopped, or what was lost when the broker dropped unread records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl PartitionStatus {
    fn new(partition: u32) -> Self {
        Self {
            partition,
            committed_offset: 0,
            applied_offset: 0,
            high_watermark: None,
            lag: None,
            state: PartitionState::Reading,
            message: None,
        }
    }

    fn refresh_lag(&mut self) {
        self.lag = self
            .high_watermark
            .map(|hw| hw.saturating_sub(self.committed_offset));
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterStatus {
    /// Committed in the store's outbox, not yet acknowledged by the dead-letter topic.
    pub pending: u64,
    /// Acknowledged by the dead-letter topic since this process started.
    pub delivered: u64,
    pub topic: String,
}

/// Identity merges between instances (see `applier::route`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdentityRoutingStatus {
    /// On when this instance owns fewer partitions than the topic has.
    pub routing: bool,
    /// Handoffs, merged states and forwarded events sent to other partitions' owners, and
    /// received from them, since this process started.
    pub sent: u64,
    pub received: u64,
    /// Received records dropped as copies of ones applied before (resent after a crash, or
    /// produced again by a rebuild).
    pub copies_dropped: u64,
    /// Committed in the route outbox, not yet acknowledged by the topic.
    pub pending: u64,
}

/// The changelog topic (see `kafka::changelog`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChangelogStatus {
    /// Off for `replay`, with `[source] changelog = false`, or when the topic cannot be used.
    pub enabled: bool,
    pub topic: String,
    /// Records the topic acknowledged (values and position markers) since this process started.
    pub records_sent: u64,
    /// Checkpoints whose changed keys are committed and not yet all in the topic.
    pub pending_checkpoints: u64,
    /// The changelog is being sent a store it did not follow (a replayed one), a batch of keys
    /// per round; until the last, it confirms no partition's state.
    pub seeding: bool,
    /// Keys of that seed the topic acknowledged since this process started.
    pub seed_keys_sent: u64,
    /// Partitions this process took over from the changelog, and the profiles that came with
    /// them (instead of reading the source from its start).
    pub restored_partitions: u64,
    pub restored_profiles: u64,
}

/// The `/v1/status` document.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub source: String,
    pub topic: String,
    pub ready: bool,
    pub broker_connected: bool,
    pub applied: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub duplicates: u64,
    /// The newest event time applied and committed (RFC 3339), the event clock.
    pub as_of: Option<String>,
    pub partitions: Vec<PartitionStatus>,
    pub dead_letters: DeadLetterStatus,
    pub identity_routing: IdentityRoutingStatus,
    pub changelog: ChangelogStatus,
    pub checkpoints: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: u32,
}

/// Prometheus metrics of the ingest pipeline.
pub struct IngestMetrics {
    pub records: Counter,
    pub applied: Counter,
    pub duplicates: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub lag: Family<PartitionLabel, Gauge>,
    pub events_per_second: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub checkpoint_seconds: Histogram,
    pub dead_letters_delivered: Counter,
    pub dead_letters_pending: Gauge,
}

impl IngestMetrics {
    fn new() -> Self {
        Self {
            records: Counter::default(),
            applied: Counter::default(),
            duplicates: Counter::default(),
            rejected: Family::default(),
            lag: Family::default(),
            events_per_second: Gauge::default(),
            checkpoint_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            dead_letters_delivered: Counter::default(),
            dead_letters_pending: Gauge::default(),
        }
    }

    /// Registers every metric under the `patron` prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "patron_ingest_records",
            "Records read from the source",
            self.records.clone(),
        );
        registry.register(
            "patron_ingest_applied",
            "Events applied to customer state",
            self.applied.clone(),
        );
        registry.register(
            "patron_ingest_duplicates",
            "Producer duplicates caught by event_id and not applied again",
            self.duplicates.clone(),
        );
        registry.register(
            "patron_ingest_rejected",
            "Records rejected to the dead-letter sink, by reason",
            self.rejected.clone(),
        );
        registry.register(
            "patron_ingest_lag",
            "Records between the committed offset and the log end, per partition",
            self.lag.clone(),
        );
        registry.register(
            "patron_ingest_events_per_second",
            "Records read per second over the last checkpoint period",
            self.events_per_second.clone(),
        );
        registry.register(
            "patron_checkpoint_duration_seconds",
            "Time to commit one checkpoint (state and offsets in one transaction)",
            self.checkpoint_seconds.clone(),
        );
        registry.register(
            "patron_dead_letters_delivered",
            "Dead letters acknowledged by the dead-letter topic",
            self.dead_letters_delivered.clone(),
        );
        registry.register(
            "patron_dead_letters_pending",
            "Dead letters committed but not yet acknowledged by the dead-letter topic",
            self.dead_letters_pending.clone(),
        );
    }
}

/// Shared, thread-safe status of one ingest pipeline.
pub struct IngestStatus {
    source: String,
    topic: String,
    dlq_topic: String,
    pub broker_connected: AtomicBool,
    /// Set once the store is open and the pipeline is running.
    pub running: AtomicBool,
    partitions: Mutex<BTreeMap<u32, PartitionStatus>>,
    committed: Mutex<StoreCounters>,
    checkpoints: AtomicU64,
    dead_letters_pending: AtomicU64,
    dead_letters_delivered: AtomicU64,
    identity_routing: Mutex<IdentityRoutingStatus>,
    changelog: Mutex<ChangelogStatus>,
    checkpoint_micros: Mutex<hdrhistogram::Histogram<u64>>,
    pub metrics: IngestMetrics,
}

impl IngestStatus {
    pub fn new(source: &str, topic: &str, dlq_topic: &str) -> Self {
        Self {
            source: source.to_owned(),
            topic: topic.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            broker_connected: AtomicBool::new(false),
            running: AtomicBool::new(false),
            partitions: Mutex::new(BTreeMap::new()),
            committed: Mutex::new(StoreCounters::default()),
            checkpoints: AtomicU64::new(0),
            dead_letters_pending: AtomicU64::new(0),
            dead_letters_delivered: AtomicU64::new(0),
            identity_routing: Mutex::default(),
            changelog: Mutex::default(),
            checkpoint_micros: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
                    .expect("valid histogram bounds"),
            ),
            metrics: IngestMetrics::new(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Ready: the pipeline runs on an open store and the broker answers.
    pub fn is_ready(&self) -> bool {
        self.running.load(Ordering::Relaxed) && self.broker_connected.load(Ordering::Relaxed)
    }

    fn with_partition(&self, partition: u32, f: impl FnOnce(&mut PartitionStatus)) {
        let mut map = self.partitions.lock().expect("status lock");
        let entry = map
            .entry(partition)
            .or_insert_with(|| PartitionStatus::new(partition));
        f(entry);
        entry.refresh_lag();
        let lag = entry.lag.unwrap_or(0);
        self.metrics
            .lag
            .get_or_create(&PartitionLabel { partition })
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    pub(crate) fn assigned(&self, partition: u32, committed: u64) {
        self.with_partition(partition, |p| {
            p.committed_offset = committed;
            p.applied_offset = committed;
            p.state = PartitionState::Reading;
            p.message = None;
        });
    }

    pub(crate) fn released(&self, partition: u32) {
        self.with_partition(partition, |p| {
            if p.state != PartitionState::Stopped {
                p.state = PartitionState::Released;
            }
        });
    }

    pub(crate) fn stopped(&self, partition: u32, message: String) {
        self.with_partition(partition, |p| {
            p.state = PartitionState::Stopped;
            p.message = Some(message);
        });
    }

    /// Notes records the broker dropped before they were read (reported, never hidden).
    pub(crate) fn lost(&self, partition: u32, message: String) {
        self.with_partition(partition, |p| p.message = Some(message));
    }

    pub(crate) fn high_watermark(&self, partition: u32, hw: u64) {
        self.with_partition(partition, |p| {
            p.high_watermark = Some(hw);
            if p.state == PartitionState::CaughtUp && hw > p.applied_offset {
                p.state = PartitionState::Reading;
            }
        });
    }

    /// The consumer reached the end of the partition at `next_offset`.
    pub(crate) fn end_of_partition(&self, partition: u32, next_offset: Option<u64>) {
        self.with_partition(partition, |p| {
            if let Some(n) = next_offset {
                p.high_watermark = Some(p.high_watermark.map_or(n, |hw| hw.max(n)));
            }
            if p.state == PartitionState::Reading {
                p.state = PartitionState::CaughtUp;
            }
        });
    }

    pub(crate) fn applied_through(&self, partition: u32, next_offset: u64) {
        let mut map = self.partitions.lock().expect("status lock");
        if let Some(p) = map.get_mut(&partition) {
            p.applied_offset = next_offset;
        }
    }

    /// Publishes the store's counters as this process found them, before its first checkpoint.
    pub(crate) fn restored(&self, counters: &StoreCounters) {
        *self.committed.lock().expect("status lock") = counters.clone();
    }

    /// Publishes what a checkpoint made durable.
    pub(crate) fn committed(
        &self,
        counters: &StoreCounters,
        offsets: &[(u32, u64)],
        took: Duration,
    ) {
        for &(partition, next) in offsets {
            self.with_partition(partition, |p| p.committed_offset = next);
        }
        *self.committed.lock().expect("status lock") = counters.clone();
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.metrics.checkpoint_seconds.observe(took.as_secs_f64());
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .checkpoint_micros
            .lock()
            .expect("status lock")
            .record(micros.min(600_000_000));
    }

    pub(crate) fn dead_letters(&self, pending: u64, newly_delivered: u64) {
        self.dead_letters_pending.store(pending, Ordering::Relaxed);
        self.dead_letters_delivered
            .fetch_add(newly_delivered, Ordering::Relaxed);
        self.metrics
            .dead_letters_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.metrics.dead_letters_delivered.inc_by(newly_delivered);
    }

    pub(crate) fn identity_routing(&self, now: IdentityRoutingStatus) {
        *self.identity_routing.lock().expect("status lock") = now;
    }

    pub(crate) fn changelog(&self, now: ChangelogStatus) {
        *self.changelog.lock().expect("status lock") = now;
    }

    /// The partitions this instance reads now (assigned, not released).
    pub fn owned_partitions(&self) -> Vec<u32> {
        self.partitions
            .lock()
            .expect("status lock")
            .values()
            .filter(|p| p.state != PartitionState::Released)
            .map(|p| p.partition)
            .collect()
    }

    /// Checkpoint duration quantile (0..1), from every checkpoint of this process.
    pub fn checkpoint_quantile(&self, q: f64) -> Duration {
        let h = self.checkpoint_micros.lock().expect("status lock");
        Duration::from_micros(if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        })
    }

    /// Records rejected by this process, all reasons.
    pub fn rejected_total(&self) -> u64 {
        let committed = self.committed.lock().expect("status lock");
        committed.rejected_total()
    }

    pub fn checkpoint_count(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> StatusReport {
        let counters = self.committed.lock().expect("status lock").clone();
        let partitions = self
            .partitions
            .lock()
            .expect("status lock")
            .values()
            .cloned()
            .collect();
        StatusReport {
            source: self.source.clone(),
            topic: self.topic.clone(),
            ready: self.is_ready(),
            broker_connected: self.broker_connected.load(Ordering::Relaxed),
            applied: counters.applied,
            rejected: counters.rejected_total(),
            rejected_by_reason: counters.rejected.clone(),
            duplicates: counters.duplicates,
            as_of: counters.as_of.map(patron_core::time::to_rfc3339),
            partitions,
            dead_letters: DeadLetterStatus {
                pending: self.dead_letters_pending.load(Ordering::Relaxed),
                delivered: self.dead_letters_delivered.load(Ordering::Relaxed),
                topic: self.dlq_topic.clone(),
            },
            identity_routing: self.identity_routing.lock().expect("status lock").clone(),
            changelog: self.changelog.lock().expect("status lock").clone(),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
        }
    }
}
