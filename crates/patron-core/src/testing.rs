//! Strategies and comparisons shared by property tests (here and in downstream crates).

use proptest::prelude::*;

use crate::event::*;
use crate::money::Money;
use crate::state::CustomerState;
use crate::time::{MILLIS_PER_DAY, Millis};

/// Events for one customer with unique ids, over `span_days` from a fixed origin.
pub fn customer_events(max: usize, span_days: i64) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(event_body(span_days), 1..max).prop_map(|bodies| {
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, (ts, body))| Event {
                id: EventId::of(&format!("e{i}")),
                ts,
                body,
            })
            .collect()
    })
}

const ORIGIN: Millis = 1_735_689_600_000; // 2025-01-01

fn event_body(span_days: i64) -> impl Strategy<Value = (Millis, EventBody)> {
    let ts = 0..span_days * MILLIS_PER_DAY;
    let cat = prop::sample::select(vec!["shoes", "books", "garden"]);
    let kind = prop::sample::select(vec!["page_view", "email_open", "cart_add", "offer_shown"]);
    let purchase = (
        1i64..500_000_000,
        prop::collection::vec((cat, 1u32..4, 1i64..100_000_000), 0..3),
    )
        .prop_map(|(amount, items)| {
            EventBody::Purchase(Purchase {
                customer_id: "c".into(),
                amount: Money(amount),
                order_id: None,
                items: items
                    .into_iter()
                    .map(|(c, q, p)| LineItem {
                        sku: "s".into(),
                        category: Some(c.to_owned()),
                        quantity: f64::from(q),
                        unit_price: Money(p),
                    })
                    .collect(),
            })
        });
    let refund = (1i64..100_000_000).prop_map(|a| {
        EventBody::Refund(Refund {
            customer_id: "c".into(),
            amount: Money(a),
            order_id: None,
        })
    });
    let interaction = kind.prop_map(|k| {
        EventBody::Interaction(Interaction {
            profile_id: "c".into(),
            anonymous: false,
            kind: k.to_owned(),
            offer_id: None,
            channel: None,
            decision_id: None,
        })
    });
    let identify = prop::sample::select(vec!["gold", "silver"]).prop_map(|tier| {
        EventBody::Identify(Identify {
            customer_id: "c".into(),
            anonymous_id: None,
            traits: Some(format!(r#"{{"tier":"{tier}"}}"#)),
        })
    });
    (
        ts,
        prop_oneof![4 => purchase, 1 => refund, 3 => interaction, 1 => identify],
    )
        .prop_map(|(t, b)| (ORIGIN + t, b))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

/// Equality with a relative tolerance on the decayed counters, whose float sums depend on the
/// order of additions; every other field must be identical.
pub fn states_equivalent(a: &CustomerState, b: &CustomerState) -> Result<(), String> {
    let counters_match = |x: &[crate::state::DecayedCounter],
                          y: &[crate::state::DecayedCounter]| {
        x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|(p, q)| p.key == q.key && p.at == q.at && close(p.value, q.value))
    };
    if !counters_match(&a.engagement, &b.engagement) {
        return Err(format!(
            "engagement differs: {:?} vs {:?}",
            a.engagement, b.engagement
        ));
    }
    if !counters_match(&a.affinity, &b.affinity) {
        return Err(format!(
            "affinity differs: {:?} vs {:?}",
            a.affinity, b.affinity
        ));
    }
    let strip = |s: &CustomerState| {
        let mut s = s.clone();
        s.engagement.clear();
        s.affinity.clear();
        s
    };
    if strip(a) != strip(b) {
        return Err(format!("states differ:\n{:?}\n{:?}", strip(a), strip(b)));
    }
    Ok(())
}
