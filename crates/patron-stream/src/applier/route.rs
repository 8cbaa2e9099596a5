//! Identity across partitions: merges routed through the log.
//!
//! With routing on (a Kafka source of several partitions read by `serve`, or one instance's
//! share of them), every id's state lives in its **home partition**: the partition its key
//! hashes to ([`home_partition`], the producer's default partitioner). An `identify` or `alias`
//! whose two ids have different homes cannot fold the other profile in directly, since another
//! instance may hold it. Like a Kafka Streams repartition, the writer produces records to the
//! source topic, keyed so that the owner of the right partition applies them:
//! - a **handoff**, keyed by the other id: "move your state of this id into that canonical id";
//! - a **merge**, keyed by the canonical id, carrying the state the other id's home took out;
//! - a **forward**, keyed by the canonical id: a record under a linked id, re-sent unchanged to
//!   the canonical id's home;
//! - a **forget**, keyed by an erased id: the customer was erased, so the home of each of its
//!   ids drops the links among them and keeps tombstones. A record that followed a link before
//!   its forget arrived is sent back to its own id (a forward naming that id in `other`).
//!
//! Where each piece of state ends up is then a function of the log alone, not of which instance
//! owned what when: a partition moved to another instance, or rebuilt from the start, comes out
//! the same. Each record names its origin (the source record whose application produced it); a
//! receiver keeps, per origin partition, the next origin offset it expects and drops anything
//! below it, so a record resent after a crash, or produced again by a rebuild, is applied once.
//!
//! Without routing (files, one partition, or `replay --from-kafka` of every partition) the
//! writer holds every id and folds directly.

use patron_core::event::{Event, EventBody};
use patron_core::state::{ApplyOutcome, CustomerState};
use patron_core::time::Millis;
use patron_store::{RouteKind, RoutedRecord};

use super::Applier;
use crate::Result;

/// The partition a message keyed `key` goes to among `partitions`: librdkafka's default
/// `consistent_random` partitioner for a non-empty key (CRC-32 of the key, modulo the count),
/// which every Patron producer uses. Producers of the topic must use the same one.
pub fn home_partition(key: &str, partitions: u32) -> u32 {
    crc32fast::hash(key.as_bytes()) % partitions.max(1)
}

/// Routing state of an [`Applier`].
#[derive(Default)]
pub(super) struct Routes {
    /// The topic's partition count while routing is on.
    partitions: Option<u32>,
    /// The topic's partition count when known, routing or not (see [`super::identity`]).
    pub(super) count: Option<u32>,
    /// The source record being applied (partition, offset): the origin of what it routes.
    origin: (u32, u64),
    /// Produced since the last [`Applier::take_routed`].
    out: Vec<RoutedRecord>,
}

/// What to do with a record read from the source.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// Apply it here to this canonical id.
    Here(String),
    /// Forward it, keyed by this canonical id, to that id's home partition.
    Forward(String),
}

impl Applier {
    /// Routes identity work through the log for a topic of `partitions` partitions (`None`:
    /// every merge is done in this store).
    pub fn set_routing(&mut self, partitions: Option<u32>) {
        self.routes.partitions = partitions.filter(|n| *n > 1);
    }

    /// The source topic's partition count, known with or without routing: a writer without
    /// routing puts links and tombstones where routing would too (see [`super::identity`]).
    pub fn set_partition_count(&mut self, count: u32) -> Result<()> {
        self.routes.count = (count > 0).then_some(count);
        self.rehome_legacy()
    }

    pub fn routing(&self) -> bool {
        self.routes.partitions.is_some()
    }

    /// The source record about to be applied, named as the origin of what it routes.
    pub fn set_origin(&mut self, partition: u32, offset: u64) {
        self.routes.origin = (partition, offset);
    }

    pub(super) fn origin_partition(&self) -> u32 {
        self.routes.origin.0
    }

    /// The records routed since the last call, in the order they were made.
    pub fn take_routed(&mut self) -> Vec<RoutedRecord> {
        std::mem::take(&mut self.routes.out)
    }

    fn home(&self, id: &str) -> Option<u32> {
        self.routes.partitions.map(|n| home_partition(id, n))
    }

    /// Where a record for `id` read from `partition` belongs: here, or at the home of the
    /// canonical id `id` links to.
    pub fn place(&self, id: &str, partition: u32) -> Result<Placement> {
        let canonical = self.resolve(id)?;
        Ok(match self.home(&canonical) {
            Some(home) if home != partition => Placement::Forward(canonical),
            _ => Placement::Here(canonical),
        })
    }

    /// Forwards `payload` (a source record) to the home of `target`. An erasure also takes
    /// effect here: the link goes, and the id keeps a tombstone.
    pub fn forward(&mut self, target: String, event: &Event, payload: &[u8]) -> Result<()> {
        self.route(RouteKind::Forward, target, None, payload.to_vec(), None);
        if let EventBody::Erase(erase) = &event.body {
            self.forget(&erase.customer_id, event.ts)?;
        }
        Ok(())
    }

    /// Applies a record at its canonical id's home, `scope` (see [`Self::place`]).
    pub fn apply_placed(
        &mut self,
        event: &Event,
        scope: u32,
        canonical: &str,
    ) -> Result<ApplyOutcome> {
        self.apply_to(event, scope, canonical, true)
    }

    /// A record forwarded to `key` that must go back to its own id: `key` was erased before
    /// the record's time, and the record's own id no longer links to it here. It followed a
    /// link the erasure has not yet removed at the id's home; like activity after an erasure
    /// in one store, it starts afresh under its own id.
    pub fn bounce_target(&self, key: &str, event: &Event) -> Result<Option<String>> {
        let own = event.profile_id();
        let erased_before = self.tombstone_of(key).is_some_and(|at| at < event.ts);
        let bounce = erased_before && own != key && self.resolve(own)? != self.resolve(key)?;
        Ok(bounce.then(|| own.to_owned()))
    }

    /// Sends a record back to the home of its own id, to be applied there without following
    /// links (see [`Self::bounce_target`]).
    pub fn bounce(&mut self, own: String, payload: &[u8]) {
        self.route(
            RouteKind::Forward,
            own.clone(),
            Some(own),
            payload.to_vec(),
            None,
        );
    }

    /// Applies a bounced record to its own id `own`, whatever it links to here.
    pub fn apply_own(&mut self, event: &Event, scope: u32, own: &str) -> Result<ApplyOutcome> {
        self.apply_to(event, scope, own, false)
    }

    /// After an erasure at the canonical id's home: the home of every erased id in another
    /// partition is told to drop the links it holds among these ids, so later records under
    /// any of them start afresh instead of following a link to the erased customer.
    pub(super) fn forget_elsewhere(&mut self, ids: &[String], at: Millis) {
        let here = self.routes.origin.0;
        let mut told = Vec::new();
        for id in ids {
            let Some(home) = self.home(id).filter(|h| *h != here) else {
                continue;
            };
            if !told.contains(&home) {
                told.push(home);
                let payload = patron_store::codec::encode(&(at, ids));
                self.route(RouteKind::Forget, id.clone(), None, payload, None);
            }
        }
    }

    /// A forget record: drops the links of `ids`, tombstones them at `at`, and drops the
    /// contact histories of those homed here.
    pub fn forget_routed(&mut self, at: Millis, ids: &[String]) -> Result<()> {
        self.uncommitted += 1;
        for id in ids {
            self.forget(id, at)?;
        }
        self.drop_contacts(ids);
        Ok(())
    }

    /// Whether `id`'s state is this partition's: its home is the partition of the record being
    /// applied, or there is no routing (one writer holds every id).
    pub(super) fn homed_here(&self, id: &str) -> bool {
        self.home(id)
            .is_none_or(|home| home == self.origin_partition())
    }

    /// Counts an identity record dropped as a copy of one applied before.
    pub fn note_route_copy(&mut self) {
        self.uncommitted += 1;
    }

    fn route(
        &mut self,
        kind: RouteKind,
        key: String,
        other: Option<String>,
        payload: Vec<u8>,
        origin_ts: Option<Millis>,
    ) {
        self.uncommitted += 1;
        let (origin_partition, origin_offset) = self.routes.origin;
        self.routes.out.push(RoutedRecord {
            kind,
            key,
            other,
            origin_partition,
            origin_offset,
            payload,
            origin_ts,
        });
    }

    /// The latest erasure of any of `ids` at or after `at`, the time of the identify or alias
    /// a handoff or merge carries out: such an erasure covers it, as it would the event.
    fn erased_since(&self, ids: &[&str], at: Option<Millis>) -> Option<Millis> {
        let at = at?;
        ids.iter()
            .filter_map(|id| self.tombstone_of(id))
            .filter(|erased| *erased >= at)
            .max()
    }

    /// Links `merged` (an identify's anonymous id, an alias' previous id) to `canonical` for
    /// the event at `at`, folding its profile in here when both share a home, else asking its
    /// home for it.
    pub(super) fn link(&mut self, merged: &str, canonical: &str, at: Millis) -> Result<()> {
        let source = self.resolve(merged)?;
        if source == canonical {
            return Ok(());
        }
        match (self.home(&source), self.home(canonical)) {
            (Some(a), Some(b)) if a != b => {
                self.link_ids(&[&source, merged], canonical);
                self.route(
                    RouteKind::Handoff,
                    source,
                    Some(canonical.to_owned()),
                    Vec::new(),
                    Some(at),
                );
                Ok(())
            }
            _ => self.fold_in(merged, canonical),
        }
    }

    /// A handoff at `id`'s home `scope`: the profile held under `id` goes into the profile
    /// `into` resolves to, here when that shares the home, else as a merge record. `at` is the
    /// time of the identify or alias it carries out (`None` from an older writer).
    ///
    /// When `id` was erased at or after `at`, the event is covered by the erasure, as one store
    /// drops it: nothing moves and no link is made.
    pub fn handoff(&mut self, id: &str, into: &str, scope: u32, at: Option<Millis>) -> Result<()> {
        self.uncommitted += 1;
        if self.erased_since(&[id], at).is_some() {
            return Ok(());
        }
        let target = self.resolve(into)?;
        if target == id {
            return Ok(());
        }
        if self.holds_exactly(id)? {
            match self.take_state(id, scope)? {
                Some(state) => self.deliver_merge(&target, id, state, scope, at)?,
                None => self.link_ids(&[id], &target),
            }
            return Ok(());
        }
        // No profile under `id`: it may have been merged into another id before.
        let linked = self.resolve(id)?;
        self.link_ids(&[id], &target);
        if linked != id && linked != target {
            self.route(RouteKind::Handoff, linked, Some(target), Vec::new(), at);
        }
        Ok(())
    }

    /// A merge at `scope`: `state`, the profile of `other` taken out at its home, joins the
    /// profile `id` resolves to. `at` is the time of the identify or alias behind it.
    ///
    /// When the customer was erased at or after `at` (the merge was still on its way when the
    /// erasure was applied), one store would have folded the state in and erased it with the
    /// customer: the state is dropped (its home already took it out) and `other` keeps a
    /// tombstone, so the erased customer does not come back.
    pub fn merge_in(
        &mut self,
        id: &str,
        other: &str,
        state: CustomerState,
        scope: u32,
        at: Option<Millis>,
    ) -> Result<()> {
        self.uncommitted += 1;
        let target = self.resolve(id)?;
        if let Some(erased) = self.erased_since(&[id, &target, other], at) {
            self.forget(other, erased)?;
            return Ok(());
        }
        self.deliver_merge(&target, other, state, scope, at)
    }

    /// Merges `state` (of `other`) into `target` when `target`'s home is `scope`, else sends it
    /// on as a merge record; links `other` to `target` either way.
    fn deliver_merge(
        &mut self,
        target: &str,
        other: &str,
        state: CustomerState,
        scope: u32,
        at: Option<Millis>,
    ) -> Result<()> {
        if self.home(target).is_some_and(|home| home != scope) {
            let payload = patron_store::codec::encode(&state);
            self.route(
                RouteKind::Merge,
                target.to_owned(),
                Some(other.to_owned()),
                payload,
                at,
            );
            self.link_ids(&[other], target);
            return Ok(());
        }
        self.load(target, scope)?;
        self.merge_state(target, state)?;
        self.link_ids(&[other], target);
        Ok(())
    }

    /// Whether this store holds a profile under exactly `id`.
    fn holds_exactly(&mut self, id: &str) -> Result<bool> {
        if let Some(p) = self.profiles.get(id) {
            return Ok(p.state.is_some());
        }
        Ok(self.snapshot.profile_exact(id)?.is_some())
    }
}
