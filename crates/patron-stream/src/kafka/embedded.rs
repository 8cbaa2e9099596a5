//! The embedded broker: librdkafka's in-process mock cluster.
//!
//! It speaks the Kafka protocol on a loopback port, so `serve` reads through the real consumer
//! code path and any Kafka client can produce to it. Its log lives in memory and dies with the
//! process; each start gets a new incarnation id, which the positions record, so a restarted
//! `serve` knows the stored offsets belong to an old log and reads the new one from its start.
//!
//! The mock cluster is not `Send`: create it, and drop it, on one thread.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::StreamError;

/// Partitions of the events topic on the embedded broker.
pub const EMBEDDED_PARTITIONS: i32 = 4;

pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
    incarnation: String,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster with the events topic, its changelog topic and the
    /// dead-letter topic (the mock cluster does not answer topic creation by admin requests).
    pub fn start(topic: &str, dlq_topic: &str) -> Result<Self, StreamError> {
        let err = |what: &str, e: rdkafka::error::KafkaError| {
            StreamError::Source(format!("embedded broker: {what}: {e}"))
        };
        let cluster = MockCluster::new(1).map_err(|e| err("start", e))?;
        cluster
            .create_topic(topic, EMBEDDED_PARTITIONS, 1)
            .map_err(|e| err(&format!("create topic {topic}"), e))?;
        let changelog = super::changelog::topic_for(topic);
        cluster
            .create_topic(&changelog, EMBEDDED_PARTITIONS, 1)
            .map_err(|e| err(&format!("create topic {changelog}"), e))?;
        cluster
            .create_topic(dlq_topic, 1, 1)
            .map_err(|e| err(&format!("create topic {dlq_topic}"), e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let incarnation = format!(
            "embedded-{:x}-{:x}",
            now.as_nanos(),
            u64::from(std::process::id())
        );
        Ok(Self {
            cluster,
            incarnation,
        })
    }

    /// The `host:port` Kafka clients bootstrap from.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }
}
