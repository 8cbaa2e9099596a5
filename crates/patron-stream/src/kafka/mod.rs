//! The Kafka source: consumer group ingestion with exactly-once checkpoints, the dead-letter
//! topic, the embedded broker, and producing events.
//!
//! Layout:
//! - [`ingest`]: the consumer thread (poll, batch, decode on rayon, rebalance) and the writer
//!   thread (apply, checkpoint state + offsets + dead letters in one transaction).
//! - [`dead_letters`]: the outbox forwarder that moves committed dead letters to the topic
//!   exactly once.
//! - `delivery`: waiting for a producer's delivery reports without rdkafka's fixed waits.
//! - `outbox`: the bookkeeping both outbox forwarders share (staged, committed, in flight,
//!   acknowledged entries, and one produce-and-flush round).
//! - [`embedded`]: librdkafka's in-process mock cluster, the default broker.
//! - [`routes`]: the outbox forwarder for identity records (handoffs, merges, forwards) that
//!   move state between instances owning different partitions.
//! - [`members`]: which instance owns which partition and where its API listens (the members
//!   topic), for forwarding requests.
//! - [`changelog`]: each partition's state in a compacted topic, written after checkpoints and
//!   read back when an instance takes over a partition.
//! - [`produce`]: a keyed producer for `generate --kafka`, `demo` and the API.
//! - [`status`]: live status and Prometheus metrics for the API.

pub mod changelog;
pub mod dead_letters;
mod delivery;
pub mod embedded;
pub mod ingest;
pub mod members;
mod outbox;
pub mod produce;
pub mod routes;
pub mod status;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::{Result, StreamError};

/// Where to read from and where rejected records go.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub dlq_topic: String,
    /// One life of the log. An embedded broker gets a fresh id each run, so positions from an
    /// earlier run are recognised; a real cluster keeps its log and uses "".
    pub incarnation: String,
    /// Keep the changelog topic (`serve` only; see [`changelog`]).
    pub changelog: bool,
    /// Keys per changelog round while a seed catches up (`[source] changelog_seed_batch`).
    pub changelog_seed_batch: usize,
    /// The consumer group's session timeout (`[source] session_timeout`).
    pub session_timeout: Duration,
}

impl KafkaSource {
    /// The key positions are stored under in the store.
    pub fn position_key(&self) -> String {
        position_key(&self.topic)
    }
}

pub fn position_key(topic: &str) -> String {
    format!("kafka:{topic}")
}

/// Settings every Patron client shares.
pub(crate) fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "patron")
        .set("log_level", "4");
    c
}

/// The number of partitions of `topic`, from the broker's metadata (0: no such topic).
pub(crate) fn partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<u32> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| StreamError::Source(format!("metadata of {topic}: {e}")))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as u32)
        .sum())
}

/// A new id naming this process (a store's dead letters, an instance in the members topic):
/// a hash of `salt`, the process id and the time.
pub(crate) fn fresh_id(salt: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mixed = xxhash_rust::xxh3::xxh3_64(
        format!("{salt}-{}-{}", std::process::id(), now.as_nanos()).as_bytes(),
    );
    format!("{mixed:016x}")
}

/// A topic [`ensure_compacted_topic`] found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EnsuredTopic {
    pub partitions: u32,
    /// This call created it, so it holds no records yet.
    pub created: bool,
}

/// Creates `topic` with `partitions` partitions, compacted, unless it exists.
pub(crate) fn ensure_compacted_topic(
    brokers: &str,
    topic: &str,
    partitions: u32,
) -> Result<EnsuredTopic> {
    let consumer: BaseConsumer = client_config(brokers)
        .create()
        .map_err(|e| StreamError::Source(format!("kafka client: {e}")))?;
    let existing = |consumer: &BaseConsumer| partition_count(consumer, topic).unwrap_or(0);
    let found = existing(&consumer);
    if found > 0 {
        return Ok(EnsuredTopic {
            partitions: found,
            created: false,
        });
    }
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|e| StreamError::Source(format!("kafka admin client: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StreamError::Source(format!("create {topic}: {e}")))?;
    let count = partitions.max(1) as i32;
    let compacted =
        NewTopic::new(topic, count, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let plain = NewTopic::new(topic, count, TopicReplication::Fixed(1));
    let mut last = String::new();
    // Some brokers refuse topic configs; a plain topic works too (it only grows).
    for new in [&compacted, &plain] {
        let results = runtime
            .block_on(admin.create_topics([new], &AdminOptions::new()))
            .map_err(|e| StreamError::Source(format!("create {topic}: {e}")))?;
        match results.into_iter().next() {
            Some(Ok(_)) | None => {
                return Ok(EnsuredTopic {
                    partitions: partitions.max(1),
                    created: true,
                });
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
                return Ok(EnsuredTopic {
                    partitions: existing(&consumer).max(1),
                    created: false,
                });
            }
            Some(Err((_, code))) => last = code.to_string(),
        }
    }
    Err(StreamError::Source(format!("create {topic}: {last}")))
}

/// Kafka header names on dead letters.
pub mod headers {
    pub const REASON: &str = "patron.reason";
    pub const DETAIL: &str = "patron.detail";
    pub const SOURCE_TOPIC: &str = "patron.source.topic";
    pub const SOURCE_PARTITION: &str = "patron.source.partition";
    pub const SOURCE_OFFSET: &str = "patron.source.offset";
    /// The outbox sequence number, which makes redelivery after a crash detectable.
    pub const SEQ: &str = "patron.seq";
    /// The store that wrote the dead letter (several stores may share one topic).
    pub const STORE: &str = "patron.store";
    /// On identity records in the source topic: `handoff`, `merge`, `forward` or `forget`.
    pub const ROUTE: &str = "patron.route";
    /// Handoff: the canonical id to merge into. Merge: the id whose state the payload holds.
    pub const ROUTE_OTHER: &str = "patron.route.other";
    /// The source record whose application produced an identity record.
    pub const ORIGIN_PARTITION: &str = "patron.origin.partition";
    pub const ORIGIN_OFFSET: &str = "patron.origin.offset";
    /// Handoff and merge: the time (epoch ms) of the identify or alias they carry out.
    pub const ORIGIN_TS: &str = "patron.origin.ts";
}
