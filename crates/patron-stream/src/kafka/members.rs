//! Which `serve` instance owns which partition, and where its API listens.
//!
//! Every instance in a consumer group publishes, to the topic `<source topic>-members` (keyed by
//! a per-process instance id), the partitions it reads and the URL others reach its API at:
//! when its assignment changes, and every [`REFRESH`] as a heartbeat. Every instance reads the
//! whole topic to keep a partition → URL table, so the API can forward a request for a customer
//! whose home partition another instance owns. Kafka stays the only coordinator: the claims
//! follow the group's own assignments, and the newest claim of a partition wins.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use patron_core::time::{Millis, now_millis};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::delivery::await_deliveries;
use super::status::IngestStatus;
use super::{client_config, ensure_compacted_topic, fresh_id, partition_count};
use crate::applier::home_partition;
use crate::{Result, StreamError};

/// How often an instance re-publishes its claim, and re-reads the topic's partition count.
const REFRESH: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

/// One instance's claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    /// Where its API listens, e.g. `http://10.0.0.7:8080`.
    url: String,
    partitions: Vec<u32>,
    at: Millis,
}

/// The members table of one consumer group, kept current by a background thread.
pub struct Membership {
    me: String,
    url: String,
    topic: String,
    source_topic: String,
    partitions: AtomicU32,
    claims: RwLock<BTreeMap<String, Claim>>,
}

impl Membership {
    /// The name of the members topic for `source_topic`.
    pub fn topic_for(source_topic: &str) -> String {
        format!("{source_topic}-members")
    }

    /// Starts publishing this instance's partitions (from `status`) with `url`, and reading
    /// everyone's, until `stop`. Creates the members topic when it is missing.
    pub fn start(
        brokers: &str,
        source_topic: &str,
        url: &str,
        status: Arc<IngestStatus>,
        stop: Arc<AtomicBool>,
    ) -> Result<Arc<Self>> {
        let topic = Self::topic_for(source_topic);
        let me = fresh_id(url);
        let membership = Arc::new(Self {
            me,
            url: url.to_owned(),
            topic,
            source_topic: source_topic.to_owned(),
            partitions: AtomicU32::new(0),
            claims: RwLock::default(),
        });
        let producer: BaseProducer = client_config(brokers)
            .set("acks", "all")
            .create()
            .map_err(|e| StreamError::Source(format!("members producer: {e}")))?;
        let consumer: BaseConsumer = client_config(brokers)
            .set("group.id", format!("patron-members-{}", membership.me))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| StreamError::Source(format!("members consumer: {e}")))?;
        let worker = membership.clone();
        let brokers = brokers.to_owned();
        // Blocking broker calls (creating the topic) stay off the caller, which may be async.
        std::thread::Builder::new()
            .name("patron-members".into())
            .spawn(move || {
                if let Err(e) = worker.join(&brokers, &consumer) {
                    warn!("request forwarding is off: {e}");
                    return;
                }
                worker.run(&producer, &consumer, &status, &stop);
            })
            .map_err(|e| StreamError::Source(format!("cannot start the members thread: {e}")))?;
        Ok(membership)
    }

    /// Creates the members topic when missing and reads it from its start.
    fn join(&self, brokers: &str, consumer: &BaseConsumer) -> Result<()> {
        ensure_compacted_topic(brokers, &self.topic, 1)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(|e| StreamError::Source(e.to_string()))?;
        consumer
            .assign(&tpl)
            .map_err(|e| StreamError::Source(format!("read {}: {e}", self.topic)))
    }

    /// The URL of the instance owning the home partition of `id`, when that is another
    /// instance and it has said where it listens.
    pub fn owner_of(&self, id: &str) -> Option<String> {
        let partitions = self.partitions.load(Ordering::Relaxed);
        if partitions == 0 {
            return None;
        }
        let home = home_partition(id, partitions);
        let claims = self.claims.read().expect("members lock");
        let (owner, claim) = claims
            .iter()
            .filter(|(_, c)| c.partitions.contains(&home))
            .max_by_key(|(_, c)| c.at)?;
        (owner != &self.me).then(|| claim.url.clone())
    }

    fn run(
        &self,
        producer: &BaseProducer,
        consumer: &BaseConsumer,
        status: &IngestStatus,
        stop: &AtomicBool,
    ) {
        let mut published: Option<(BTreeSet<u32>, Instant)> = None;
        while !stop.load(Ordering::Relaxed) {
            let owned: BTreeSet<u32> = status.owned_partitions().into_iter().collect();
            let due = published
                .as_ref()
                .is_none_or(|(last, at)| *last != owned || at.elapsed() >= REFRESH);
            if due {
                self.refresh_partition_count(consumer);
                self.publish(producer, &owned);
                published = Some((owned, Instant::now()));
            }
            match consumer.poll(POLL) {
                Some(Ok(m)) => self.note(m.key(), m.payload()),
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => warn!("members topic: {e}"),
            }
        }
        // Leaving: a tombstone withdraws the claim at once.
        let _ = producer.send(BaseRecord::<_, ()>::to(&self.topic).key(self.me.as_str()));
        await_deliveries(producer, Duration::from_secs(2));
    }

    fn refresh_partition_count(&self, consumer: &BaseConsumer) {
        match partition_count(consumer, &self.source_topic) {
            Ok(n) => self.partitions.store(n, Ordering::Relaxed),
            Err(e) => warn!("members: {e}"),
        }
    }

    fn publish(&self, producer: &BaseProducer, owned: &BTreeSet<u32>) {
        let claim = Claim {
            url: self.url.clone(),
            partitions: owned.iter().copied().collect(),
            at: now_millis(),
        };
        let payload = serde_json::to_vec(&claim).expect("a claim serializes");
        let record = BaseRecord::to(&self.topic)
            .key(self.me.as_str())
            .payload(payload.as_slice());
        if let Err((e, _)) = producer.send(record) {
            warn!("members: cannot publish this instance's partitions: {e}");
        }
        producer.poll(Duration::ZERO);
        // Our own claim counts at once, without waiting to read it back.
        self.claims
            .write()
            .expect("members lock")
            .insert(self.me.clone(), claim);
    }

    fn note(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            return;
        };
        let mut claims = self.claims.write().expect("members lock");
        match payload.map(serde_json::from_slice::<Claim>) {
            None => {
                claims.remove(key);
            }
            Some(Ok(claim)) => {
                if key != self.me && claims.get(key) != Some(&claim) {
                    info!(instance = key, url = %claim.url, partitions = ?claim.partitions, "member");
                }
                claims.insert(key.to_owned(), claim);
            }
            Some(Err(e)) => warn!("members topic: an unreadable claim from {key}: {e}"),
        }
    }
}
