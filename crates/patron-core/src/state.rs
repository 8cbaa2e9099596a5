//! Per-customer state and its incremental, order-independent update.
//!
//! Invariant: applying a set of distinct events in any order, or applying two disjoint subsets
//! to two states and merging them, gives the same state. Every field is therefore built from
//! commutative pieces: min/max of timestamps, sums of money, a bit-OR of active months,
//! exponentially decayed counters kept relative to their newest event (exact up to float
//! rounding), last-writer-wins traits keyed by timestamp, and a dedup set pruned against the
//! newest timestamp (which only grows).

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventBody, EventId};
use crate::money::Money;
use crate::time::{Millis, month_index};

/// The knobs `apply` needs from config, resolved to milliseconds once.
#[derive(Debug, Clone, Copy)]
pub struct ApplyContext {
    pub dedup_window_ms: i64,
    pub half_life_ms: f64,
    /// How many categories a profile keeps for its affinity ranking (≥ the top-K served).
    pub affinity_slots: usize,
    /// How many interaction kinds a profile keeps counters for; the rarest are dropped beyond.
    pub engagement_slots: usize,
}

impl ApplyContext {
    pub fn from_config(config: &crate::config::PatronConfig) -> Self {
        Self {
            dedup_window_ms: i64::try_from(config.ingest.dedup_window.as_millis())
                .unwrap_or(i64::MAX),
            half_life_ms: config.engagement.half_life.as_millis().max(1) as f64,
            affinity_slots: (config.engagement.top_categories * 2).max(8),
            engagement_slots: 24,
        }
    }
}

impl Default for ApplyContext {
    fn default() -> Self {
        Self::from_config(&crate::config::PatronConfig::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied,
    Duplicate,
    /// Dropped: the customer was erased after this event's time (a tombstone holds).
    Erased,
}

/// A sum of weights decayed with a half-life, stored as its value at `at` (the newest input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecayedCounter {
    /// An interaction kind or a category: short, so stored inline (up to 24 bytes) rather than
    /// on the heap; the binary search over a profile's counters then reads no other memory.
    /// Serialized as a plain string, as before.
    pub key: CompactString,
    pub value: f64,
    pub at: Millis,
}

impl DecayedCounter {
    fn add(&mut self, weight: f64, ts: Millis, half_life_ms: f64) {
        if ts > self.at {
            self.value = self.value * decay(ts - self.at, half_life_ms) + weight;
            self.at = ts;
        } else {
            self.value += weight * decay(self.at - ts, half_life_ms);
        }
    }

    /// The counter's value at `now` (never inflated for a `now` before `at`).
    pub fn value_at(&self, now: Millis, half_life_ms: f64) -> f64 {
        self.value * decay((now - self.at).max(0), half_life_ms)
    }
}

fn decay(elapsed_ms: i64, half_life_ms: f64) -> f64 {
    (-(elapsed_ms as f64) / half_life_ms).exp2()
}

/// Adds `weight` at `ts` under `key` in a key-sorted list capped at `slots` entries.
fn bump(
    counters: &mut Vec<DecayedCounter>,
    key: &str,
    weight: f64,
    ts: Millis,
    half_life_ms: f64,
    slots: usize,
) {
    match counters.binary_search_by(|c| c.key.as_str().cmp(key)) {
        Ok(i) => counters[i].add(weight, ts, half_life_ms),
        Err(i) => {
            counters.insert(
                i,
                DecayedCounter {
                    key: key.into(),
                    value: weight,
                    at: ts,
                },
            );
            evict_smallest(counters, half_life_ms, slots);
        }
    }
}

fn evict_smallest(counters: &mut Vec<DecayedCounter>, half_life_ms: f64, slots: usize) {
    while counters.len() > slots {
        let now = counters.iter().map(|c| c.at).max().unwrap_or(0);
        let smallest = counters
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| {
                a.value_at(now, half_life_ms)
                    .total_cmp(&b.value_at(now, half_life_ms))
                    .then_with(|| b.key.cmp(&a.key))
            })
            .map(|(i, _)| i);
        if let Some(i) = smallest {
            counters.remove(i);
        }
    }
}

fn merge_counters(
    into: &mut Vec<DecayedCounter>,
    from: Vec<DecayedCounter>,
    half_life_ms: f64,
    slots: usize,
) {
    for c in from {
        match into.binary_search_by(|x| x.key.cmp(&c.key)) {
            Ok(i) => into[i].add(c.value, c.at, half_life_ms),
            Err(i) => into.insert(i, c),
        }
    }
    evict_smallest(into, half_life_ms, slots);
}

/// One bit per calendar month with a purchase, bit 0 being `base_month` (the first purchase's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityBitmap {
    pub base_month: i32,
    pub words: Vec<u64>,
}

impl ActivityBitmap {
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn set(&mut self, month: i32) {
        if self.words.is_empty() {
            self.base_month = month;
        } else if month < self.base_month {
            // Re-base on the earlier month: every stored bit moves up by the difference.
            let old: Vec<i32> = self.months().collect();
            self.words.clear();
            self.base_month = month;
            for m in old {
                self.set_bit(m);
            }
        }
        self.set_bit(month);
    }

    /// Sets a month at or after `base_month`.
    fn set_bit(&mut self, month: i32) {
        let bit = (month - self.base_month) as usize;
        if self.words.len() <= bit / 64 {
            self.words.resize(bit / 64 + 1, 0);
        }
        self.words[bit / 64] |= 1 << (bit % 64);
    }

    pub fn contains(&self, month: i32) -> bool {
        if month < self.base_month {
            return false;
        }
        let bit = (month - self.base_month) as usize;
        self.words
            .get(bit / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    pub fn months(&self) -> impl Iterator<Item = i32> + '_ {
        self.words.iter().enumerate().flat_map(move |(wi, w)| {
            (0..64)
                .filter(move |b| w & (1u64 << b) != 0)
                .map(move |b| self.base_month + (wi * 64 + b) as i32)
        })
    }

    fn union(&mut self, other: &ActivityBitmap) {
        for m in other.months() {
            self.set(m);
        }
    }
}

/// A trait value from `identify`, last writer (by event time) wins per key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraitValue {
    pub key: CompactString,
    pub at: Millis,
    /// The value as compact JSON.
    pub json: String,
}

/// Everything Patron knows about one profile. Scores are derived from it at read time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerState {
    pub first_purchase: Option<Millis>,
    pub last_purchase: Option<Millis>,
    pub frequency: u32,
    /// Sum of purchase amounts, base currency.
    pub gross: Money,
    /// Sum of refund amounts, base currency.
    pub refunded: Money,
    /// Amount of the earliest purchase (ties: smallest event id), so repeat spend is
    /// `gross - first_amount` for the Gamma-Gamma model whatever the arrival order.
    pub first_amount: Money,
    pub first_amount_id: Option<EventId>,
    pub first_seen: Millis,
    pub last_seen: Millis,
    pub activity: ActivityBitmap,
    pub engagement: Vec<DecayedCounter>,
    pub affinity: Vec<DecayedCounter>,
    pub traits: Vec<TraitValue>,
    /// Ids merged into this profile (anonymous ids, previous ids), sorted.
    pub aliases: Vec<String>,
    /// Event ids applied within `dedup_window` of `last_seen`, sorted by id.
    pub recent: Vec<(EventId, Millis)>,
}

impl Default for CustomerState {
    fn default() -> Self {
        Self {
            first_purchase: None,
            last_purchase: None,
            frequency: 0,
            gross: Money::ZERO,
            refunded: Money::ZERO,
            first_amount: Money::ZERO,
            first_amount_id: None,
            first_seen: Millis::MAX,
            last_seen: Millis::MIN,
            activity: ActivityBitmap::default(),
            engagement: Vec::new(),
            affinity: Vec::new(),
            traits: Vec::new(),
            aliases: Vec::new(),
            recent: Vec::new(),
        }
    }
}

impl CustomerState {
    /// Purchases minus refunds, base currency.
    pub fn monetary(&self) -> Money {
        self.gross.saturating_sub(self.refunded)
    }

    pub fn avg_order_value(&self) -> Option<Money> {
        (self.frequency > 0).then(|| Money(self.gross.0 / i64::from(self.frequency)))
    }

    /// Mean of the repeat purchases (all but the first), the Gamma-Gamma input.
    pub fn avg_repeat_value(&self) -> Option<Money> {
        (self.frequency > 1)
            .then(|| Money((self.gross.0 - self.first_amount.0) / i64::from(self.frequency - 1)))
    }

    pub fn is_customer(&self) -> bool {
        self.frequency > 0
    }

    /// The traits as one JSON object.
    pub fn traits_json(&self) -> String {
        let mut out = String::from("{");
        for (i, t) in self.traits.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(&t.key).unwrap_or_default());
            out.push(':');
            out.push_str(&t.json);
        }
        out.push('}');
        out
    }

    /// The top `k` categories by decayed spend at `now`, largest first.
    pub fn top_categories(&self, k: usize, now: Millis, half_life_ms: f64) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .affinity
            .iter()
            .map(|c| (c.key.to_string(), c.value_at(now, half_life_ms)))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }

    fn is_duplicate(&self, id: EventId) -> bool {
        self.recent.binary_search_by(|(e, _)| e.cmp(&id)).is_ok()
    }

    fn remember(&mut self, id: EventId, ts: Millis, window: i64) {
        let horizon = self.last_seen.saturating_sub(window);
        if ts >= horizon
            && let Err(i) = self.recent.binary_search_by(|(e, _)| e.cmp(&id))
        {
            self.recent.insert(i, (id, ts));
        }
        self.recent.retain(|(_, t)| *t >= horizon);
    }

    /// Applies one event to this profile. Identity links (`identify`/`alias`) only record
    /// traits and aliases here; folding the other profile in is the caller's `merge`.
    pub fn apply(&mut self, event: &Event, ctx: &ApplyContext) -> ApplyOutcome {
        if self.is_duplicate(event.id) {
            return ApplyOutcome::Duplicate;
        }
        let ts = event.ts;
        self.first_seen = self.first_seen.min(ts);
        self.last_seen = self.last_seen.max(ts);
        match &event.body {
            EventBody::Purchase(p) => {
                self.frequency = self.frequency.saturating_add(1);
                self.gross = self.gross.saturating_add(p.amount);
                self.note_first_amount(ts, event.id, p.amount);
                self.first_purchase = Some(self.first_purchase.map_or(ts, |f| f.min(ts)));
                self.last_purchase = Some(self.last_purchase.map_or(ts, |l| l.max(ts)));
                self.activity.set(month_index(ts));
                for item in &p.items {
                    if let Some(cat) = &item.category {
                        let spend = item.unit_price.as_f64() * item.quantity;
                        bump(
                            &mut self.affinity,
                            cat,
                            spend,
                            ts,
                            ctx.half_life_ms,
                            ctx.affinity_slots,
                        );
                    }
                }
            }
            EventBody::Refund(r) => {
                self.refunded = self.refunded.saturating_add(r.amount);
            }
            EventBody::Interaction(i) => {
                bump(
                    &mut self.engagement,
                    &i.kind,
                    1.0,
                    ts,
                    ctx.half_life_ms,
                    ctx.engagement_slots,
                );
            }
            EventBody::Identify(i) => {
                if let Some(traits) = &i.traits {
                    self.set_traits(traits, ts);
                }
                if let Some(anon) = event.merged_id() {
                    self.add_alias(anon.to_owned());
                }
            }
            EventBody::Alias(_) => {
                if let Some(prev) = event.merged_id() {
                    self.add_alias(prev.to_owned());
                }
            }
            // Erasure removes the profile; the applier does it before a state is involved.
            EventBody::Erase(_) => {}
        }
        self.remember(event.id, ts, ctx.dedup_window_ms);
        ApplyOutcome::Applied
    }

    fn note_first_amount(&mut self, ts: Millis, id: EventId, amount: Money) {
        let earlier = match (self.first_purchase, self.first_amount_id) {
            (None, _) | (_, None) => true,
            (Some(f), Some(fid)) => ts < f || (ts == f && id < fid),
        };
        if earlier {
            self.first_amount = amount;
            self.first_amount_id = Some(id);
        }
    }

    pub fn add_alias(&mut self, id: String) {
        if let Err(i) = self.aliases.binary_search(&id) {
            self.aliases.insert(i, id);
        }
    }

    fn set_traits(&mut self, object_json: &str, ts: Millis) {
        let Ok(serde_json::Value::Object(map)) =
            serde_json::from_str::<serde_json::Value>(object_json)
        else {
            return;
        };
        for (key, value) in map {
            self.put_trait(TraitValue {
                key: key.into(),
                at: ts,
                json: value.to_string(),
            });
        }
    }

    fn put_trait(&mut self, t: TraitValue) {
        match self.traits.binary_search_by(|x| x.key.cmp(&t.key)) {
            Ok(i) => {
                let cur = &self.traits[i];
                // Later write wins; equal times break the tie on the value so order never matters.
                if (t.at, &t.json) > (cur.at, &cur.json) {
                    self.traits[i] = t;
                }
            }
            Err(i) => self.traits.insert(i, t),
        }
    }

    /// Folds `other` (a disjoint set of events) into `self`. Associative and commutative.
    pub fn merge(&mut self, other: CustomerState, ctx: &ApplyContext) {
        if other.first_purchase.is_some() {
            let other_first = other.first_purchase.unwrap_or(Millis::MAX);
            let take = match (
                self.first_purchase,
                self.first_amount_id,
                other.first_amount_id,
            ) {
                (None, _, _) => true,
                (Some(f), Some(a), Some(b)) => other_first < f || (other_first == f && b < a),
                (Some(f), _, _) => other_first < f,
            };
            if take {
                self.first_amount = other.first_amount;
                self.first_amount_id = other.first_amount_id;
            }
        }
        self.first_purchase = min_opt(self.first_purchase, other.first_purchase);
        self.last_purchase = max_opt(self.last_purchase, other.last_purchase);
        self.frequency = self.frequency.saturating_add(other.frequency);
        self.gross = self.gross.saturating_add(other.gross);
        self.refunded = self.refunded.saturating_add(other.refunded);
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
        self.activity.union(&other.activity);
        merge_counters(
            &mut self.engagement,
            other.engagement,
            ctx.half_life_ms,
            ctx.engagement_slots,
        );
        merge_counters(
            &mut self.affinity,
            other.affinity,
            ctx.half_life_ms,
            ctx.affinity_slots,
        );
        for t in other.traits {
            self.put_trait(t);
        }
        for a in other.aliases {
            self.add_alias(a);
        }
        let horizon = self.last_seen.saturating_sub(ctx.dedup_window_ms);
        for (id, ts) in other.recent {
            if let Err(i) = self.recent.binary_search_by(|(e, _)| e.cmp(&id)) {
                self.recent.insert(i, (id, ts));
            }
        }
        self.recent.retain(|(_, t)| *t >= horizon);
    }
}

fn min_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_rebases_on_an_earlier_month() {
        let mut b = ActivityBitmap::default();
        b.set(700);
        b.set(650);
        b.set(780);
        let months: Vec<i32> = b.months().collect();
        assert_eq!(months, vec![650, 700, 780]);
        assert_eq!(b.base_month, 650);
        let mut c = ActivityBitmap::default();
        c.set(600);
        c.union(&b);
        assert_eq!(c.months().collect::<Vec<_>>(), vec![600, 650, 700, 780]);
        assert!(c.contains(700) && !c.contains(701) && !c.contains(599));
    }
}
