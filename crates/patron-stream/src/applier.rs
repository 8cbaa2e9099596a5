//! The writer side of the pipeline: applies decoded events to cached profiles and commits
//! checkpoints.
//!
//! One `Applier` owns the store's write side and runs on one thread. Reads that miss the cache
//! go to a read snapshot taken right after the last commit; since every write since then is in
//! the cache, the two together are the current state.

use compact_str::CompactString;
use hashbrown::hash_map::EntryRef;
use patron_core::decode::RejectReason;
use patron_core::event::{Event, EventBody};
use patron_core::offer::decision_segment;
use patron_core::state::{ApplyContext, ApplyOutcome, CustomerState};
use patron_core::time::Millis;
use patron_core::time::day_index;
use patron_store::tables::{META_CHANGELOG_COMPLETE, META_CHANGELOG_SEED, META_CHANGELOG_SEQ};
use patron_store::{
    ChangeKind, ChangedKey, ChangelogSeed, Checkpoint, ContactRecord, DailyTotals,
    DeadLetterRecord, ErasureCounters, OfferCounts, PartitionImage, ProfileWrite, RestoreStats,
    RoutedRecord, ScopedId, SourcePosition, Store, StoreCounters, StoreReader, codec,
};
use rayon::prelude::*;

use crate::Result;

mod identity;
mod route;

pub use route::{Placement, home_partition};

type ProfileCache =
    hashbrown::HashMap<CompactString, Box<CachedProfile>, foldhash::fast::RandomState>;

/// The writer's other maps and sets, keyed by ids from the input: hashed with foldhash too
/// (SipHash was 3 % of the writer's samples in a replay, most of it rehashing as they grew).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

struct CachedProfile {
    scope: u32,
    /// `None` once merged into another profile or erased; deleted at the next checkpoint.
    state: Option<CustomerState>,
    dirty: bool,
    /// The applier's clock at the last event that looked this profile up: a cache over its
    /// limit keeps the most recently used profiles.
    used: u64,
}

/// What one checkpoint wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointStats {
    pub profiles: usize,
    pub duration: std::time::Duration,
}

pub struct Applier {
    store: Store,
    snapshot: StoreReader,
    ctx: ApplyContext,
    /// Every applied event looks its profile up, so: foldhash rather than SipHash; ids up to 24
    /// bytes held inline in the table, so comparing a key does not read another cache line; and
    /// each profile boxed, so the table holds 32 bytes a slot and growing it copies little
    /// (with the 248-byte state inline, a replay of 500,000 customers grew the table to 290 MB,
    /// copying it at each doubling).
    profiles: ProfileCache,
    /// Every alias link by (merged id, scope) (see [`identity`]), held in memory so resolving an
    /// id never touches the store. Links are few next to profiles (only merged ids have one).
    links: identity::Links,
    /// Erased ids and when, by scope; like links, few and held in memory.
    tombstones: identity::Scoped<Millis>,
    /// Links and tombstones changed since the last checkpoint.
    dirty_links: HashSet<ScopedId>,
    dirty_tombstones: HashSet<ScopedId>,
    erasure: ErasureChanges,
    offers: OfferChanges,
    daily: HashMap<i32, DailyTotals>,
    dirty_days: HashSet<i32>,
    counters: StoreCounters,
    positions: HashMap<(String, u32), SourcePosition>,
    uncommitted: u64,
    /// Profiles kept in memory across checkpoints; above it a commit evicts the least recently
    /// used ones.
    cache_limit: usize,
    /// Counts profile lookups; stamps [`CachedProfile::used`].
    clock: u64,
    /// Outbox changes and singletons to write with the next checkpoint.
    staged: Staged,
    /// Identity work for other instances (see [`route`]).
    routes: route::Routes,
    /// Keys changed since the last checkpoint, for the changelog (`None`: not kept).
    changes: Option<Changes>,
    /// `meta/changelog_complete`: every key of the store is in the changelog or its outbox.
    changelog_complete: bool,
}

/// What the changelog outbox gets with the next checkpoint.
#[derive(Default)]
struct Changes {
    keys: HashSet<ChangedKey>,
    next_seq: u64,
    delivered: Vec<u64>,
}

/// Contact histories and arm counts touched since the last checkpoint (all of them dirty).
#[derive(Default)]
struct OfferChanges {
    contacts: HashMap<(String, String), ContactRecord>,
    counts: HashMap<(String, String), OfferCounts>,
    /// Customers whose stored contact records go with the next checkpoint (erased).
    erased: Vec<String>,
}

#[derive(Default)]
struct ErasureChanges {
    counters: ErasureCounters,
    dirty: bool,
}

#[derive(Default)]
struct Staged {
    dead_letters: Vec<(u64, DeadLetterRecord)>,
    delivered: Vec<u64>,
    routed: Vec<(u64, RoutedRecord)>,
    routed_delivered: Vec<u64>,
    meta: Vec<(String, Vec<u8>)>,
}

impl Applier {
    pub fn open(store: Store, ctx: ApplyContext) -> Result<Self> {
        let snapshot = store.reader()?;
        let counters = snapshot.counters()?;
        let links = identity::Links::load(&snapshot)?;
        let tombstones = snapshot.all_tombstones()?.into_iter().collect();
        // A new store is complete: the changelog gets every key it will ever hold.
        let changelog_complete = snapshot.profile_count()? == 0 && links.is_empty()
            || snapshot.meta(META_CHANGELOG_COMPLETE)?.as_deref() == Some(&[1]);
        let erasure = ErasureChanges {
            counters: snapshot.erasures()?,
            ..ErasureChanges::default()
        };
        Ok(Self {
            store,
            snapshot,
            ctx,
            profiles: ProfileCache::default(),
            links,
            tombstones,
            dirty_links: HashSet::default(),
            dirty_tombstones: HashSet::default(),
            erasure,
            offers: OfferChanges::default(),
            daily: HashMap::default(),
            dirty_days: HashSet::default(),
            counters,
            positions: HashMap::default(),
            uncommitted: 0,
            cache_limit: 500_000,
            clock: 0,
            staged: Staged::default(),
            routes: route::Routes::default(),
            changes: None,
            changelog_complete,
        })
    }

    /// Keeps, with every checkpoint, the keys it changed (the changelog outbox).
    ///
    /// A store whose state the changelog may not hold all of (built by a replay, or served with
    /// the changelog off) begins a seed: the changelog writer sends every key, a slice per
    /// round (`meta/changelog_seed`), so a new owner restoring a partition gets all of it, not
    /// only what changed since. A seed cut off by a stop goes on where it was at the next start.
    pub fn track_changes(&mut self) -> Result<()> {
        let next_seq = self
            .snapshot
            .meta(META_CHANGELOG_SEQ)?
            .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        if !self.changelog_complete {
            self.stage_changelog_seed(Some(ChangelogSeed::start()));
        }
        self.stage_meta(META_CHANGELOG_COMPLETE, vec![1]);
        self.changelog_complete = true;
        self.changes = Some(Changes {
            next_seq,
            ..Changes::default()
        });
        Ok(())
    }

    /// Records with the next checkpoint where the changelog seed goes on (`None`: it is done).
    pub fn stage_changelog_seed(&mut self, seed: Option<ChangelogSeed>) {
        self.stage_meta(META_CHANGELOG_SEED, codec::encode(&seed));
    }

    /// Removes changelog outbox rows with the next checkpoint.
    pub fn stage_changes_delivered(&mut self, seqs: impl IntoIterator<Item = u64>) {
        if let Some(c) = &mut self.changes {
            c.delivered.extend(seqs);
        }
    }

    /// Adds keys to the next changelog outbox row (values to produce again).
    pub fn note_changed(&mut self, keys: impl IntoIterator<Item = ChangedKey>) {
        if let Some(c) = &mut self.changes {
            c.keys.extend(keys);
        }
    }

    /// Notes that `key` changed, as state of the partition whose record is being applied.
    fn changed(&mut self, kind: ChangeKind, key: &str) {
        self.changed_in(self.origin_partition(), kind, key);
    }

    /// Notes that `key` changed, as state of `partition`.
    fn changed_in(&mut self, partition: u32, kind: ChangeKind, key: &str) {
        if let Some(c) = &mut self.changes {
            c.keys.insert(ChangedKey {
                partition,
                kind,
                key: key.to_owned(),
            });
        }
    }

    /// Puts the changelog's state of one partition in place of this store's (see
    /// [`Store::restore_partition`]). Everything applied before is checkpointed first.
    pub fn restore(&mut self, image: &PartitionImage) -> Result<RestoreStats> {
        self.checkpoint()?;
        let next_seq = self.changes.as_ref().map_or(0, |c| c.next_seq);
        let stats = self.store.restore_partition(image, next_seq)?;
        if !image.resend.is_empty()
            && let Some(c) = &mut self.changes
        {
            c.next_seq += 1;
        }
        self.snapshot = self.store.reader()?;
        self.profiles.clear();
        self.links = identity::Links::load(&self.snapshot)?;
        self.tombstones = self.snapshot.all_tombstones()?.into_iter().collect();
        self.positions.retain(|(source, p), _| {
            *p != image.partition || !source.starts_with(&image.source_prefix)
        });
        // The event clock covers the restored profiles' events too.
        let mut newest = self.counters.as_of;
        for (id, record) in &image.profiles {
            if let Ok((_, state)) = patron_store::codec::decode_profile(id, record) {
                newest = Some(newest.map_or(state.last_seen, |n| n.max(state.last_seen)));
            }
        }
        self.counters.as_of = newest;
        Ok(stats)
    }

    pub fn with_cache_limit(mut self, limit: usize) -> Self {
        self.cache_limit = limit;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    pub fn erasures(&self) -> &ErasureCounters {
        &self.erasure.counters
    }

    /// Profiles held in memory (dirty or not).
    pub fn cached_profiles(&self) -> usize {
        self.profiles.len()
    }

    /// Records that have been applied (or rejected) since the last checkpoint.
    pub fn uncommitted(&self) -> u64 {
        self.uncommitted
    }

    /// Whether a checkpoint is needed whatever the time: `max_events` records applied since the
    /// last one, or a profile cache at twice its limit (dirty profiles stay until they are
    /// committed, and the checkpoint then drops the cache), which bounds memory however rarely
    /// a writer checkpoints by time.
    pub fn needs_checkpoint(&self, max_events: u64) -> bool {
        self.uncommitted >= max_events || self.cache_full()
    }

    fn cache_full(&self) -> bool {
        self.profiles.len() > 2 * self.cache_limit
    }

    /// The committed position of a source partition, as of the last checkpoint or this run.
    pub fn position(&self, source: &str, partition: u32) -> Result<Option<SourcePosition>> {
        if let Some(p) = self.positions.get(&(source.to_owned(), partition)) {
            return Ok(Some(p.clone()));
        }
        Ok(self.snapshot.position(source, partition)?)
    }

    pub fn set_position(&mut self, position: SourcePosition) {
        self.positions
            .insert((position.source.clone(), position.partition), position);
    }

    pub fn set_dead_letter_len(&mut self, sink: &str, len: u64) {
        self.counters.dead_letter_len.insert(sink.to_owned(), len);
    }

    pub fn record_rejection(&mut self, reason: RejectReason) {
        *self
            .counters
            .rejected
            .entry(reason.code().to_owned())
            .or_default() += 1;
        self.uncommitted += 1;
    }

    /// Adds a dead letter to the outbox with the next checkpoint.
    pub fn stage_dead_letter(&mut self, seq: u64, letter: DeadLetterRecord) {
        self.staged.dead_letters.push((seq, letter));
    }

    /// Removes acknowledged dead letters from the outbox with the next checkpoint.
    pub fn stage_delivered(&mut self, seqs: impl IntoIterator<Item = u64>) {
        self.staged.delivered.extend(seqs);
    }

    /// Adds identity records to the route outbox with the next checkpoint.
    pub fn stage_routed(&mut self, records: impl IntoIterator<Item = (u64, RoutedRecord)>) {
        self.staged.routed.extend(records);
    }

    /// Removes route outbox entries the topic acknowledged, with the next checkpoint.
    pub fn stage_routed_delivered(&mut self, seqs: impl IntoIterator<Item = u64>) {
        self.staged.routed_delivered.extend(seqs);
    }

    /// Writes a named singleton with the next checkpoint.
    pub fn stage_meta(&mut self, key: &str, value: Vec<u8>) {
        self.staged.meta.push((key.to_owned(), value));
    }

    /// A read snapshot as of the last checkpoint.
    pub fn snapshot(&self) -> &StoreReader {
        &self.snapshot
    }

    fn load(&mut self, id: &str, scope: u32) -> Result<&mut CachedProfile> {
        self.clock += 1;
        let used = self.clock;
        let entry = match self.profiles.entry_ref(id) {
            EntryRef::Occupied(cached) => cached.into_mut(),
            EntryRef::Vacant(slot) => {
                let cached = match self.snapshot.profile_exact(id)? {
                    Some(p) => CachedProfile {
                        scope: p.scope,
                        state: Some(p.state),
                        dirty: false,
                        used,
                    },
                    None => CachedProfile {
                        scope,
                        state: None,
                        dirty: false,
                        used,
                    },
                };
                slot.insert_with_key(CompactString::from(id), Box::new(cached))
            }
        };
        entry.used = used;
        if entry.state.is_none() {
            // A profile that does not exist (yet, or any more) belongs to the partition of the
            // record that creates it, whatever an earlier lookup assumed.
            entry.scope = scope;
        }
        Ok(entry)
    }

    fn day(&mut self, day: i32) -> Result<&mut DailyTotals> {
        if !self.daily.contains_key(&day) {
            let stored = self.snapshot.daily(day)?.unwrap_or_default();
            self.daily.insert(day, stored);
        }
        self.dirty_days.insert(day);
        Ok(self.daily.get_mut(&day).expect("inserted above"))
    }

    /// Applies one event from partition `scope`.
    pub fn apply(&mut self, event: &Event, scope: u32) -> Result<ApplyOutcome> {
        self.apply_to(event, scope, event.profile_id(), true)
    }

    /// Applies one event from partition `scope` to the profile `id` resolves to (the event's
    /// own id, or the canonical id another instance forwarded it to), or to `id` itself when
    /// not `follow`ing links.
    fn apply_to(
        &mut self,
        event: &Event,
        scope: u32,
        id: &str,
        follow: bool,
    ) -> Result<ApplyOutcome> {
        self.uncommitted += 1;
        if let EventBody::Erase(erase) = &event.body {
            self.erase(&erase.customer_id, id, event.ts)?;
            self.counters.applied += 1;
            return Ok(ApplyOutcome::Applied);
        }
        if self.covered_by_tombstone(event) {
            self.erasure.counters.events_dropped += 1;
            self.erasure.dirty = true;
            return Ok(ApplyOutcome::Erased);
        }
        let canonical = if follow {
            self.resolve(id)?
        } else {
            id.to_owned()
        };
        let ctx = self.ctx;
        let entry = self.load(&canonical, scope)?;
        let state = entry.state.get_or_insert_with(CustomerState::default);
        let first_before = state.first_purchase;
        let outcome = state.apply(event, &ctx);
        let first_after = state.first_purchase;
        if outcome == ApplyOutcome::Duplicate {
            self.counters.duplicates += 1;
            return Ok(outcome);
        }
        entry.dirty = true;
        self.counters.applied += 1;
        self.counters.as_of = Some(self.counters.as_of.map_or(event.ts, |a| a.max(event.ts)));
        self.move_first_purchase(first_before, first_after)?;
        let today = self.day(day_index(event.ts))?;
        match &event.body {
            EventBody::Purchase(p) => {
                today.orders += 1;
                today.revenue = today.revenue.saturating_add(p.amount);
            }
            EventBody::Refund(r) => {
                today.refunds += 1;
                today.refunded = today.refunded.saturating_add(r.amount);
            }
            EventBody::Interaction(i) => {
                today.interactions += 1;
                match i.kind.as_str() {
                    "offer_shown" => today.offers_shown += 1,
                    "offer_accepted" => today.offers_accepted += 1,
                    "offer_declined" => today.offers_declined += 1,
                    _ => {}
                }
                if let Some(offer) = &i.offer_id {
                    self.offer_feedback(&canonical, offer, i, event.ts)?;
                }
            }
            EventBody::Identify(_) | EventBody::Alias(_) | EventBody::Erase(_) => {}
        }
        if let Some(merged) = event.merged_id() {
            self.link(merged, &canonical, event.ts)?;
        }
        Ok(outcome)
    }

    /// Records an `offer_*` interaction in the customer's contact history and its arm's counts.
    fn offer_feedback(
        &mut self,
        customer: &str,
        offer: &str,
        interaction: &patron_core::event::Interaction,
        ts: Millis,
    ) -> Result<()> {
        let kind = interaction.kind.as_str();
        if !matches!(kind, "offer_shown" | "offer_accepted" | "offer_declined") {
            return Ok(());
        }
        self.changed(ChangeKind::Contacts, customer);
        let key = (customer.to_owned(), offer.to_owned());
        if !self.offers.contacts.contains_key(&key) {
            let stored = self.snapshot.contact(customer, offer)?.unwrap_or_default();
            self.offers.contacts.insert(key.clone(), stored);
        }
        let contact = self.offers.contacts.get_mut(&key).expect("inserted above");
        let arm = (
            offer.to_owned(),
            decision_segment(interaction.decision_id.as_deref()).to_owned(),
        );
        if !self.offers.counts.contains_key(&arm) {
            let stored = self
                .snapshot
                .offer_counts(&arm.0, &arm.1)?
                .unwrap_or_default();
            self.offers.counts.insert(arm.clone(), stored);
        }
        let counts = self.offers.counts.get_mut(&arm).expect("inserted above");
        match kind {
            "offer_shown" => {
                contact.note_shown(ts);
                counts.note_shown(ts);
            }
            "offer_accepted" => {
                contact.note_accepted(ts);
                counts.accepted += 1;
            }
            _ => {
                contact.note_declined(ts);
                counts.declined += 1;
            }
        }
        Ok(())
    }

    /// True when an id this event touches was erased at or after the event's time.
    fn covered_by_tombstone(&self, event: &Event) -> bool {
        if self.tombstones.is_empty() {
            return false;
        }
        std::iter::once(event.profile_id())
            .chain(event.merged_id())
            .any(|id| self.tombstone_of(id).is_some_and(|at| event.ts <= at))
    }

    /// Erases the customer `target` resolves to (`target` is `id`, or the canonical id another
    /// instance forwarded the erasure to), every id merged into it, and their state; leaves a
    /// tombstone at `at` on each id. Daily revenue and orders keep the customer's share (they
    /// are aggregates, not personal data); the day's new-customer count drops it.
    fn erase(&mut self, id: &str, target: &str, at: Millis) -> Result<()> {
        let canonical = self.resolve(target)?;
        let scope = self.profiles.get(canonical.as_str()).map_or(0, |p| p.scope);
        let mut ids: Vec<String> = vec![id.to_owned(), target.to_owned(), canonical.clone()];
        if let Some(state) = self.load(&canonical, scope)?.state.as_ref() {
            ids.extend(state.aliases.iter().cloned());
        }
        ids.sort_unstable();
        ids.dedup();
        for erased in &ids {
            // With routing, a profile homed in another partition is that partition's to drop
            // (a merge still travelling is dropped on arrival, see `route`), whatever this
            // store holds of it.
            if self.homed_here(erased) {
                let entry = self.load(erased, scope)?;
                if let Some(gone) = entry.state.take() {
                    entry.dirty = true;
                    // The customer count per first-purchase day follows the profiles; revenue
                    // and orders stay (aggregates, not personal data).
                    if let Some(first) = gone.first_purchase {
                        self.day(day_index(first))?.new_customers -= 1;
                    }
                }
            }
            self.forget(erased, at)?;
        }
        self.forget_elsewhere(&ids, at);
        self.drop_contacts(&ids);
        self.erasure.counters.customers += 1;
        self.erasure.counters.ids += ids.len() as u64;
        self.erasure.dirty = true;
        Ok(())
    }

    /// Drops the contact histories of those of `ids` homed here (every one without routing):
    /// an erasure's, at the customer's home and at each other id's.
    fn drop_contacts(&mut self, ids: &[String]) {
        let here: Vec<String> = ids
            .iter()
            .filter(|id| self.homed_here(id))
            .cloned()
            .collect();
        self.offers.contacts.retain(|(c, _), _| !here.contains(c));
        for erased in &here {
            self.changed(ChangeKind::Contacts, erased);
        }
        self.offers.erased.extend(here);
    }

    /// Drops `id`'s link and keeps a tombstone on it at `at` (or later), so its old events are
    /// dropped: for every id an erasure covers, and where an erasure passes through.
    fn forget(&mut self, id: &str, at: Millis) -> Result<()> {
        self.put_tombstone(id, at)?;
        self.erasure.dirty = true;
        Ok(())
    }

    /// Keeps `new_customers` per day right when a profile's first purchase appears or moves.
    fn move_first_purchase(&mut self, before: Option<i64>, after: Option<i64>) -> Result<()> {
        if before == after {
            return Ok(());
        }
        if let Some(b) = before {
            self.day(day_index(b))?.new_customers -= 1;
        }
        if let Some(a) = after {
            self.day(day_index(a))?.new_customers += 1;
        }
        Ok(())
    }

    /// Merges the profile known as `merged` into `canonical` and links the id for later events.
    fn fold_in(&mut self, merged: &str, canonical: &str) -> Result<()> {
        let source = self.resolve(merged)?;
        if source == canonical {
            return Ok(());
        }
        let scope = self.profiles.get(canonical).map_or(0, |p| p.scope);
        if let Some(other) = self.take_state(&source, scope)? {
            self.merge_state(canonical, other)?;
        }
        self.link_ids(&[&source, merged], canonical);
        Ok(())
    }

    /// Removes the state of `id` (merged away), un-counting its first purchase.
    fn take_state(&mut self, id: &str, scope: u32) -> Result<Option<CustomerState>> {
        let entry = self.load(id, scope)?;
        let taken = entry.state.take();
        if taken.is_some() {
            entry.dirty = true;
        }
        if let Some(first) = taken.as_ref().and_then(|s| s.first_purchase) {
            self.day(day_index(first))?.new_customers -= 1;
        }
        Ok(taken)
    }

    /// Merges `other` (already un-counted by [`Self::take_state`]) into the loaded profile
    /// `canonical`, counting the merged first purchase.
    fn merge_state(&mut self, canonical: &str, other: CustomerState) -> Result<()> {
        let ctx = self.ctx;
        let target = self
            .profiles
            .get_mut(canonical)
            .expect("canonical profile is loaded");
        target.dirty = true;
        let state = target.state.get_or_insert_with(CustomerState::default);
        let before = state.first_purchase;
        state.merge(other, &ctx);
        let after = state.first_purchase;
        if let Some(b) = before {
            self.day(day_index(b))?.new_customers -= 1;
        }
        if let Some(a) = after {
            self.day(day_index(a))?.new_customers += 1;
        }
        Ok(())
    }

    /// Links each of `ids` to `canonical`, in the alias table and in the canonical profile's
    /// list when this store holds it.
    fn link_ids(&mut self, ids: &[&str], canonical: &str) {
        let mut seen: Vec<&str> = Vec::with_capacity(ids.len());
        for &id in ids {
            if id == canonical || seen.contains(&id) {
                continue;
            }
            seen.push(id);
            if let Some(s) = self
                .profiles
                .get_mut(canonical)
                .and_then(|t| t.state.as_mut())
            {
                s.add_alias(id.to_owned());
            }
            self.put_link(id, canonical);
        }
    }

    /// Shrinks a cache over its limit to the limit, keeping the profiles used last; the rest are
    /// read back from the store when an event needs them. Called right after a commit, when no
    /// cached profile is dirty. (Dropping the whole cache instead made every later event read
    /// its profile back: a replay of 500,000 customers, just over the limit with anonymous
    /// visitors, read them all again after its first checkpoint.)
    fn evict_least_recently_used(&mut self) {
        let Some(excess) = self.profiles.len().checked_sub(self.cache_limit) else {
            return;
        };
        if excess == 0 {
            return;
        }
        let mut stamps: Vec<u64> = self.profiles.values().map(|p| p.used).collect();
        // Stamps are distinct, so exactly `cache_limit` profiles are at or above this one.
        let (_, &mut oldest_kept, _) = stamps.select_nth_unstable(excess);
        self.profiles.retain(|_, p| p.used >= oldest_kept);
    }

    /// Commits everything since the last checkpoint, with the positions that produced it.
    pub fn checkpoint(&mut self) -> Result<CheckpointStats> {
        let started = std::time::Instant::now();
        let mut cp = Checkpoint::default();
        let mut dirty: Vec<(&CompactString, &mut Box<CachedProfile>)> =
            self.profiles.iter_mut().filter(|(_, p)| p.dirty).collect();
        // Encoding is pure and per profile: spread it over the cores, so the writer's pause
        // shrinks with them.
        cp.profiles = dirty
            .par_iter()
            .map(|(id, p)| match &p.state {
                Some(state) => ProfileWrite::upsert(id, p.scope, state),
                None => ProfileWrite::delete(id),
            })
            .collect();
        for (id, p) in dirty.iter_mut() {
            p.dirty = false;
            if let Some(c) = &mut self.changes {
                c.keys.insert(ChangedKey {
                    partition: p.scope,
                    kind: ChangeKind::Profile,
                    key: id.to_string(),
                });
            }
        }
        if let Some(c) = &mut self.changes {
            cp.changes_delivered = std::mem::take(&mut c.delivered);
            if !c.keys.is_empty() {
                let mut keys: Vec<ChangedKey> = c.keys.drain().collect();
                keys.sort_unstable();
                cp.changes = Some((c.next_seq, keys));
                c.next_seq += 1;
                cp.meta.push((
                    META_CHANGELOG_SEQ.to_owned(),
                    c.next_seq.to_le_bytes().to_vec(),
                ));
            }
        }
        self.stage_identity_changes(&mut cp);
        cp.daily = self
            .dirty_days
            .drain()
            .map(|d| (d, self.daily[&d].clone()))
            .collect();
        cp.positions = self.positions.values().cloned().collect();
        cp.counters = self.counters.clone();
        let staged = std::mem::take(&mut self.staged);
        cp.dead_letters = staged.dead_letters;
        cp.dead_letters_delivered = staged.delivered;
        cp.routed = staged.routed;
        cp.routed_delivered = staged.routed_delivered;
        cp.meta.extend(staged.meta);
        cp.contacts = self.offers.contacts.drain().collect();
        cp.offer_counts = self.offers.counts.drain().collect();
        cp.contacts_removed_for = std::mem::take(&mut self.offers.erased);
        if std::mem::take(&mut self.erasure.dirty) {
            cp.erasures = Some(self.erasure.counters.clone());
        }
        if self.changes.is_none() && self.changelog_complete {
            // State the changelog will not hear of: a later changelog queues every key.
            cp.meta.push((META_CHANGELOG_COMPLETE.to_owned(), vec![0]));
            self.changelog_complete = false;
        }
        self.store.commit(&cp)?;
        self.snapshot = self.store.reader()?;
        self.links.committed();
        self.profiles.retain(|_, p| p.state.is_some());
        self.evict_least_recently_used();
        self.uncommitted = 0;
        Ok(CheckpointStats {
            profiles: cp.profiles.len(),
            duration: started.elapsed(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use patron_core::decode::Decoder;
    use patron_core::time::now_millis;

    use super::*;

    fn purchase(id: &str, n: u32) -> Event {
        let json = format!(
            r#"{{"type":"purchase","event_id":"{id}-{n}","ts":"2025-03-0{n}T10:00:00Z","customer_id":"{id}","amount":"10.00"}}"#
        );
        Decoder::default()
            .decode(json.as_bytes(), now_millis())
            .expect("a valid purchase")
    }

    /// A store in `dir` built the way a replay builds one (no changelog), with a purchase of
    /// each of `ids`.
    pub(crate) fn replayed_store(dir: &std::path::Path, ids: &[&str]) -> Store {
        let store = Store::open(dir.join("state.redb")).expect("a store");
        let mut replay = Applier::open(store.clone(), ApplyContext::default()).expect("an applier");
        for id in ids {
            replay.apply(&purchase(id, 1), 0).expect("applied");
        }
        replay.checkpoint().expect("a checkpoint");
        store
    }

    /// A store built without the changelog (a replay) owes a seed from its first key when a
    /// writer starts tracking changes on it; a store the changelog has followed from the start
    /// owes none, and a seed under way is not started over.
    #[test]
    fn a_changelog_started_on_a_store_it_did_not_follow_owes_a_seed() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = replayed_store(dir.path(), &["c1", "c2"]);
        let open = || Applier::open(store.clone(), ApplyContext::default()).expect("an applier");
        let seed = || {
            store
                .reader()
                .expect("a reader")
                .changelog_seed()
                .expect("meta")
        };
        assert_eq!(seed(), None, "a replay owes no seed itself");

        let mut serve = open();
        serve.track_changes().expect("tracking");
        serve.checkpoint().expect("a checkpoint");
        assert_eq!(seed(), Some(ChangelogSeed::start()));
        let halfway = ChangelogSeed {
            cursor: patron_store::SeedCursor::Profiles(Some("c1".into())),
            covers: [0, 1].into(),
        };
        serve.stage_changelog_seed(Some(halfway.clone()));
        serve.checkpoint().expect("a checkpoint");
        drop(serve);

        let mut again = open();
        again.track_changes().expect("tracking");
        again.checkpoint().expect("a checkpoint");
        assert_eq!(
            seed(),
            Some(halfway),
            "a restart goes on where the seed was"
        );
        again.stage_changelog_seed(None);
        again.checkpoint().expect("a checkpoint");
        drop(again);

        let mut followed = open();
        followed.track_changes().expect("tracking");
        followed.checkpoint().expect("a checkpoint");
        assert_eq!(seed(), None, "a store the changelog followed owes none");
        assert!(
            store
                .reader()
                .expect("a reader")
                .pending_changes()
                .expect("rows")
                .is_empty()
        );
    }

    /// A cache limited to 2 profiles is full above 4 (twice the limit); the checkpoint then
    /// keeps the 2 used last, and later events read the others back from the store.
    #[test]
    fn a_full_cache_keeps_the_profiles_used_last() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path().join("state.redb")).expect("a store");
        let mut applier = Applier::open(store.clone(), ApplyContext::default())
            .expect("an applier")
            .with_cache_limit(2);
        let ids = ["c1", "c2", "c3", "c4", "c5"];
        for (i, id) in ids.iter().enumerate() {
            assert!(!applier.cache_full(), "{i} profiles cached");
            applier.apply(&purchase(id, 1), 0).expect("applied");
        }
        applier.apply(&purchase("c2", 2), 0).expect("applied");
        assert!(applier.cache_full(), "5 profiles cached, limit 2");
        let stats = applier.checkpoint().expect("a checkpoint");
        assert_eq!(stats.profiles, 5);
        assert!(!applier.cache_full(), "the checkpoint shrank the cache");
        let mut cached: Vec<&str> = applier.profiles.keys().map(|k| k.as_str()).collect();
        cached.sort_unstable();
        assert_eq!(cached, ["c2", "c5"], "the two used last");
        applier.apply(&purchase("c1", 2), 0).expect("applied");
        applier.checkpoint().expect("a checkpoint");
        let reader = store.reader().expect("a reader");
        for (id, frequency) in [("c1", 2), ("c2", 2), ("c3", 1), ("c5", 1)] {
            let profile = reader.profile(id).expect("read").expect("a profile");
            assert_eq!(profile.state.frequency, frequency, "{id}");
        }
    }
}
