//! Waiting for a producer's delivery reports, without rdkafka's fixed waits.
//!
//! rust-rdkafka 0.39's `BaseProducer::poll(d)` returns only once `d` has passed, however early
//! the reports came, and it hands librdkafka the rest of `d` rounded down to whole milliseconds,
//! so the last millisecond of every wait is a loop of zero-timeout polls. Its `flush` polls in
//! steps of 100 ms: a flush of records the broker acknowledged within a millisecond takes
//! 100 ms (docs/BENCHMARKS.md, Kafka ingest, eleventh session). The writer waits so after each
//! checkpoint that sent dead letters or identity records, so those 100 ms were taken from
//! ingestion.
//!
//! Here reports are served by zero-timeout polls, which never wait and never spin, with short
//! sleeps between them that grow while nothing arrives.

use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// How long a send that found the queue full waits for room before it tries again.
pub(crate) const QUEUE_FULL_WAIT: Duration = Duration::from_millis(50);
/// The first sleep between polls while waiting, doubled after each poll up to [`LONGEST_NAP`].
const FIRST_NAP: Duration = Duration::from_micros(50);
const LONGEST_NAP: Duration = Duration::from_millis(2);

/// Serves every delivery report waiting, without waiting for more. A zero-timeout poll serves
/// one event, which holds the reports of one produce request, so it polls until one serves
/// nothing. Returns the records still in flight.
pub(crate) fn serve_reports<C: ProducerContext>(producer: &BaseProducer<C>) -> i32 {
    let mut left = producer.in_flight_count();
    loop {
        producer.poll(Duration::ZERO);
        let now = producer.in_flight_count();
        if now == 0 || now == left {
            return now;
        }
        left = now;
    }
}

/// Serves reports until no record is in flight; false if some still are after `timeout`.
pub(crate) fn await_deliveries<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> bool {
    wait(producer, timeout, |left| left == 0)
}

/// After a send found the queue full: serves reports until some of the queue has gone, or
/// `timeout` passes (the caller tries again either way).
pub(crate) fn await_room<C: ProducerContext>(producer: &BaseProducer<C>, timeout: Duration) {
    let full = producer.in_flight_count();
    wait(producer, timeout, |left| left < full);
}

fn wait<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
    done: impl Fn(i32) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut nap = FIRST_NAP;
    loop {
        if done(serve_reports(producer)) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(LONGEST_NAP);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use rdkafka::ClientContext;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{BaseRecord, DeliveryResult};

    use super::*;
    use crate::kafka::client_config;
    use crate::kafka::embedded::EmbeddedBroker;

    /// Counts the reports served, by outcome.
    #[derive(Default)]
    struct Tally {
        delivered: AtomicU64,
        failed: AtomicU64,
    }

    impl ClientContext for Tally {}

    impl ProducerContext for Tally {
        type DeliveryOpaque = ();

        fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
            match result {
                Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    fn producer(brokers: &str, settings: &[(&str, &str)]) -> BaseProducer<Tally> {
        let mut config = client_config(brokers);
        for (key, value) in settings {
            config.set(*key, *value);
        }
        config.create_with_context(Tally::default()).unwrap()
    }

    #[test]
    fn awaiting_deliveries_serves_every_report() {
        let broker = EmbeddedBroker::start("events", "dead").unwrap();
        let producer = producer(&broker.bootstrap_servers(), &[("linger.ms", "0")]);
        for i in 0..500 {
            let key = format!("c{i}");
            producer
                .send(BaseRecord::to("events").key(&key).payload("{}"))
                .unwrap();
        }
        assert!(await_deliveries(&producer, Duration::from_secs(30)));
        assert_eq!(producer.in_flight_count(), 0);
        assert_eq!(producer.context().delivered.load(Ordering::Relaxed), 500);
        assert_eq!(producer.context().failed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn awaiting_deliveries_gives_up_when_no_broker_answers() {
        // Nothing listens on port 1: the record stays queued until its own timeout (a minute).
        let producer = producer("127.0.0.1:1", &[("message.timeout.ms", "60000")]);
        producer
            .send(BaseRecord::to("events").key("c1").payload("{}"))
            .unwrap();
        assert!(!await_deliveries(&producer, Duration::from_millis(300)));
        // (The count in flight also holds the connection errors not yet served.)
        assert!(producer.in_flight_count() >= 1);
        assert_eq!(producer.context().delivered.load(Ordering::Relaxed), 0);
        assert_eq!(producer.context().failed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_queue_has_room_again_after_awaiting_it() {
        let broker = EmbeddedBroker::start("events", "dead").unwrap();
        let producer = producer(
            &broker.bootstrap_servers(),
            &[("queue.buffering.max.messages", "8"), ("linger.ms", "0")],
        );
        let send = |i: usize| {
            let key = format!("c{i}");
            producer
                .send(BaseRecord::to("events").key(&key).payload("{}"))
                .map_err(|(e, _)| e)
        };
        let mut sent = 0;
        while send(sent).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 8, "the queue holds 8 records");
        assert!(matches!(
            send(sent),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
        ));
        await_room(&producer, Duration::from_secs(30));
        send(sent).expect("room after the wait");
        assert!(producer.context().delivered.load(Ordering::Relaxed) > 0);
        assert!(await_deliveries(&producer, Duration::from_secs(30)));
        assert_eq!(producer.context().delivered.load(Ordering::Relaxed), 9);
    }
}
