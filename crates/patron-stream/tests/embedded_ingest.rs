//! Fast ingest tests on the embedded (mock) broker: the Kafka code path end to end within one
//! process. The end-to-end suite against a real broker is in the workspace's tests/.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use patron_core::config::PatronConfig;
use patron_store::Store;
use patron_stream::kafka::KafkaSource;
use patron_stream::kafka::embedded::EmbeddedBroker;
use patron_stream::kafka::headers;
use patron_stream::kafka::ingest::{self, IngestOptions, Mode, StartAt};
use patron_stream::kafka::produce::EventProducer;
use patron_stream::kafka::status::IngestStatus;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "events";
const DLQ: &str = "dead";

fn purchase(i: u32, customer: &str, amount: &str) -> String {
    format!(
        r#"{{"event_id":"e{i}","type":"purchase","ts":"2025-03-0{}T10:00:00Z","customer_id":"{customer}","amount":"{amount}"}}"#,
        1 + i % 9
    )
}

/// Reading the embedded broker's events topic in `mode`, as consumer group `group`, without a
/// changelog, from the log's start; and the status the ingest reports to.
fn options(broker: &EmbeddedBroker, group: &str, mode: Mode) -> (IngestOptions, Arc<IngestStatus>) {
    let source = KafkaSource {
        brokers: broker.bootstrap_servers(),
        topic: TOPIC.into(),
        group_id: group.into(),
        dlq_topic: DLQ.into(),
        incarnation: broker.incarnation().into(),
        changelog: false,
        changelog_seed_batch: 1,
        session_timeout: Duration::from_secs(10),
    };
    let status = Arc::new(IngestStatus::new(&source.position_key(), TOPIC, DLQ));
    let opts = IngestOptions {
        source,
        mode,
        start: StartAt::Earliest,
        partitions: None,
    };
    (opts, status)
}

/// The sum of the store's committed next offsets: records committed, over every partition.
fn committed_offsets(store: &Store) -> u64 {
    let reader = store.reader().unwrap();
    reader
        .positions()
        .unwrap()
        .iter()
        .map(|p| p.next_offset)
        .sum()
}

fn ingest(store: &Store, broker: &EmbeddedBroker) -> ingest::IngestSummary {
    let (opts, status) = options(broker, "test", Mode::UntilEnd);
    ingest::run(
        store.clone(),
        &PatronConfig::default(),
        &opts,
        status,
        &AtomicBool::new(false),
    )
    .expect("ingest")
}

/// Every record of the dead-letter topic: (reason header, payload).
fn dead_letters(broker: &EmbeddedBroker) -> Vec<(String, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "reader")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(DLQ, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    loop {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                let reason = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == headers::REASON))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                out.push((reason, m.payload().unwrap_or_default().to_vec()));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("reading dead letters: {e}"),
            None => panic!("no end of the dead-letter topic within 10 s"),
        }
    }
}

#[test]
fn ingests_once_and_dead_letters_each_bad_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start(TOPIC, DLQ).unwrap();
    let mut producer = EventProducer::new(&broker.bootstrap_servers(), TOPIC).unwrap();
    // 30 purchases over 3 customers; the same event sent twice; two bad records.
    let mut expected: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
    for i in 0..30u32 {
        let customer = ["ann", "bob", "cy"][(i % 3) as usize];
        let amount = f64::from(i + 1) * 1.5;
        producer
            .send(
                customer.as_bytes(),
                purchase(i, customer, &format!("{amount}")).as_bytes(),
            )
            .unwrap();
        let e = expected.entry(customer).or_default();
        e.0 += 1;
        e.1 += amount;
    }
    producer
        .send(b"ann", purchase(0, "ann", "1.5").as_bytes())
        .unwrap();
    producer.send(b"bob", b"{not json").unwrap();
    producer
        .send(
            b"cy",
            br#"{"event_id":"x","type":"teleport","ts":"2025-03-01T00:00:00Z"}"#,
        )
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let store = Store::open(dir.path().join("s.redb")).unwrap();
    let first = ingest(&store, &broker);
    assert_eq!(first.records, 33);
    assert_eq!(first.applied, 30);
    assert_eq!(first.duplicates, 1);
    assert_eq!(first.rejected.get("malformed_json"), Some(&1));
    assert_eq!(first.rejected.get("unknown_type"), Some(&1));
    assert_eq!(first.dead_letters_pending, 0);

    let reader = store.reader().unwrap();
    for (customer, (frequency, monetary)) in &expected {
        let p = reader.profile(customer).unwrap().expect("profile");
        assert_eq!(u64::from(p.state.frequency), *frequency, "{customer}");
        let got = p.state.monetary().as_f64();
        assert!(
            (got - monetary).abs() < 1e-6,
            "{customer}: {got} vs {monetary}"
        );
    }
    assert_eq!(committed_offsets(&store), 33, "every offset is committed");

    // A second run over the same log applies nothing and sends no dead letter again.
    drop(reader);
    let second = ingest(&store, &broker);
    assert_eq!(second.records, 0);
    let mut letters = dead_letters(&broker);
    letters.sort();
    assert_eq!(
        letters,
        vec![
            ("malformed_json".to_string(), b"{not json".to_vec()),
            (
                "unknown_type".to_string(),
                br#"{"event_id":"x","type":"teleport","ts":"2025-03-01T00:00:00Z"}"#.to_vec()
            ),
        ]
    );
}

#[test]
fn a_new_embedded_log_is_read_from_its_start_and_state_carries_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.redb")).unwrap();
    for run in 0..2u32 {
        let broker = EmbeddedBroker::start(TOPIC, DLQ).unwrap();
        let mut producer = EventProducer::new(&broker.bootstrap_servers(), TOPIC).unwrap();
        for i in 0..5u32 {
            let id = run * 100 + i;
            producer
                .send(b"dee", purchase(id, "dee", "2").as_bytes())
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let summary = ingest(&store, &broker);
        assert_eq!(summary.applied, 5, "run {run} reads its whole new log");
    }
    let p = store.reader().unwrap().profile("dee").unwrap().unwrap();
    assert_eq!(p.state.frequency, 10);
}

/// A writer that has applied everything the log holds commits it without waiting out
/// `[checkpoint] interval` (an hour here): the store reaches the end of the log while the
/// ingest keeps following it. Taken out, nothing is committed before the ingest stops.
#[test]
fn a_caught_up_writer_commits_without_waiting_out_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start(TOPIC, DLQ).unwrap();
    let mut producer = EventProducer::new(&broker.bootstrap_servers(), TOPIC).unwrap();
    for i in 0..20u32 {
        producer
            .send(b"eve", purchase(i, "eve", "3").as_bytes())
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let store = Store::open(dir.path().join("s.redb")).unwrap();
    let mut config = PatronConfig::default();
    config.checkpoint.interval = Duration::from_secs(3600);
    let (opts, status) = options(&broker, "follow", Mode::Follow);
    let stop = AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let following = scope.spawn(|| ingest::run(store.clone(), &config, &opts, status, &stop));
        // A bound on a broken build, not a measurement: a working one commits within a
        // second of the group join.
        let deadline = Instant::now() + Duration::from_secs(60);
        let seen = loop {
            let n = committed_offsets(&store);
            if n >= 20 || Instant::now() > deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        stop.store(true, Ordering::Relaxed);
        following.join().unwrap().expect("ingest");
        seen
    });
    assert_eq!(
        seen, 20,
        "every record committed while following, an hour before the interval"
    );
    let p = store.reader().unwrap().profile("eve").unwrap().unwrap();
    assert_eq!(p.state.frequency, 20);
}
