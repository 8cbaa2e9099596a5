//! Kafka ingestion: consume, decode, apply, and checkpoint state with offsets.
//!
//! Two threads:
//! - **Consumer** (the caller's thread): polls rdkafka, gathers records into batches, hands
//!   each batch to the rayon pool to decode, and sends it down a bounded channel without waiting
//!   for the decode. Rebalance callbacks run here, inside `poll`.
//! - **Writer**: owns the [`Applier`]. It applies batches in order, each once decoded, and every
//!   `[checkpoint] interval` or `max_events` commits profiles, positions (next offset per
//!   partition) and dead letters in one redb transaction.
//!
//! Offsets live in the store, not in Kafka: on assignment the consumer asks the writer (through
//! the same ordered channel, so every earlier batch is applied first) for the stored positions
//! and seeks there. On revocation it flushes its partial batch, and the writer checkpoints
//! before the partitions are released. Kafka commits are sent only so lag tools work.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use patron_core::config::PatronConfig;
use patron_core::decode::{Decoder, RejectReason, Rejection};
use patron_core::event::Event;
use patron_core::state::{ApplyContext, ApplyOutcome, CustomerState};
use patron_core::time::{Millis, now_millis};
use patron_store::{DeadLetterRecord, RouteKind, SourcePosition, Store};
use rayon::prelude::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::changelog::Changelog;
use super::dead_letters::DeadLetterForwarder;
use super::routes::{RouteForwarder, RouteHeader, RouteMarks, parse_route};
use super::status::{ChangelogStatus, IdentityRoutingStatus, IngestStatus, ReasonLabel};
use super::{KafkaSource, client_config, partition_count};
use crate::applier::{Applier, Placement};
use crate::replay::ReplayPacing;
use crate::{Result, StreamError};

/// Records per decoded batch, and the longest a partial batch waits.
const BATCH_RECORDS: usize = 4096;
/// Batches (decoded, or still decoding) waiting for the writer. Deep enough that the consumer
/// goes on fetching and decoding through a whole checkpoint (0.5 s at a few hundred thousand
/// records a second) instead of stalling after a few batches; at most ~130k records, some tens
/// of MB.
const QUEUED_BATCHES: usize = 32;
const BATCH_WAIT: Duration = Duration::from_millis(20);
const POLL_WAIT: Duration = Duration::from_millis(100);
const BROKER_WAIT: Duration = Duration::from_secs(10);
/// An instance with no partitions rejoins its group after this long, then ever less often.
const REJOIN_FIRST: Duration = Duration::from_secs(15);
const REJOIN_MAX: Duration = Duration::from_secs(300);

/// Where partitions with no stored position start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    /// The first offset at or after this time (the broker's offsets-for-times).
    Timestamp(Millis),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `serve`: join the consumer group and follow the topic until stopped.
    Follow,
    /// `replay --from-kafka --until-end`: read every partition to its end, then return.
    UntilEnd,
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub source: KafkaSource,
    pub mode: Mode,
    pub start: StartAt,
    /// [`Mode::UntilEnd`] only: read these partitions instead of all of them (one instance's
    /// share; identity merges with the others then go through the log).
    pub partitions: Option<Vec<u32>>,
}

/// What one run did (not the store's lifetime totals).
#[derive(Debug, Clone, Default)]
pub struct IngestSummary {
    pub records: u64,
    pub applied: u64,
    pub duplicates: u64,
    /// Events dropped because their customer was erased after them.
    pub erased: u64,
    pub rejected: BTreeMap<String, u64>,
    pub elapsed: Duration,
    pub checkpoints: u64,
    pub checkpoint_p99: Duration,
    pub dead_letters_pending: u64,
    /// Identity records produced for other partitions' owners (handoffs, merges, forwards,
    /// forgets), and those received and applied.
    pub routed_out: u64,
    pub routed_in: u64,
    /// Identity records dropped as copies of ones applied before (resent after a crash, or
    /// produced again by a rebuild).
    pub routed_copies: u64,
    /// Partitions stopped on an error, with the reason.
    pub stopped: Vec<(u32, String)>,
}

impl IngestSummary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Records gathered from `poll`, payloads and keys copied into one buffer.
#[derive(Default)]
struct RawBatch {
    data: Vec<u8>,
    records: Vec<RawRecord>,
    started: Option<Instant>,
}

struct RawRecord {
    partition: u32,
    offset: u64,
    key: Option<Range<usize>>,
    payload: Range<usize>,
    /// An identity record from another instance (or one whose headers cannot be read).
    route: Option<std::result::Result<RouteHeader, String>>,
}

impl RawBatch {
    fn push(
        &mut self,
        (partition, offset): (u32, u64),
        key: Option<&[u8]>,
        payload: &[u8],
        route: Option<std::result::Result<RouteHeader, String>>,
    ) {
        let key = key.map(|k| {
            let start = self.data.len();
            self.data.extend_from_slice(k);
            start..self.data.len()
        });
        let start = self.data.len();
        self.data.extend_from_slice(payload);
        self.records.push(RawRecord {
            partition,
            offset,
            key,
            payload: start..self.data.len(),
            route,
        });
        self.started.get_or_insert_with(Instant::now);
    }
}

struct DecodedBatch {
    raw: RawBatch,
    /// `None` for identity records that carry no event (handoffs, merges, forgets).
    decoded: Vec<Option<std::result::Result<Event, Rejection>>>,
}

/// A batch handed to the rayon pool for decoding: the writer takes it from here, in the order the
/// consumer read it, once it is decoded. The consumer goes on polling meanwhile, so reading the
/// next batch overlaps decoding this one (before, the consumer waited for each batch's decode,
/// and the writer often waited for the consumer).
type DecodingBatch = Receiver<DecodedBatch>;

enum Work {
    Batch(DecodingBatch),
    /// Stored positions of these partitions, answered after every earlier batch is applied.
    Positions {
        partitions: Vec<u32>,
        /// Partitions of the topic; owning fewer turns on identity routing.
        partition_count: u32,
        reply: Sender<Vec<(u32, Option<SourcePosition>)>>,
    },
    /// Checkpoint now; the partitions are being released.
    Release {
        partitions: Vec<u32>,
        reply: Sender<()>,
    },
    /// Every batch before this one reached the end of every partition the consumer reads
    /// ([`Mode::Follow`]): until the next batch, the writer holds all the log has.
    CaughtUp,
}

/// What the consumer thread knows about one assigned partition.
struct Reading {
    /// The next offset to read.
    next: u64,
    /// A record or the end of the partition arrived since assignment: the offset is valid.
    confirmed: bool,
    at_end: bool,
    stopped: bool,
    /// Reading from the log start (or the end): the first record's offset is whatever it is.
    open_start: bool,
    /// Re-reads done to check a jump in offsets past `next` (see [`GAP_REREADS`]).
    gap_rereads: u32,
    /// When a record last arrived (or the partition was assigned).
    last_arrival: Instant,
}

/// A partition behind its high watermark that received nothing this long is re-read from
/// further back (the broker may have skipped the rest of the batch holding its position).
const STALL: Duration = Duration::from_secs(5);

/// How far back a jump in offsets is re-read from, and how often (×10 each time), before the
/// jump is accepted as a real gap in the log.
const GAP_REREAD_BACK: u64 = 2_000;
const GAP_REREADS: u32 = 3;

struct IngestContext {
    topic: String,
    incarnation: String,
    start: StartAt,
    work: Sender<Work>,
    pending: Mutex<RawBatch>,
    decoder: Arc<Decoder>,
    status: Arc<IngestStatus>,
    reading: Mutex<BTreeMap<u32, Reading>>,
    /// Set when the writer has gone away (it failed): the consumer stops.
    writer_gone: AtomicBool,
}

impl ClientContext for IngestContext {
    fn stats(&self, stats: Statistics) {
        let up = stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        self.status.broker_connected.store(up, Ordering::Relaxed);
        let reading = self.reading.lock().expect("reading lock");
        if let Some(topic) = stats.topics.get(&self.topic) {
            for (p, part) in &topic.partitions {
                let Ok(p) = u32::try_from(*p) else { continue };
                if part.hi_offset >= 0 && reading.contains_key(&p) {
                    self.status.high_watermark(p, part.hi_offset as u64);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            return; // Reported through poll as well; the end of a partition is no error.
        }
        if matches!(
            error,
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)
                | KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure)
        ) {
            self.status.broker_connected.store(false, Ordering::Relaxed);
        }
        warn!("kafka: {error}: {reason}");
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<u32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                info!(?partitions, "partitions assigned");
                match self.assignment(consumer, &partitions) {
                    Ok(list) => {
                        if let Err(e) = consumer.assign(&list) {
                            error!("cannot assign partitions {partitions:?}: {e}");
                        }
                    }
                    Err(e) => {
                        error!("cannot restore positions for partitions {partitions:?}: {e}");
                        let _ = consumer.assign(&TopicPartitionList::new());
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(
                    ?partitions,
                    "partitions revoked: checkpointing before release"
                );
                self.release(&partitions);
                let _ = consumer.unassign();
            }
            other => {
                error!("rebalance failed: {other:?}; releasing every partition");
                let all: Vec<u32> = self
                    .reading
                    .lock()
                    .expect("reading lock")
                    .keys()
                    .copied()
                    .collect();
                self.release(&all);
                let _ = consumer.unassign();
            }
        }
    }
}

impl IngestContext {
    /// Hands the partial batch to the writer, decoded on the rayon pool without waiting for it.
    /// False when the writer is gone.
    fn flush(&self) -> bool {
        let raw = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        if raw.records.is_empty() {
            return !self.writer_gone.load(Ordering::Relaxed);
        }
        let now = now_millis();
        let decoder = Arc::clone(&self.decoder);
        let (done, decoding) = crossbeam_channel::bounded(1);
        rayon::spawn(move || {
            let decoded = raw
                .records
                .par_iter()
                .map(|r| match &r.route {
                    Some(Ok(h)) if h.kind != RouteKind::Forward => None,
                    Some(Err(_)) => None,
                    _ => Some(decoder.decode(&raw.data[r.payload.clone()], now)),
                })
                .collect();
            // A writer that has gone no longer wants it.
            let _ = done.send(DecodedBatch { raw, decoded });
        });
        self.send(Work::Batch(decoding))
    }

    fn send(&self, work: Work) -> bool {
        if self.work.send(work).is_err() {
            self.writer_gone.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The offsets to read `partitions` from: stored positions, else the start policy.
    fn assignment(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[u32],
    ) -> Result<TopicPartitionList> {
        self.flush();
        let partition_count = match partition_count(consumer, &self.topic) {
            Ok(n) => n,
            Err(e) => {
                warn!("{e}; identity routing stays as it was");
                0
            }
        };
        let (reply, answer) = crossbeam_channel::bounded(1);
        if !self.send(Work::Positions {
            partitions: partitions.to_vec(),
            partition_count,
            reply,
        }) {
            return Err(StreamError::Source("the writer stopped".into()));
        }
        let positions = answer
            .recv()
            .map_err(|_| StreamError::Source("the writer stopped".into()))?;
        let mut list = TopicPartitionList::new();
        let mut fresh = Vec::new();
        let mut reading = self.reading.lock().expect("reading lock");
        for (p, stored) in positions {
            let next = match stored {
                Some(pos) if pos.incarnation == self.incarnation => Some(pos.next_offset),
                Some(pos) => {
                    warn!(
                        partition = p,
                        old = %pos.incarnation,
                        new = %self.incarnation,
                        "the store's position (offset {}) belongs to an earlier log; reading the new log from its start (state carries over)",
                        pos.next_offset
                    );
                    None
                }
                None => None,
            };
            match next {
                Some(n) => {
                    list.add_partition_offset(&self.topic, p as i32, Offset::Offset(n as i64))
                        .map_err(|e| StreamError::Source(e.to_string()))?;
                    reading.insert(p, new_reading(n, false));
                    self.status.assigned(p, n);
                }
                None => fresh.push(p),
            }
        }
        drop(reading);
        for (p, offset) in self.start_offsets(consumer, &fresh)? {
            list.add_partition_offset(&self.topic, p as i32, offset)
                .map_err(|e| StreamError::Source(e.to_string()))?;
            let reading = match offset {
                Offset::Offset(n) => new_reading(n.max(0) as u64, false),
                _ => new_reading(0, true),
            };
            self.reading
                .lock()
                .expect("reading lock")
                .insert(p, reading);
            self.status.assigned(p, 0);
        }
        Ok(list)
    }

    fn start_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[u32],
    ) -> Result<Vec<(u32, Offset)>> {
        match self.start {
            StartAt::Earliest => Ok(partitions.iter().map(|&p| (p, Offset::Beginning)).collect()),
            StartAt::Timestamp(ts) if !partitions.is_empty() => {
                let mut query = TopicPartitionList::new();
                for &p in partitions {
                    query
                        .add_partition_offset(&self.topic, p as i32, Offset::Offset(ts))
                        .map_err(|e| StreamError::Source(e.to_string()))?;
                }
                let found = consumer
                    .offsets_for_times(query, BROKER_WAIT)
                    .map_err(|e| StreamError::Source(format!("offsets for --start: {e}")))?;
                Ok(found
                    .elements()
                    .iter()
                    .filter_map(|e| {
                        let p = u32::try_from(e.partition()).ok()?;
                        Some((p, e.offset()))
                    })
                    .collect())
            }
            StartAt::Timestamp(_) => Ok(Vec::new()),
        }
    }

    /// Checkpoints everything read from `partitions`, then forgets them.
    fn release(&self, partitions: &[u32]) {
        if partitions.is_empty() {
            return;
        }
        self.flush();
        let (reply, done) = crossbeam_channel::bounded(1);
        if self.send(Work::Release {
            partitions: partitions.to_vec(),
            reply,
        }) {
            let _ = done.recv();
        }
        let mut reading = self.reading.lock().expect("reading lock");
        for p in partitions {
            reading.remove(p);
        }
    }

    /// After an offset-out-of-range error: finds the partition whose position is outside the
    /// log. Ahead of the log end (a recreated or truncated topic) stops the partition; behind
    /// the log start (records deleted before they were read) is reported and skipped forward.
    fn check_ranges(&self, consumer: &BaseConsumer<Self>) {
        let suspects: Vec<(u32, u64)> = self
            .reading
            .lock()
            .expect("reading lock")
            .iter()
            .filter(|(_, r)| !r.confirmed && !r.stopped)
            .map(|(p, r)| (*p, r.next))
            .collect();
        for (p, next) in suspects {
            let Ok((low, high)) = consumer.fetch_watermarks(&self.topic, p as i32, BROKER_WAIT)
            else {
                continue;
            };
            let (low, high) = (low.max(0) as u64, high.max(0) as u64);
            if next > high {
                let message = format!(
                    "the store has read partition {p} of {} up to offset {next}, but the log ends at {high}: the topic was recreated or truncated. This partition is stopped; rebuild its state (replay) or restore the topic",
                    self.topic
                );
                error!("{message}");
                let mut tpl = TopicPartitionList::new();
                let _ = tpl.add_partition(&self.topic, p as i32);
                let _ = consumer.pause(&tpl);
                self.status.stopped(p, message);
                if let Some(r) = self.reading.lock().expect("reading lock").get_mut(&p) {
                    r.stopped = true;
                }
            } else if next < low {
                let message = format!(
                    "partition {p}: offsets {next}..{low} were deleted by the broker before they were read ({} records lost); reading on from {low}",
                    low - next
                );
                error!("{message}");
                self.status.lost(p, message);
                if consumer
                    .seek(
                        &self.topic,
                        p as i32,
                        Offset::Offset(low as i64),
                        BROKER_WAIT,
                    )
                    .is_ok()
                    && let Some(r) = self.reading.lock().expect("reading lock").get_mut(&p)
                {
                    r.next = low;
                }
            }
        }
    }
}

fn new_reading(next: u64, open_start: bool) -> Reading {
    Reading {
        next,
        confirmed: false,
        at_end: false,
        stopped: false,
        open_start,
        gap_rereads: 0,
        last_arrival: Instant::now(),
    }
}

/// What to do with a record the consumer received.
enum Arrival {
    Accept,
    /// Before the position (a re-read after a seek back): already applied, drop it.
    Drop,
    /// Past the position: the broker skipped records. Seek back to this offset and re-read.
    Reread(u64),
}

/// Checks a record's offset against the partition's position.
///
/// Some brokers (tansu 0.6) answer a fetch from an offset inside a record batch with the *next*
/// batch, silently skipping the rest of the one holding the offset. A restart resumes from a
/// stored offset that is usually inside a batch, so Patron checks that the first record is the
/// one it asked for; if offsets jump, it re-reads from further back and drops what it already
/// has. A jump that survives the re-reads is a real gap (compaction, transaction markers).
fn arrival(r: &mut Reading, offset: u64) -> Arrival {
    r.last_arrival = Instant::now();
    if r.open_start {
        r.open_start = false;
        r.next = offset;
    }
    if offset < r.next {
        return Arrival::Drop;
    }
    if offset > r.next && r.gap_rereads < GAP_REREADS {
        let back = GAP_REREAD_BACK * 10u64.pow(r.gap_rereads);
        r.gap_rereads += 1;
        return Arrival::Reread(r.next.saturating_sub(back));
    }
    if offset > r.next {
        warn!(
            "offsets jump from {} to {offset}: treating it as a gap in the log",
            r.next
        );
    }
    r.gap_rereads = 0;
    r.next = offset + 1;
    r.confirmed = true;
    r.at_end = false;
    Arrival::Accept
}

/// Runs the pipeline on the calling thread until `stop` is set ([`Mode::Follow`]) or every
/// partition reaches its end ([`Mode::UntilEnd`]); the last checkpoint is committed before
/// it returns.
pub fn run(
    store: Store,
    config: &PatronConfig,
    opts: &IngestOptions,
    status: Arc<IngestStatus>,
    stop: &AtomicBool,
) -> Result<IngestSummary> {
    let started = Instant::now();
    let mut applier = Applier::open(store, ApplyContext::from_config(config))?;
    status.restored(applier.counters());
    let forwarder = DeadLetterForwarder::open(
        &opts.source.brokers,
        &opts.source.dlq_topic,
        applier.snapshot(),
    )?;
    let changelog = if opts.source.changelog && opts.mode == Mode::Follow {
        applier.track_changes()?;
        Some(Changelog::open(
            &opts.source.brokers,
            &opts.source.topic,
            &opts.source.position_key(),
            forwarder.store_id(),
            opts.source.changelog_seed_batch,
        )?)
    } else {
        None
    };
    let routes =
        RouteForwarder::open(&opts.source.brokers, &opts.source.topic, applier.snapshot())?;
    let (work_tx, work_rx) = crossbeam_channel::bounded::<Work>(QUEUED_BATCHES);
    let committed_offsets: Arc<Mutex<Vec<(u32, u64)>>> = Arc::default();
    let writer = Writer {
        applier,
        forwarder,
        routes,
        changelog,
        mode: opts.mode,
        marks: RouteMarks::new(&opts.source.position_key(), &opts.source.incarnation),
        owned: BTreeSet::new(),
        source_key: opts.source.position_key(),
        incarnation: opts.source.incarnation.clone(),
        topic: opts.source.topic.clone(),
        status: status.clone(),
        committed_offsets: committed_offsets.clone(),
        offsets: BTreeMap::new(),
        summary: IngestSummary::default(),
        max_events: config.checkpoint.max_events.max(1),
        interval: config.checkpoint.interval.max(Duration::from_millis(10)),
        // A replay from the topic checkpoints as rarely as one from files (see there); `serve`
        // keeps the configured interval, which is how stale its answers may be.
        replay_pacing: match opts.mode {
            Mode::UntilEnd => Some(ReplayPacing::new(config.checkpoint.interval)),
            Mode::Follow => None,
        },
        last_checkpoint: Instant::now(),
        records_at_checkpoint: 0,
        caught_up: false,
        catch_up: CatchUp::new(),
    };
    let context = IngestContext {
        topic: opts.source.topic.clone(),
        incarnation: opts.source.incarnation.clone(),
        start: opts.start,
        work: work_tx,
        pending: Mutex::default(),
        decoder: Arc::new(Decoder::from_config(config)),
        status: status.clone(),
        reading: Mutex::default(),
        writer_gone: AtomicBool::new(false),
    };
    let session = opts.source.session_timeout;
    let heartbeat = (session / 3).min(Duration::from_secs(1));
    let millis = |d: Duration| d.as_millis().max(1);
    let consumer: BaseConsumer<IngestContext> = client_config(&opts.source.brokers)
        .set("group.id", &opts.source.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // A stored offset outside the log is an error to report, never a silent reset.
        .set("auto.offset.reset", "error")
        .set("partition.assignment.strategy", "range,roundrobin")
        .set("session.timeout.ms", millis(session).to_string())
        .set("heartbeat.interval.ms", millis(heartbeat).to_string())
        .set("statistics.interval.ms", "1000")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "65536")
        .create_with_context(context)
        .map_err(|e| StreamError::Source(format!("kafka consumer: {e}")))?;

    status.running.store(true, Ordering::Relaxed);
    let result = std::thread::scope(|scope| {
        let writer_thread = std::thread::Builder::new()
            .name("patron-writer".into())
            .spawn_scoped(scope, move || writer.run(work_rx))
            .map_err(|e| StreamError::Source(format!("cannot start the writer thread: {e}")))?;
        let consumed = consume(&consumer, opts, stop, &committed_offsets);
        status.running.store(false, Ordering::Relaxed);
        // Dropping the consumer leaves the group (its revoke callback checkpoints) and closes the
        // channel; the writer then commits its last checkpoint and returns.
        drop(consumer);
        let written = writer_thread
            .join()
            .map_err(|_| StreamError::Source("the writer thread panicked".into()))?;
        consumed?;
        written
    });
    let mut summary = result?;
    summary.elapsed = started.elapsed();
    summary.checkpoint_p99 = status.checkpoint_quantile(0.99);
    summary.stopped = status
        .report()
        .partitions
        .into_iter()
        .filter_map(|p| {
            p.message
                .filter(|_| p.state == super::status::PartitionState::Stopped)
                .map(|m| (p.partition, m))
        })
        .collect();
    Ok(summary)
}

/// When a writer that has caught up with the log commits without waiting out the interval:
/// within [`CatchUp::WINDOW`] of a backlog (a full batch, or the first batch after a start, which
/// may be one), at least [`CatchUp::GAP`] after the last checkpoint. So the end of a backlog is
/// committed at once, and so are the identity records that make their hops through the log
/// after it, while a stream the writer keeps up with (batches that are not full) is committed
/// every interval, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CatchUp {
    /// The first batch is still to come.
    first: bool,
    /// Until when a caught-up writer commits sooner than the interval.
    until: Option<Instant>,
}

impl CatchUp {
    const GAP: Duration = Duration::from_millis(100);
    const WINDOW: Duration = Duration::from_secs(2);

    fn new() -> Self {
        Self {
            first: true,
            until: None,
        }
    }

    /// A batch of `records` arrived at `now`.
    fn batch(&mut self, records: usize, now: Instant) {
        if records >= BATCH_RECORDS || self.first {
            self.until = Some(now + Self::WINDOW);
        }
        self.first = false;
    }

    /// How long after the last checkpoint a caught-up writer commits at `now`, if sooner than
    /// `interval`.
    fn gap(&self, interval: Duration, now: Instant) -> Option<Duration> {
        self.until
            .filter(|until| now < *until && Self::GAP < interval)
            .map(|_| Self::GAP)
    }
}

/// How long the writer waits for work before it looks at the checkpoint again. With something
/// owed, until the interval since the last checkpoint is up; with nothing owed there is no
/// deadline, so a whole interval (work wakes it sooner), rather than waking every millisecond of
/// an idle stretch once the interval has run out.
fn checkpoint_wait(owed: bool, interval: Duration, since_checkpoint: Duration) -> Duration {
    if owed {
        interval
            .saturating_sub(since_checkpoint)
            .max(Duration::from_millis(1))
    } else {
        interval
    }
}

/// The consumer loop.
fn consume(
    consumer: &BaseConsumer<IngestContext>,
    opts: &IngestOptions,
    stop: &AtomicBool,
    committed_offsets: &Mutex<Vec<(u32, u64)>>,
) -> Result<()> {
    let ctx = consumer.context();
    let topic = opts.source.topic.as_str();
    match opts.mode {
        Mode::Follow => consumer
            .subscribe(&[topic])
            .map_err(|e| StreamError::Source(format!("subscribe to {topic}: {e}")))?,
        Mode::UntilEnd => {
            let metadata = consumer
                .fetch_metadata(Some(topic), BROKER_WAIT)
                .map_err(|e| StreamError::Source(format!("metadata of {topic}: {e}")))?;
            let all: Vec<u32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id() as u32))
                .collect();
            if all.is_empty() {
                return Err(StreamError::Usage(format!(
                    "topic {topic} does not exist on {} (or has no partitions)",
                    opts.source.brokers
                )));
            }
            let partitions = match &opts.partitions {
                None => all,
                Some(chosen) => {
                    if let Some(p) = chosen.iter().find(|p| !all.contains(p)) {
                        return Err(StreamError::Usage(format!(
                            "topic {topic} has no partition {p} (it has {})",
                            all.len()
                        )));
                    }
                    chosen.clone()
                }
            };
            let list = ctx.assignment(consumer, &partitions)?;
            consumer
                .assign(&list)
                .map_err(|e| StreamError::Source(format!("assign {topic}: {e}")))?;
        }
    }
    let mut last_unstall = Instant::now();
    let mut idle_since = Instant::now();
    let mut rejoin_after = REJOIN_FIRST;
    loop {
        if stop.load(Ordering::Relaxed) || ctx.writer_gone.load(Ordering::Relaxed) {
            break;
        }
        if last_unstall.elapsed() >= Duration::from_secs(1) {
            last_unstall = Instant::now();
            unstall(consumer, topic);
            if opts.mode == Mode::Follow {
                let assigned = !ctx.reading.lock().expect("reading lock").is_empty();
                if assigned {
                    idle_since = Instant::now();
                    rejoin_after = REJOIN_FIRST;
                } else if idle_since.elapsed() >= rejoin_after {
                    // Some brokers (tansu 0.6) never hand out the partitions of a member that
                    // died without leaving; joining again makes the group rebalance.
                    info!("no partitions assigned for {rejoin_after:?}; joining the group again");
                    consumer.unsubscribe();
                    consumer
                        .subscribe(&[topic])
                        .map_err(|e| StreamError::Source(format!("subscribe to {topic}: {e}")))?;
                    idle_since = Instant::now();
                    rejoin_after = (rejoin_after * 2).min(REJOIN_MAX);
                }
            }
        }
        if opts.mode == Mode::Follow {
            let offsets = std::mem::take(&mut *committed_offsets.lock().expect("offsets lock"));
            if !offsets.is_empty() {
                commit_for_lag_tools(consumer, topic, &offsets);
            }
        }
        let polled = consumer.poll(POLL_WAIT);
        let mut flush_now = false;
        let mut caught_up = false;
        match polled {
            None => flush_now = true,
            Some(Ok(m)) => {
                let (Ok(p), Ok(offset)) = (u32::try_from(m.partition()), u64::try_from(m.offset()))
                else {
                    continue;
                };
                let verdict = ctx
                    .reading
                    .lock()
                    .expect("reading lock")
                    .get_mut(&p)
                    .map_or(Arrival::Accept, |r| arrival(r, offset));
                match verdict {
                    Arrival::Accept => {}
                    Arrival::Drop => continue,
                    Arrival::Reread(from) => {
                        drop(m);
                        reread(consumer, topic, p, from);
                        continue;
                    }
                }
                let route = parse_route(m.headers());
                let mut pending = ctx.pending.lock().expect("pending lock");
                pending.push((p, offset), m.key(), m.payload().unwrap_or_default(), route);
                flush_now = pending.records.len() >= BATCH_RECORDS
                    || pending.started.is_some_and(|s| s.elapsed() >= BATCH_WAIT);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                flush_now = true;
                let p = p as u32;
                let next = {
                    let mut reading = ctx.reading.lock().expect("reading lock");
                    let next = reading.get_mut(&p).map(|r| {
                        r.confirmed = true;
                        r.at_end = true;
                        r.next
                    });
                    caught_up = opts.mode == Mode::Follow && every_partition_at_end(&reading);
                    next
                };
                ctx.status.end_of_partition(p, next);
            }
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
            ))) => {
                ctx.check_ranges(consumer);
            }
            Some(Err(e)) => {
                warn!("kafka consumer: {e}");
            }
        }
        if flush_now && !ctx.flush() {
            break;
        }
        if caught_up && !ctx.send(Work::CaughtUp) {
            break;
        }
        if opts.mode == Mode::UntilEnd {
            let reading = ctx.reading.lock().expect("reading lock");
            if every_partition_at_end(&reading) {
                break;
            }
        }
    }
    ctx.flush();
    Ok(())
}

/// Whether the consumer has read every partition it reads to its end (or stopped reading it).
fn every_partition_at_end(reading: &BTreeMap<u32, Reading>) -> bool {
    reading.values().all(|r| r.at_end || r.stopped)
}

/// Seeks partition `p` back to `from` (never below the log start) to re-read.
fn reread(consumer: &BaseConsumer<IngestContext>, topic: &str, p: u32, from: u64) {
    let low = consumer
        .fetch_watermarks(topic, p as i32, BROKER_WAIT)
        .map_or(0, |(low, _)| low.max(0) as u64);
    let from = from.max(low);
    tracing::debug!(partition = p, from, "offsets jumped; re-reading");
    if let Err(e) = consumer.seek(topic, p as i32, Offset::Offset(from as i64), BROKER_WAIT) {
        warn!("partition {p}: cannot seek back to {from}: {e}");
    }
}

/// Partitions behind their high watermark that received nothing for [`STALL`]: re-read them
/// from further back.
fn unstall(consumer: &BaseConsumer<IngestContext>, topic: &str) {
    let ctx = consumer.context();
    let report = ctx.status.report();
    let mut todo = Vec::new();
    {
        let mut reading = ctx.reading.lock().expect("reading lock");
        for part in &report.partitions {
            let Some(r) = reading.get_mut(&part.partition) else {
                continue;
            };
            let behind = part.high_watermark.is_some_and(|hw| hw > r.next);
            if behind
                && !r.stopped
                && !r.open_start
                && r.last_arrival.elapsed() >= STALL
                && r.gap_rereads < GAP_REREADS
            {
                let back = GAP_REREAD_BACK * 10u64.pow(r.gap_rereads);
                r.gap_rereads += 1;
                r.last_arrival = Instant::now();
                todo.push((part.partition, r.next.saturating_sub(back)));
            }
        }
    }
    for (p, from) in todo {
        reread(consumer, topic, p, from);
    }
}

fn commit_for_lag_tools(
    consumer: &BaseConsumer<IngestContext>,
    topic: &str,
    offsets: &[(u32, u64)],
) {
    let mut tpl = TopicPartitionList::new();
    for &(p, next) in offsets {
        let _ = tpl.add_partition_offset(topic, p as i32, Offset::Offset(next as i64));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!("advisory offset commit failed: {e}");
    }
}

struct Writer {
    applier: Applier,
    forwarder: DeadLetterForwarder,
    routes: RouteForwarder,
    /// `serve` with `[source] changelog` on.
    changelog: Option<Changelog>,
    mode: Mode,
    marks: RouteMarks,
    /// Partitions assigned to this instance now.
    owned: BTreeSet<u32>,
    source_key: String,
    incarnation: String,
    topic: String,
    status: Arc<IngestStatus>,
    committed_offsets: Arc<Mutex<Vec<(u32, u64)>>>,
    /// Next offset applied per partition, this run.
    offsets: BTreeMap<u32, u64>,
    summary: IngestSummary,
    max_events: u64,
    interval: Duration,
    /// `replay --from-kafka`: when to checkpoint before the end (`None` for `serve`).
    replay_pacing: Option<ReplayPacing>,
    last_checkpoint: Instant,
    records_at_checkpoint: u64,
    /// The consumer reached the end of every partition with the batches received so far
    /// ([`Work::CaughtUp`]; a new batch clears it).
    caught_up: bool,
    catch_up: CatchUp,
}

impl Writer {
    fn run(mut self, work: Receiver<Work>) -> Result<IngestSummary> {
        loop {
            let wait = checkpoint_wait(
                self.owes_checkpoint(),
                self.checkpoint_interval(&work),
                self.last_checkpoint.elapsed(),
            );
            match work.recv_timeout(wait) {
                Ok(Work::Batch(decoding)) => {
                    self.caught_up = false;
                    let batch = decoding.recv().map_err(|_| {
                        StreamError::Source("a batch's decoding stopped before its end".into())
                    })?;
                    self.catch_up.batch(batch.raw.records.len(), Instant::now());
                    self.apply(batch)?
                }
                Ok(Work::CaughtUp) => self.caught_up = true,
                Ok(Work::Positions {
                    partitions,
                    partition_count,
                    reply,
                }) => {
                    if let Some(changelog) = &mut self.changelog {
                        changelog.prepare(partition_count);
                    }
                    // Before the partitions count as owned: a round of changelog keys left from
                    // an earlier ownership must not overwrite what the owner since wrote.
                    if let Err(e) = self.restore_if_behind(&partitions) {
                        warn!(
                            ?partitions,
                            "cannot restore from the changelog ({e}); reading the source from the store's positions"
                        );
                    }
                    self.owned.extend(partitions.iter().copied());
                    self.set_routing(partition_count)?;
                    let mut out = Vec::with_capacity(partitions.len());
                    for p in partitions {
                        out.push((p, self.applier.position(&self.source_key, p)?));
                    }
                    let _ = reply.send(out);
                }
                Ok(Work::Release { partitions, reply }) => {
                    self.checkpoint()?;
                    // A clean handover: the changelog holds what was committed.
                    self.flush_changelog()?;
                    for p in partitions {
                        self.owned.remove(&p);
                        self.status.released(p);
                    }
                    let _ = reply.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.checkpoint()?;
                    self.flush_changelog()?;
                    if self.forwarder.has_work() || self.routes.has_work() || self.changelog_owed()
                    {
                        // Record the deliveries of the last round, so a restart need not
                        // look them up in the topic.
                        self.checkpoint()?;
                    }
                    break;
                }
            }
            let due = self.last_checkpoint.elapsed() >= self.checkpoint_interval(&work)
                && self.owes_checkpoint();
            if self.applier.needs_checkpoint(self.max_events) || due {
                self.checkpoint()?;
            }
        }
        self.summary.dead_letters_pending = self.forwarder.pending();
        if self.routes.pending() > 0 {
            warn!(
                pending = self.routes.pending(),
                "identity records for other instances are not yet acknowledged; they are sent at the next start"
            );
        }
        if let Some(changelog) = self.changelog.as_ref().filter(|c| c.seeding()) {
            warn!(
                seed_keys_sent = changelog.counts.seed_keys_sent,
                "the changelog seed is not finished (no partition is confirmed in it yet); it goes on where it stopped at the next start"
            );
        }
        self.summary.checkpoints = self.status.checkpoint_count();
        Ok(self.summary)
    }

    fn apply(&mut self, batch: DecodedBatch) -> Result<()> {
        let DecodedBatch { raw, decoded } = batch;
        let mut last: HashMap<u32, u64> = HashMap::new();
        let (mut applied, mut duplicates, mut erased) = (0u64, 0u64, 0u64);
        for (record, result) in raw.records.iter().zip(decoded) {
            last.insert(record.partition, record.offset + 1);
            self.applier.set_origin(record.partition, record.offset);
            let payload = &raw.data[record.payload.clone()];
            let key = record.key.clone().map(|k| &raw.data[k]);
            let step = match (&record.route, result) {
                (Some(Err(why)), _) => Err(Rejection::new(RejectReason::InvalidRoute, why.clone())),
                (Some(Ok(route)), result) => {
                    self.apply_routed(route, result, record.partition, key, payload)?
                }
                (None, Some(Ok(event))) => {
                    Ok(self.apply_event(&event, record.partition, payload)?)
                }
                (None, Some(Err(rejection))) => Err(rejection),
                (None, None) => Ok(None),
            };
            match step {
                Ok(Some(ApplyOutcome::Applied)) => applied += 1,
                Ok(Some(ApplyOutcome::Duplicate)) => duplicates += 1,
                Ok(Some(ApplyOutcome::Erased)) => erased += 1,
                Ok(None) => {}
                Err(rejection) => self.reject(record, &raw.data, rejection),
            }
        }
        let n = raw.records.len() as u64;
        self.summary.records += n;
        self.summary.applied += applied;
        self.summary.duplicates += duplicates;
        self.summary.erased += erased;
        let m = &self.status.metrics;
        m.records.inc_by(n);
        m.applied.inc_by(applied);
        m.duplicates.inc_by(duplicates);
        for (p, next) in last {
            self.offsets.insert(p, next);
            self.status.applied_through(p, next);
            self.applier.set_position(SourcePosition {
                source: self.source_key.clone(),
                partition: p,
                next_offset: next,
                incarnation: self.incarnation.clone(),
            });
        }
        Ok(())
    }

    /// Applies an event read from the source at its canonical id's home, or forwards it there.
    /// `None` when forwarded.
    fn apply_event(
        &mut self,
        event: &Event,
        partition: u32,
        payload: &[u8],
    ) -> Result<Option<ApplyOutcome>> {
        if !self.applier.routing() {
            return Ok(Some(self.applier.apply(event, partition)?));
        }
        self.place(event, event.profile_id(), partition, payload)
    }

    fn place(
        &mut self,
        event: &Event,
        id: &str,
        partition: u32,
        payload: &[u8],
    ) -> Result<Option<ApplyOutcome>> {
        match self.applier.place(id, partition)? {
            Placement::Here(canonical) => Ok(Some(
                self.applier.apply_placed(event, partition, &canonical)?,
            )),
            Placement::Forward(target) => {
                self.applier.forward(target, event, payload)?;
                Ok(None)
            }
        }
    }

    /// Applies an identity record another partition's writer routed here (see
    /// [`super::routes`]).
    fn apply_routed(
        &mut self,
        route: &RouteHeader,
        event: Option<std::result::Result<Event, Rejection>>,
        partition: u32,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<std::result::Result<Option<ApplyOutcome>, Rejection>> {
        let invalid = |why: &str| Ok(Err(Rejection::new(RejectReason::InvalidRoute, why)));
        let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            return invalid("an identity record needs a UTF-8 key (the id it is for)");
        };
        if !self.marks.admit(&mut self.applier, route, partition)? {
            self.applier.note_route_copy();
            self.summary.routed_copies += 1;
            return Ok(Ok(None));
        }
        self.summary.routed_in += 1;
        let other = route.other.as_deref().unwrap_or_default();
        match route.kind {
            RouteKind::Forward => match event {
                Some(Ok(event)) if !other.is_empty() => {
                    Ok(Ok(Some(self.applier.apply_own(&event, partition, other)?)))
                }
                Some(Ok(event)) => match self.applier.bounce_target(key, &event)? {
                    Some(own) => {
                        self.applier.bounce(own, payload);
                        Ok(Ok(None))
                    }
                    None => Ok(Ok(self.place(&event, key, partition, payload)?)),
                },
                Some(Err(rejection)) => Ok(Err(rejection)),
                None => invalid("a forwarded record without an event"),
            },
            RouteKind::Handoff => {
                self.applier
                    .handoff(key, other, partition, route.origin_ts)?;
                Ok(Ok(None))
            }
            RouteKind::Merge => {
                let Ok(state) = patron_store::codec::decode::<CustomerState>("route", key, payload)
                else {
                    return invalid("a merge record whose payload is not a profile state");
                };
                self.applier
                    .merge_in(key, other, state, partition, route.origin_ts)?;
                Ok(Ok(None))
            }
            RouteKind::Forget => {
                let Ok((at, ids)) =
                    patron_store::codec::decode::<(i64, Vec<String>)>("route", key, payload)
                else {
                    return invalid("a forget record whose payload is not an erasure");
                };
                self.applier.forget_routed(at, &ids)?;
                Ok(Ok(None))
            }
        }
    }

    /// Counts a rejected record and queues it for the dead-letter topic.
    fn reject(&mut self, record: &RawRecord, data: &[u8], rejection: Rejection) {
        let code = rejection.reason.code();
        self.applier.record_rejection(rejection.reason);
        *self.summary.rejected.entry(code.to_owned()).or_default() += 1;
        self.status
            .metrics
            .rejected
            .get_or_create(&ReasonLabel {
                reason: code.to_owned(),
            })
            .inc();
        let letter = DeadLetterRecord {
            reason: code.to_owned(),
            detail: rejection.detail,
            topic: self.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            key: record.key.clone().map(|k| data[k].to_vec()),
            payload: data[record.payload.clone()].to_vec(),
        };
        self.forwarder.reject(&mut self.applier, letter);
    }

    /// Turns identity routing on: always for `serve` on a topic of several partitions (any
    /// partition may move to another instance), and for a replay of only some partitions.
    fn set_routing(&mut self, partition_count: u32) -> Result<()> {
        if partition_count == 0 {
            return Ok(()); // Unknown (no metadata): a guess would move state between modes.
        }
        self.applier.set_partition_count(partition_count)?;
        let routing = match self.mode {
            Mode::Follow => partition_count > 1,
            Mode::UntilEnd => (self.owned.len() as u32) < partition_count,
        };
        if routing != self.applier.routing() {
            info!(
                owned = self.owned.len(),
                partitions = partition_count,
                "identity merges {} the log",
                if routing {
                    "go through"
                } else {
                    "no longer go through"
                }
            );
        }
        self.applier.set_routing(routing.then_some(partition_count));
        Ok(())
    }

    /// Waits for the changelog round in flight, then sends and waits for what it did not cover
    /// (a few rounds at most): before partitions are released, and at shutdown.
    fn flush_changelog(&mut self) -> Result<()> {
        for _ in 0..3 {
            let Some(changelog) = &mut self.changelog else {
                return Ok(());
            };
            // Unacknowledged after the wait (a broker away): the rows stay for the next start.
            if !changelog.finish(&mut self.applier)? || changelog.pending() == 0 {
                break;
            }
            self.checkpoint()?;
        }
        Ok(())
    }

    /// How long after the last checkpoint the next one is due: `[checkpoint] interval`, or,
    /// once the writer has applied everything the log holds and has records not yet committed,
    /// the [`CatchUp`] gap. Then nothing would join those records by waiting: committing them
    /// at once brings the committed state (what the API answers) and the consumer group's
    /// committed offsets to the end of the log, and sends identity records on their way a whole
    /// interval sooner.
    fn checkpoint_interval(&self, work: &Receiver<Work>) -> Duration {
        if let Some(pacing) = &self.replay_pacing {
            return pacing.min_gap(&self.applier);
        }
        let unsaved = self.summary.records > self.records_at_checkpoint;
        match self.catch_up.gap(self.interval, Instant::now()) {
            Some(gap) if self.caught_up && unsaved && work.is_empty() => gap,
            _ => self.interval,
        }
    }

    /// Whether anything waits for a checkpoint: applied records, or outboxes with rows to send
    /// or deliveries to record.
    fn owes_checkpoint(&self) -> bool {
        self.applier.uncommitted() > 0
            || self.forwarder.has_work()
            || self.routes.has_work()
            || self.changelog_owed()
    }

    /// Whether the changelog outbox still needs a checkpoint (rows to send, or deliveries to
    /// record).
    fn changelog_owed(&self) -> bool {
        self.changelog.as_ref().is_some_and(Changelog::owed)
    }

    fn report_changelog(&self) {
        let Some(changelog) = &self.changelog else {
            return;
        };
        let counts = changelog.counts;
        self.status.changelog(ChangelogStatus {
            enabled: changelog.ready(),
            topic: changelog.topic().to_owned(),
            records_sent: counts.records_sent,
            pending_checkpoints: changelog.pending(),
            seeding: changelog.seeding(),
            seed_keys_sent: counts.seed_keys_sent,
            restored_partitions: counts.restored_partitions,
            restored_profiles: counts.restored_profiles,
        });
    }

    /// On assignment: when the changelog holds a later state of a partition than this store
    /// (another instance owned it since, or this store never had it), that state replaces the
    /// store's, and reading resumes from the changelog's position instead of the store's.
    fn restore_if_behind(&mut self, partitions: &[u32]) -> Result<()> {
        let Some(changelog) = &mut self.changelog else {
            return Ok(());
        };
        let mut checkpointed = false;
        for (p, found) in changelog.read(partitions)? {
            let Some(found) = found else {
                continue;
            };
            if found.incarnation != self.incarnation {
                continue; // Written for an earlier log (a restarted embedded broker).
            }
            let ours = self
                .applier
                .position(&self.source_key, p)?
                .filter(|pos| pos.incarnation == self.incarnation)
                .map(|pos| pos.next_offset);
            if ours.is_some_and(|n| n >= found.next_offset) {
                // This store is as far or further; values after the changelog's last marker
                // are sent again from this store's state.
                self.applier.note_changed(found.image.resend);
                continue;
            }
            // What was applied before goes out with its identity records and dead letters
            // first; nothing is applied between one restore and the next.
            if !checkpointed {
                self.checkpoint()?;
                checkpointed = true;
            }
            let stats = self.applier.restore(&found.image)?;
            self.marks.forget_partition(p);
            self.offsets.insert(p, found.next_offset);
            info!(
                partition = p,
                offset = found.next_offset,
                profiles = stats.profiles,
                dropped = stats.dropped,
                writer = %found.writer,
                store_offset = ?ours,
                "restored the partition from the changelog"
            );
            if let Some(changelog) = &mut self.changelog {
                changelog.counts.restored_partitions += 1;
                changelog.counts.restored_profiles += stats.profiles;
            }
        }
        self.report_changelog();
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.summary.routed_out += self.routes.before_checkpoint(&mut self.applier);
        self.forwarder.before_checkpoint(&mut self.applier);
        let stats = self.applier.checkpoint()?;
        if let Some(pacing) = &mut self.replay_pacing {
            pacing.observe(stats);
        }
        let offsets: Vec<(u32, u64)> = self.offsets.iter().map(|(p, n)| (*p, *n)).collect();
        self.status
            .committed(self.applier.counters(), &offsets, stats.duration);
        *self.committed_offsets.lock().expect("offsets lock") = offsets;
        self.routes.after_checkpoint();
        self.status.identity_routing(IdentityRoutingStatus {
            routing: self.applier.routing(),
            sent: self.summary.routed_out,
            received: self.summary.routed_in,
            copies_dropped: self.summary.routed_copies,
            pending: self.routes.pending(),
        });
        let delivered = self.forwarder.after_checkpoint();
        self.status
            .dead_letters(self.forwarder.pending(), delivered);
        if let Some(changelog) = &mut self.changelog {
            // Never ahead of an identity record or dead letter not yet in its topic: a restore
            // from this round would skip the source records that produced it.
            let settled = self.routes.pending() == 0 && self.forwarder.pending() == 0;
            changelog.after_checkpoint(&mut self.applier, &self.owned, settled)?;
        }
        self.report_changelog();
        let secs = self.last_checkpoint.elapsed().as_secs_f64().max(1e-3);
        let records = self.summary.records - self.records_at_checkpoint;
        self.status
            .metrics
            .events_per_second
            .set(records as f64 / secs);
        self.records_at_checkpoint = self.summary.records;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn an_owed_checkpoint_waits_out_the_rest_of_its_interval() {
        let ms = Duration::from_millis;
        assert_eq!(checkpoint_wait(true, SECOND, ms(300)), ms(700));
        // Overdue: look again soon, but never spin on a zero timeout.
        assert_eq!(checkpoint_wait(true, SECOND, ms(1000)), ms(1));
        assert_eq!(checkpoint_wait(true, SECOND, 5 * SECOND), ms(1));
    }

    #[test]
    fn a_caught_up_writer_commits_sooner_only_after_a_backlog() {
        let second = Duration::from_secs(1);
        let ms = Duration::from_millis;
        let start = Instant::now();
        let mut catch_up = CatchUp::new();
        assert_eq!(catch_up.gap(second, start), None, "nothing read yet");
        // The first batch may be the start of a backlog, however small.
        catch_up.batch(20, start);
        assert_eq!(catch_up.gap(second, start + ms(1500)), Some(ms(100)));
        assert_eq!(
            catch_up.gap(second, start + ms(2500)),
            None,
            "the window is over"
        );
        // A stream kept up with: small batches do not open it again.
        catch_up.batch(40, start + ms(3000));
        assert_eq!(catch_up.gap(second, start + ms(3000)), None);
        // A full batch is a backlog.
        catch_up.batch(BATCH_RECORDS, start + ms(4000));
        assert_eq!(catch_up.gap(second, start + ms(4500)), Some(ms(100)));
        // An interval of 100 ms or less is never shortened.
        assert_eq!(catch_up.gap(ms(100), start + ms(4500)), None);
    }

    #[test]
    fn an_idle_writer_sleeps_a_whole_interval() {
        // Long after the last checkpoint, with nothing to commit or deliver: no millisecond
        // polling (an idle `serve` used to wake its writer about 940 times a second).
        assert_eq!(checkpoint_wait(false, SECOND, 60 * SECOND), SECOND);
        assert_eq!(
            checkpoint_wait(false, SECOND, Duration::from_millis(300)),
            SECOND
        );
    }
}
