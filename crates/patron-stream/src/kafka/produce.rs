//! A keyed producer: `generate --kafka`, the demo's traffic, and the API's event intake.

use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use tokio::sync::oneshot;

use super::client_config;
use super::delivery::{QUEUE_FULL_WAIT, await_deliveries, await_room, serve_reports};
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
                    await_room(&self.producer, QUEUE_FULL_WAIT);
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
        if !await_deliveries(&self.producer, timeout) {
            return Err(StreamError::Source(format!(
                "flush to {}: {} events still unacknowledged after {timeout:?}",
                self.topic,
                self.producer.in_flight_count()
            )));
        }
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
///
/// Built on a [`BaseProducer`] with a poll thread of its own rather than on rdkafka's
/// `FutureProducer`: that one's thread polls with a 100 ms timeout, and rdkafka rounds the rest
/// of a timeout down to whole milliseconds, so every poll ended in up to a millisecond of
/// zero-timeout polls. An idle server spent about 1 ms of CPU every 100 ms there, taken from the
/// request handlers (DESIGN.md's p99 target is 1 ms). This thread never waits inside rdkafka:
/// while records are unacknowledged it serves what has arrived every [`ACK_POLL`], and
/// otherwise it sleeps until the next send, or [`IDLE_POLL`] at the longest.
pub struct IntakeProducer {
    producer: Arc<BaseProducer<Acks>>,
    topic: String,
    poller: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// How often the poll thread serves delivery reports while some are owed.
const ACK_POLL: Duration = Duration::from_micros(250);
/// How long an idle poll thread sleeps before it serves events anyway (client errors).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Hands each delivery report to the request waiting for it.
#[derive(Default)]
struct Acks {
    /// Times the poll thread served the producer's events; read by tests.
    polls: AtomicU64,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<oneshot::Sender<std::result::Result<Landed, String>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => Ok(Landed {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((e, _)) => Err(format!("not acknowledged: {e}")),
        };
        // The request may have gone (client disconnected); the record landed all the same.
        let _ = waiter.send(outcome);
    }
}

impl IntakeProducer {
    pub fn new(brokers: &str, topic: &str) -> Result<Self> {
        let producer: BaseProducer<Acks> = client_config(brokers)
            .set("linger.ms", "1")
            .set("acks", "all")
            .set("message.timeout.ms", "15000")
            .create_with_context(Acks::default())
            .map_err(|e| StreamError::Source(format!("kafka producer for {brokers}: {e}")))?;
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = std::thread::Builder::new()
            .name("patron-intake-acks".to_owned())
            .spawn({
                let (producer, stop) = (producer.clone(), stop.clone());
                move || serve_acks(&producer, &stop)
            })
            .map_err(|e| {
                StreamError::Source(format!("cannot start the intake poll thread: {e}"))
            })?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            poller: Some(poller),
            stop,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Queues one record keyed by customer (or anonymous) id without waiting; await the
    /// returned [`Pending`] for the broker's ack. Queue all of a batch first, then await them.
    pub fn enqueue(&self, key: &[u8], payload: &[u8]) -> std::result::Result<Pending, String> {
        let (waiter, ack) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(&self.topic, Box::new(waiter))
            .key(key)
            .payload(payload);
        self.producer
            .send(record)
            .map_err(|(e, _)| format!("produce to {}: {e}", self.topic))?;
        if let Some(poller) = &self.poller {
            poller.thread().unpark();
        }
        Ok(Pending(ack))
    }

    /// Times the poll thread has served the producer's events.
    pub fn polls(&self) -> u64 {
        self.producer.context().polls.load(Ordering::Relaxed)
    }
}

impl Drop for IntakeProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            poller.thread().unpark();
            let _ = poller.join();
        }
        // Whatever is still queued is sent or, after this wait, purged by rdkafka's own drop;
        // either way its waiter gets a report.
        await_deliveries(&self.producer, Duration::from_secs(5));
    }
}

/// The intake's poll thread: serves delivery reports as they come, never spinning.
fn serve_acks(producer: &BaseProducer<Acks>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // Zero-timeout polls serve every report queued (one produce request's each) and return;
        // they never round into a spin.
        let left = serve_reports(producer);
        producer.context().polls.fetch_add(1, Ordering::Relaxed);
        if left > 0 {
            std::thread::sleep(ACK_POLL);
        } else {
            // `enqueue` unparks: a send made after the count was read wakes this at once.
            std::thread::park_timeout(IDLE_POLL);
        }
    }
}

/// A queued record waiting for the broker's acknowledgement.
pub struct Pending(oneshot::Receiver<std::result::Result<Landed, String>>);

impl Pending {
    pub async fn landed(self) -> std::result::Result<Landed, String> {
        match self.0.await {
            Ok(outcome) => outcome,
            Err(_) => Err("the producer shut down before the broker answered".to_owned()),
        }
    }
}
