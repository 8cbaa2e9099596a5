//! Identity records for the source topic, fed through an outbox in the store.
//!
//! The writer routes a merge through the log when the other id's state may live in another
//! instance (see `applier::route`). Such a record is committed to the route outbox in the same
//! transaction as the offsets and state that produced it, produced to the source topic only
//! after that commit, and removed from the outbox once acknowledged. A crash before the
//! removal sends it again; the receiver drops the copy by its origin (see [`RouteMarks`]).

use std::collections::HashMap;

use patron_store::tables::META_ROUTE_SEQ;
use patron_store::{RouteKind, RoutedRecord, SourcePosition, StoreReader};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};

use super::dead_letters::DeliveryLog;
use super::outbox::Outbox;
use super::{client_config, headers};
use crate::applier::Applier;
use crate::{Result, StreamError};

/// The header value naming each kind.
fn kind_name(kind: RouteKind) -> &'static str {
    match kind {
        RouteKind::Handoff => "handoff",
        RouteKind::Merge => "merge",
        RouteKind::Forward => "forward",
        RouteKind::Forget => "forget",
    }
}

/// What the headers of a record in the source topic say about routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHeader {
    pub kind: RouteKind,
    pub other: Option<String>,
    pub origin_partition: u32,
    pub origin_offset: u64,
    /// Handoff and merge: the time of the identify or alias behind them (absent from records
    /// of older writers).
    pub origin_ts: Option<i64>,
}

/// `None` for an ordinary event; `Some(Err(why))` for a record that claims to be routed but
/// whose headers do not say how.
pub fn parse_route(
    hdrs: Option<&rdkafka::message::BorrowedHeaders>,
) -> Option<std::result::Result<RouteHeader, String>> {
    let hdrs = hdrs?;
    let mut kind = None;
    let (mut other, mut partition, mut offset, mut ts) = (None, None, None, None);
    for h in hdrs.iter() {
        let text = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
        match h.key {
            headers::ROUTE => kind = Some(text.unwrap_or_default()),
            headers::ROUTE_OTHER => other = text,
            headers::ORIGIN_PARTITION => partition = text,
            headers::ORIGIN_OFFSET => offset = text,
            headers::ORIGIN_TS => ts = text,
            _ => {}
        }
    }
    let kind = kind?;
    Some(build_route(&kind, other, partition, offset, ts))
}

fn build_route(
    kind: &str,
    other: Option<String>,
    partition: Option<String>,
    offset: Option<String>,
    ts: Option<String>,
) -> std::result::Result<RouteHeader, String> {
    let kind = match kind {
        "handoff" => RouteKind::Handoff,
        "merge" => RouteKind::Merge,
        "forward" => RouteKind::Forward,
        "forget" => RouteKind::Forget,
        other => return Err(format!("unknown {} {other:?}", headers::ROUTE)),
    };
    let number = |name: &str, text: Option<String>| -> std::result::Result<u64, String> {
        text.as_deref()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| format!("{name} missing or not a number"))
    };
    let origin_partition = u32::try_from(number(headers::ORIGIN_PARTITION, partition)?)
        .map_err(|_| format!("{} out of range", headers::ORIGIN_PARTITION))?;
    let origin_offset = number(headers::ORIGIN_OFFSET, offset)?;
    let origin_ts = ts
        .map(|text| text.parse::<i64>())
        .transpose()
        .map_err(|_| format!("{} not a number", headers::ORIGIN_TS))?;
    let needs_other = matches!(kind, RouteKind::Handoff | RouteKind::Merge);
    if needs_other && other.as_deref().is_none_or(str::is_empty) {
        return Err(format!("{} missing", headers::ROUTE_OTHER));
    }
    Ok(RouteHeader {
        kind,
        other,
        origin_partition,
        origin_offset,
        origin_ts,
    })
}

/// Per (origin partition, receiving partition): the next origin offset expected. Records from
/// one origin partition reach a receiving partition in origin order (one ordered outbox per
/// writer, one request in flight), so anything below the mark was applied before.
pub struct RouteMarks {
    source_key: String,
    incarnation: String,
    marks: HashMap<(u32, u32), u64>,
}

impl RouteMarks {
    pub fn new(source_key: &str, incarnation: &str) -> Self {
        Self {
            source_key: source_key.to_owned(),
            incarnation: incarnation.to_owned(),
            marks: HashMap::new(),
        }
    }

    /// The positions-table key of the marks from `origin` (one row per receiving partition).
    fn key(&self, origin: u32) -> String {
        format!("{}#route-from-{origin}", self.source_key)
    }

    /// Forgets the marks held in memory for receiving partition `partition` (its positions
    /// were replaced by a restore).
    pub fn forget_partition(&mut self, partition: u32) {
        self.marks.retain(|(_, to), _| *to != partition);
    }

    /// True, and the mark moves past it, when the record is new; false for a copy.
    pub fn admit(
        &mut self,
        applier: &mut Applier,
        route: &RouteHeader,
        partition: u32,
    ) -> Result<bool> {
        let slot = (route.origin_partition, partition);
        let next = match self.marks.get(&slot) {
            Some(n) => *n,
            None => applier
                .position(&self.key(route.origin_partition), partition)?
                .filter(|p| p.incarnation == self.incarnation)
                .map_or(0, |p| p.next_offset),
        };
        if route.origin_offset < next {
            self.marks.insert(slot, next);
            return Ok(false);
        }
        let next = route.origin_offset + 1;
        self.marks.insert(slot, next);
        applier.set_position(SourcePosition {
            source: self.key(route.origin_partition),
            partition,
            next_offset: next,
            incarnation: self.incarnation.clone(),
        });
        Ok(true)
    }
}

pub struct RouteForwarder {
    topic: String,
    producer: BaseProducer<DeliveryLog>,
    outbox: Outbox<RoutedRecord>,
}

impl RouteForwarder {
    /// Loads the committed outbox. `reader` must be a snapshot of the store the applier writes.
    pub fn open(brokers: &str, topic: &str, reader: &StoreReader) -> Result<Self> {
        let producer = client_config(brokers)
            .set("acks", "all")
            // Order per partition is what the receivers' marks rely on: one request in flight,
            // so a retry never lets a later record overtake it (a retried copy is dropped by
            // the marks), and a record is never given up on.
            .set("max.in.flight.requests.per.connection", "1")
            .set("message.timeout.ms", "0")
            .create_with_context(DeliveryLog::default())
            .map_err(|e| StreamError::Source(format!("route producer: {e}")))?;
        let next_seq = reader
            .meta(META_ROUTE_SEQ)?
            .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        Ok(Self {
            topic: topic.to_owned(),
            producer,
            outbox: Outbox::new("identity record", next_seq, reader.pending_routed()?),
        })
    }

    /// Records committed or staged and not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.outbox.pending()
    }

    /// Whether a checkpoint would change anything for the outbox.
    pub fn has_work(&self) -> bool {
        self.outbox.has_work()
    }

    /// Moves what the applier routed into the outbox with the next checkpoint, with the
    /// sequence counter and the acknowledged entries. Returns how many records it moved.
    pub fn before_checkpoint(&mut self, applier: &mut Applier) -> u64 {
        let start = self.outbox.staged_len();
        for record in applier.take_routed() {
            self.outbox.stage(record);
        }
        applier.stage_routed(self.outbox.staged_from(start).iter().cloned());
        applier.stage_meta(
            META_ROUTE_SEQ,
            self.outbox.next_seq().to_le_bytes().to_vec(),
        );
        applier.stage_routed_delivered(self.outbox.take_acknowledged());
        (self.outbox.staged_len() - start) as u64
    }

    /// After a checkpoint committed: produces what is now durable. Returns how many records
    /// the topic acknowledged in this round.
    pub fn after_checkpoint(&mut self) -> u64 {
        if !self.outbox.committed() {
            return 0;
        }
        let (producer, topic) = (&self.producer, self.topic.as_str());
        let delivered = self.outbox.send_round(producer, topic, |seq, record| {
            let partition = record.origin_partition.to_string();
            let offset = record.origin_offset.to_string();
            let ts = record.origin_ts.map(|t| t.to_string());
            let mut hdrs = OwnedHeaders::new_with_capacity(5)
                .insert(Header {
                    key: headers::ROUTE,
                    value: Some(kind_name(record.kind)),
                })
                .insert(Header {
                    key: headers::ORIGIN_PARTITION,
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: headers::ORIGIN_OFFSET,
                    value: Some(offset.as_str()),
                });
            if let Some(ts) = &ts {
                hdrs = hdrs.insert(Header {
                    key: headers::ORIGIN_TS,
                    value: Some(ts.as_str()),
                });
            }
            if let Some(other) = &record.other {
                hdrs = hdrs.insert(Header {
                    key: headers::ROUTE_OTHER,
                    value: Some(other.as_str()),
                });
            }
            let message = BaseRecord::with_opaque_to(topic, Box::new(seq))
                .key(record.key.as_str())
                .payload(record.payload.as_slice())
                .headers(hdrs);
            producer.send(message).map_err(|(e, _)| e)
        });
        delivered.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    #[test]
    fn route_headers_are_checked() {
        let ok =
            build_route("merge", some("anon-1"), some("3"), some("42"), some("-5")).expect("valid");
        assert_eq!(ok.kind, RouteKind::Merge);
        assert_eq!((ok.origin_partition, ok.origin_offset), (3, 42));
        assert_eq!(ok.origin_ts, Some(-5));
        let older = build_route("handoff", some("c"), some("0"), some("7"), None).expect("valid");
        assert_eq!(
            older.origin_ts, None,
            "a record of an older writer has no time"
        );
        assert!(build_route("forward", None, some("0"), some("7"), None).is_ok());
        let cases = [
            build_route("teleport", some("a"), some("0"), some("1"), None),
            build_route("handoff", None, some("0"), some("1"), None),
            build_route("merge", some(""), some("0"), some("1"), None),
            build_route("forward", None, some("x"), some("1"), None),
            build_route("forward", None, some("0"), None, None),
            build_route("forward", None, some("4294967296"), some("1"), None),
            build_route("merge", some("a"), some("0"), some("1"), some("soon")),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert!(case.is_err(), "case {i} should be refused: {case:?}");
        }
    }
}
