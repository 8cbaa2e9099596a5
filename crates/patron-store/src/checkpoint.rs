//! The checkpoint: the one write transaction that makes progress durable.
//!
//! Invariant: the state of every profile and the source positions that produced it are
//! committed together. After a crash the store holds exactly the effects of the events before
//! the recorded positions, so resuming from them applies every event once.

use std::collections::BTreeMap;

use patron_core::money::Money;
use patron_core::state::CustomerState;
use patron_core::time::Millis;
use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::codec;
use crate::tables::*;

/// A profile to upsert (its encoded record, see [`crate::codec::encode_profile`]), or to
/// delete when `record` is `None` (merged away, erased). Encoded by the writer straight from its
/// cache, so a checkpoint never copies whole states.
#[derive(Debug, Clone)]
pub struct ProfileWrite {
    pub customer_id: String,
    pub record: Option<Vec<u8>>,
}

impl ProfileWrite {
    pub fn upsert(customer_id: &str, scope: u32, state: &CustomerState) -> Self {
        Self {
            customer_id: customer_id.to_owned(),
            record: Some(codec::encode_profile(scope, state)),
        }
    }

    pub fn delete(customer_id: &str) -> Self {
        Self {
            customer_id: customer_id.to_owned(),
            record: None,
        }
    }
}

/// Where a source has been read up to. `next_offset` is the first record not yet applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// `kafka:<topic>` or `file:<fingerprint>`.
    pub source: String,
    pub partition: u32,
    pub next_offset: u64,
    /// Identifies one life of the log (an embedded broker's run, a file's content), so that
    /// positions from an older log are recognised instead of misread.
    pub incarnation: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PositionRecord {
    pub(crate) next_offset: u64,
    pub(crate) incarnation: String,
}

/// Cumulative counters since the store was created, committed with the state they describe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounters {
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: BTreeMap<String, u64>,
    /// The largest event time applied (the event clock).
    pub as_of: Option<Millis>,
    /// Length of each file dead-letter sink at this checkpoint, to truncate a torn tail.
    pub dead_letter_len: BTreeMap<String, u64>,
}

impl StoreCounters {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// What erasure has done since the store was created (kept apart from [`StoreCounters`] so
/// stores written before erasure existed still decode).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureCounters {
    /// Erase requests applied.
    pub customers: u64,
    /// Ids tombstoned (canonical ids and their aliases).
    pub ids: u64,
    /// Events dropped because a tombstone covered them.
    pub events_dropped: u64,
}

/// Totals of one day of event time, kept incrementally for KPIs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyTotals {
    pub orders: u64,
    pub revenue: Money,
    pub refunds: u64,
    pub refunded: Money,
    /// Customers whose first purchase falls on this day (may move as late events arrive).
    pub new_customers: i64,
    pub interactions: u64,
    pub offers_shown: u64,
    pub offers_accepted: u64,
    pub offers_declined: u64,
}

/// An id as one source partition's records know it: (id, scope). Alias links and tombstones
/// are kept per scope (see [`crate::tables::ALIASES`]).
pub type ScopedId = (String, u32);

/// One atomic unit of progress.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    pub profiles: Vec<ProfileWrite>,
    /// Alias links to set (`Some`: the id merged into) or remove (`None`), by (merged id,
    /// scope) as in [`crate::tables::ALIASES`].
    pub links: Vec<(ScopedId, Option<String>)>,
    /// Absolute totals for each touched day.
    pub daily: Vec<(i32, DailyTotals)>,
    pub positions: Vec<SourcePosition>,
    pub counters: StoreCounters,
    /// Other named singletons to write (for example a fitted model).
    pub meta: Vec<(String, Vec<u8>)>,
    /// Dead letters to add to the outbox, by sequence number.
    pub dead_letters: Vec<(u64, DeadLetterRecord)>,
    /// Outbox entries the dead-letter topic has acknowledged, to remove.
    pub dead_letters_delivered: Vec<u64>,
    /// Identity records to add to the route outbox, by sequence number.
    pub routed: Vec<(u64, RoutedRecord)>,
    /// Route outbox entries the source topic has acknowledged, to remove.
    pub routed_delivered: Vec<u64>,
    /// Tombstones to set (`Some`: the erasure time, epoch ms) or remove (`None`, one moved to
    /// another scope), by (erased id, scope).
    pub tombstones: Vec<(ScopedId, Option<Millis>)>,
    /// Written when `Some`.
    pub erasures: Option<ErasureCounters>,
    /// Contact histories to write, by (customer id, offer id).
    pub contacts: Vec<((String, String), crate::ContactRecord)>,
    /// Customers whose every contact record goes (erasure).
    pub contacts_removed_for: Vec<String>,
    /// Arm counts to write, by (offer id, segment).
    pub offer_counts: Vec<((String, String), crate::OfferCounts)>,
    /// The keys this checkpoint changed, as a changelog outbox row with its sequence number.
    pub changes: Option<(u64, Vec<crate::ChangedKey>)>,
    /// Changelog outbox rows the changelog topic has acknowledged (or that no longer need
    /// sending), to remove.
    pub changes_delivered: Vec<u64>,
}

/// A rejected record waiting in the outbox for the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The rejection reason code (`malformed_json`, ...).
    pub reason: String,
    pub detail: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// What a [`RoutedRecord`] asks the owner of its key's partition to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteKind {
    /// Send the state of `key` to be merged into `other` (an identify or alias seen elsewhere).
    Handoff,
    /// Merge this state (of the id `other`) into `key`.
    Merge,
    /// Apply this source record (`payload`) to `key`, the canonical id its own id links to.
    Forward,
    /// A customer was erased: drop the links among its ids and tombstone them (`payload`: the
    /// erasure time and the ids). Keyed by one of the ids, to reach that id's home.
    Forget,
}

/// A record for the source topic that moves identity state between the instances owning
/// different partitions, waiting in the route outbox until the topic acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedRecord {
    pub kind: RouteKind,
    /// The message key: the owner of the key's partition applies the record.
    pub key: String,
    /// Handoff: the canonical id to merge into. Merge: the id whose state `payload` holds.
    /// Forward: when set, apply to this id itself without following links (sent back after an
    /// erasure).
    pub other: Option<String>,
    /// The source record whose application produced this one. Receivers keep, per origin
    /// partition, the highest origin offset applied, which drops a resent record.
    pub origin_partition: u32,
    pub origin_offset: u64,
    /// Merge: the encoded state. Forward: the source record's payload. Forget: the erasure
    /// time and the erased ids. Handoff: empty.
    pub payload: Vec<u8>,
    /// Handoff and merge: the time of the `identify` or `alias` event they carry out, so the
    /// receiver can tell whether an erasure it knows of covers them (`None` in records written
    /// before this field existed, and for forwards and forgets).
    pub origin_ts: Option<i64>,
}

/// [`RoutedRecord`] as stores wrote it before `origin_ts`: rows of this shape may still wait
/// in the route outbox of a store written by an older build.
#[derive(Deserialize)]
pub(crate) struct RoutedRecordV1 {
    kind: RouteKind,
    key: String,
    other: Option<String>,
    origin_partition: u32,
    origin_offset: u64,
    payload: Vec<u8>,
}

impl From<RoutedRecordV1> for RoutedRecord {
    fn from(v1: RoutedRecordV1) -> Self {
        Self {
            kind: v1.kind,
            key: v1.key,
            other: v1.other,
            origin_partition: v1.origin_partition,
            origin_offset: v1.origin_offset,
            payload: v1.payload,
            origin_ts: None,
        }
    }
}

pub(crate) fn commit(db: &Database, cp: &Checkpoint) -> Result<()> {
    let txn = db.begin_write()?;
    {
        let mut customers = txn.open_table(CUSTOMERS)?;
        // Key order turns random B-tree inserts into a sweep over the leaves.
        let mut order: Vec<&ProfileWrite> = cp.profiles.iter().collect();
        order.sort_unstable_by(|a, b| a.customer_id.cmp(&b.customer_id));
        for p in order {
            match &p.record {
                Some(record) => {
                    customers.insert(p.customer_id.as_str(), record.as_slice())?;
                }
                None => {
                    customers.remove(p.customer_id.as_str())?;
                }
            }
        }
        // Links and contacts come from hash maps: in key order too, or a replay's first
        // checkpoint inserts half a million of each at random places in their trees.
        let mut aliases = txn.open_table(ALIASES)?;
        for ((from, scope), to) in in_key_order(&cp.links) {
            match to {
                Some(to) => aliases.insert((from.as_str(), *scope), to.as_str())?,
                None => aliases.remove((from.as_str(), *scope))?,
            };
        }
        let mut contacts = txn.open_table(OFFER_CONTACTS)?;
        for customer in &cp.contacts_removed_for {
            remove_contacts_of(&mut contacts, customer)?;
        }
        for ((customer, offer), record) in in_key_order(&cp.contacts) {
            contacts.insert(
                (customer.as_str(), offer.as_str()),
                codec::encode(record).as_slice(),
            )?;
        }
        let mut arms = txn.open_table(OFFER_STATS)?;
        for ((offer, segment), counts) in in_key_order(&cp.offer_counts) {
            arms.insert(
                (offer.as_str(), segment.as_str()),
                codec::encode(counts).as_slice(),
            )?;
        }
        let mut tombstones = txn.open_table(TOMBSTONES)?;
        for ((id, scope), at) in in_key_order(&cp.tombstones) {
            match at {
                Some(at) => tombstones.insert((id.as_str(), *scope), *at)?,
                None => tombstones.remove((id.as_str(), *scope))?,
            };
        }
        let mut daily = txn.open_table(DAILY)?;
        for (day, totals) in &cp.daily {
            daily.insert(*day, codec::encode(totals).as_slice())?;
        }
        let mut positions = txn.open_table(POSITIONS)?;
        for p in &cp.positions {
            let rec = PositionRecord {
                next_offset: p.next_offset,
                incarnation: p.incarnation.clone(),
            };
            positions.insert(
                (p.source.as_str(), p.partition),
                codec::encode(&rec).as_slice(),
            )?;
        }
        let mut outbox = txn.open_table(DEAD_LETTERS)?;
        for (seq, letter) in &cp.dead_letters {
            outbox.insert(*seq, codec::encode(letter).as_slice())?;
        }
        for seq in &cp.dead_letters_delivered {
            outbox.remove(*seq)?;
        }
        let mut routes = txn.open_table(ROUTE_OUTBOX)?;
        for (seq, record) in &cp.routed {
            routes.insert(*seq, codec::encode(record).as_slice())?;
        }
        for seq in &cp.routed_delivered {
            routes.remove(*seq)?;
        }
        let mut changes = txn.open_table(CHANGELOG_OUTBOX)?;
        if let Some((seq, keys)) = &cp.changes {
            changes.insert(*seq, codec::encode(keys).as_slice())?;
        }
        for seq in &cp.changes_delivered {
            changes.remove(*seq)?;
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(META_COUNTERS, codec::encode(&cp.counters).as_slice())?;
        if let Some(erasures) = &cp.erasures {
            meta.insert(META_ERASURES, codec::encode(erasures).as_slice())?;
        }
        for (k, v) in &cp.meta {
            meta.insert(k.as_str(), v.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// `rows` by key, as references. Tuple keys of strings and integers order the same in Rust as
/// in redb (element by element; strings by bytes, integers by value). The sort is stable, so
/// of two rows with one key the later is still written last.
fn in_key_order<K: Ord, V>(rows: &[(K, V)]) -> Vec<&(K, V)> {
    let mut order: Vec<&(K, V)> = rows.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    order
}

/// Removes every contact record of `customer`.
pub(crate) fn remove_contacts_of(
    contacts: &mut redb::Table<'_, (&str, &str), &[u8]>,
    customer: &str,
) -> Result<()> {
    let offers: Vec<String> = contacts
        .range((customer, "")..)?
        .map_while(|e| {
            e.map(|(k, _)| {
                let (c, o) = k.value();
                (c == customer).then(|| o.to_owned())
            })
            .transpose()
        })
        .collect::<Result<_, _>>()?;
    for offer in offers {
        contacts.remove((customer, offer.as_str()))?;
    }
    Ok(())
}

pub(crate) fn decode_position(
    source: &str,
    partition: u32,
    bytes: &[u8],
) -> Result<SourcePosition> {
    let rec: PositionRecord = codec::decode("positions", source, bytes)?;
    Ok(SourcePosition {
        source: source.to_owned(),
        partition,
        next_offset: rec.next_offset,
        incarnation: rec.incarnation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows go out sorted by key, element by element, and of two rows with one key the later
    /// still comes last.
    #[test]
    fn rows_are_written_in_key_order_and_a_repeated_key_keeps_its_last_value() {
        let key = |id: &str, scope: u32| (id.to_owned(), scope);
        let rows = vec![
            (key("b", 1), 1),
            (key("a", 2), 2),
            (key("a", 10), 3),
            (key("b", 1), 4),
            (key("a", 1), 5),
        ];
        let values: Vec<i32> = in_key_order(&rows).iter().map(|(_, v)| *v).collect();
        assert_eq!(values, [5, 2, 3, 1, 4]);
    }
}
