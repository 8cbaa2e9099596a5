//! The changelog topic: each partition's state, compacted, so a new owner restores a partition
//! instead of reading the source log from its start.
//!
//! `<topic>-changelog` has the source topic's partition count. Changelog partition `p` holds
//! the state of source partition `p`, one record per key (the latest value wins, as compaction
//! keeps it):
//! - `p/<id>`: a profile record (its scope and state, as in the store); null when it went
//!   (merged away, erased);
//! - `a/<id>`: the id an alias links to; null when the link went;
//! - `t/<id>`: a tombstone's erasure time (postcard i64);
//! - `o/<id>`: every contact record of a customer; null when they went;
//! - `#position`: a **marker**: the positions (source offset, identity marks) this partition's
//!   state is at, and the store that wrote it.
//!
//! Each checkpoint adds the keys it changed to the changelog outbox (see
//! `patron_store::changelog`). After the commit, and once the identity records and dead
//! letters of every checkpoint before it are acknowledged (so a restore never skips past a
//! record nobody sent), a **round** reads those keys' values from a snapshot, produces them
//! partition by partition, each partition's followed by its marker, and waits for their
//! acknowledgements; the writer drops the outbox rows with the next checkpoint once everything
//! is acknowledged. Rounds run on a thread of their own, one at a time: reading a round's values
//! and producing them takes as long as applying thousands of events, and the writer goes on
//! applying meanwhile. Values come from the snapshot, not
//! from the moment of the change, so a round makes the partition's changelog equal to the store
//! as of that snapshot, whatever rounds failed before it.
//!
//! A restore reads a changelog partition from its start to its end and keeps what the last
//! marker confirms; values after the last marker (a writer that died mid-round) are not used,
//! and their keys are produced again from the restored state.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use patron_store::changelog::{ContactsValue, by_partition};
use patron_store::{
    ChangeKind, ChangedKey, ChangelogSeed, PartitionImage, SourcePosition, StoreReader, codec,
};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::dead_letters::{DeliveryLog, warn_limited};
use super::delivery::{QUEUE_FULL_WAIT, await_deliveries, await_room};
use super::{client_config, ensure_compacted_topic};
use crate::applier::Applier;
use crate::{Result, StreamError};

const MARKER_KEY: &str = "#position";
/// How long [`Changelog::finish`] waits for a round's acknowledgements.
const FLUSH_WAIT: Duration = Duration::from_secs(10);
/// How often the round thread, waiting for acknowledgements, looks whether it must stop.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// A restore that receives nothing for this long gives up (the partition is then read from
/// the source log, as without a changelog).
const READ_STALL: Duration = Duration::from_secs(30);

/// The position marker's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    /// The store that wrote it (`meta/store_id`).
    store: String,
    positions: Vec<SourcePosition>,
}

/// The changelog topic's name for a source topic.
pub fn topic_for(source_topic: &str) -> String {
    format!("{source_topic}-changelog")
}

fn record_key(kind: ChangeKind, key: &str) -> String {
    let prefix = match kind {
        ChangeKind::Profile => "p/",
        ChangeKind::Alias => "a/",
        ChangeKind::Tombstone => "t/",
        ChangeKind::Contacts => "o/",
    };
    format!("{prefix}{key}")
}

fn parse_key(key: &str) -> Option<(ChangeKind, &str)> {
    let (prefix, id) = key.split_at_checked(2)?;
    let kind = match prefix {
        "p/" => ChangeKind::Profile,
        "a/" => ChangeKind::Alias,
        "t/" => ChangeKind::Tombstone,
        "o/" => ChangeKind::Contacts,
        _ => return None,
    };
    Some((kind, id))
}

/// What a restore found in a changelog partition.
pub struct Found {
    pub image: PartitionImage,
    /// The source offset the image is the state at.
    pub next_offset: u64,
    pub incarnation: String,
    /// The store that wrote the last marker.
    pub writer: String,
}

/// The round in flight, as the writer sees it.
struct Round {
    /// The outbox rows it carries.
    seqs: Vec<u64>,
    /// What the round thread reports once the round is acknowledged (or has failed).
    outcome: mpsc::Receiver<Result<Sent>>,
}

/// What a round sent, and what came back for it.
struct Sent {
    /// A slice of the seed went with it: where the seed goes on once it is acknowledged
    /// (`Some(None)`: it is done).
    seed_next: Option<Option<ChangelogSeed>>,
    /// The seed's keys among the records.
    seed_keys: u64,
    sent: u64,
    acknowledged: u64,
    failed: u64,
    /// A record could not be enqueued: the round is incomplete whatever came back.
    broken: bool,
}

impl Sent {
    fn complete(&self) -> bool {
        !self.broken && self.failed == 0 && self.acknowledged == self.sent
    }
}

/// A round for the round thread: the outbox rows `seqs` and the seed's next slice, read from
/// `snapshot`, for the partitions in `owned`.
struct Job {
    snapshot: StoreReader,
    seqs: Vec<u64>,
    seed: Option<ChangelogSeed>,
    owned: BTreeSet<u32>,
    outcome: mpsc::SyncSender<Result<Sent>>,
}

/// Counts for `/v1/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChangelogCounts {
    pub records_sent: u64,
    /// Keys of the seed (a store the changelog did not follow) acknowledged.
    pub seed_keys_sent: u64,
    pub rounds: u64,
    pub restored_partitions: u64,
    pub restored_profiles: u64,
}

/// What [`Changelog::prepare`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicState {
    /// Not yet asked: no partition count before the first assignment. Outbox rows wait.
    Unknown,
    Ready,
    /// It cannot hold every partition: the changelog is off and rows are dropped as sent.
    Off,
}

pub struct Changelog {
    topic: String,
    brokers: String,
    source_key: String,
    /// Where rounds go to be sent.
    rounds: RoundThread,
    /// Whether the topic exists with enough partitions: nothing is sent until it does.
    topic_state: TopicState,
    last_warning: Option<Instant>,
    /// The round in flight.
    round: Option<Round>,
    /// Rows acknowledged whose removal waits for the next checkpoint.
    removing: HashSet<u64>,
    /// Rows not yet in the topic, as of the last round.
    unsent: u64,
    /// A seed is owed and this instance owns partitions to send it for (checkpoints are owed).
    seed_sendable: bool,
    /// The seed as this writer last left it (`None` until read from the store): only this
    /// writer changes it once it runs, so it is ahead of any snapshot. While one is owed (every
    /// key of a store the changelog did not follow, sent a slice per round), no partition gets
    /// a marker until its last slice, as a marker confirms the whole of a partition's state.
    seed: Option<Option<ChangelogSeed>>,
    /// The topic just became ready: the next checkpoint looks for rows left from the last run,
    /// or a seed to send, records or not.
    look: bool,
    /// [`Self::prepare`] created the topic, and nothing has read it since: it holds nothing to
    /// restore, so the first [`Self::read`] need not connect (a read of an empty topic took
    /// 0.65 s on tansu, during which the new owner consumes nothing).
    created_empty: bool,
    pub counts: ChangelogCounts,
}

impl Changelog {
    /// `seed_batch`: keys of a seed per round (`[source] changelog_seed_batch`).
    pub fn open(
        brokers: &str,
        source_topic: &str,
        source_key: &str,
        store_id: &str,
        seed_batch: usize,
    ) -> Result<Self> {
        let producer = client_config(brokers)
            .set("acks", "all")
            // Markers must land after the values they confirm: the idempotent producer keeps
            // order across retries with several requests in flight.
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", "1000000")
            .set("linger.ms", "5")
            .create_with_context(DeliveryLog::default())
            .map_err(|e| StreamError::Source(format!("changelog producer: {e}")))?;
        let topic = topic_for(source_topic);
        let rounds = RoundThread::start(RoundProducer {
            producer,
            topic: topic.clone(),
            store_id: store_id.to_owned(),
            source_key: source_key.to_owned(),
            seed_batch: seed_batch.max(1),
            next_opaque: 0,
            last_warning: None,
        })?;
        Ok(Self {
            topic,
            brokers: brokers.to_owned(),
            source_key: source_key.to_owned(),
            rounds,
            topic_state: TopicState::Unknown,
            last_warning: None,
            round: None,
            removing: HashSet::new(),
            unsent: 0,
            seed_sendable: false,
            seed: None,
            look: false,
            created_empty: false,
            counts: ChangelogCounts::default(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn ready(&self) -> bool {
        self.topic_state == TopicState::Ready
    }

    /// Whether a checkpoint is needed for the outbox (rows or a seed to send, or deliveries to
    /// record).
    pub fn owed(&self) -> bool {
        self.unsent > 0
            || self.seed_sendable
            || self.round.is_some()
            || !self.removing.is_empty()
            || self.look
    }

    /// Checkpoints whose changes the topic does not hold yet.
    pub fn pending(&self) -> u64 {
        self.unsent
    }

    /// Whether the store owes the changelog a seed, as of the last checkpoint.
    pub fn seeding(&self) -> bool {
        matches!(self.seed, Some(Some(_)))
    }

    /// Makes sure the topic exists with `partitions` partitions (the source's count). A topic
    /// with fewer cannot hold every partition's state: the changelog stays off, with a warning.
    pub fn prepare(&mut self, partitions: u32) {
        if self.ready() || partitions == 0 {
            return;
        }
        self.topic_state = match ensure_compacted_topic(&self.brokers, &self.topic, partitions) {
            Ok(topic) if topic.partitions >= partitions => {
                self.look = true;
                self.created_empty = topic.created;
                TopicState::Ready
            }
            Ok(topic) => {
                let found = topic.partitions;
                warn!(
                    "changelog topic {} has {found} partitions, the source has {partitions}: no changelog (recreate it with {partitions})",
                    self.topic
                );
                TopicState::Off
            }
            Err(e) => {
                warn!("no changelog: {e}");
                TopicState::Off
            }
        }
    }

    /// After a checkpoint: produces the values of every key in the changelog outbox, and the
    /// next slice of a seed in progress, as of `snapshot`, with a marker per partition, for the
    /// partitions this instance owns. Keys of partitions it no longer owns are dropped: their
    /// new owner restored from an earlier marker and reads the source from there. `settled`:
    /// the identity records and dead letters of every committed checkpoint are acknowledged
    /// (otherwise nothing is sent this round).
    ///
    /// While a seed goes on, rounds carry no markers: the topic does not hold the whole of any
    /// partition yet. The round with the seed's last slice marks every owned partition.
    ///
    /// A round is not waited for: it goes to the round thread, which reads the values from a
    /// snapshot of its own and waits for the acknowledgements. Its outcome is collected after
    /// later checkpoints (and by [`Self::finish`]), and the next round starts once it is in.
    pub fn after_checkpoint(
        &mut self,
        applier: &mut Applier,
        owned: &BTreeSet<u32>,
        settled: bool,
    ) -> Result<()> {
        if self.topic_state == TopicState::Unknown {
            // A checkpoint before the first assignment (deliveries left from the last run):
            // the rows wait for the topic, and are not owed before it.
            return Ok(());
        }
        self.look = false;
        self.collect(applier, Duration::ZERO)?;
        let snapshot = applier.snapshot();
        // The rows' numbers only: while a round is in flight its keys are not decoded again at
        // every checkpoint.
        let all = snapshot.pending_change_seqs()?;
        // Rows whose removal is staged (not yet committed) are done.
        self.removing.retain(|seq| all.contains(seq));
        let seqs: Vec<u64> = all
            .into_iter()
            .filter(|seq| !self.removing.contains(seq))
            .collect();
        let owed_seed = match &self.seed {
            Some(seed) => seed.clone(),
            None => snapshot.changelog_seed()?,
        };
        self.seed = Some(owed_seed.clone());
        // Owning no partition, a seed has nothing to send and must not move on.
        let seed = owed_seed.filter(|_| !owned.is_empty());
        self.unsent = seqs.len() as u64;
        self.seed_sendable = seed.is_some();
        if (seqs.is_empty() && seed.is_none()) || self.round.is_some() {
            return Ok(());
        }
        if self.topic_state == TopicState::Off {
            // Rows are dropped as sent; a seed waits for a topic that can hold it.
            self.unsent = 0;
            self.seed_sendable = false;
            self.removing.extend(seqs.iter().copied());
            applier.stage_changes_delivered(seqs);
            return Ok(());
        }
        if !settled {
            return Ok(());
        }
        let (reply, outcome) = mpsc::sync_channel(1);
        self.rounds.send(Job {
            // A snapshot of its own, as of the same commit: the round thread reads from it
            // while the writer goes on.
            snapshot: applier.store().reader()?,
            seqs: seqs.clone(),
            seed: seed.map(|s| s.for_round(owned)),
            owned: owned.clone(),
            outcome: reply,
        })?;
        self.round = Some(Round { seqs, outcome });
        Ok(())
    }

    /// Waits (up to a bound) for the round in flight, as before partitions are released or at
    /// shutdown, so the changelog holds everything committed.
    /// False when the round is still unacknowledged after the wait.
    pub fn finish(&mut self, applier: &mut Applier) -> Result<bool> {
        self.collect(applier, FLUSH_WAIT)?;
        Ok(self.round.is_none())
    }

    /// Takes the round's outcome if the round thread has reported it within `wait`: a complete
    /// round's rows leave the outbox with the next checkpoint, a round with failures is sent
    /// again.
    fn collect(&mut self, applier: &mut Applier, wait: Duration) -> Result<()> {
        let Some(round) = &self.round else {
            return Ok(());
        };
        let sent = match round.outcome.recv_timeout(wait) {
            Ok(sent) => sent,
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(StreamError::Source(format!(
                "changelog {}: the round thread stopped",
                self.topic
            ))),
        };
        let round = self.round.take().expect("checked above");
        let sent = sent?;
        self.counts.records_sent += sent.acknowledged;
        if sent.complete() {
            self.counts.rounds += 1;
            self.unsent = self.unsent.saturating_sub(round.seqs.len() as u64);
            self.removing.extend(round.seqs.iter().copied());
            applier.stage_changes_delivered(round.seqs);
            if let Some(next) = sent.seed_next {
                self.counts.seed_keys_sent += sent.seed_keys;
                self.seed_sendable &= next.is_some();
                applier.stage_changelog_seed(next.clone());
                self.seed = Some(next);
            }
        } else {
            let message = format!(
                "changelog {}: {} of {} records not acknowledged; the round is sent again after the next checkpoint",
                self.topic,
                sent.sent - sent.acknowledged,
                sent.sent
            );
            warn_limited(&mut self.last_warning, message);
        }
        Ok(())
    }

    /// Reads changelog partitions `partitions` to their ends, together: for each, the state its
    /// last marker confirms, or `None` when it holds no marker (nothing was ever written).
    pub fn read(&mut self, partitions: &[u32]) -> Result<BTreeMap<u32, Option<Found>>> {
        let mut out: BTreeMap<u32, Option<Found>> = BTreeMap::new();
        // Taken whatever this assignment holds: later ones read the topic, as other instances
        // may have written to it since.
        let created_empty = std::mem::take(&mut self.created_empty);
        if !self.ready() || partitions.is_empty() {
            return Ok(out);
        }
        if created_empty {
            // Created by this instance at this assignment: no owner ever wrote to it.
            return Ok(partitions.iter().map(|&p| (p, None)).collect());
        }
        let consumer: BaseConsumer<EndIsNoError> = client_config(&self.brokers)
            .set("group.id", "patron-changelog-restore")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // An empty partition answers after this wait, not the default half second.
            .set("fetch.wait.max.ms", "20")
            .create_with_context(EndIsNoError)
            .map_err(|e| StreamError::Source(format!("changelog reader: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(&self.topic, p as i32, Offset::Beginning)
                .map_err(|e| StreamError::Source(e.to_string()))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| StreamError::Source(format!("changelog {}: {e}", self.topic)))?;
        let mut logs: BTreeMap<u32, (PartitionLog, i64)> = partitions
            .iter()
            .map(|&p| (p, (PartitionLog::default(), 0)))
            .collect();
        let mut last_progress = Instant::now();
        // To the end the fetches report (partition EOF): some brokers, tansu 0.6, answer a
        // watermark query with less than the log end.
        while !logs.is_empty() {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    let Some((log, next)) = u32::try_from(m.partition())
                        .ok()
                        .and_then(|p| logs.get_mut(&p))
                    else {
                        continue;
                    };
                    if m.offset() < *next {
                        continue;
                    }
                    *next = m.offset() + 1;
                    let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                        continue;
                    };
                    if !log.push(key, m.payload()) {
                        warn!(
                            "changelog {} partition {}: an unreadable marker at offset {}",
                            self.topic,
                            m.partition(),
                            m.offset()
                        );
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some((log, _)) = u32::try_from(p).ok().and_then(|p| logs.remove(&p)) {
                        let p = p as u32;
                        out.insert(p, log.found(p, &self.source_key));
                    }
                }
                Some(Err(e)) => warn!("changelog {}: {e}", self.topic),
                None => {}
            }
            if last_progress.elapsed() >= READ_STALL {
                return Err(StreamError::Source(format!(
                    "changelog {}: nothing received for {READ_STALL:?} from partitions {:?}",
                    self.topic,
                    logs.keys().collect::<Vec<_>>()
                )));
            }
        }
        Ok(out)
    }
}

/// The thread that sends rounds, one at a time, so the writer goes on applying meanwhile.
struct RoundThread {
    jobs: Option<mpsc::Sender<Job>>,
    /// Set on drop: a round waiting for acknowledgements (a broker away) gives up.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RoundThread {
    fn start(mut producer: RoundProducer) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("changelog".into())
            .spawn(move || {
                for job in queue {
                    let outcome = producer.round(&job, &stopped);
                    // The writer may have gone (shutdown): nobody waits for the outcome.
                    let _ = job.outcome.send(outcome);
                }
            })
            .map_err(|e| StreamError::Source(format!("changelog thread: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            stop,
            thread: Some(thread),
        })
    }

    fn send(&self, job: Job) -> Result<()> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| StreamError::Source("the changelog round thread stopped".into()))
    }
}

impl Drop for RoundThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The round thread's side: the producer, and what a round's records need.
struct RoundProducer {
    producer: BaseProducer<DeliveryLog>,
    topic: String,
    store_id: String,
    source_key: String,
    /// Keys of the seed per round.
    seed_batch: usize,
    next_opaque: u64,
    last_warning: Option<Instant>,
}

impl RoundProducer {
    /// Produces the values of the job's outbox rows and the seed's next slice, with a marker
    /// per partition that gets one (see [`Changelog::after_checkpoint`]), then waits for every
    /// acknowledgement, or for `stop`.
    fn round(&mut self, job: &Job, stop: &AtomicBool) -> Result<Sent> {
        let Job {
            snapshot,
            seqs,
            seed,
            owned,
            ..
        } = job;
        let rows = if seqs.is_empty() {
            Vec::new()
        } else {
            snapshot.pending_changes()?
        };
        let mut seed_keys = Vec::new();
        let seed_next = match seed {
            Some(from) => {
                let next = snapshot.state_keys_after(&from.cursor, self.seed_batch, |key| {
                    if owned.contains(&key.partition) {
                        seed_keys.push(key);
                    }
                })?;
                // A covered partition not owned now had its keys in this slice passed over.
                Some(next.map(|cursor| ChangelogSeed {
                    cursor,
                    covers: owned.clone(),
                }))
            }
            None => None,
        };
        let grouped = by_partition(
            rows.iter()
                .filter(|(seq, _)| seqs.contains(seq))
                .flat_map(|(_, keys)| keys)
                .chain(&seed_keys),
        );
        let marked: BTreeSet<u32> = match &seed_next {
            Some(Some(_)) => BTreeSet::new(),
            Some(None) => owned.clone(),
            None => grouped.keys().copied().collect(),
        };
        let no_keys = Vec::new();
        let partitions: BTreeSet<u32> = grouped.keys().chain(&marked).copied().collect();
        let mut out = Sent {
            seed_next,
            seed_keys: seed_keys.len() as u64,
            sent: 0,
            acknowledged: 0,
            failed: 0,
            broken: false,
        };
        'round: for partition in partitions.iter().filter(|p| owned.contains(p)) {
            for (kind, key) in grouped.get(partition).unwrap_or(&no_keys) {
                let value = value_of(snapshot, *partition, *kind, key)?;
                if !self.try_send(*partition, &record_key(*kind, key), value.as_deref()) {
                    out.broken = true;
                    break 'round;
                }
                out.sent += 1;
            }
            if !marked.contains(partition) {
                continue;
            }
            let marker = Marker {
                store: self.store_id.clone(),
                positions: snapshot.partition_positions(&self.source_key, *partition)?,
            };
            if !self.try_send(*partition, MARKER_KEY, Some(&codec::encode(&marker))) {
                out.broken = true;
                break 'round;
            }
            out.sent += 1;
        }
        while !await_deliveries(&self.producer, STOP_CHECK) && !stop.load(Ordering::Relaxed) {}
        for (_, outcome) in self.producer.context().take() {
            match outcome {
                Ok(_) => out.acknowledged += 1,
                Err(_) => out.failed += 1,
            }
        }
        Ok(out)
    }

    /// Enqueues one record; on an error, warns and returns false (nothing more is sent this
    /// round; what went out is waited for, then the whole round is sent again).
    fn try_send(&mut self, partition: u32, key: &str, value: Option<&[u8]>) -> bool {
        match self.send(partition, key, value) {
            Ok(()) => true,
            Err(e) => {
                warn_limited(&mut self.last_warning, e.to_string());
                false
            }
        }
    }

    fn send(&mut self, partition: u32, key: &str, value: Option<&[u8]>) -> Result<()> {
        let opaque = self.next_opaque;
        self.next_opaque += 1;
        let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(opaque))
            .partition(partition as i32)
            .key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    await_room(&self.producer, QUEUE_FULL_WAIT);
                }
                Err((e, _)) => {
                    return Err(StreamError::Source(format!(
                        "changelog produce to {}: {e}",
                        self.topic
                    )));
                }
            }
        }
    }
}

/// A changelog partition read in offset order: what the last marker confirms, and the values
/// written after it.
#[derive(Default)]
struct PartitionLog {
    confirmed: BTreeMap<String, Option<Vec<u8>>>,
    tail: BTreeMap<String, Option<Vec<u8>>>,
    marker: Option<Marker>,
}

impl PartitionLog {
    /// Takes the next record. False for a marker that cannot be read (ignored).
    fn push(&mut self, key: &str, value: Option<&[u8]>) -> bool {
        if key != MARKER_KEY {
            self.tail.insert(key.to_owned(), value.map(<[u8]>::to_vec));
            return true;
        }
        match value.map(|v| codec::decode::<Marker>("changelog", key, v)) {
            Some(Ok(marker)) => {
                self.confirmed.append(&mut self.tail);
                self.marker = Some(marker);
                true
            }
            _ => false,
        }
    }

    /// The state the last marker confirms, with the keys written after it to send again.
    /// `None` without a marker.
    fn found(self, partition: u32, source_key: &str) -> Option<Found> {
        let marker = self.marker?;
        let (confirmed, tail) = (self.confirmed, self.tail);
        let mut image = PartitionImage {
            partition,
            source_prefix: source_key.to_owned(),
            ..PartitionImage::default()
        };
        for (key, value) in &confirmed {
            let Some((kind, id)) = parse_key(key) else {
                continue;
            };
            let id = id.to_owned();
            match (kind, value) {
                (ChangeKind::Profile, Some(record)) => image.profiles.push((id, record.clone())),
                (ChangeKind::Profile, None) => {}
                (ChangeKind::Alias, to) => image.aliases.push((
                    id,
                    to.as_ref().map(|t| String::from_utf8_lossy(t).into_owned()),
                )),
                (ChangeKind::Tombstone, Some(at)) => {
                    if let Ok(at) = codec::decode::<i64>("changelog", key, at) {
                        image.tombstones.push((id, at));
                    }
                }
                (ChangeKind::Tombstone, None) => {}
                (ChangeKind::Contacts, records) => {
                    let records = records
                        .as_ref()
                        .and_then(|r| codec::decode::<ContactsValue>("changelog", key, r).ok());
                    image.contacts.push((id, records));
                }
            }
        }
        image.resend = tail
            .keys()
            .filter_map(|k| parse_key(k))
            .map(|(kind, id)| ChangedKey {
                partition,
                kind,
                key: id.to_owned(),
            })
            .collect();
        let own = marker
            .positions
            .iter()
            .find(|p| p.source == source_key)
            .cloned();
        image.positions = marker.positions;
        Some(Found {
            image,
            next_offset: own.as_ref().map_or(0, |p| p.next_offset),
            incarnation: own.map(|p| p.incarnation).unwrap_or_default(),
            writer: marker.store,
        })
    }
}

/// The restore reader's client context: reaching the end of the partition is what it waits
/// for, not an error to log.
struct EndIsNoError;

impl ClientContext for EndIsNoError {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            warn!("changelog reader: {error}: {reason}");
        }
    }
}

impl ConsumerContext for EndIsNoError {}

/// The changelog value of a key of `partition`, as of `snapshot` (`None`: the key is gone).
fn value_of(
    snapshot: &StoreReader,
    partition: u32,
    kind: ChangeKind,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    Ok(match kind {
        ChangeKind::Profile => snapshot
            .profile_record(key)?
            .filter(|r| codec::profile_scope(key, r).is_ok_and(|s| s == partition)),
        ChangeKind::Alias => snapshot.alias_in(key, partition)?.map(String::into_bytes),
        ChangeKind::Tombstone => snapshot
            .tombstone_in(key, partition)?
            .map(|at| codec::encode(&at)),
        ChangeKind::Contacts => {
            let records = snapshot.contacts_of(key)?;
            (!records.is_empty()).then(|| codec::encode(&records))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use patron_core::decode::Decoder;
    use patron_core::state::ApplyContext;
    use patron_core::time::now_millis;
    use patron_store::Store;

    /// A store tracking changes, with one purchase committed: one outbox row.
    fn one_committed_change(dir: &std::path::Path) -> (Store, Applier) {
        let store = Store::open(dir.join("state.redb")).expect("a store");
        let mut applier =
            Applier::open(store.clone(), ApplyContext::default()).expect("an applier");
        applier.track_changes().expect("tracking");
        let event = Decoder::default()
            .decode(
                br#"{"type":"purchase","event_id":"e1","ts":"2025-03-01T10:00:00Z","customer_id":"c1","amount":"10.00"}"#,
                now_millis(),
            )
            .expect("an event");
        applier.apply(&event, 0).expect("applied");
        applier.checkpoint().expect("a checkpoint");
        (store, applier)
    }

    /// A checkpoint can come before the first assignment (deliveries left from the last run);
    /// the topic is not known yet, so the outbox rows must stay for it, not count as sent.
    #[test]
    fn outbox_rows_wait_for_the_first_assignment() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (store, mut applier) = one_committed_change(dir.path());
        let pending = || {
            store
                .reader()
                .expect("a reader")
                .pending_changes()
                .expect("rows")
        };
        assert_eq!(pending().len(), 1);

        // No broker listens there: nothing may be sent, and creating the producer needs none.
        let mut changelog =
            Changelog::open("127.0.0.1:9", "events", "kafka:events", "store", 10).expect("opened");
        changelog
            .after_checkpoint(&mut applier, &BTreeSet::from([0]), true)
            .expect("after the checkpoint");
        assert!(
            !changelog.owed(),
            "nothing is owed before the topic is known"
        );
        applier.checkpoint().expect("a checkpoint");
        assert_eq!(pending().len(), 1, "the row waits for the topic");
    }

    /// A topic `prepare` has just created holds nothing: the first read answers "nothing found"
    /// for every partition without a broker (none listens here), and only the first.
    #[test]
    fn a_topic_created_at_this_assignment_is_not_read() {
        let mut changelog =
            Changelog::open("127.0.0.1:9", "events", "kafka:events", "store", 10).expect("opened");
        changelog.topic_state = TopicState::Ready;
        changelog.created_empty = true;
        let found = changelog.read(&[0, 3]).expect("no broker needed");
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), [0, 3]);
        assert!(found.values().all(Option::is_none));
        assert!(!changelog.created_empty, "later assignments read the topic");
        // An empty assignment spends the shortcut too.
        changelog.created_empty = true;
        assert!(changelog.read(&[]).expect("nothing to read").is_empty());
        assert!(!changelog.created_empty, "later assignments read the topic");
    }

    /// A round the broker never acknowledges (none listens) stays in flight without holding up
    /// the writer, keeps its rows in the outbox, and does not keep the process from stopping.
    #[test]
    fn an_unacknowledged_round_keeps_its_rows_and_lets_the_writer_stop() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (store, mut applier) = one_committed_change(dir.path());

        let mut changelog =
            Changelog::open("127.0.0.1:9", "events", "kafka:events", "store", 10).expect("opened");
        // As if `prepare` had found the topic: the round goes to a broker that is not there.
        changelog.topic_state = TopicState::Ready;
        let owned = BTreeSet::from([0]);
        changelog
            .after_checkpoint(&mut applier, &owned, true)
            .expect("after the checkpoint");
        assert!(changelog.round.is_some(), "a round is in flight");
        // The writer goes on: another checkpoint, and the round is still in flight.
        applier.checkpoint().expect("a checkpoint");
        changelog
            .after_checkpoint(&mut applier, &owned, true)
            .expect("after the checkpoint");
        assert!(changelog.round.is_some() && changelog.owed());
        assert_eq!(changelog.pending(), 1);
        assert_eq!(changelog.counts.rounds, 0);
        applier.checkpoint().expect("a checkpoint");
        let rows = store
            .reader()
            .expect("a reader")
            .pending_changes()
            .expect("rows");
        assert_eq!(
            rows.len(),
            1,
            "the row stays until its round is acknowledged"
        );

        // Stopping ends the round thread's wait. A liveness bound, not a timing: it fails only
        // if the drop never returns.
        let (done, dropped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(changelog);
            let _ = done.send(());
        });
        assert!(
            dropped.recv_timeout(Duration::from_secs(60)).is_ok(),
            "dropping the changelog returned"
        );
    }

    fn marker(next_offset: u64) -> Vec<u8> {
        codec::encode(&Marker {
            store: "s1".into(),
            positions: vec![
                SourcePosition {
                    source: "kafka:t".into(),
                    partition: 2,
                    next_offset,
                    incarnation: String::new(),
                },
                SourcePosition {
                    source: "kafka:t#route-from-0".into(),
                    partition: 2,
                    next_offset: 7,
                    incarnation: String::new(),
                },
            ],
        })
    }

    #[test]
    fn a_restore_keeps_what_the_last_marker_confirms() {
        let profile = |frequency| {
            codec::encode_profile(
                2,
                &patron_core::state::CustomerState {
                    frequency,
                    ..Default::default()
                },
            )
        };
        let mut log = PartitionLog::default();
        assert!(log.push("p/c1", Some(&profile(1))));
        assert!(log.push("a/anon-1", Some(b"c1")));
        assert!(log.push("p/c2", Some(&profile(5))));
        assert!(log.push(MARKER_KEY, Some(&marker(40))));
        // A later round, confirmed: c1 changes, c2 goes.
        assert!(log.push("p/c1", Some(&profile(2))));
        assert!(log.push("p/c2", None));
        assert!(log.push("t/gone", Some(&codec::encode(&1_000i64))));
        assert!(log.push(MARKER_KEY, Some(&marker(55))));
        // A round cut off before its marker (its writer died): not used, sent again.
        assert!(log.push("p/c1", Some(&profile(3))));
        assert!(log.push("a/anon-1", None));
        assert!(!log.push(MARKER_KEY, Some(b"not a marker")));
        assert!(log.push("p/c3", Some(&profile(1))));

        let found = log.found(2, "kafka:t").expect("a marker was read");
        assert_eq!(found.next_offset, 55);
        assert_eq!(found.writer, "s1");
        let image = &found.image;
        let frequencies: Vec<(String, u32)> = image
            .profiles
            .iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    codec::decode_profile(id, r).unwrap().1.frequency,
                )
            })
            .collect();
        assert_eq!(
            frequencies,
            vec![("c1".to_owned(), 2)],
            "c2 went, c3 unconfirmed"
        );
        assert_eq!(
            image.aliases,
            vec![("anon-1".to_owned(), Some("c1".to_owned()))]
        );
        assert_eq!(image.tombstones, vec![("gone".to_owned(), 1_000)]);
        assert_eq!(image.positions.len(), 2, "the identity marks come too");
        let mut resend: Vec<(ChangeKind, String)> = image
            .resend
            .iter()
            .map(|k| (k.kind, k.key.clone()))
            .collect();
        resend.sort();
        assert_eq!(
            resend,
            vec![
                (ChangeKind::Profile, "c1".to_owned()),
                (ChangeKind::Profile, "c3".to_owned()),
                (ChangeKind::Alias, "anon-1".to_owned()),
            ]
        );
        assert!(image.resend.iter().all(|k| k.partition == 2));
    }

    #[test]
    fn a_partition_without_a_marker_restores_nothing() {
        let mut log = PartitionLog::default();
        log.push("p/c1", Some(b"x"));
        assert!(log.found(0, "kafka:t").is_none());
    }

    #[test]
    fn record_keys_name_their_kind() {
        for kind in [
            ChangeKind::Profile,
            ChangeKind::Alias,
            ChangeKind::Tombstone,
            ChangeKind::Contacts,
        ] {
            let key = record_key(kind, "c/1");
            assert_eq!(parse_key(&key), Some((kind, "c/1")));
        }
        assert_eq!(parse_key(MARKER_KEY), None);
        assert_eq!(parse_key("x"), None);
    }
}
