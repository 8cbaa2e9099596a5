//! The API's intake producer on the embedded (mock) broker: every acknowledgement names where
//! its record is in the log, and an idle producer does not poll in a loop.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use patron_stream::kafka::embedded::EmbeddedBroker;
use patron_stream::kafka::produce::IntakeProducer;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TOPIC: &str = "events";

/// Every record of the topic, read back from the broker: (partition, offset) → payload.
fn read_back(broker: &EmbeddedBroker, expected: usize) -> BTreeMap<(i32, i64), Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "reader")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(TOPIC), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(TOPIC, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            out.insert(
                (m.partition(), m.offset()),
                m.payload().unwrap_or_default().to_vec(),
            );
        }
    }
    out
}

#[test]
fn each_acknowledgement_names_where_its_record_landed() {
    let broker = EmbeddedBroker::start(TOPIC, "dead").unwrap();
    let producer = IntakeProducer::new(&broker.bootstrap_servers(), TOPIC).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let payloads: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"event_id":"e{i}"}}"#))
        .collect();
    let landed: BTreeMap<(i32, i64), Vec<u8>> = runtime.block_on(async {
        // Queued all at once, then awaited: the way POST /v1/events uses it.
        let pending: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let key = format!("c{}", i % 7);
                producer.enqueue(key.as_bytes(), p.as_bytes()).unwrap()
            })
            .collect();
        let mut landed = BTreeMap::new();
        for (p, payload) in pending.into_iter().zip(&payloads) {
            let at = p.landed().await.unwrap();
            landed.insert((at.partition, at.offset), payload.as_bytes().to_vec());
        }
        landed
    });
    assert_eq!(
        landed.len(),
        payloads.len(),
        "two acknowledgements name one place"
    );
    // The broker's own account of the topic: the same records at the same places.
    assert_eq!(read_back(&broker, payloads.len()), landed);
}

#[test]
fn an_idle_intake_producer_does_not_poll_in_a_loop() {
    let broker = EmbeddedBroker::start(TOPIC, "dead").unwrap();
    let producer = IntakeProducer::new(&broker.bootstrap_servers(), TOPIC).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = producer.polls();
    std::thread::sleep(Duration::from_millis(2500));
    let polls = producer.polls() - before;
    // An idle poll thread wakes once a second; a loop on a 100 ms timeout would poll 25 times,
    // and one on a zero timeout thousands.
    assert!(polls <= 4, "{polls} polls in 2.5 s while idle");
}
