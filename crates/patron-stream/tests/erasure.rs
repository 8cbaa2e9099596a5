//! Erasure on a real redb file: the customer, its aliases and their state go; the tombstone
//! keeps a replay of older events from bringing them back; newer events start afresh.

use patron_core::config::PatronConfig;
use patron_core::decode::Decoder;
use patron_core::event::Event;
use patron_core::state::{ApplyContext, ApplyOutcome};
use patron_core::time::now_millis;
use patron_store::Store;
use patron_stream::applier::Applier;

fn event(json: &str) -> Event {
    Decoder::default()
        .decode(json.as_bytes(), now_millis())
        .unwrap_or_else(|r| panic!("{json}: {r}"))
}

/// An anonymous visitor browses, identifies as `carol`, buys twice, and `carol` is later
/// linked to an older id by an alias. A bystander `dave` buys once.
fn history() -> Vec<Event> {
    [
        r#"{"type":"interaction","event_id":"h1","ts":"2025-03-01T10:00:00Z","anonymous_id":"anon-7","kind":"page_view"}"#,
        r#"{"type":"identify","event_id":"h2","ts":"2025-03-01T10:05:00Z","customer_id":"carol","anonymous_id":"anon-7","traits":{"email":"c@example.com"}}"#,
        r#"{"type":"purchase","event_id":"h3","ts":"2025-03-02T09:00:00Z","customer_id":"carol","amount":"40.00"}"#,
        r#"{"type":"purchase","event_id":"h4","ts":"2025-04-02T09:00:00Z","customer_id":"carol","amount":"60.00"}"#,
        r#"{"type":"purchase","event_id":"h5","ts":"2025-02-01T09:00:00Z","customer_id":"c-old","amount":"5.00"}"#,
        r#"{"type":"alias","event_id":"h6","ts":"2025-04-03T09:00:00Z","customer_id":"carol","previous_id":"c-old"}"#,
        r#"{"type":"purchase","event_id":"h7","ts":"2025-04-03T09:00:00Z","customer_id":"dave","amount":"10.00"}"#,
    ]
    .iter()
    .map(|j| event(j))
    .collect()
}

fn applier(store: &Store) -> Applier {
    Applier::open(
        store.clone(),
        ApplyContext::from_config(&PatronConfig::default()),
    )
    .unwrap()
}

#[test]
fn erased_customers_stay_erased_across_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state.redb")).unwrap();
    let mut a = applier(&store);
    for e in history() {
        assert_eq!(a.apply(&e, 0).unwrap(), ApplyOutcome::Applied);
    }
    a.checkpoint().unwrap();
    let r = store.reader().unwrap();
    let carol = r.profile("anon-7").unwrap().expect("merged under carol");
    assert_eq!(carol.customer_id, "carol");
    assert_eq!(carol.state.frequency, 3, "40 + 60 + the old id's 5");
    drop(r);

    // Erase by an alias: the whole identity goes.
    let erase = event(
        r#"{"type":"erase","event_id":"x1","ts":"2025-05-01T00:00:00Z","customer_id":"c-old"}"#,
    );
    assert_eq!(a.apply(&erase, 0).unwrap(), ApplyOutcome::Applied);
    a.checkpoint().unwrap();
    let r = store.reader().unwrap();
    for id in ["carol", "anon-7", "c-old"] {
        assert!(r.profile(id).unwrap().is_none(), "{id} still has a profile");
        assert_eq!(r.resolve(id).unwrap(), id, "{id} still links somewhere");
        assert!(r.tombstone(id).unwrap().is_some(), "{id} has no tombstone");
    }
    assert_eq!(r.profile("dave").unwrap().unwrap().state.frequency, 1);
    let erasures = r.erasures().unwrap();
    assert_eq!((erasures.customers, erasures.ids), (1, 3));
    drop(r);
    drop(a);

    // A replay of the same history into the same store (a new process) drops every event of the
    // erased identity and re-applies nothing else (dave's purchase is a duplicate).
    let mut a = applier(&store);
    let outcomes: Vec<ApplyOutcome> = history().iter().map(|e| a.apply(e, 0).unwrap()).collect();
    let dropped = outcomes
        .iter()
        .filter(|o| **o == ApplyOutcome::Erased)
        .count();
    assert_eq!(dropped, 6, "{outcomes:?}");
    assert_eq!(outcomes[6], ApplyOutcome::Duplicate);
    a.checkpoint().unwrap();
    let r = store.reader().unwrap();
    for id in ["carol", "anon-7", "c-old"] {
        assert!(r.profile(id).unwrap().is_none(), "{id} came back");
    }
    assert_eq!(r.erasures().unwrap().events_dropped, 6);
    drop(r);

    // Activity after the erasure is a new relationship: a fresh profile with only that.
    let back = event(
        r#"{"type":"purchase","event_id":"n1","ts":"2025-06-01T00:00:00Z","customer_id":"carol","amount":"7.00"}"#,
    );
    assert_eq!(a.apply(&back, 0).unwrap(), ApplyOutcome::Applied);
    a.checkpoint().unwrap();
    let fresh = store.reader().unwrap().profile("carol").unwrap().unwrap();
    assert_eq!(fresh.state.frequency, 1);
    assert!(fresh.state.aliases.is_empty());
    assert!(fresh.state.traits.is_empty());
}

#[test]
fn an_erasure_in_the_same_batch_as_the_links_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state.redb")).unwrap();
    let mut a = applier(&store);
    for e in history() {
        a.apply(&e, 0).unwrap();
    }
    // No checkpoint in between: the links are still only in memory.
    let erase = event(
        r#"{"type":"erase","event_id":"x1","ts":"2025-05-01T00:00:00Z","customer_id":"carol"}"#,
    );
    a.apply(&erase, 0).unwrap();
    a.checkpoint().unwrap();
    let r = store.reader().unwrap();
    assert!(r.all_aliases().unwrap().is_empty());
    assert!(r.profile("anon-7").unwrap().is_none());
    assert_eq!(r.profile_count().unwrap(), 1, "only dave");
}
