//! The baseline of the Kafka ingest benchmark: a bare rdkafka consumer that only drains a topic
//! to the end of every partition, doing nothing with the records.
//!
//! Run by `benches/kafka_ingest.sh`:
//!   cargo bench --bench kafka_drain -- <brokers> <topic>
//! It prints one line: `drained <records> records in <seconds> s (<rate> records/s)`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(brokers), Some(topic)) = (args.first(), args.get(1)) else {
        eprintln!("usage: kafka_drain <brokers> <topic> (skipped: nothing to measure)");
        return;
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "patron-bench-drain")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "65536")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let started = Instant::now();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut done = HashSet::new();
    while done.len() < partitions.len() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += rdkafka::Message::payload(&m).map_or(0, <[u8]>::len) as u64;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "drained {records} records ({bytes} bytes) in {secs:.3} s ({:.0} records/s)",
        records as f64 / secs
    );
}
