//! `patron serve` and `patron replay --from-kafka` against a real Kafka-compatible broker
//! (tansu, or the broker CI names in `PATRON_TEST_BROKERS`).
//!
//! Every run is checked against two independent answers: a file replay of the same payloads
//! (the oracle), and the generator's own account of what each customer bought (the truth).
//! Exactly-once is checked on the dead-letter topic too: each bad record once, with its source
//! position, even across SIGKILL.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::TimeZone;
use common::kafka::*;
use common::*;
use patron_synth::{Generator, SynthConfig, SynthEvent};

/// About 12 events per customer: the valid stream, with 1% bad lines, 1% producer duplicates
/// and 10% Segment Spec messages, all in the past.
fn synth(seed: u64, customers: u64) -> SynthConfig {
    SynthConfig {
        customers,
        days: 365,
        seed,
        start: chrono::Utc
            .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
            .single()
            .expect("a valid date"),
        bad_rate: 0.01,
        duplicate_rate: 0.01,
        segment_spec_rate: 0.1,
        ..SynthConfig::default()
    }
}

fn generate(cfg: &SynthConfig) -> Vec<SynthEvent> {
    let events: Vec<SynthEvent> = Generator::new(cfg.clone()).collect();
    assert!(
        events.iter().any(|e| e.duplicate) && events.iter().any(|e| e.expected_reject.is_some()),
        "the data set has duplicates and bad lines"
    );
    events
}

/// What a serve run ended with: its last status, and the dead-letter topic's records.
struct RunEnd {
    status: serde_json::Value,
    letters: Vec<Record>,
}

/// The end state of a serve run equals the file replay and the truth, each bad event is
/// dead-lettered once, and the counters agree. `positions[i]` is where `events[i]` went.
fn assert_final_state(
    dir: &std::path::Path,
    setup: &ServeSetup,
    end: &RunEnd,
    cfg: &SynthConfig,
    events: &[SynthEvent],
    positions: &[Position],
) {
    let oracle = file_oracle(dir, events);
    let actual = query_csv(&setup.store, CUSTOMERS_SQL);
    assert_same_customers(&actual, &oracle.customers_csv, "serve vs file replay");
    assert_matches_truth(&actual, cfg);
    assert_dead_letters(&end.letters, events, positions, &setup.topic);
    assert_counters(&end.status, &oracle, events);
}

#[test]
fn producer_and_oracle() {
    let dir = test_dir();
    let broker = Broker::memory();
    let setup = ServeSetup::kafka(dir.path(), &broker);
    let cfg = synth(101, 2_000);
    let events = generate(&cfg);
    assert!(events.len() > 20_000, "{} events", events.len());

    let mut serve = setup.start();
    assert_eq!(serve.get("/healthz").unwrap().0, 200, "/healthz");
    serve.wait_code("/readyz", 200);
    let positions = produce(&broker.bootstrap(), &setup.topic, &events);
    let status = serve.wait_caught_up(&TopicEnds::of(&positions));
    serve.terminate();

    assert_broker_holds(&broker.bootstrap(), &setup.topic, &events, &positions);
    let letters = read_dead_letters(&broker.bootstrap(), &setup.dlq_topic);
    let end = RunEnd { status, letters };
    assert_final_state(dir.path(), &setup, &end, &cfg, &events, &positions);
}

/// Kills (SIGKILL) that must land while serve is ingesting (DESIGN.md, Targets: crash safety).
const KILLS: usize = 20;

#[test]
fn crash_loop() {
    let dir = test_dir();
    let broker = Broker::memory();
    let setup = ServeSetup::kafka(dir.path(), &broker);
    // The group hands a killed instance's partitions to its restart after this long.
    setup.set_session_timeout(SHORT_SESSION);
    let cfg = synth(202, 2_000);
    let events = generate(&cfg);
    let total = events.len() as u64;

    let mut serve = setup.start();
    // Records serve had processed (applied, rejected or duplicate) just before each kill.
    let mut processed_at_kill: Vec<Option<u64>> = Vec::new();
    // Kills that landed mid-ingest: serve had made progress since the previous kill and had
    // not yet seen everything. The producer reads `landed`, a copy.
    let mut mid_ingest = 0;
    let landed = AtomicUsize::new(0);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let bootstrap = broker.bootstrap();
    let (positions, mut serve) = std::thread::scope(|s| {
        // Produces 100 records every 100 ms, but never more than (landed kills + 1) / (KILLS + 1)
        // of them: every kill until the last then has new records to interrupt, and the end of
        // the topic comes only after them, however fast or slow the machine restarts serve.
        let producer = s.spawn(|| {
            let mut p = EventProducer::new(&bootstrap, &setup.topic);
            let chunks: Vec<_> = events.chunks(100).collect();
            for (k, chunk) in chunks.iter().enumerate() {
                while k * (KILLS + 1) >= (landed.load(Ordering::SeqCst) + 1) * chunks.len() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                p.send(chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
            p.finish()
        });
        // Frees the producer when the kills end, by panic too (the scope joins it).
        let release = ReleaseOnDrop(&landed);
        while mid_ingest < KILLS && processed_at_kill.len() < 2 * KILLS {
            // A restarted serve waits for the group to hand it partitions (tansu keeps a
            // killed member's partitions for the session timeout); kill only once it commits
            // progress again, at a random moment after that.
            let before = processed_at_kill.last().copied().flatten().unwrap_or(0);
            wait_progress(&serve, before, total);
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            std::thread::sleep(Duration::from_millis(rng % 400));
            let now = processed(&serve);
            processed_at_kill.push(now);
            serve.kill();
            if now.is_some_and(|n| n > before && n < total) {
                mid_ingest += 1;
                landed.store(mid_ingest, Ordering::SeqCst);
            }
            serve = setup.start();
        }
        drop(release);
        (producer.join().expect("the producer thread"), serve)
    });

    let status = serve.wait_caught_up(&TopicEnds::of(&positions));
    serve.terminate();

    assert_broker_holds(&broker.bootstrap(), &setup.topic, &events, &positions);
    let letters = read_dead_letters(&broker.bootstrap(), &setup.dlq_topic);
    let end = RunEnd { status, letters };
    assert_final_state(dir.path(), &setup, &end, &cfg, &events, &positions);

    // The test proves something only if the kills interrupted ingest.
    assert!(
        mid_ingest >= KILLS,
        "only {mid_ingest} of {} kills landed mid-ingest; records processed at each kill: \
         {processed_at_kill:?} of {total}",
        processed_at_kill.len()
    );
}

/// Sets the crash loop's count of landed kills to [`KILLS`] when dropped, which lets its
/// producer send everything.
struct ReleaseOnDrop<'a>(&'a AtomicUsize);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(KILLS, Ordering::SeqCst);
    }
}

/// Records serve has committed (applied, rejected or duplicate), per `/v1/status`.
fn processed(serve: &Serve) -> Option<u64> {
    let st = serve.status().ok()?;
    let n = |k: &str| st[k].as_u64();
    Some(n("applied")? + n("rejected")? + n("duplicates")?)
}

/// Waits (up to 90 s) until serve has committed more than `before` records, or all `total`.
fn wait_progress(serve: &Serve, before: u64, total: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        if processed(serve).is_some_and(|n| n > before || n >= total) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "serve committed nothing past {before} records within 90 s\n{}\nits log without CLV refit lines:\n{}",
        serve.diagnostics(),
        log_without_refits(serve)
    );
}

/// The last 60 lines of every start's stderr except the CLV refit's (once a second here).
fn log_without_refits(serve: &Serve) -> String {
    let text = std::fs::read_to_string(&serve.stderr_log).unwrap_or_default();
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("CLV refit")).collect();
    kept[kept.len().saturating_sub(60)..].join("\n")
}

#[test]
fn broker_restart() {
    let dir = test_dir();
    let mut broker = Broker::sqlite();
    let setup = ServeSetup::kafka(dir.path(), &broker);
    let cfg = synth(303, 1_000);
    let events = generate(&cfg);
    let (first, second) = events.split_at(events.len() / 2);

    let mut positions = produce(&broker.bootstrap(), &setup.topic, first);
    let mut serve = setup.start();
    serve.wait_code("/readyz", 200);
    broker.stop();
    serve.wait_code("/readyz", 503);
    broker.restart();
    serve.wait_code("/readyz", 200);
    positions.extend(produce(&broker.bootstrap(), &setup.topic, second));
    let status = serve.wait_caught_up(&TopicEnds::of(&positions));
    serve.terminate();

    assert_broker_holds(&broker.bootstrap(), &setup.topic, &events, &positions);
    let letters = read_dead_letters(&broker.bootstrap(), &setup.dlq_topic);
    let end = RunEnd { status, letters };
    assert_final_state(dir.path(), &setup, &end, &cfg, &events, &positions);
}

fn purchase(event_id: &str, customer: &str, ts: &str, amount: &str) -> SynthEvent {
    let payload = format!(
        r#"{{"event_id":"{event_id}","type":"purchase","ts":"{ts}","customer_id":"{customer}","amount":{amount}}}"#
    );
    SynthEvent {
        ts_millis: chrono::DateTime::parse_from_rfc3339(ts)
            .expect("an RFC 3339 ts")
            .timestamp_millis(),
        key: customer.to_owned(),
        payload: payload.into_bytes(),
        expected_reject: None,
        duplicate: false,
    }
}

#[test]
fn duplicates() {
    let dir = test_dir();
    let broker = Broker::memory();
    let setup = ServeSetup::kafka(dir.path(), &broker);
    let twice = purchase("dup-e2", "dup-alice", "2025-03-05T10:00:00Z", "25.50");
    let events = vec![
        purchase("dup-e1", "dup-alice", "2025-03-01T10:00:00Z", "10.00"),
        twice.clone(),
        purchase("dup-e3", "dup-bob", "2025-03-02T09:30:00Z", "7"),
        // The producer sends it again: a new offset, the same event_id.
        twice,
    ];

    let mut serve = setup.start();
    let positions = produce(&broker.bootstrap(), &setup.topic, &events);
    assert_eq!(
        positions[1].partition, positions[3].partition,
        "one key, one partition"
    );
    let status = serve.wait_caught_up(&TopicEnds::of(&positions));
    serve.terminate();
    assert_eq!(status["duplicates"].as_u64(), Some(1), "{status:#}");
    assert_eq!(status["applied"].as_u64(), Some(3), "{status:#}");
    assert_eq!(status["rejected"].as_u64(), Some(0), "{status:#}");

    let rows = parse_csv(&query_csv(
        &setup.store,
        "SELECT customer_id, frequency, monetary FROM customers ORDER BY customer_id",
    ));
    let got: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["customer_id"].clone(),
                r["frequency"].clone(),
                micros(&r["monetary"]),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("dup-alice".to_owned(), "2".to_owned(), 35_500_000),
            ("dup-bob".to_owned(), "1".to_owned(), 7_000_000),
        ]
    );
}

#[test]
fn embedded_broker() {
    let dir = test_dir();
    let setup = ServeSetup::embedded(dir.path());
    let cfg = synth(505, 1_000);
    let events = generate(&cfg);

    let mut serve = setup.start();
    let bootstrap = serve.wait_line("Kafka bootstrap: ").trim().to_owned();
    let positions = produce(&bootstrap, &setup.topic, &events);
    let status = serve.wait_caught_up(&TopicEnds::of(&positions));
    // The embedded log dies with serve: read the dead letters first.
    let letters = read_dead_letters(&bootstrap, &setup.dlq_topic);
    // serve refits the CLV models in the background ([clv] refit_interval = 1s here).
    serve.wait_code("/v1/model", 200);
    let (_, model) = serve.get("/v1/model").expect("GET /v1/model");
    let model: serde_json::Value = serde_json::from_str(&model).expect("model JSON");
    assert!(
        model["bgnbd"]["params"]["r"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "a fitted BG/NBD model: {model:#}"
    );
    serve.terminate();

    let end = RunEnd { status, letters };
    assert_final_state(dir.path(), &setup, &end, &cfg, &events, &positions);
}

#[test]
fn replay_from_kafka() {
    let dir = test_dir();
    let broker = Broker::memory();
    let topic = unique("t-replay");
    broker.create_topic(&topic, 4);
    let cfg = synth(606, 1_000);
    let events = generate(&cfg);
    produce(&broker.bootstrap(), &topic, &events);

    let store = dir.path().join("from-kafka.redb");
    let replay = || {
        run_ok(&[
            "replay",
            "--from-kafka",
            "--brokers",
            &broker.bootstrap(),
            "--topic",
            &topic,
            "--until-end",
            "--store",
            path_str(&store),
        ])
    };
    replay();
    let oracle = file_oracle(dir.path(), &events);
    let actual = query_csv(&store, CUSTOMERS_SQL);
    assert_same_customers(
        &actual,
        &oracle.customers_csv,
        "replay --from-kafka vs file",
    );
    assert_matches_truth(&actual, &cfg);

    // A second run reads from the stored offsets: nothing new, nothing applied twice.
    replay();
    assert_same_customers(
        &query_csv(&store, CUSTOMERS_SQL),
        &oracle.customers_csv,
        "a second replay --from-kafka",
    );
}

/// POST /v1/events to a real serve over tansu: valid events are produced and applied, invalid
/// ones are refused with the stream's reasons. Then DELETE erases the identity through the log,
/// and the same events posted again do not bring it back.
#[test]
fn event_intake_and_erasure() {
    let dir = test_dir();
    let broker = Broker::memory();
    let setup = ServeSetup::kafka(dir.path(), &broker);
    let mut serve = setup.start();
    serve.wait_code("/readyz", 200);

    let batch = [
        r#"{"type":"interaction","event_id":"in-1","ts":"2025-03-01T10:00:00Z","anonymous_id":"in-anon","kind":"page_view"}"#,
        r#"{"type":"identify","event_id":"in-2","ts":"2025-03-01T10:05:00Z","customer_id":"in-erin","anonymous_id":"in-anon"}"#,
        r#"{"type":"purchase","event_id":"in-3","ts":"2025-03-02T09:00:00Z","customer_id":"in-erin","amount":"20.00"}"#,
        r#"{"type":"purchase","event_id":"in-4","ts":"2025-03-09T09:00:00Z","customer_id":"in-erin","amount":12.5}"#,
        r#"{"type":"purchase","event_id":"in-5","ts":"2025-03-09T09:00:00Z","customer_id":"in-erin","amount":-3}"#,
        r#"{"type":"purchase", oops"#,
    ]
    .join("\n");
    let (code, body) = serve.send("POST", "/v1/events", Some(&batch));
    assert_eq!(code, 200, "{body:#}");
    assert_eq!(
        (body["accepted"].as_u64(), body["rejected"].as_u64()),
        (Some(4), Some(2)),
        "{body:#}"
    );
    let results = body["results"].as_array().expect("results");
    assert_eq!(results[4]["error"]["code"], "invalid_amount", "{body:#}");
    assert_eq!(results[5]["error"]["code"], "malformed_json", "{body:#}");
    let landed = |body: &serde_json::Value| {
        let positions: Vec<Position> = body["results"]
            .as_array()
            .expect("results")
            .iter()
            .filter(|r| r["status"] == "accepted")
            .map(|r| Position {
                partition: r["partition"].as_i64().expect("partition") as i32,
                offset: r["offset"].as_i64().expect("offset"),
            })
            .collect();
        positions
    };
    let mut positions = landed(&body);
    serve.wait_caught_up(&TopicEnds::of(&positions));

    let (code, erin) = serve.send("GET", "/v1/customers/in-anon", None);
    assert_eq!(code, 200, "{erin:#}");
    assert_eq!(erin["customer_id"], "in-erin");
    assert_eq!(erin["frequency"], 2);
    assert_eq!(erin["monetary"].as_f64(), Some(32.5));
    assert_eq!(erin["aliases"], serde_json::json!(["in-anon"]));

    // Erase by the alias: the whole identity goes, committed before the answer.
    let (code, erased) = serve.send("DELETE", "/v1/customers/in-anon", None);
    assert_eq!(code, 200, "{erased:#}");
    assert_eq!(erased["erased"], true);
    assert_eq!(erased["ids"], serde_json::json!(["in-anon", "in-erin"]));
    for id in ["in-erin", "in-anon"] {
        let (code, _) = serve.send("GET", &format!("/v1/customers/{id}"), None);
        assert_eq!(code, 404, "{id} is still there");
    }
    positions.push(Position {
        partition: erased["partition"].as_i64().expect("partition") as i32,
        offset: erased["offset"].as_i64().expect("offset"),
    });

    // The old events again (a replaying producer): accepted into the log, dropped on apply.
    let again = batch.lines().take(4).collect::<Vec<_>>().join("\n");
    let (code, body) = serve.send("POST", "/v1/events", Some(&again));
    assert_eq!(
        (code, body["accepted"].as_u64()),
        (200, Some(4)),
        "{body:#}"
    );
    positions.extend(landed(&body));
    let status = serve.wait_caught_up(&TopicEnds::of(&positions));
    assert_eq!(status["erasures"]["events_dropped"], 4, "{status:#}");
    assert_eq!(status["erasures"]["customers"], 1, "{status:#}");
    let (code, _) = serve.send("GET", "/v1/customers/in-erin", None);
    assert_eq!(code, 404, "the erased customer came back");
    let (code, body) = serve.send("DELETE", "/v1/customers/in-erin", None);
    assert_eq!(code, 404, "{body:#}");
    serve.terminate();
}
