//! Identity across instances: two stores, each owning half of a topic's partitions, route
//! identify and alias merges through the topic (handoffs, merged states, forwarded events).
//! Together they must hold exactly what one store reading every partition holds.
//!
//! Runs against a real Kafka-compatible broker (tansu, or `PATRON_TEST_BROKERS`). Each
//! instance is `patron replay --from-kafka --until-end --partitions ..`, run in turns until a
//! whole round sends nothing, so the test never depends on timing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::TimeZone;
use common::kafka::*;
use common::*;
use patron_core::state::CustomerState;
use patron_store::{DailyTotals, Store};
use patron_synth::{Generator, SynthConfig, SynthEvent};
use serde_json::Value;

/// Most customers browse anonymously first, some merge an older id: many links cross
/// partitions.
fn synth() -> SynthConfig {
    SynthConfig {
        customers: 800,
        days: 120,
        seed: 7_707,
        start: chrono::Utc
            .with_ymd_and_hms(2025, 3, 1, 0, 0, 0)
            .single()
            .expect("a valid date"),
        anonymous_rate: 0.6,
        ..SynthConfig::default()
    }
}

/// Every profile of a store, by id.
fn profiles(store: &Path) -> BTreeMap<String, CustomerState> {
    let store = Store::open_existing(store).expect("open store");
    let reader = store.reader().expect("read snapshot");
    let mut out = BTreeMap::new();
    reader
        .for_each_profile(|id, _, state| {
            out.insert(id.to_owned(), state);
        })
        .expect("scan profiles");
    out
}

fn daily(store: &Path) -> BTreeMap<i32, DailyTotals> {
    let store = Store::open_existing(store).expect("open store");
    let reader = store.reader().expect("read snapshot");
    reader
        .daily_all()
        .expect("daily totals")
        .into_iter()
        .collect()
}

/// How many identity records a replay says it sent.
fn sent(output: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("identity"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Equal JSON, numbers within a relative 1e-9 (decayed counters merged in another order).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// A state as JSON with its id lists sorted (merge order may differ).
fn normalised(state: &CustomerState) -> Value {
    let mut state = state.clone();
    state.aliases.sort();
    let mut v = serde_json::to_value(&state).expect("state to JSON");
    sort_arrays_of_strings(&mut v);
    v
}

fn sort_arrays_of_strings(v: &mut Value) {
    match v {
        Value::Array(items) => {
            if items.iter().all(Value::is_string) {
                items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            items.iter_mut().for_each(sort_arrays_of_strings);
        }
        Value::Object(map) => map.values_mut().for_each(sort_arrays_of_strings),
        _ => {}
    }
}

/// (customer id, anonymous id) of every identify that links one, in either message form.
fn links(events: &[SynthEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| {
            let v: Value = serde_json::from_slice(&e.payload).ok()?;
            if v["type"] != "identify" {
                return None;
            }
            let customer = v.get("customer_id").or(v.get("userId"))?.as_str()?;
            let anonymous = v.get("anonymous_id").or(v.get("anonymousId"))?.as_str()?;
            Some((customer.to_owned(), anonymous.to_owned()))
        })
        .collect()
}

fn event(key: &str, ts_millis: i64, json: String) -> SynthEvent {
    SynthEvent {
        ts_millis,
        key: key.to_owned(),
        payload: json.into_bytes(),
        expected_reject: None,
        duplicate: false,
    }
}

/// After the first phase: browsing under already-linked anonymous ids (their owners must
/// forward it to the customer's owner), and customers renamed by `alias` to a new id (a chain
/// anonymous → customer → new id, whose state moves between instances again).
fn later_events(links: &[(String, String)], after: i64) -> Vec<SynthEvent> {
    let ts = |i: usize| {
        let at = after + 3_600_000 * (i as i64 + 1);
        let text = chrono::DateTime::from_timestamp_millis(at)
            .expect("a valid time")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        (at, text)
    };
    let mut out = Vec::new();
    for (i, (customer, anonymous)) in links.iter().enumerate().take(150) {
        let (at, text) = ts(i);
        out.push(event(
            anonymous,
            at,
            format!(
                r#"{{"event_id":"later-view-{i}","type":"interaction","ts":"{text}","anonymous_id":"{anonymous}","kind":"page_view"}}"#
            ),
        ));
        if i % 3 == 0 {
            let renamed = format!("{customer}-renamed");
            out.push(event(
                &renamed,
                at + 1,
                format!(
                    r#"{{"event_id":"later-alias-{i}","type":"alias","ts":"{text}","customer_id":"{renamed}","previous_id":"{customer}"}}"#
                ),
            ));
        }
    }
    out
}

#[test]
fn merges_across_instances_equal_one_instance() {
    let dir = test_dir();
    let broker = Broker::memory();
    let topic = unique("t-identity");
    broker.create_topic(&topic, 4);
    let cfg = synth();
    let mut events: Vec<SynthEvent> = Generator::new(cfg.clone()).collect();
    let linked = links(&events);
    assert!(
        linked.len() > 100,
        "the data set links anonymous ids ({})",
        linked.len()
    );
    produce(&broker.bootstrap(), &topic, &events);

    let (a, b) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    let brokers = broker.bootstrap();
    let replay = |store: &Path, partitions: &str| {
        run_ok(&[
            "replay",
            "--from-kafka",
            "--brokers",
            &brokers,
            "--topic",
            &topic,
            "--until-end",
            "--partitions",
            partitions,
            "--store",
            path_str(store),
        ])
    };
    // Each instance reads its share in turn, until a whole round sends nothing.
    let settle = || {
        let mut total = 0;
        for _round in 0..8 {
            let round = sent(&replay(&a, "0,1")) + sent(&replay(&b, "2,3"));
            if round == 0 {
                return total;
            }
            total += round;
        }
        panic!("identity records still flowing after 8 rounds");
    };
    let first = settle();
    assert!(
        first > 50,
        "merges crossed instances through the topic ({first} records)"
    );

    let last_ts = events.iter().map(|e| e.ts_millis).max().expect("events");
    let later = later_events(&linked, last_ts);
    produce(&broker.bootstrap(), &topic, &later);
    events.extend(later);
    let second = settle();
    assert!(
        second > 50,
        "later events were forwarded ({second} records)"
    );

    // The oracle: a file replay of the same payloads, computed without Kafka or routing.
    file_oracle(dir.path(), &events);
    let oracle = dir.path().join("oracle.redb");
    let expected = profiles(&oracle);
    assert!(expected.len() > 700);
    assert!(
        expected.keys().any(|id| id.ends_with("-renamed")),
        "the oracle has renamed customers"
    );

    let (in_a, in_b) = (profiles(&a), profiles(&b));
    let both: Vec<&String> = in_a.keys().filter(|id| in_b.contains_key(*id)).collect();
    assert!(both.is_empty(), "profiles held by both instances: {both:?}");
    let mut together = in_a;
    together.extend(in_b);
    let extra: Vec<&String> = together
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    let missing: Vec<&String> = expected
        .keys()
        .filter(|id| !together.contains_key(*id))
        .collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "profiles left unmerged: {extra:?}; profiles missing: {missing:?}"
    );
    for (id, want) in &expected {
        let got = &together[id];
        assert!(
            same(&normalised(got), &normalised(want)),
            "{id} differs:\n two instances: {}\n one store:     {}",
            normalised(got),
            normalised(want)
        );
    }

    // Daily totals add up: every event counted once, every customer's first purchase once.
    let mut summed: BTreeMap<i32, (u64, u64, i64)> = BTreeMap::new();
    for store in [&a, &b] {
        for (day, t) in daily(store) {
            let e = summed.entry(day).or_default();
            e.0 += t.interactions;
            e.1 += t.orders;
            e.2 += t.new_customers;
        }
    }
    for (day, t) in daily(&oracle) {
        let got = summed.remove(&day).unwrap_or_default();
        assert_eq!(
            got,
            (t.interactions, t.orders, t.new_customers),
            "daily totals of day {day}"
        );
    }

    // Reading both shares again changes nothing: copies are dropped, nothing is sent.
    assert_eq!(sent(&replay(&a, "0,1")) + sent(&replay(&b, "2,3")), 0);
    let mut again = profiles(&a);
    again.extend(profiles(&b));
    assert_eq!(again.len(), expected.len());
}
