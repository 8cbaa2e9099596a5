//! The dead-letter topic, fed exactly once through an outbox in the store.
//!
//! A rejected record becomes an outbox entry with a sequence number, and the entry is committed
//! in the same transaction as the offsets that passed the record. Only committed entries are
//! produced; an entry leaves the outbox (in a later checkpoint) once the topic acknowledged it.
//!
//! A crash between the acknowledgement and that later checkpoint would send the entry again. So
//! when the process starts with a non-empty outbox, it first reads the topic's tail (from the
//! last offset the store knows was delivered) and drops every entry whose store id and sequence
//! number are already there. Every dead letter reaches the topic once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use patron_store::tables::{META_DEAD_LETTER_OFFSET, META_DEAD_LETTER_SEQ};
use patron_store::{DeadLetterRecord, StoreReader};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::outbox::Outbox;
use super::{client_config, fresh_id, headers};
use crate::applier::Applier;
use crate::{Result, StreamError};

/// Names this store in dead-letter headers, so several stores can share one topic.
const META_STORE_ID: &str = "store_id";
const RECONCILE_WAIT: Duration = Duration::from_secs(15);

/// Acknowledgements by outbox sequence number, gathered by the producer's delivery callback.
#[derive(Default)]
pub(super) struct DeliveryLog {
    results: Mutex<Vec<(u64, std::result::Result<i64, String>)>>,
}

impl DeliveryLog {
    /// The outcomes reported since the last call: offset, or the error.
    pub(super) fn take(&self) -> Vec<(u64, std::result::Result<i64, String>)> {
        std::mem::take(&mut *self.results.lock().expect("delivery log"))
    }
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        let outcome = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(e.to_string()),
        };
        self.results
            .lock()
            .expect("delivery log")
            .push((*seq, outcome));
    }
}

pub struct DeadLetterForwarder {
    topic: String,
    brokers: String,
    store_id: String,
    producer: BaseProducer<DeliveryLog>,
    outbox: Outbox<DeadLetterRecord>,
    last_offset: Option<i64>,
    reconciled: bool,
    store_id_written: bool,
}

impl DeadLetterForwarder {
    /// Names this store in dead-letter headers and changelog markers.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// Loads the committed outbox. `reader` must be a snapshot of the store the applier writes.
    pub fn open(brokers: &str, topic: &str, reader: &StoreReader) -> Result<Self> {
        let producer = client_config(brokers)
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "1")
            .set("message.timeout.ms", "30000")
            .create_with_context(DeliveryLog::default())
            .map_err(|e| StreamError::Source(format!("dead-letter producer: {e}")))?;
        let u64_meta = |key: &str| -> Result<Option<u64>> {
            Ok(reader
                .meta(key)?
                .and_then(|b| b.try_into().ok().map(u64::from_le_bytes)))
        };
        let next_seq = u64_meta(META_DEAD_LETTER_SEQ)?.unwrap_or(0);
        let last_offset = reader
            .meta(META_DEAD_LETTER_OFFSET)?
            .and_then(|b| b.try_into().ok().map(i64::from_le_bytes));
        let (store_id, store_id_written) = match reader.meta(META_STORE_ID)? {
            Some(id) => (String::from_utf8_lossy(&id).into_owned(), true),
            None => (fresh_id("store"), false),
        };
        let outbox = Outbox::new("dead letter", next_seq, reader.pending_dead_letters()?);
        Ok(Self {
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
            store_id,
            producer,
            reconciled: outbox.pending() == 0,
            outbox,
            last_offset,
            store_id_written,
        })
    }

    /// Dead letters committed or staged and not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.outbox.pending()
    }

    /// Whether a checkpoint would change anything for the outbox.
    pub fn has_work(&self) -> bool {
        self.outbox.has_work()
    }

    /// Adds a dead letter; it is written with the next checkpoint.
    pub fn reject(&mut self, applier: &mut Applier, letter: DeadLetterRecord) {
        let seq = self.outbox.stage(letter.clone());
        applier.stage_dead_letter(seq, letter);
    }

    /// Stages the sequence counter and the acknowledged entries with the next checkpoint.
    pub fn before_checkpoint(&mut self, applier: &mut Applier) {
        applier.stage_meta(
            META_DEAD_LETTER_SEQ,
            self.outbox.next_seq().to_le_bytes().to_vec(),
        );
        applier.stage_delivered(self.outbox.take_acknowledged());
        if let Some(offset) = self.last_offset {
            applier.stage_meta(META_DEAD_LETTER_OFFSET, offset.to_le_bytes().to_vec());
        }
        if !self.store_id_written {
            applier.stage_meta(META_STORE_ID, self.store_id.as_bytes().to_vec());
            self.store_id_written = true;
        }
    }

    /// After a checkpoint committed: sends what is now durable. Returns how many the topic
    /// acknowledged in this round.
    pub fn after_checkpoint(&mut self) -> u64 {
        if !self.outbox.committed() {
            return 0;
        }
        if !self.reconciled {
            match self.reconcile() {
                Ok(()) => self.reconciled = true,
                Err(e) => {
                    let message = format!(
                        "dead letters wait: cannot read {} to check for earlier deliveries: {e}",
                        self.topic
                    );
                    self.outbox.warn(message);
                    return 0;
                }
            }
        }
        let (producer, topic, store_id) = (&self.producer, self.topic.as_str(), &self.store_id);
        let delivered = self.outbox.send_round(producer, topic, |seq, letter| {
            let mut hdrs = OwnedHeaders::new_with_capacity(7);
            let partition = letter.partition.to_string();
            let offset = letter.offset.to_string();
            let seq_text = seq.to_string();
            for (key, value) in [
                (headers::REASON, letter.reason.as_str()),
                (headers::DETAIL, letter.detail.as_str()),
                (headers::SOURCE_TOPIC, letter.topic.as_str()),
                (headers::SOURCE_PARTITION, partition.as_str()),
                (headers::SOURCE_OFFSET, offset.as_str()),
                (headers::SEQ, seq_text.as_str()),
                (headers::STORE, store_id.as_str()),
            ] {
                hdrs = hdrs.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut record = BaseRecord::with_opaque_to(topic, Box::new(seq))
                .partition(0)
                .payload(letter.payload.as_slice())
                .headers(hdrs);
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            producer.send(record).map_err(|(e, _)| e)
        });
        for (_, offset) in &delivered {
            self.last_offset = Some(self.last_offset.map_or(*offset, |o| o.max(*offset)));
        }
        delivered.len() as u64
    }

    /// Reads the topic from the last known delivery to its end and drops outbox entries that
    /// are already there.
    fn reconcile(&mut self) -> std::result::Result<(), String> {
        let consumer: BaseConsumer = client_config(&self.brokers)
            .set("group.id", "patron-dead-letter-check")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e: KafkaError| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        let start = self
            .last_offset
            .map_or(Offset::Beginning, |o| Offset::Offset(o + 1));
        tpl.add_partition_offset(&self.topic, 0, start)
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + RECONCILE_WAIT;
        let mut found = 0u64;
        loop {
            if Instant::now() >= deadline {
                return Err("timed out before the end of the topic".into());
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(m)) => {
                    let Some(hdrs) = m.headers() else { continue };
                    let mut seq = None;
                    let mut store = None;
                    for h in hdrs.iter() {
                        let text = h.value.and_then(|v| std::str::from_utf8(v).ok());
                        match h.key {
                            headers::SEQ => seq = text.and_then(|t| t.parse::<u64>().ok()),
                            headers::STORE => store = text,
                            _ => {}
                        }
                    }
                    if store == Some(self.store_id.as_str())
                        && let Some(seq) = seq
                        && self.outbox.found_delivered(seq)
                    {
                        found += 1;
                        let offset = m.offset();
                        self.last_offset = Some(self.last_offset.map_or(offset, |o| o.max(offset)));
                    }
                }
            }
        }
        if found > 0 {
            info!(
                found,
                topic = %self.topic,
                "dead letters delivered before a restart were already in the topic; not sent again"
            );
        }
        Ok(())
    }
}

/// One warning per 10 s at most: a missing topic must not flood the log.
pub(super) fn warn_limited(last: &mut Option<Instant>, message: String) {
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
        warn!("{message}");
        *last = Some(Instant::now());
    }
}
