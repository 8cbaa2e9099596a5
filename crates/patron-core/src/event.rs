//! The validated event model every source decodes into.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::money::Money;
use crate::time::Millis;

/// A 64-bit digest of the producer's `event_id`, the unit of deduplication.
///
/// xxh3 is fixed by its specification, so digests stored in old checkpoints stay comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId(pub u64);

impl EventId {
    pub fn of(event_id: &str) -> Self {
        EventId(xxh3_64(event_id.as_bytes()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: EventId,
    pub ts: Millis,
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    Purchase(Purchase),
    Refund(Refund),
    Interaction(Interaction),
    Identify(Identify),
    Alias(Alias),
    /// Right to be forgotten: erase `customer_id`, its aliases and their state. Produced by
    /// `DELETE /v1/customers/{id}` into the log, so every replica and every replay sees it at the
    /// same position.
    Erase(Erase),
}

/// Amounts are already converted to the base currency.
#[derive(Debug, Clone, PartialEq)]
pub struct Purchase {
    pub customer_id: String,
    pub amount: Money,
    pub order_id: Option<String>,
    pub items: Vec<LineItem>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LineItem {
    pub sku: String,
    pub category: Option<String>,
    pub quantity: f64,
    pub unit_price: Money,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub customer_id: String,
    pub amount: Money,
    pub order_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    /// `customer_id`, or the `anonymous_id` when the visitor is not known yet.
    pub profile_id: String,
    pub anonymous: bool,
    pub kind: String,
    pub offer_id: Option<String>,
    pub channel: Option<String>,
    pub decision_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Identify {
    pub customer_id: String,
    pub anonymous_id: Option<String>,
    /// The `traits` object as compact JSON.
    pub traits: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    pub previous_id: String,
    pub customer_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Erase {
    pub customer_id: String,
}

impl Event {
    /// The profile this event belongs to before alias resolution; also the Kafka message key.
    pub fn profile_id(&self) -> &str {
        match &self.body {
            EventBody::Purchase(p) => &p.customer_id,
            EventBody::Refund(r) => &r.customer_id,
            EventBody::Interaction(i) => &i.profile_id,
            EventBody::Identify(i) => &i.customer_id,
            EventBody::Alias(a) => &a.customer_id,
            EventBody::Erase(e) => &e.customer_id,
        }
    }

    /// A second id this event folds into the profile (identify's anonymous id, alias' previous id).
    pub fn merged_id(&self) -> Option<&str> {
        match &self.body {
            EventBody::Identify(i) => i.anonymous_id.as_deref().filter(|a| *a != i.customer_id),
            EventBody::Alias(a) => Some(a.previous_id.as_str()).filter(|p| *p != a.customer_id),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match &self.body {
            EventBody::Purchase(_) => "purchase",
            EventBody::Refund(_) => "refund",
            EventBody::Interaction(_) => "interaction",
            EventBody::Identify(_) => "identify",
            EventBody::Alias(_) => "alias",
            EventBody::Erase(_) => "erase",
        }
    }
}
