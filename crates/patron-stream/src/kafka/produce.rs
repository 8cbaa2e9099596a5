//! A keyed producer: `generate --kafka`, the demo's traffic, and the API's event intake.

use std::time::Duration;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::client_config;
use crate::{Result, StreamError};

/// Counts deliveries the broker refused, so none goes unnoticed.
#[derive(Default)]
struct Failures {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.count.fetch_add(1, Ordering::Relaxed);
            self.first
                .lock()
                .expect("failure lock")
                .get_or_insert_with(|| e.to_string());
        }
    }
}

pub struct EventProducer {
    producer: BaseProducer<Failures>,
    topic: String,
    sent: u64,
}

impl EventProducer {
    pub fn new(brokers: &str, topic: &str) -> Result<Self> {
        let producer = client_config(brokers)
            .set("linger.ms", "5")
            .set("acks", "all")
            .set("queue.buffering.max.messages", "200000")
            .create_with_context(Failures::default())
            .map_err(|e| StreamError::Source(format!("kafka producer for {brokers}: {e}")))?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            sent: 0,
        })
    }

    /// Queues one event keyed by customer (or anonymous) id; waits while the queue is full.
    pub fn send(&mut self, key: &[u8], payload: &[u8]) -> Result<()> {
        loop {
            let record = BaseRecord::to(&self.topic).key(key).payload(payload);
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    if self.sent.is_multiple_of(1024) {
                        self.producer.poll(Duration::ZERO);
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    return Err(StreamError::Source(format!(
                        "produce to {}: {e}",
                        self.topic
                    )));
                }
            }
        }
    }

    /// Waits until every queued event is acknowledged; fails if any was refused.
    pub fn flush(&mut self, timeout: Duration) -> Result<()> {
        self.producer
            .flush(timeout)
            .map_err(|e| StreamError::Source(format!("flush to {}: {e}", self.topic)))?;
        let failures = self.producer.context();
        let failed = failures.count.load(Ordering::Relaxed);
        if failed > 0 {
            let first = failures.first.lock().expect("failure lock").clone();
            return Err(StreamError::Source(format!(
                "{failed} events were not accepted by {}: {}",
                self.topic,
                first.unwrap_or_default()
            )));
        }
        Ok(())
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }
}

/// Where one accepted event landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    pub partition: i32,
    pub offset: i64,
}

/// The API's producer: each send resolves once the broker has acknowledged the record
/// (`acks=all`), so a caller can report per-event results. Shared by request handlers.
pub struct IntakeProducer {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
}

impl IntakeProducer {
    pub fn new(brokers: &str, topic: &str) -> Result<Self> {
        let producer = client_config(brokers)
            .set("linger.ms", "1")
            .set("acks", "all")
            .set("message.timeout.ms", "15000")
            .create()
            .map_err(|e| StreamError::Source(format!("kafka producer for {brokers}: {e}")))?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Queues one record keyed by customer (or anonymous) id without waiting; await the
    /// returned [`Pending`] for the broker's ack. Queue all of a batch first, then await them.
    pub fn enqueue(&self, key: &[u8], payload: &[u8]) -> std::result::Result<Pending, String> {
        let record = rdkafka::producer::FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload);
        self.producer
            .send_result(record)
            .map(Pending)
            .map_err(|(e, _)| format!("produce to {}: {e}", self.topic))
    }
}

/// A queued record waiting for the broker's acknowledgement.
pub struct Pending(rdkafka::producer::DeliveryFuture);

impl Pending {
    pub async fn landed(self) -> std::result::Result<Landed, String> {
        match self.0.await {
            Ok(Ok(d)) => Ok(Landed {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((e, _))) => Err(format!("not acknowledged: {e}")),
            Err(_) => Err("the producer shut down before the broker answered".to_owned()),
        }
    }
}
