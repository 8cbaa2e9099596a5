//! Identity across instances: merges routed through the log.
//!
//! When one writer owns every partition, an `identify` or `alias` folds the other profile in
//! directly. When several instances split the partitions, the other id's state may live in
//! another store. Then, like a Kafka Streams repartition, the writer produces records to the
//! source topic, keyed so that the owner of the right partition applies them:
//! - a **handoff**, keyed by the other id: "merge your state of this id into that canonical id";
//! - a **merge**, keyed by the canonical id, carrying the state the owner of the other id took
//!   out of its store;
//! - a **forward**, keyed by the canonical id: a later event under a linked id, whose canonical
//!   profile lives elsewhere, re-sent unchanged to the canonical owner.
//!
//! Each record names its origin (the source record whose application produced it). A receiver
//! keeps, per origin partition, the next origin offset it expects, and drops anything below it,
//! so a record resent after a crash, or produced again by a rebuild, is applied once.

use patron_core::state::CustomerState;
use patron_store::{RouteKind, RoutedRecord};

use super::Applier;
use crate::Result;

/// Routing state of an [`Applier`].
#[derive(Default)]
pub(super) struct Routes {
    /// Set when this writer does not own every partition of its topic.
    enabled: bool,
    /// The source record being applied (partition, offset): the origin of what it routes.
    origin: (u32, u64),
    /// Produced since the last [`Applier::take_routed`].
    out: Vec<RoutedRecord>,
}

impl Applier {
    /// Routes identity work through the log (set when this writer does not own every
    /// partition); otherwise every merge is done in this store.
    pub fn set_routing(&mut self, enabled: bool) {
        self.routes.enabled = enabled;
    }

    pub fn routing(&self) -> bool {
        self.routes.enabled
    }

    /// The source record about to be applied, named as the origin of what it routes.
    pub fn set_origin(&mut self, partition: u32, offset: u64) {
        self.routes.origin = (partition, offset);
    }

    /// The records routed since the last call, in the order they were made.
    pub fn take_routed(&mut self) -> Vec<RoutedRecord> {
        std::mem::take(&mut self.routes.out)
    }

    /// With routing on: the canonical id to forward a record for `id` to, when `id` links to a
    /// profile this store does not hold.
    pub fn forward_target(&mut self, id: &str) -> Result<Option<String>> {
        if !self.routes.enabled {
            return Ok(None);
        }
        let canonical = self.resolve(id);
        if canonical == id || self.is_local(&canonical)? {
            return Ok(None);
        }
        Ok(Some(canonical))
    }

    /// Queues a forward of `payload` (the source record) to the owner of `target`.
    pub fn forward(&mut self, target: String, payload: &[u8]) {
        self.route(RouteKind::Forward, target, None, payload.to_vec());
    }

    /// Applies an event another instance forwarded to the canonical id `target`.
    pub fn apply_forwarded(
        &mut self,
        event: &patron_core::event::Event,
        scope: u32,
        target: &str,
    ) -> Result<patron_core::state::ApplyOutcome> {
        self.apply_to(event, scope, target)
    }

    /// Whether this store holds the profile `id` (not merged away, not erased).
    fn is_local(&mut self, id: &str) -> Result<bool> {
        if let Some(p) = self.profiles.get(id) {
            return Ok(p.state.is_some());
        }
        Ok(self.snapshot.profile_exact(id)?.is_some())
    }

    /// Counts an identity record dropped as a copy of one applied before.
    pub fn note_route_copy(&mut self) {
        self.counters.duplicates += 1;
        self.uncommitted += 1;
    }

    fn route(&mut self, kind: RouteKind, key: String, other: Option<String>, payload: Vec<u8>) {
        self.uncommitted += 1;
        let (origin_partition, origin_offset) = self.routes.origin;
        self.routes.out.push(RoutedRecord {
            kind,
            key,
            other,
            origin_partition,
            origin_offset,
            payload,
        });
    }

    /// Links `merged` (an identify's anonymous id, an alias' previous id) to `canonical`,
    /// folding in its profile here, or asking its owner for it.
    pub(super) fn link(&mut self, merged: &str, canonical: &str) -> Result<()> {
        let source = self.resolve(merged);
        if source == canonical {
            return Ok(());
        }
        if !self.routes.enabled || self.is_local(&source)? {
            return self.fold_in(merged, canonical);
        }
        self.link_ids(&[&source, merged], canonical);
        self.route(
            RouteKind::Handoff,
            source,
            Some(canonical.to_owned()),
            Vec::new(),
        );
        Ok(())
    }

    /// A handoff: the profile `id` resolves to here goes into `into`, in this store when it
    /// holds both, else as a merge record to the owner of `into`.
    pub fn handoff(&mut self, id: &str, into: &str, scope: u32) -> Result<()> {
        self.uncommitted += 1;
        let source = self.resolve(id);
        let target = self.resolve(into);
        if source == target {
            return Ok(());
        }
        if !self.is_local(&source)? {
            self.link_ids(&[id], &target);
            if source != id {
                // Linked here to a profile held elsewhere: pass the request on.
                self.route(RouteKind::Handoff, source, Some(target), Vec::new());
            }
            return Ok(());
        }
        if self.is_local(&target)? {
            return self.fold_in(id, &target);
        }
        let state = self.take_state(&source, scope)?;
        self.link_ids(&[&source, id], &target);
        if let Some(state) = state {
            let payload = patron_store::codec::encode(&state);
            self.route(RouteKind::Merge, target, Some(source), payload);
        }
        Ok(())
    }

    /// A merge: `state`, the profile of `other` taken out of another store, joins the profile
    /// `id` resolves to (created here in partition `scope` when new).
    pub fn merge_in(
        &mut self,
        id: &str,
        other: &str,
        state: CustomerState,
        scope: u32,
    ) -> Result<()> {
        let target = self.resolve(id);
        if target != id && !self.is_local(&target)? {
            // Linked here to a profile held elsewhere: pass the state on.
            let payload = patron_store::codec::encode(&state);
            self.route(RouteKind::Merge, target, Some(other.to_owned()), payload);
            return Ok(());
        }
        self.uncommitted += 1;
        self.load(&target, scope)?;
        self.merge_state(&target, state)?;
        self.link_ids(&[other], &target);
        Ok(())
    }
}
