//! The state invariants: order independence, idempotence under duplicates, and merge.

use patron_core::state::{ApplyContext, ApplyOutcome, CustomerState};
use patron_core::testing::{customer_events, states_equivalent};
use proptest::prelude::*;

fn apply_all<'a>(
    events: impl IntoIterator<Item = &'a patron_core::event::Event>,
    ctx: &ApplyContext,
) -> CustomerState {
    let mut s = CustomerState::default();
    for e in events {
        s.apply(e, ctx);
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_permutation_gives_the_same_state(events in customer_events(40, 90), seed in any::<u64>()) {
        let ctx = ApplyContext::default();
        let in_order = apply_all(&events, &ctx);
        let mut shuffled = events.clone();
        // A seeded Fisher-Yates so the permutation is part of the reported failing case.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let permuted = apply_all(&shuffled, &ctx);
        prop_assert!(states_equivalent(&in_order, &permuted).is_ok(), "{:?}", states_equivalent(&in_order, &permuted));
    }

    /// Within the dedup window (the generated span is 5 days < 7), a re-sent event is a no-op.
    #[test]
    fn applying_an_event_twice_equals_once(events in customer_events(30, 5)) {
        let ctx = ApplyContext::default();
        let once = apply_all(&events, &ctx);
        let mut twice = CustomerState::default();
        for e in &events {
            prop_assert_eq!(twice.apply(e, &ctx), ApplyOutcome::Applied);
            prop_assert_eq!(twice.apply(e, &ctx), ApplyOutcome::Duplicate);
        }
        // And a late re-send of every event, after all of them, is caught too.
        for e in &events {
            prop_assert_eq!(twice.apply(e, &ctx), ApplyOutcome::Duplicate);
        }
        prop_assert!(states_equivalent(&once, &twice).is_ok());
    }

    /// Duplicates older than the window relative to the newest event may slip through, but a
    /// duplicate within the window of the newest event is always caught, whatever came between.
    #[test]
    fn duplicates_of_recent_events_are_always_caught(events in customer_events(40, 60)) {
        let ctx = ApplyContext::default();
        let mut s = apply_all(&events, &ctx);
        let horizon = s.last_seen - ctx.dedup_window_ms;
        for e in events.iter().filter(|e| e.ts >= horizon) {
            prop_assert_eq!(s.apply(e, &ctx), ApplyOutcome::Duplicate);
        }
    }

    #[test]
    fn merging_partial_states_equals_applying_all(events in customer_events(40, 90), split in any::<u64>()) {
        let ctx = ApplyContext::default();
        let all = apply_all(&events, &ctx);
        let (left, right): (Vec<_>, Vec<_>) =
            events.iter().enumerate().partition(|(i, _)| (split >> (i % 64)) & 1 == 0);
        let mut a = apply_all(left.into_iter().map(|(_, e)| e), &ctx);
        let b = apply_all(right.into_iter().map(|(_, e)| e), &ctx);
        a.merge(b, &ctx);
        prop_assert!(states_equivalent(&all, &a).is_ok(), "{:?}", states_equivalent(&all, &a));
    }

    #[test]
    fn merge_is_commutative(events in customer_events(30, 90), split in any::<u64>()) {
        let ctx = ApplyContext::default();
        let (left, right): (Vec<_>, Vec<_>) =
            events.iter().enumerate().partition(|(i, _)| (split >> (i % 64)) & 1 == 0);
        let a = apply_all(left.into_iter().map(|(_, e)| e), &ctx);
        let b = apply_all(right.into_iter().map(|(_, e)| e), &ctx);
        let mut ab = a.clone();
        ab.merge(b.clone(), &ctx);
        let mut ba = b;
        ba.merge(a, &ctx);
        prop_assert!(states_equivalent(&ab, &ba).is_ok());
    }
}
