//! Alias links and tombstones, each kept under a **scope**: the source partition whose records
//! made it.
//!
//! With identity routing, a record sees only the links and tombstones of its own partition. What
//! a partition applies and what it routes is then a function of its own log (its events and the
//! identity records routed into it), whatever else the store holds or held. That is what lets a
//! partition move: its new owner, rebuilding it from the start or from the changelog, sends the
//! same identity records as before, and the receivers' origin marks drop exactly the copies.
//! Were the links store-wide, a store holding a customer's partition would forward browsing
//! under a linked anonymous id that a store holding only the anonymous id's partition applies
//! in place, and a rebuild would count it twice (`tests/identity_scale_out.rs`,
//! `a_partition_rebuilt_elsewhere_sends_what_it_sent_before`).
//!
//! Without routing one writer holds every id and sees every scope. When it knows the topic's
//! partition count (`replay --from-kafka` of every partition) it also puts each link and
//! tombstone in the id's home scope, where routing would have put it with the handoff or the
//! forget, so `serve` can carry on from the store with routing on.
//!
//! A store written before scopes keeps its links and tombstones under
//! [`patron_store::tables::LEGACY_SCOPE`], which every record sees, until the writer knows the
//! partition count; then they move to their home scopes ([`Applier::rehome_legacy`]).

use std::collections::HashSet;
use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use patron_core::time::Millis;
use patron_store::tables::LEGACY_SCOPE;
use patron_store::{ChangeKind, Checkpoint, ScopedId, StoreReader};

use super::{Applier, home_partition};
use crate::Result;

/// Values by id, each under one or more scopes (a link usually has one or two).
pub(super) struct Scoped<T> {
    by_id: super::HashMap<String, Vec<(u32, T)>>,
}

impl<T> Default for Scoped<T> {
    fn default() -> Self {
        Self {
            by_id: super::HashMap::default(),
        }
    }
}

impl<T> FromIterator<(ScopedId, T)> for Scoped<T> {
    fn from_iter<I: IntoIterator<Item = (ScopedId, T)>>(iter: I) -> Self {
        let mut out = Self::default();
        for ((id, scope), value) in iter {
            out.insert(&id, scope, value);
        }
        out
    }
}

impl<T> Scoped<T> {
    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(super) fn get(&self, id: &str, scope: u32) -> Option<&T> {
        self.by_id
            .get(id)?
            .iter()
            .find(|(s, _)| *s == scope)
            .map(|(_, v)| v)
    }

    /// Every scope's value of `id`, lowest scope first.
    fn all(&self, id: &str) -> impl Iterator<Item = (u32, &T)> {
        self.by_id
            .get(id)
            .into_iter()
            .flatten()
            .map(|(s, v)| (*s, v))
    }

    pub(super) fn insert(&mut self, id: &str, scope: u32, value: T) {
        let entries = self.by_id.entry(id.to_owned()).or_default();
        match entries.iter_mut().find(|(s, _)| *s == scope) {
            Some(entry) => entry.1 = value,
            None => {
                entries.push((scope, value));
                entries.sort_unstable_by_key(|(s, _)| *s);
            }
        }
    }

    /// Takes every value of one scope out, with its id.
    fn take_scope(&mut self, scope: u32) -> Vec<(String, T)> {
        let ids: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, values)| values.iter().any(|(s, _)| *s == scope))
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let value = self.remove(&id, scope)?;
                Some((id, value))
            })
            .collect()
    }

    pub(super) fn remove(&mut self, id: &str, scope: u32) -> Option<T> {
        let entries = self.by_id.get_mut(id)?;
        let at = entries.iter().position(|(s, _)| *s == scope)?;
        let (_, value) = entries.remove(at);
        if entries.is_empty() {
            self.by_id.remove(id);
        }
        Some(value)
    }
}

/// Alias links, read through the store.
///
/// A store of millions of customers holds millions of links; held as strings they were the
/// writer's largest allocation, about 130 bytes a link. Committed links stay in the store and
/// are read through the writer's snapshot. In memory are only the hashes of their ids, so a
/// record whose id links nowhere (most records) costs a hash lookup and no read. Links changed
/// since the last checkpoint are held in full, and shadow the store's.
pub(super) struct Links {
    /// Changes since the last checkpoint, by (id, scope): `Some` links, `None` removed.
    pending: Scoped<Option<String>>,
    /// The hash of every id with a committed link. A removal leaves its hash behind; a stale
    /// or colliding hash costs one read that finds nothing.
    committed: HashSet<u64, FixedState>,
    /// Whether the store may hold links under [`LEGACY_SCOPE`] not yet moved home.
    legacy: bool,
}

/// The hash [`Links`] keeps of an id (fixed, so it is the same in every run).
fn id_hash(id: &str) -> u64 {
    FixedState::with_seed(0x7061_7472_6f6e).hash_one(id)
}

impl Links {
    /// The committed links' ids, from one pass over the store's table.
    pub(super) fn load(snapshot: &StoreReader) -> Result<Self> {
        let mut committed = HashSet::with_hasher(FixedState::default());
        let mut legacy = false;
        snapshot.for_each_link_id(|id, scope| {
            committed.insert(id_hash(id));
            legacy |= scope == LEGACY_SCOPE;
        })?;
        Ok(Self {
            pending: Scoped::default(),
            committed,
            legacy,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.committed.is_empty() && self.pending.is_empty()
    }

    /// Every scope's link of `id`, lowest scope first.
    fn all(&self, snapshot: &StoreReader, id: &str) -> Result<Vec<(u32, String)>> {
        let mut out = if self.committed.contains(&id_hash(id)) {
            snapshot.links_of(id)?
        } else {
            Vec::new()
        };
        let mut changed = false;
        for (scope, change) in self.pending.all(id) {
            out.retain(|(s, _)| *s != scope);
            if let Some(to) = change {
                out.push((scope, to.clone()));
            }
            changed = true;
        }
        if changed {
            out.sort_unstable_by_key(|(s, _)| *s);
        }
        Ok(out)
    }

    fn get(&self, snapshot: &StoreReader, id: &str, scope: u32) -> Result<Option<String>> {
        if let Some(change) = self.pending.get(id, scope) {
            return Ok(change.clone());
        }
        Ok(self
            .all(snapshot, id)?
            .into_iter()
            .find(|(s, _)| *s == scope)
            .map(|(_, to)| to))
    }

    fn set(&mut self, id: &str, scope: u32, to: Option<String>) {
        self.pending.insert(id, scope, to);
    }

    /// What the next checkpoint writes for (id, scope): the link, or `None` to delete it.
    fn change(&self, id: &str, scope: u32) -> Option<String> {
        self.pending.get(id, scope).cloned().flatten()
    }

    /// The checkpoint holding the pending changes has committed: the snapshot reads them now.
    pub(super) fn committed(&mut self) {
        for id in self.pending.by_id.keys() {
            self.committed.insert(id_hash(id));
        }
        self.pending = Scoped::default();
    }

    /// Takes the committed links of [`LEGACY_SCOPE`] out (one pass over the table, once).
    fn take_legacy(&mut self, snapshot: &StoreReader) -> Result<Vec<(String, String)>> {
        if !std::mem::take(&mut self.legacy) {
            return Ok(Vec::new());
        }
        let links: Vec<(String, String)> = snapshot
            .all_aliases()?
            .into_iter()
            .filter(|((_, scope), _)| *scope == LEGACY_SCOPE)
            .map(|((id, _), to)| (id, to))
            .collect();
        for (id, _) in &links {
            self.set(id, LEGACY_SCOPE, None);
        }
        Ok(links)
    }
}

impl Applier {
    /// Whether the record being applied sees `scope`: with routing, its own partition's (and
    /// the legacy scope); without, every scope.
    fn sees(&self, scope: u32) -> bool {
        !self.routing() || scope == self.origin_partition() || scope == LEGACY_SCOPE
    }

    /// The id `id` links to directly, as the record being applied sees it.
    pub(super) fn link_of(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .links
            .all(&self.snapshot, id)?
            .into_iter()
            .find(|(scope, _)| self.sees(*scope))
            .map(|(_, to)| to))
    }

    /// The latest erasure of `id`, as the record being applied sees it.
    pub(super) fn tombstone_of(&self, id: &str) -> Option<Millis> {
        self.tombstones
            .all(id)
            .filter(|(scope, _)| self.sees(*scope))
            .map(|(_, at)| *at)
            .max()
    }

    /// The canonical id `id` resolves to through the links the record being applied sees.
    pub(super) fn resolve(&self, id: &str) -> Result<String> {
        let mut current = id.to_owned();
        for _ in 0..32 {
            match self.link_of(&current)? {
                Some(next) => current = next,
                None => break,
            }
        }
        Ok(current)
    }

    /// The scopes a new link or tombstone of `id` goes in: the partition of the record being
    /// applied; without routing, also `id`'s home when the partition count is known.
    fn write_scopes(&self, id: &str) -> Vec<u32> {
        let mut scopes = vec![self.origin_partition()];
        if let (false, Some(count)) = (self.routing(), self.routes.count) {
            let home = home_partition(id, count);
            if home != scopes[0] {
                scopes.push(home);
            }
        }
        scopes
    }

    /// Links `id` to `canonical` where the record being applied makes links.
    pub(super) fn put_link(&mut self, id: &str, canonical: &str) {
        for scope in self.write_scopes(id) {
            self.set_link(id, scope, canonical);
        }
    }

    fn set_link(&mut self, id: &str, scope: u32, target: &str) {
        self.links.set(id, scope, Some(target.to_owned()));
        self.dirty_links.insert((id.to_owned(), scope));
        self.changed_in(scope, ChangeKind::Alias, id);
    }

    /// Keeps a tombstone on `id` in `scope` at `at`, or at the later erasure it already has.
    fn raise_tombstone(&mut self, id: &str, scope: u32, at: Millis) {
        let at = self.tombstones.get(id, scope).map_or(at, |t| (*t).max(at));
        self.tombstones.insert(id, scope, at);
        self.dirty_tombstones.insert((id.to_owned(), scope));
        self.changed_in(scope, ChangeKind::Tombstone, id);
    }

    /// Drops `id`'s links the record being applied sees, and keeps a tombstone on it at `at`
    /// (or later) where it makes them. The link is noted as changed even when it is already
    /// gone here: it may have gone with another record, and the changelog must say so too.
    pub(super) fn put_tombstone(&mut self, id: &str, at: Millis) -> Result<()> {
        let seen: Vec<u32> = self
            .links
            .all(&self.snapshot, id)?
            .into_iter()
            .map(|(scope, _)| scope)
            .filter(|scope| self.sees(*scope))
            .collect();
        for scope in seen {
            self.links.set(id, scope, None);
            self.dirty_links.insert((id.to_owned(), scope));
            if scope != LEGACY_SCOPE {
                self.changed_in(scope, ChangeKind::Alias, id);
            }
        }
        for scope in self.write_scopes(id) {
            self.changed_in(scope, ChangeKind::Alias, id);
            self.raise_tombstone(id, scope, at);
        }
        Ok(())
    }

    /// Once the partition count is known, moves the links and tombstones of the legacy scope
    /// (a store written before scopes) to where routing would have put them: a link at its
    /// id's home and at its target's (where the identify or alias was applied), a tombstone at
    /// its id's home. From then on every partition sees only its own, and the changelog holds
    /// them.
    pub(super) fn rehome_legacy(&mut self) -> Result<()> {
        let Some(count) = self.routes.count else {
            return Ok(());
        };
        let links = self.links.take_legacy(&self.snapshot)?;
        let tombstones = self.tombstones.take_scope(LEGACY_SCOPE);
        if links.is_empty() && tombstones.is_empty() {
            return Ok(());
        }
        for (id, target) in links {
            self.dirty_links.insert((id.clone(), LEGACY_SCOPE));
            for scope in [home_partition(&id, count), home_partition(&target, count)] {
                if self.links.get(&self.snapshot, &id, scope)?.is_none() {
                    self.set_link(&id, scope, &target);
                }
            }
        }
        for (id, at) in tombstones {
            self.dirty_tombstones.insert((id.clone(), LEGACY_SCOPE));
            self.raise_tombstone(&id, home_partition(&id, count), at);
        }
        // Committed with the next checkpoint, whether or not an event comes.
        self.uncommitted += 1;
        Ok(())
    }

    /// Puts the links and tombstones changed since the last checkpoint into `cp` (one that
    /// went as `None`).
    pub(super) fn stage_identity_changes(&mut self, cp: &mut Checkpoint) {
        cp.links = self
            .dirty_links
            .drain()
            .map(|(id, scope)| {
                let to = self.links.change(&id, scope);
                ((id, scope), to)
            })
            .collect();
        cp.tombstones = self
            .dirty_tombstones
            .drain()
            .map(|(id, scope)| {
                let at = self.tombstones.get(&id, scope).copied();
                ((id, scope), at)
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use patron_core::decode::Decoder;
    use patron_core::event::Event;
    use patron_core::state::ApplyContext;
    use patron_core::time::now_millis;
    use patron_store::Store;

    use super::super::Placement;
    use super::*;

    const PARTITIONS: u32 = 4;

    /// Committed links are read through the store; changes since the checkpoint shadow them
    /// (a removal hides a committed link, a new target replaces it); after the next commit
    /// the store answers alone. An id that never linked costs no read and finds nothing.
    #[test]
    fn links_read_through_the_store_with_pending_changes_on_top() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path().join("links.redb")).expect("a store");
        let link = |id: &str, scope: u32, to: Option<&str>| {
            ((id.to_owned(), scope), to.map(str::to_owned))
        };
        store
            .commit(&Checkpoint {
                links: vec![
                    link("anon-1", 0, Some("c-1")),
                    link("anon-1", 2, Some("c-2")),
                    link("anon-2", 1, Some("c-3")),
                ],
                ..Checkpoint::default()
            })
            .expect("committed");
        let reader = store.reader().expect("a snapshot");
        let mut links = Links::load(&reader).expect("loaded");
        let owned = |v: &[(u32, &str)]| {
            v.iter()
                .map(|(s, t)| (*s, t.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            links.all(&reader, "anon-1").unwrap(),
            owned(&[(0, "c-1"), (2, "c-2")])
        );
        assert_eq!(links.all(&reader, "nobody").unwrap(), vec![]);
        assert!(!links.legacy);

        links.set("anon-1", 0, None);
        links.set("anon-1", 2, Some("c-9".into()));
        links.set("anon-3", 1, Some("c-1".into()));
        assert_eq!(links.all(&reader, "anon-1").unwrap(), owned(&[(2, "c-9")]));
        assert_eq!(
            links.get(&reader, "anon-3", 1).unwrap().as_deref(),
            Some("c-1")
        );
        assert_eq!(
            links.get(&reader, "anon-2", 1).unwrap().as_deref(),
            Some("c-3")
        );
        assert_eq!(links.change("anon-1", 0), None);
        assert_eq!(links.change("anon-1", 2).as_deref(), Some("c-9"));

        // The checkpoint writes the changes; the next snapshot holds them.
        store
            .commit(&Checkpoint {
                links: vec![
                    link("anon-1", 0, None),
                    link("anon-1", 2, Some("c-9")),
                    link("anon-3", 1, Some("c-1")),
                ],
                ..Checkpoint::default()
            })
            .expect("committed");
        links.committed();
        let reader = store.reader().expect("a snapshot");
        assert_eq!(links.all(&reader, "anon-1").unwrap(), owned(&[(2, "c-9")]));
        assert_eq!(links.all(&reader, "anon-3").unwrap(), owned(&[(1, "c-1")]));
        assert!(links.pending.is_empty());
    }

    fn id_at_home(prefix: &str, home: u32) -> String {
        (0..)
            .map(|n| format!("{prefix}-{n}"))
            .find(|id| home_partition(id, PARTITIONS) == home)
            .expect("some id hashes there")
    }

    fn identify(customer: &str, anonymous: &str) -> Event {
        let json = format!(
            r#"{{"type":"identify","event_id":"i-1","ts":"2025-03-01T10:00:00Z","customer_id":"{customer}","anonymous_id":"{anonymous}"}}"#
        );
        Decoder::default()
            .decode(json.as_bytes(), now_millis())
            .expect("a valid identify")
    }

    fn applier(dir: &tempfile::TempDir) -> Applier {
        let store = Store::open(dir.path().join("state.redb")).expect("a store");
        Applier::open(store, ApplyContext::default()).expect("an applier")
    }

    /// With routing, partition 1 does not follow the link partition 0's identify made; it
    /// learns it from the handoff, in its own log.
    #[test]
    fn a_partition_follows_only_the_links_its_own_records_made() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut a = applier(&dir);
        a.set_routing(Some(PARTITIONS));
        let (customer, anonymous) = (id_at_home("cust", 0), id_at_home("anon", 1));
        a.set_origin(0, 0);
        a.apply_placed(&identify(&customer, &anonymous), 0, &customer)
            .expect("applied");
        assert_eq!(
            a.place(&anonymous, 0).unwrap(),
            Placement::Here(customer.clone()),
            "partition 0 follows its link"
        );
        a.set_origin(1, 0);
        assert_eq!(
            a.place(&anonymous, 1).unwrap(),
            Placement::Here(anonymous.clone())
        );
        a.handoff(&anonymous, &customer, 1, None).expect("handoff");
        assert_eq!(
            a.place(&anonymous, 1).unwrap(),
            Placement::Forward(customer.clone())
        );
        a.checkpoint().expect("a checkpoint");
        let links = a.snapshot().all_aliases().expect("links");
        assert_eq!(
            links,
            vec![
                ((anonymous.clone(), 0), customer.clone()),
                ((anonymous.clone(), 1), customer.clone())
            ]
        );
    }

    /// Links and tombstones of a store written before scopes move to the scopes routing would
    /// have put them in once the partition count is known, and leave the legacy scope.
    #[test]
    fn legacy_links_and_tombstones_move_home_once_the_partitions_are_known() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (customer, anonymous) = (id_at_home("cust", 2), id_at_home("anon", 3));
        let gone = id_at_home("gone", 1);
        {
            let store = Store::open(dir.path().join("state.redb")).expect("a store");
            store
                .commit(&Checkpoint {
                    links: vec![((anonymous.clone(), LEGACY_SCOPE), Some(customer.clone()))],
                    tombstones: vec![((gone.clone(), LEGACY_SCOPE), Some(1_000))],
                    ..Checkpoint::default()
                })
                .expect("a commit");
        }
        let mut a = applier(&dir);
        a.set_partition_count(PARTITIONS).unwrap();
        a.checkpoint().expect("a checkpoint");
        let r = a.snapshot();
        let mut links = r.all_aliases().expect("links");
        links.sort();
        assert_eq!(
            links,
            vec![
                ((anonymous.clone(), 2), customer.clone()),
                ((anonymous.clone(), 3), customer.clone())
            ]
        );
        assert_eq!(
            r.all_tombstones().expect("tombstones"),
            vec![((gone.clone(), 1), 1_000)]
        );
    }

    /// Without routing one writer sees every link; knowing the partition count, it also puts
    /// a link in the merged id's home scope, so `serve` can carry on from the store with routing.
    #[test]
    fn a_writer_without_routing_links_where_routing_would() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut a = applier(&dir);
        a.set_partition_count(PARTITIONS).unwrap();
        let (customer, anonymous) = (id_at_home("cust", 2), id_at_home("anon", 3));
        a.set_origin(2, 0);
        a.apply(&identify(&customer, &anonymous), 2)
            .expect("applied");
        a.set_origin(3, 0);
        assert_eq!(
            a.resolve(&anonymous).unwrap(),
            customer,
            "every scope is seen"
        );
        a.set_routing(Some(PARTITIONS));
        assert_eq!(
            a.place(&anonymous, 3).unwrap(),
            Placement::Forward(customer.clone())
        );
        a.set_origin(1, 0);
        assert_eq!(
            a.resolve(&anonymous).unwrap(),
            anonymous,
            "partition 1 made no link"
        );
    }

    #[test]
    fn scoped_values_are_kept_apart_and_listed_lowest_scope_first() {
        let mut links: Scoped<String> = Scoped::default();
        links.insert("anon", 3, "c".into());
        links.insert("anon", 1, "b".into());
        links.insert("anon", 3, "d".into());
        assert_eq!(links.get("anon", 3).map(String::as_str), Some("d"));
        let all: Vec<(u32, &str)> = links.all("anon").map(|(s, v)| (s, v.as_str())).collect();
        assert_eq!(all, vec![(1, "b"), (3, "d")]);
        assert_eq!(links.remove("anon", 1).as_deref(), Some("b"));
        assert_eq!(links.remove("anon", 1), None);
        assert_eq!(links.remove("anon", 3).as_deref(), Some("d"));
        assert!(links.is_empty(), "an id without values is dropped");
    }
}
