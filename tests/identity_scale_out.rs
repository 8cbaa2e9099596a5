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
use std::time::Duration;

use chrono::TimeZone;
use common::kafka::*;
use common::*;
use patron_core::state::CustomerState;
use patron_store::{DailyTotals, Store};
use patron_stream::applier::home_partition;
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
    scoped_profiles(store)
        .into_iter()
        .map(|(id, (_, state))| (id, state))
        .collect()
}

/// Every profile of a store with the partition that holds it.
fn scoped_profiles(store: &Path) -> BTreeMap<String, (u32, CustomerState)> {
    let store = Store::open_existing(store).expect("open store");
    let reader = store.reader().expect("read snapshot");
    let mut out = BTreeMap::new();
    reader
        .for_each_profile(|id, scope, state| {
            out.insert(id.to_owned(), (scope, state));
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

/// One instance's turn: `patron replay --from-kafka --until-end` of `partitions` into `store`
/// (every partition when `partitions` is empty); its output.
fn replay_share(brokers: &str, topic: &str, store: &Path, partitions: &str) -> String {
    let mut args = vec![
        "replay",
        "--from-kafka",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--until-end",
        "--store",
        path_str(store),
    ];
    if !partitions.is_empty() {
        args.extend(["--partitions", partitions]);
    }
    run_ok(&args)
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

/// An event time as the events spell it (RFC 3339, milliseconds, UTC).
fn text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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
        (at, text(at))
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

/// The profiles of several stores, each owning some partitions, gathered into one map. Every
/// profile must sit in its id's home partition, and each owned partition's profiles in one
/// store. A store may still hold a copy of a partition that moved to another instance (it is
/// dropped when the partition comes back, by a restore from the changelog); such copies are
/// left out.
fn gather(stores: &[(&Path, Vec<u32>)]) -> BTreeMap<String, CustomerState> {
    let mut together = BTreeMap::new();
    for (store, owned) in stores {
        for (id, (scope, state)) in scoped_profiles(store) {
            assert_eq!(
                scope,
                home_partition(&id, 4),
                "{id} is held away from its home"
            );
            if !owned.contains(&scope) {
                continue;
            }
            assert!(
                together.insert(id.clone(), state).is_none(),
                "{id} held twice"
            );
        }
    }
    together
}

/// The same profiles as the single-store oracle, state by state.
fn assert_same_profiles(
    together: &BTreeMap<String, CustomerState>,
    expected: &BTreeMap<String, CustomerState>,
) {
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
    for (id, want) in expected {
        assert!(
            same(&normalised(&together[id]), &normalised(want)),
            "{id} differs:\n two instances: {}\n one store:     {}",
            normalised(&together[id]),
            normalised(want)
        );
    }
}

/// Erases three renamed and three plain linked customers at `at`, then browses under their
/// anonymous ids an hour later.
fn erasures_then_browsing(links: &[(String, String)], at: i64) -> Vec<SynthEvent> {
    let chosen = links
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 150)
        .filter(|(i, _)| i % 3 == 0)
        .take(3)
        .chain(links.iter().enumerate().filter(|(i, _)| i % 3 == 1).take(3));
    let mut out = Vec::new();
    for (i, (customer, anonymous)) in chosen {
        let canonical = if i % 3 == 0 {
            format!("{customer}-renamed")
        } else {
            customer.clone()
        };
        out.push(event(
            &canonical,
            at,
            format!(
                r#"{{"event_id":"erase-{i}","type":"erase","ts":"{}","customer_id":"{canonical}"}}"#,
                text(at)
            ),
        ));
        out.push(event(
            anonymous,
            at + 3_600_000,
            format!(
                r#"{{"event_id":"after-erase-{i}","type":"interaction","ts":"{}","anonymous_id":"{anonymous}","kind":"page_view"}}"#,
                text(at + 3_600_000)
            ),
        ));
    }
    out
}

/// New visitors who browse anonymously at `at`, identify a minute later and are erased a minute
/// after that, each with the anonymous id and the customer id in different partitions: the
/// erasure is applied at the customer's home before the anonymous state's merge comes back
/// through the topic, and must still cover it.
fn identified_then_erased(at: i64) -> Vec<SynthEvent> {
    let mut out = Vec::new();
    let pairs = (0..)
        .map(|i| (format!("quick-{i}"), format!("quick-anon-{i}")))
        .filter(|(c, a)| home_partition(c, 4) != home_partition(a, 4))
        .take(6);
    for (i, (customer, anonymous)) in pairs.enumerate() {
        let (browse, identify, erase) = (at, at + 60_000, at + 120_000);
        out.push(event(
            &anonymous,
            browse,
            format!(
                r#"{{"event_id":"quick-view-{i}","type":"interaction","ts":"{}","anonymous_id":"{anonymous}","kind":"page_view"}}"#,
                text(browse)
            ),
        ));
        out.push(event(
            &customer,
            identify,
            format!(
                r#"{{"event_id":"quick-identify-{i}","type":"identify","ts":"{}","customer_id":"{customer}","anonymous_id":"{anonymous}"}}"#,
                text(identify)
            ),
        ));
        out.push(event(
            &customer,
            erase,
            format!(
                r#"{{"event_id":"quick-erase-{i}","type":"erase","ts":"{}","customer_id":"{customer}"}}"#,
                text(erase)
            ),
        ));
    }
    out
}

/// Anonymous visitors who browse at `at` and are erased on their own two minutes later, while an
/// identify naming them, a minute older than the erasure, is read after it (the customer id in
/// another partition). Returns those events, and browsing under the erased ids a minute after
/// the erasure, to be read once the identifies' handoffs have arrived: one store drops the
/// identify (the erasure covers it), so that browsing starts afresh under the anonymous id and
/// must not follow a link to the customer.
fn erased_then_named(at: i64) -> (Vec<SynthEvent>, Vec<SynthEvent>) {
    let (mut first, mut later) = (Vec::new(), Vec::new());
    let pairs = (0..)
        .map(|i| (format!("lone-{i}"), format!("lone-anon-{i}")))
        .filter(|(c, a)| home_partition(c, 4) != home_partition(a, 4))
        .take(6);
    for (i, (customer, anonymous)) in pairs.enumerate() {
        let view = |tag: &str, ms: i64| {
            event(
                &anonymous,
                ms,
                format!(
                    r#"{{"event_id":"lone-{tag}-{i}","type":"interaction","ts":"{}","anonymous_id":"{anonymous}","kind":"page_view"}}"#,
                    text(ms)
                ),
            )
        };
        first.push(view("view", at));
        first.push(event(
            &anonymous,
            at + 120_000,
            format!(
                r#"{{"event_id":"lone-erase-{i}","type":"erase","ts":"{}","customer_id":"{anonymous}"}}"#,
                text(at + 120_000)
            ),
        ));
        first.push(event(
            &customer,
            at + 60_000,
            format!(
                r#"{{"event_id":"lone-identify-{i}","type":"identify","ts":"{}","customer_id":"{customer}","anonymous_id":"{anonymous}"}}"#,
                text(at + 60_000)
            ),
        ));
        later.push(view("after", at + 180_000));
    }
    (first, later)
}

/// The customer ids of [`erased_then_named`]: their homes apply the identify one store drops
/// (docs/ARCHITECTURE.md, Identity), so their profiles are left out of the comparison.
fn named_after_erasure(id: &str) -> bool {
    id.strip_prefix("lone-")
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit()))
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
    let positions = produce(&broker.bootstrap(), &topic, &events);
    // Patron's idea of an id's home is where the producer's default partitioner put it.
    for (e, p) in events.iter().zip(&positions) {
        assert_eq!(
            p.partition as u32,
            home_partition(&e.key, 4),
            "the broker put key {} elsewhere",
            e.key
        );
    }

    let (a, b) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    let brokers = broker.bootstrap();
    let replay = |store: &Path, partitions: &str| replay_share(&brokers, &topic, store, partitions);
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

    // Erasures (keyed by the canonical id, as the API sends them) of renamed and plain
    // customers, then browsing under their old anonymous ids: that starts new anonymous
    // profiles, as in one store, and never revives the erased customer.
    let erase_at = last_ts + 10 * 86_400_000;
    let mut erasures = erasures_then_browsing(&linked, erase_at);
    // And customers erased right after they identified, before the merge of their anonymous
    // history has come back from the other partition.
    erasures.extend(identified_then_erased(erase_at));
    // And anonymous ids erased on their own, named by an older identify read after that.
    let (named, browsed) = erased_then_named(erase_at);
    erasures.extend(named);
    produce(&broker.bootstrap(), &topic, &erasures);
    events.extend(erasures);
    let third = settle();
    assert!(
        third > 0,
        "erasures told the anonymous ids' homes ({third})"
    );
    produce(&broker.bootstrap(), &topic, &browsed);
    events.extend(browsed);
    settle();

    // The oracle: a file replay of the same payloads, computed without Kafka or routing.
    file_oracle(dir.path(), &events);
    let oracle = dir.path().join("oracle.redb");
    let expected = profiles(&oracle);
    assert!(expected.len() > 700);
    assert!(
        expected.keys().any(|id| id.ends_with("-renamed")),
        "the oracle has renamed customers"
    );

    // Every profile lives in its id's home partition, in the instance owning that partition.
    let mut together = gather(&[(&a, vec![0, 1]), (&b, vec![2, 3])]);
    together.retain(|id, _| !named_after_erasure(id));
    let revived: Vec<&String> = together
        .keys()
        .filter(|id| id.starts_with("quick-"))
        .collect();
    assert!(
        revived.is_empty(),
        "customers erased right after identifying came back: {revived:?}"
    );
    assert_same_profiles(&together, &expected);

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
    again.retain(|id, _| !named_after_erasure(id));
    assert_eq!(again.len(), expected.len());
}

/// The partitions an instance reads now (not released), from its `/v1/status`.
fn owned(status: &Value) -> BTreeMap<u32, (i64, Option<i64>)> {
    status["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"] != "released")
        .filter_map(|p| {
            Some((
                p["partition"].as_u64()? as u32,
                (
                    p["committed_offset"].as_i64()?,
                    p["high_watermark"].as_i64(),
                ),
            ))
        })
        .collect()
}

/// Two `serve` setups in `dir`/a and `dir`/b: one topic, one consumer group, two stores.
fn two_instances(dir: &Path, broker: &Broker) -> (ServeSetup, ServeSetup) {
    let first_dir = dir.join("a");
    std::fs::create_dir_all(&first_dir).expect("create a dir");
    let first = ServeSetup::kafka(&first_dir, broker);
    let second = first.sibling(&dir.join("b"));
    (first, second)
}

/// The events of 300 customers (the usual mix, fewer of them), the links their identifies
/// make, and the time of the last event.
fn small_history() -> (Vec<SynthEvent>, Vec<(String, String)>, i64) {
    let cfg = SynthConfig {
        customers: 300,
        ..synth()
    };
    let events: Vec<SynthEvent> = Generator::new(cfg).collect();
    let linked = links(&events);
    let last_ts = events.iter().map(|e| e.ts_millis).max().expect("events");
    (events, linked, last_ts)
}

/// Stops two settled `serve` instances (each with its store and last status) and checks that
/// the profiles of the partitions each read equal a file replay of `events` in `oracle_dir`.
fn stop_and_compare(
    (a, store_a, status_a): (Serve, &Path, &Value),
    (b, store_b, status_b): (Serve, &Path, &Value),
    oracle_dir: &Path,
    events: &[SynthEvent],
) {
    a.terminate();
    b.terminate();
    file_oracle(oracle_dir, events);
    let expected = profiles(&oracle_dir.join("oracle.redb"));
    let held = |status: &Value| owned(status).keys().copied().collect();
    let together = gather(&[(store_a, held(status_a)), (store_b, held(status_b))]);
    assert_same_profiles(&together, &expected);
}

/// Polls each instance until every one reads some partitions and together they read `total`.
fn wait_owning(instances: &mut [&mut Serve], total: usize) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let statuses: Vec<Value> = instances
            .iter()
            .map(|s| s.status().unwrap_or_default())
            .collect();
        let counts: Vec<usize> = statuses.iter().map(|s| owned(s).len()).collect();
        if counts.iter().all(|n| *n > 0) && counts.iter().sum::<usize>() == total {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group never split the partitions: {statuses:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls both instances until, together, they read every partition, each committed up to its
/// log end and past what was produced, with nothing routed waiting, and that holds unchanged
/// across the broker's next statistics.
fn wait_settled(instances: &mut [&mut Serve], ends: &TopicEnds, partitions: u32) {
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut stable: Option<(std::time::Instant, Vec<Value>)> = None;
    let mut last = Vec::new();
    while std::time::Instant::now() < deadline {
        let statuses: Vec<Value> = instances
            .iter()
            .map(|s| s.status().unwrap_or(Value::Null))
            .collect();
        let mut all = BTreeMap::new();
        for s in &statuses {
            all.extend(owned(s));
        }
        let settled = all.len() as u32 == partitions
            && all.iter().all(|(p, (committed, end))| {
                *end == Some(*committed) && ends.0.get(&(*p as i32)).is_none_or(|e| committed >= e)
            })
            && statuses.iter().all(|s| {
                s["identity_routing"]["pending"] == 0
                    && s["dead_letters"]["pending"] == 0
                    && s["changelog"]["pending_checkpoints"] == 0
            });
        let view: Vec<Value> = statuses.iter().map(|s| s["partitions"].clone()).collect();
        match (&stable, settled) {
            (Some((since, seen)), true) if *seen == view => {
                if since.elapsed() >= Duration::from_millis(2_500) {
                    return;
                }
            }
            (_, true) => stable = Some((std::time::Instant::now(), view)),
            (_, false) => stable = None,
        }
        last = statuses;
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the two instances did not settle within {DEADLINE:?}; last statuses: {last:#?}");
}

/// Two `serve` processes in one consumer group split four partitions while events stream in;
/// identify and alias merges between their partitions go through the topic. Stopped, their
/// stores together equal a file replay of the same events.
#[test]
fn two_serve_instances_share_the_identities() {
    let dir = test_dir();
    let broker = Broker::memory();
    let (first, second) = two_instances(dir.path(), &broker);
    let mut a = first.start();
    let mut b = second.start();

    // Both must hold partitions before the stream starts, or one would read everything.
    wait_owning(&mut [&mut a, &mut b], 4);

    let cfg = SynthConfig {
        customers: 400,
        ..synth()
    };
    let mut events: Vec<SynthEvent> = Generator::new(cfg).collect();
    let linked = links(&events);
    let mut positions = produce(&broker.bootstrap(), &first.topic, &events);
    let last_ts = events.iter().map(|e| e.ts_millis).max().expect("events");
    let later = later_events(&linked, last_ts);
    positions.extend(produce(&broker.bootstrap(), &first.topic, &later));
    events.extend(later);
    wait_settled(&mut [&mut a, &mut b], &TopicEnds::of(&positions), 4);
    let (sa, sb) = (a.status().expect("status"), b.status().expect("status"));
    let sent = sa["identity_routing"]["sent"].as_u64().unwrap_or(0)
        + sb["identity_routing"]["sent"].as_u64().unwrap_or(0);
    assert!(sent > 50, "merges went through the topic ({sent} records)");
    let (held_a, held_b) = (owned(&sa), owned(&sb));

    file_oracle(dir.path(), &events);
    let expected = profiles(&dir.path().join("oracle.redb"));

    // Either instance answers for any customer or linked id: the one that does not hold it
    // forwards the request to the one that does.
    let mut asked: Vec<(String, &CustomerState)> = expected
        .iter()
        .take(120)
        .map(|(id, state)| (id.clone(), state))
        .collect();
    for (customer, anonymous) in linked.iter().take(60) {
        let canonical = expected
            .iter()
            .find(|(id, s)| *id == customer || s.aliases.contains(customer))
            .expect("the oracle holds every linked customer");
        asked.push((anonymous.clone(), canonical.1));
    }
    let mut forwarded = 0;
    for (id, state) in &asked {
        let mut answers = Vec::new();
        for (serve, holds) in [(&a, &held_a), (&b, &held_b)] {
            let (code, body) = serve.send("GET", &format!("/v1/customers/{id}"), None);
            assert_eq!(code, 200, "GET {id} on {}: {body:#}", serve.url);
            assert_eq!(body["frequency"], state.frequency, "{id}: {body:#}");
            let home = home_partition(body["customer_id"].as_str().expect("customer_id"), 4);
            forwarded += u32::from(!holds.contains_key(&home));
            answers.push(body["customer_id"].clone());
        }
        assert_eq!(
            answers[0], answers[1],
            "both instances name the same customer for {id}"
        );
        for serve in [&a, &b] {
            let (code, body) = serve.send("GET", &format!("/v1/customers/{id}/offers"), None);
            assert_eq!(code, 200, "offers for {id} on {}: {body:#}", serve.url);
        }
    }
    assert!(forwarded >= 100, "requests forwarded: {forwarded}");
    let (code, body) = a.send("GET", "/v1/customers/nobody-at-all", None);
    assert_eq!(code, 404, "an unknown id is 404 after forwarding: {body:#}");
    a.terminate();
    b.terminate();
    let held = |status: &BTreeMap<u32, (i64, Option<i64>)>| status.keys().copied().collect();
    let together = gather(&[
        (&first.store, held(&held_a)),
        (&second.store, held(&held_b)),
    ]);
    assert_same_profiles(&together, &expected);
}

/// Browsing under linked anonymous ids at `at` (new event ids): forwarded to the customers'
/// homes, or new profiles where the customer was erased.
fn browsing(links: &[(String, String)], at: i64, tag: &str) -> Vec<SynthEvent> {
    let text = text(at);
    links
        .iter()
        .take(120)
        .enumerate()
        .map(|(i, (_, anonymous))| {
            event(
                anonymous,
                at,
                format!(
                    r#"{{"event_id":"{tag}-{i}","type":"interaction","ts":"{text}","anonymous_id":"{anonymous}","kind":"page_view"}}"#
                ),
            )
        })
        .collect()
}

fn counter(status: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(status, |v, k| &v[*k])
        .as_u64()
        .unwrap_or(0)
}

/// The changelog: an instance killed mid-stream is replaced by one with an empty store, which
/// restores the partitions from `<topic>-changelog` instead of reading the topic from its
/// start; when the first comes back, it restores the partitions it gets from the state the
/// second left there. Together they end up with exactly what a file replay holds.
#[test]
fn a_new_owner_restores_partitions_from_the_changelog() {
    let dir = test_dir();
    let broker = Broker::memory();
    let (first, second) = two_instances(dir.path(), &broker);

    // Phase 1, A alone: browsing, identifies and renames, killed once the changelog has some.
    let mut a = first.start();
    wait_owning(&mut [&mut a], 4);
    let (mut events, linked, last_ts) = small_history();
    events.extend(later_events(&linked, last_ts));
    let mut positions = produce(&broker.bootstrap(), &first.topic, &events);
    let deadline = std::time::Instant::now() + DEADLINE;
    while counter(
        &a.status().unwrap_or_default(),
        &["changelog", "records_sent"],
    ) == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "A never wrote its changelog: {}",
            a.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.kill();

    // Phase 2, B alone from an empty store: it restores what the changelog confirms and reads
    // the rest of phase 1 (settled first, as merges in flight between partitions and a later
    // erasure do not commute); then erasures, and browsing under the erased ids.
    let mut b = second.start();
    wait_settled(&mut [&mut b], &TopicEnds::of(&positions), 4);
    let erase_at = last_ts + 10 * 86_400_000;
    let erasures = erasures_then_browsing(&linked, erase_at);
    positions.extend(produce(&broker.bootstrap(), &first.topic, &erasures));
    events.extend(erasures);
    wait_settled(&mut [&mut b], &TopicEnds::of(&positions), 4);
    let sb = b.status().expect("status");
    let restored = counter(&sb, &["changelog", "restored_partitions"]);
    assert!(restored >= 1, "B restored from the changelog: {sb:#}");
    assert!(
        counter(&sb, &["changelog", "restored_profiles"]) > 0,
        "{sb:#}"
    );
    let oracle_dir = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("create an oracle dir");
        d
    };
    let oracle_2 = file_oracle(&oracle_dir("oracle-2"), &events);
    assert!(
        counter(&sb, &["applied"]) < oracle_2.counts.applied,
        "B applied {} events of {}: what it restored, it did not read again",
        counter(&sb, &["applied"]),
        oracle_2.counts.applied
    );

    // Phase 3, A back with its store from before the kill: it restores what it gets from
    // the state B left, and drops its own older copy of those partitions.
    let mut a = first.start();
    wait_owning(&mut [&mut a, &mut b], 4);
    let later = browsing(&linked, erase_at + 86_400_000, "phase-3");
    positions.extend(produce(&broker.bootstrap(), &first.topic, &later));
    events.extend(later);
    wait_settled(&mut [&mut a, &mut b], &TopicEnds::of(&positions), 4);
    let (sa, sb) = (a.status().expect("status"), b.status().expect("status"));
    assert!(
        counter(&sa, &["changelog", "restored_partitions"]) >= 1,
        "A restored the partitions it got back: {sa:#}"
    );
    stop_and_compare(
        (a, &first.store, &sa),
        (b, &second.store, &sb),
        &oracle_dir("oracle-3"),
        &events,
    );
}

/// The first id of the form `{prefix}-{n}` whose home among `partitions` is `home`.
fn id_at_home(prefix: &str, home: u32, partitions: u32) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| home_partition(id, partitions) == home)
        .expect("some id hashes there")
}

/// What a partition sends must depend on its own records only, not on which other partitions
/// the store reading it holds: when the partition moves and is rebuilt from the start, the
/// receivers drop what they already had by origin offset, which is only right if the rebuild
/// sends the same records.
///
/// On a topic of three partitions, the store S reads partition 0 first (an identify linking X,
/// whose home is partition 1, to C), then 0 and 1: browsing under X, which is in partition 1
/// before the handoff, must not follow the link S's partition 0 made. T, a new owner of
/// partition 1 alone, rebuilds it from the start. One store counts the browsing once.
#[test]
fn a_partition_rebuilt_elsewhere_sends_what_it_sent_before() {
    let dir = test_dir();
    let broker = Broker::memory();
    let topic = unique("t-rebuild");
    broker.create_topic(&topic, 3);
    let customer = id_at_home("cust", 0, 3);
    let anonymous = id_at_home("anon", 1, 3);
    let t0 = chrono::Utc
        .with_ymd_and_hms(2025, 3, 1, 10, 0, 0)
        .single()
        .expect("a valid date")
        .timestamp_millis();
    let events = vec![
        event(
            &anonymous,
            t0,
            format!(
                r#"{{"event_id":"view-1","type":"interaction","ts":"{}","anonymous_id":"{anonymous}","kind":"page_view"}}"#,
                text(t0)
            ),
        ),
        event(
            &customer,
            t0 + 60_000,
            format!(
                r#"{{"event_id":"identify-1","type":"identify","ts":"{}","customer_id":"{customer}","anonymous_id":"{anonymous}"}}"#,
                text(t0 + 60_000)
            ),
        ),
        event(
            &customer,
            t0 + 120_000,
            format!(
                r#"{{"event_id":"buy-1","type":"purchase","ts":"{}","customer_id":"{customer}","amount":"25.00"}}"#,
                text(t0 + 120_000)
            ),
        ),
    ];
    produce(&broker.bootstrap(), &topic, &events);

    let brokers = broker.bootstrap();
    let replay = |store: &Path, partitions: &str| replay_share(&brokers, &topic, store, partitions);
    let (s, t) = (dir.path().join("s.redb"), dir.path().join("t.redb"));
    // S: partition 0 (the identify: a link, and a handoff to partition 1), then both, then 0
    // again for what partition 1 sent.
    replay(&s, "0");
    replay(&s, "0,1");
    replay(&s, "0");
    // Partition 1 moves to T, which reads it from the start; S, still owning 0, takes what T
    // sends.
    replay(&t, "1");
    replay(&s, "0");
    replay(&t, "1");

    let dir_oracle = dir.path().join("oracle");
    std::fs::create_dir_all(&dir_oracle).expect("an oracle dir");
    file_oracle(&dir_oracle, &events);
    let expected = profiles(&dir_oracle.join("oracle.redb"));
    let mut together = BTreeMap::new();
    for (store, owned) in [(&s, 0), (&t, 1)] {
        for (id, (scope, state)) in scoped_profiles(store) {
            if scope == owned {
                together.insert(id, state);
            }
        }
    }
    assert_same_profiles(&together, &expected);
}

/// A store built by `replay --from-kafka` of every partition (no changelog), then served with
/// the changelog on: an instance with an empty store that takes partitions over restores all of
/// their state from the changelog, not only what changed since `serve` started.
#[test]
fn a_changelog_started_on_a_replayed_store_holds_all_of_it() {
    let dir = test_dir();
    let broker = Broker::memory();
    let (first, second) = two_instances(dir.path(), &broker);
    let (mut events, linked, last_ts) = small_history();
    let mut positions = produce(&broker.bootstrap(), &first.topic, &events);
    replay_share(&broker.bootstrap(), &first.topic, &first.store, "");
    // The seed goes in several rounds, with the served changes among them.
    first.set_source("changelog_seed_batch", "40");

    // A serves the replayed store, and changes a few customers.
    let mut a = first.start();
    wait_owning(&mut [&mut a], 4);
    let later = browsing(&linked, last_ts + 86_400_000, "served");
    positions.extend(produce(&broker.bootstrap(), &first.topic, &later));
    events.extend(later);
    wait_settled(&mut [&mut a], &TopicEnds::of(&positions), 4);

    // B, with an empty store, joins and takes some partitions over.
    let mut b = second.start();
    wait_owning(&mut [&mut a, &mut b], 4);
    wait_settled(&mut [&mut a, &mut b], &TopicEnds::of(&positions), 4);
    let (sa, sb) = (a.status().expect("status"), b.status().expect("status"));
    assert!(
        counter(&sb, &["changelog", "restored_partitions"]) >= 1,
        "B restored from the changelog: {sb:#}"
    );
    let oracle_dir = dir.path().join("oracle");
    std::fs::create_dir_all(&oracle_dir).expect("an oracle dir");
    stop_and_compare(
        (a, &first.store, &sa),
        (b, &second.store, &sb),
        &oracle_dir,
        &events,
    );
}

/// A server killed in the middle of a seed (a replayed store sent to the changelog a few keys
/// per round) has confirmed no partition: the instance that takes over finds no marker, so it
/// reads the whole source topic, and ends with every customer instead of the part of them the
/// seed had sent.
#[test]
fn a_server_killed_mid_seed_leaves_no_partial_state_to_restore() {
    let dir = test_dir();
    let broker = Broker::memory();
    let (first, second) = two_instances(dir.path(), &broker);
    for setup in [&first, &second] {
        setup.set_session_timeout(SHORT_SESSION);
    }
    let (events, _, _) = small_history();
    let positions = produce(&broker.bootstrap(), &first.topic, &events);
    replay_share(&broker.bootstrap(), &first.topic, &first.store, "");
    // One key per round, a round per 200 ms checkpoint: the seed of some 400 keys takes over a
    // minute, and is cut off long before its end.
    first.set_source("changelog_seed_batch", "1");

    let mut a = first.start();
    wait_owning(&mut [&mut a], 4);
    let status = wait_status(&mut a, "the seed's first keys", |s| seed_keys_sent(s) >= 5);
    assert_eq!(
        status["changelog"]["seeding"], true,
        "the seed is still under way: {status:#}"
    );
    a.kill();

    let mut b = second.start();
    wait_owning(&mut [&mut b], 4);
    wait_settled(&mut [&mut b], &TopicEnds::of(&positions), 4);
    let status = b.status().expect("status");
    assert_eq!(
        counter(&status, &["changelog", "restored_partitions"]),
        0,
        "nothing confirmed to restore: {status:#}"
    );
    b.terminate();
    let oracle_dir = dir.path().join("oracle");
    std::fs::create_dir_all(&oracle_dir).expect("an oracle dir");
    file_oracle(&oracle_dir, &events);
    assert_same_profiles(
        &profiles(&second.store),
        &profiles(&oracle_dir.join("oracle.redb")),
    );
}

/// Polls a server's status until `ready` holds for it, and returns that status; fails with
/// `what never happened` after [`DEADLINE`].
fn wait_status(serve: &mut Serve, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let status = serve.status().unwrap_or_default();
        if ready(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never happened: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn seed_keys_sent(status: &Value) -> u64 {
    counter(status, &["changelog", "seed_keys_sent"])
}

/// Polls a seeding server until its seed is done; returns the seed keys it sent.
fn wait_seeded(serve: &mut Serve) -> u64 {
    let done = wait_status(serve, "the end of the seed", |s| {
        seed_keys_sent(s) > 0 && s["changelog"]["seeding"] == false
    });
    seed_keys_sent(&done)
}

/// A server stopped in the middle of a seed goes on from where it stopped when it starts
/// again: the two runs together send what one whole seed of the same store sends, not a
/// second whole seed. The first run's count is read before the stop, so it can miss a few
/// rounds: one that completed between the last status and the signal, and the one the stop
/// waits for.
#[test]
fn a_restarted_server_resumes_its_seed() {
    const BATCH: u64 = 10;
    let dir = test_dir();
    let broker = Broker::memory();
    let (first, second) = two_instances(dir.path(), &broker);
    let (events, _, _) = small_history();
    produce(&broker.bootstrap(), &first.topic, &events);
    replay_share(&broker.bootstrap(), &first.topic, &first.store, "");
    std::fs::copy(&first.store, &second.store).expect("copy the store");
    for setup in [&first, &second] {
        setup.set_source("changelog_seed_batch", &BATCH.to_string());
    }

    let mut a = first.start();
    wait_owning(&mut [&mut a], 4);
    let before_stop = seed_keys_sent(&wait_status(&mut a, "the seed's first rounds", |s| {
        seed_keys_sent(s) >= 5 * BATCH
    }));
    a.terminate();
    let mut a = first.start();
    wait_owning(&mut [&mut a], 4);
    let after_restart = wait_seeded(&mut a);
    a.terminate();

    // The same store, seeded whole by another instance in the same group.
    let mut whole = second.start();
    wait_owning(&mut [&mut whole], 4);
    let total = wait_seeded(&mut whole);
    whole.terminate();
    assert!(
        after_restart < total,
        "the restart sent {after_restart} of {total} keys: it started over"
    );
    let together = before_stop + after_restart;
    assert!(
        together <= total && total <= together + 3 * BATCH,
        "{before_stop} before the stop and {after_restart} after, for a seed of {total}"
    );
}

/// A store replayed from files and then served, with no record arriving: the server sends its
/// whole state to the changelog as soon as it owns partitions, so an instance that takes over
/// after it dies (SIGKILL) has every customer, though the topic holds none of their events.
#[test]
fn an_idle_server_sends_a_replayed_store_to_the_changelog_at_once() {
    let dir = test_dir();
    let broker = Broker::memory();
    let (first, second) = two_instances(dir.path(), &broker);
    for setup in [&first, &second] {
        setup.set_session_timeout(SHORT_SESSION);
    }
    // Several rounds: no partition is marked before the last.
    first.set_source("changelog_seed_batch", "60");
    let (events, _, _) = small_history();
    let oracle_dir = dir.path().join("oracle");
    std::fs::create_dir_all(&oracle_dir).expect("an oracle dir");
    file_oracle(&oracle_dir, &events);
    let expected = profiles(&oracle_dir.join("oracle.redb"));
    std::fs::copy(oracle_dir.join("oracle.redb"), &first.store).expect("copy the store");

    let mut a = first.start();
    wait_owning(&mut [&mut a], 4);
    wait_status(
        &mut a,
        "the idle server's whole store in the changelog",
        |s| {
            seed_keys_sent(s) >= expected.len() as u64
                && s["changelog"]["seeding"] == false
                && s["changelog"]["pending_checkpoints"] == 0
        },
    );
    a.kill();

    let mut b = second.start();
    wait_owning(&mut [&mut b], 4);
    wait_settled(&mut [&mut b], &TopicEnds::default(), 4);
    let status = b.status().expect("status");
    assert!(
        counter(&status, &["changelog", "restored_profiles"]) >= expected.len() as u64,
        "B restored every profile: {status:#}"
    );
    b.terminate();
    assert_same_profiles(&profiles(&second.store), &expected);
}
