//! Read snapshots: point lookups that follow aliases, and scans.

use std::sync::OnceLock;

use patron_core::state::CustomerState;
use patron_core::time::Millis;
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable};

use crate::Result;
use crate::checkpoint::{
    DailyTotals, DeadLetterRecord, ErasureCounters, RoutedRecord, RoutedRecordV1, ScopedId,
    SourcePosition, StoreCounters, decode_position,
};
use crate::codec;
use crate::tables::*;

/// One profile as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProfile {
    pub customer_id: String,
    /// The source partition that owns this profile.
    pub scope: u32,
    pub state: CustomerState,
    /// A hash of the stored record: equal digests mean the profile did not change (a view
    /// keeps the digest of every row it was built from).
    pub digest: u64,
}

/// The digest of a stored profile record.
fn digest(record: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(record)
}

/// A consistent snapshot of the store.
///
/// The hot tables are opened once per snapshot: opening a table costs about as much as a
/// lookup, and the writer's cache misses and the API's point reads do many lookups each.
pub struct StoreReader {
    pub(crate) txn: ReadTransaction,
    /// The store's generation when the snapshot was opened: it holds at least every commit up
    /// to that generation.
    generation: u64,
    pub(crate) customers: ReadOnlyTable<&'static str, &'static [u8]>,
    pub(crate) aliases: ReadOnlyTable<(&'static str, u32), &'static str>,
    meta: ReadOnlyTable<&'static str, &'static [u8]>,
    /// `None` in a store written before offers existed.
    pub(crate) offer_contacts: Option<PairTable>,
    pub(crate) offer_stats: Option<PairTable>,
    /// `counters().as_of`, read once: every point read on the event clock asks for it.
    event_clock: OnceLock<Option<Millis>>,
}

/// A table keyed by two strings (customer and offer, offer and segment).
pub(crate) type PairTable = ReadOnlyTable<(&'static str, &'static str), &'static [u8]>;

/// Opens `table`, or `None` when the store predates it.
fn open_optional(
    txn: &ReadTransaction,
    table: redb::TableDefinition<'static, (&'static str, &'static str), &'static [u8]>,
) -> Result<Option<PairTable>> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Alias chains are short in practice; the bound only stops a corrupt cycle.
const MAX_ALIAS_HOPS: usize = 32;

impl StoreReader {
    pub(crate) fn new(txn: ReadTransaction, generation: u64) -> Result<Self> {
        Ok(Self {
            generation,
            customers: txn.open_table(CUSTOMERS)?,
            aliases: txn.open_table(ALIASES)?,
            meta: txn.open_table(META)?,
            offer_contacts: open_optional(&txn, OFFER_CONTACTS)?,
            offer_stats: open_optional(&txn, OFFER_STATS)?,
            event_clock: OnceLock::new(),
            txn,
        })
    }

    /// See [`crate::Store::generation`]: equal generations, equal data.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The largest event time applied in this snapshot (the event clock), as in
    /// [`Self::counters`], decoded once per snapshot.
    pub fn event_clock(&self) -> Result<Option<Millis>> {
        if let Some(&as_of) = self.event_clock.get() {
            return Ok(as_of);
        }
        let as_of = self.counters()?.as_of;
        Ok(*self.event_clock.get_or_init(|| as_of))
    }

    /// The canonical id `id` resolves to through the alias table (itself when not an alias),
    /// following a link of any scope: the links of one id agree on where it went, except for
    /// a moment while an erasure travels between partitions.
    pub fn resolve(&self, id: &str) -> Result<String> {
        let mut current = id.to_owned();
        for _ in 0..MAX_ALIAS_HOPS {
            match self.link(&current)? {
                Some(next) => current = next,
                None => break,
            }
        }
        Ok(current)
    }

    /// The id `id` links to directly in some scope (the lowest), if it is an alias.
    fn link(&self, id: &str) -> Result<Option<String>> {
        let mut links = self.aliases.range((id, 0)..=(id, u32::MAX))?;
        Ok(links
            .next()
            .transpose()?
            .map(|(_, to)| to.value().to_owned()))
    }

    /// The profile for `id`, following aliases.
    pub fn profile(&self, id: &str) -> Result<Option<StoredProfile>> {
        let canonical = self.resolve(id)?;
        self.profile_exact(&canonical)
    }

    /// The profile stored under exactly `id`, without alias resolution.
    pub fn profile_exact(&self, id: &str) -> Result<Option<StoredProfile>> {
        let Some(v) = self.customers.get(id)? else {
            return Ok(None);
        };
        let (scope, state) = codec::decode_profile(id, v.value())?;
        Ok(Some(StoredProfile {
            customer_id: id.to_owned(),
            scope,
            state,
            digest: digest(v.value()),
        }))
    }

    pub fn profile_count(&self) -> Result<u64> {
        use redb::ReadableTableMetadata;
        Ok(self.customers.len()?)
    }

    /// How many profiles the store holds, and how many of them are customers (have bought),
    /// from one pass that decodes only each record's head.
    pub fn profile_and_customer_counts(&self) -> Result<(u64, u64)> {
        let (mut profiles, mut customers) = (0u64, 0u64);
        for entry in self.customers.iter()? {
            let (k, v) = entry?;
            profiles += 1;
            customers += u64::from(codec::profile_is_customer(k.value(), v.value())?);
        }
        Ok((profiles, customers))
    }

    /// Calls `f` for every profile in customer-id order.
    pub fn for_each_profile(&self, mut f: impl FnMut(&str, u32, CustomerState)) -> Result<()> {
        self.for_each_profile_digest(|id, scope, _, state| f(id, scope, state))
    }

    /// [`Self::for_each_profile`] with each record's [`StoredProfile::digest`].
    pub fn for_each_profile_digest(
        &self,
        mut f: impl FnMut(&str, u32, u64, CustomerState),
    ) -> Result<()> {
        for entry in self.customers.iter()? {
            let (k, v) = entry?;
            let id = k.value();
            let (scope, state) = codec::decode_profile(id, v.value())?;
            f(id, scope, digest(v.value()), state);
        }
        Ok(())
    }

    /// Profiles with id greater than `after`, at most `limit` of them, for cursor paging.
    pub fn profiles_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredProfile>> {
        let iter = match after {
            Some(a) => self
                .customers
                .range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
            None => self.customers.iter()?,
        };
        let mut out = Vec::new();
        for entry in iter.take(limit) {
            let (k, v) = entry?;
            let id = k.value();
            let (scope, state) = codec::decode_profile(id, v.value())?;
            out.push(StoredProfile {
                customer_id: id.to_owned(),
                scope,
                state,
                digest: digest(v.value()),
            });
        }
        Ok(out)
    }

    /// Every alias link ((merged id, scope), the id it was merged into).
    pub fn all_aliases(&self) -> Result<Vec<(ScopedId, String)>> {
        let mut out = Vec::new();
        for entry in self.aliases.iter()? {
            let (k, v) = entry?;
            let (id, scope) = k.value();
            out.push(((id.to_owned(), scope), v.value().to_owned()));
        }
        Ok(out)
    }

    /// Every scope's link of `id` (scope, the id it was merged into), lowest scope first.
    pub fn links_of(&self, id: &str) -> Result<Vec<(u32, String)>> {
        let mut out = Vec::new();
        for entry in self.aliases.range((id, 0)..=(id, u32::MAX))? {
            let (k, v) = entry?;
            out.push((k.value().1, v.value().to_owned()));
        }
        Ok(out)
    }

    /// Calls `f` with every alias link's id and scope (the id once per scope), in key order,
    /// without collecting them.
    pub fn for_each_link_id(&self, mut f: impl FnMut(&str, u32)) -> Result<()> {
        for entry in self.aliases.iter()? {
            let (k, _) = entry?;
            let (id, scope) = k.value();
            f(id, scope);
        }
        Ok(())
    }

    pub fn counters(&self) -> Result<StoreCounters> {
        match self.meta.get(META_COUNTERS)? {
            Some(v) => codec::decode("meta", META_COUNTERS, v.value()),
            None => Ok(StoreCounters::default()),
        }
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn positions(&self) -> Result<Vec<SourcePosition>> {
        let table = self.txn.open_table(POSITIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (source, partition) = k.value();
            out.push(decode_position(source, partition, v.value())?);
        }
        Ok(out)
    }

    pub fn position(&self, source: &str, partition: u32) -> Result<Option<SourcePosition>> {
        let table = self.txn.open_table(POSITIONS)?;
        match table.get((source, partition))? {
            Some(v) => Ok(Some(decode_position(source, partition, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn daily(&self, day: i32) -> Result<Option<DailyTotals>> {
        let table = self.txn.open_table(DAILY)?;
        match table.get(day)? {
            Some(v) => Ok(Some(codec::decode(
                "daily_totals",
                &day.to_string(),
                v.value(),
            )?)),
            None => Ok(None),
        }
    }

    pub fn daily_all(&self) -> Result<Vec<(i32, DailyTotals)>> {
        self.decode_all(DAILY, "daily_totals")
    }

    /// The dead letters not yet acknowledged by the dead-letter topic, in sequence order.
    pub fn pending_dead_letters(&self) -> Result<Vec<(u64, DeadLetterRecord)>> {
        self.decode_all(DEAD_LETTERS, "dead_letters")
    }

    /// The route outbox: identity records committed and not yet acknowledged by the topic.
    pub fn pending_routed(&self) -> Result<Vec<(u64, RoutedRecord)>> {
        const NAME: &str = "route_outbox";
        self.decode_rows(ROUTE_OUTBOX, |seq, bytes| {
            // A row written before `origin_ts` ends where that field would start, so it does
            // not decode as the current shape (postcard has no defaults) but does as the old.
            match postcard::from_bytes::<RoutedRecord>(bytes) {
                Ok(record) => Ok(record),
                Err(_) => codec::decode::<RoutedRecordV1>(NAME, &seq.to_string(), bytes)
                    .map(RoutedRecord::from),
            }
        })
    }

    /// Every row of a table with fixed-size keys and postcard values, in key order.
    pub(crate) fn decode_all<K, T>(
        &self,
        definition: redb::TableDefinition<'_, K, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<(K, T)>>
    where
        K: redb::Key + for<'a> redb::Value<SelfType<'a> = K> + std::fmt::Display + 'static,
        T: serde::de::DeserializeOwned,
    {
        self.decode_rows(definition, |key, bytes| {
            codec::decode(name, &key.to_string(), bytes)
        })
    }

    /// Every row of a table with fixed-size keys, decoded by `decode`, in key order.
    fn decode_rows<K, T>(
        &self,
        definition: redb::TableDefinition<'_, K, &[u8]>,
        decode: impl Fn(&K, &[u8]) -> Result<T>,
    ) -> Result<Vec<(K, T)>>
    where
        K: redb::Key + for<'a> redb::Value<SelfType<'a> = K> + 'static,
    {
        let table = self.txn.open_table(definition)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let key = k.value();
            let value = decode(&key, v.value())?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Every tombstone ((erased id, scope), erasure time in epoch ms).
    pub fn all_tombstones(&self) -> Result<Vec<(ScopedId, i64)>> {
        let table = self.txn.open_table(TOMBSTONES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (id, scope) = k.value();
            out.push(((id.to_owned(), scope), v.value()));
        }
        Ok(out)
    }

    /// When `id` was erased (the latest erasure any scope holds), if it was.
    pub fn tombstone(&self, id: &str) -> Result<Option<i64>> {
        let table = self.txn.open_table(TOMBSTONES)?;
        let mut latest = None;
        for entry in table.range((id, 0)..=(id, u32::MAX))? {
            let at = entry?.1.value();
            latest = Some(latest.map_or(at, |l: i64| l.max(at)));
        }
        Ok(latest)
    }

    /// The tombstone on `id` in one scope.
    pub fn tombstone_in(&self, id: &str, scope: u32) -> Result<Option<i64>> {
        let table = self.txn.open_table(TOMBSTONES)?;
        Ok(table.get((id, scope))?.map(|v| v.value()))
    }

    pub fn erasures(&self) -> Result<ErasureCounters> {
        match self.meta(META_ERASURES)? {
            Some(bytes) => codec::decode("meta", META_ERASURES, &bytes),
            None => Ok(ErasureCounters::default()),
        }
    }
}
