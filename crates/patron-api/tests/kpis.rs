//! The monitoring routes on the Router (no network): KPIs, cohorts, history and objectives
//! worked out by hand from a handful of events, and segment exports read back with the arrow
//! and parquet crates.

mod common;

use std::sync::Arc;

use arrow::array::RecordBatch;
use axum::Router;
use axum::http::{Method, StatusCode};
use patron_api::auth::sha256_hex;
use patron_api::{ApiState, Auth};
use patron_core::config::toml_like::NumberOrString;
use patron_core::config::{ApiKeyConfig, ObjectiveConfig, PatronConfig, Role, SegmentConfig};
use patron_core::time::now_millis;
use patron_query::{Snapshot, SnapshotOptions};
use patron_store::Store;
use patron_stream::kafka::status::IngestStatus;
use serde_json::{Value, json};

const READER: &str = "reader-key";

fn config() -> PatronConfig {
    let mut cfg = PatronConfig {
        segments: vec![SegmentConfig {
            name: "big".into(),
            predicate: "monetary >= 150".into(),
        }],
        objectives: vec![
            ObjectiveConfig {
                name: "halve churn".into(),
                kpi: "churn_rate".into(),
                baseline: 0.4,
                target: NumberOrString::Text("-50%".into()),
                deadline: "2026-05-01".into(),
                start: Some("2026-01-01".into()),
            },
            ObjectiveConfig {
                name: "grow".into(),
                kpi: "customers".into(),
                baseline: 2.0,
                target: NumberOrString::Number(10.0),
                deadline: "2026-12-31".into(),
                start: None,
            },
        ],
        ..PatronConfig::default()
    };
    cfg.api.keys = vec![ApiKeyConfig {
        name: "r".into(),
        role: Role::Reader,
        sha256: sha256_hex(READER),
    }];
    cfg
}

/// alice: 100 on 1 Jan, 50 on 1 Feb, 30 on 1 Mar, two page views on 10 Mar. bob: 20 on 15 Jan.
/// carol: 500 on 10 Feb and 10 Mar (the newest event, so as_of = 2026-03-10T12:00Z).
/// dave: one email open (a prospect). Plus an offer shown and accepted for carol.
fn events() -> Vec<Value> {
    vec![
        json!({"event_id": "e1", "type": "purchase", "ts": "2026-01-01T12:00:00Z", "customer_id": "alice", "amount": 100}),
        json!({"event_id": "e2", "type": "purchase", "ts": "2026-02-01T12:00:00Z", "customer_id": "alice", "amount": 50}),
        json!({"event_id": "e3", "type": "purchase", "ts": "2026-03-01T12:00:00Z", "customer_id": "alice", "amount": "30.00"}),
        json!({"event_id": "e5", "type": "interaction", "ts": "2026-03-10T12:00:00Z", "customer_id": "alice", "kind": "page_view"}),
        json!({"event_id": "e6", "type": "interaction", "ts": "2026-03-10T12:00:00Z", "customer_id": "alice", "kind": "page_view"}),
        json!({"event_id": "e8", "type": "purchase", "ts": "2026-01-15T12:00:00Z", "customer_id": "bob", "amount": 20}),
        json!({"event_id": "e9", "type": "purchase", "ts": "2026-02-10T12:00:00Z", "customer_id": "carol", "amount": 500}),
        json!({"event_id": "e10", "type": "purchase", "ts": "2026-03-10T12:00:00Z", "customer_id": "carol", "amount": 500}),
        json!({"event_id": "e11", "type": "interaction", "ts": "2026-02-20T12:00:00Z", "customer_id": "dave", "kind": "email_open"}),
        json!({"event_id": "e12", "type": "interaction", "ts": "2026-03-09T12:00:00Z", "customer_id": "carol", "kind": "offer_shown", "offer_id": "o1"}),
        json!({"event_id": "e13", "type": "interaction", "ts": "2026-03-09T12:00:00Z", "customer_id": "carol", "kind": "offer_shown", "offer_id": "o2"}),
        json!({"event_id": "e14", "type": "interaction", "ts": "2026-03-09T13:00:00Z", "customer_id": "carol", "kind": "offer_accepted", "offer_id": "o1"}),
    ]
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    app: Router,
}

fn fixture(cfg: PatronConfig, events: &[Value]) -> Fixture {
    let payloads: Vec<Vec<u8>> = events.iter().map(|e| e.to_string().into_bytes()).collect();
    let (dir, store) = common::store_with(&cfg, &payloads);
    Fixture {
        _dir: dir,
        store: store.clone(),
        app: common::app(store, cfg, Default::default()),
    }
}

async fn get_raw(app: &Router, uri: &str) -> (StatusCode, String, Vec<u8>) {
    common::request(app, Method::GET, uri, Some(READER), None, None).await
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let (status, _, bytes) = get_raw(app, uri).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn close(actual: &Value, expected: f64) -> bool {
    actual
        .as_f64()
        .is_some_and(|a| (a - expected).abs() <= 1e-9 * expected.abs().max(1.0))
}

#[tokio::test]
async fn kpis_match_a_hand_computation() {
    let f = fixture(config(), &events());
    let (status, k) = get(&f.app, "/v1/kpis").await;
    assert_eq!(status, StatusCode::OK, "{k}");
    assert_eq!(k["as_of"], "2026-03-10T12:00:00Z");
    assert!(k["computed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(k["customers"], 3);
    assert_eq!(k["prospects"], 1);
    // Last purchases 9, 54 and 0 days before as_of: all within 90 days.
    assert_eq!(k["active_customers"], 3);
    // The window is 9 Feb ..= 10 Mar: carol's two purchases and alice's third.
    assert_eq!(k["orders_30d"], 3);
    assert_eq!(k["revenue_30d"], 1030.0);
    assert_eq!(k["new_customers_30d"], 1);
    // 1200 over 6 orders.
    assert_eq!(k["avg_order_value"], 200.0);
    assert!(close(&k["repeat_purchase_rate"], 2.0 / 3.0), "{k}");
    // Active in February: alice and carol; both again in March.
    assert_eq!(k["retention_rate"], 1.0);
    assert_eq!(k["churn_rate"], 0.0);
    assert_eq!(k["conversion_rate"], 0.75);
    assert_eq!(k["offer_acceptance_rate_30d"], 0.5);
    assert_eq!(k["offer_uplift"], Value::Null);
    // No CLV model fitted.
    assert_eq!(k["predicted_churn_rate"], Value::Null);
    assert_eq!(k["avg_clv"], Value::Null);
    assert_eq!(k["total_clv"], Value::Null);
    assert_eq!(k["segments"]["At Risk"], 1);
    assert_eq!(k["segments"]["Potential Loyalists"], 1);
    assert_eq!(k["segments"]["Lost"], 1);
    assert_eq!(k["segments"]["Prospect"], 1);
    assert_eq!(k["segments"]["Champions"], 0);
    let mut grid = vec![vec![0u64; 5]; 5];
    grid[1][3] = 1; // alice: R 2, F 4
    grid[3][1] = 1; // carol: R 4, F 2
    grid[0][0] = 1; // bob: R 1, F 1
    assert_eq!(k["rfm_grid"], json!(grid));
}

#[tokio::test]
async fn cohorts_history_and_objectives() {
    let f = fixture(config(), &events());
    let (status, c) = get(&f.app, "/v1/kpis/cohorts").await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(
        c["cohorts"],
        json!([
            {"cohort": "2026-01", "customers": 2, "retention": [1.0, 0.5, 0.5]},
            {"cohort": "2026-02", "customers": 1, "retention": [1.0, 1.0]},
        ])
    );
    assert_eq!(c["as_of"], "2026-03-10T12:00:00Z");

    let (status, h) = get(&f.app, "/v1/kpis/history?days=3").await;
    assert_eq!(status, StatusCode::OK, "{h}");
    let days = h["days"].as_array().unwrap();
    let dates: Vec<&str> = days.iter().map(|d| d["date"].as_str().unwrap()).collect();
    assert_eq!(dates, ["2026-03-08", "2026-03-09", "2026-03-10"]);
    assert_eq!(days[0]["orders"], 0);
    assert_eq!(days[0]["customers"], 3);
    assert_eq!(days[1]["offers_shown"], 2);
    assert_eq!(days[1]["offers_accepted"], 1);
    assert_eq!(days[1]["interactions"], 3);
    assert_eq!(days[2]["orders"], 1);
    assert_eq!(days[2]["revenue"], 500.0);
    assert_eq!(days[2]["avg_order_value"], 500.0);
    assert_eq!(days[2]["interactions"], 2);
    assert_eq!(days[2]["revenue_30d"], 1030.0);
    assert_eq!(days[0]["revenue_30d"], 530.0);
    // The whole history starts at the first day with data.
    let (_, all) = get(&f.app, "/v1/kpis/history?days=3660").await;
    let all = all["days"].as_array().unwrap();
    assert_eq!(all.len(), 69);
    assert_eq!(all[0]["date"], "2026-01-01");
    assert_eq!(all[0]["new_customers"], 1);
    for bad in ["days=0", "days=3661", "days=x"] {
        let (status, body) = get(&f.app, &format!("/v1/kpis/history?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"]["code"].is_string());
    }

    let (status, o) = get(&f.app, "/v1/objectives").await;
    assert_eq!(status, StatusCode::OK, "{o}");
    let churn = &o["objectives"][0];
    assert_eq!(churn["name"], "halve churn");
    assert_eq!(churn["current"], 0.0);
    assert!(close(&churn["target"], 0.2), "{churn}");
    // (0 − 0.4) / (0.2 − 0.4)
    assert!(close(&churn["progress"], 2.0), "{churn}");
    // 68.5 of 120 days along the line from 0.4 to 0.2.
    assert!(
        close(&churn["expected"], 0.4 - 0.2 * 68.5 / 120.0),
        "{churn}"
    );
    assert_eq!(churn["on_track"], true);
    assert_eq!(churn["deadline"], "2026-05-01T00:00:00Z");
    let grow = &o["objectives"][1];
    assert_eq!(grow["current"], 3.0);
    assert_eq!(grow["progress"], 0.125);
    // No start: the line starts on the first day with data.
    assert_eq!(grow["start"], "2026-01-01T00:00:00Z");
    assert!(close(&grow["expected"], 2.0 + 8.0 * 68.5 / 364.0), "{grow}");
    assert_eq!(grow["on_track"], false);
}

#[tokio::test]
async fn an_empty_store_has_null_rates_and_no_rows() {
    let f = fixture(config(), &[]);
    let (status, k) = get(&f.app, "/v1/kpis").await;
    assert_eq!(status, StatusCode::OK, "{k}");
    assert_eq!(k["as_of"], Value::Null);
    assert_eq!(k["customers"], 0);
    for rate in [
        "avg_order_value",
        "repeat_purchase_rate",
        "retention_rate",
        "churn_rate",
        "conversion_rate",
        "offer_acceptance_rate_30d",
    ] {
        assert_eq!(k[rate], Value::Null, "{rate}");
    }
    let (_, c) = get(&f.app, "/v1/kpis/cohorts").await;
    assert_eq!(c["cohorts"], json!([]));
    let (_, h) = get(&f.app, "/v1/kpis/history").await;
    assert_eq!(h["days"], json!([]));
    let (_, o) = get(&f.app, "/v1/objectives").await;
    assert_eq!(o["objectives"][0]["current"], Value::Null);
    assert_eq!(o["objectives"][0]["on_track"], Value::Null);
}

/// The `customers` rows of one segment, as the export should hold them.
fn segment_rows(store: &Store, cfg: &PatronConfig, segment: &str) -> RecordBatch {
    let snap = Snapshot::build(store, &SnapshotOptions::from_config(cfg)).unwrap();
    let all = arrow::compute::concat_batches(
        &patron_query::snapshot::customers_schema(),
        &snap.customers,
    )
    .unwrap();
    let engine_rows: Vec<usize> = {
        use arrow::array::{Array, AsArray};
        let rfm = all
            .column_by_name("rfm_segment")
            .unwrap()
            .as_string::<i32>();
        let lists = all.column_by_name("segments").unwrap().as_list::<i32>();
        (0..all.num_rows())
            .filter(|&i| {
                rfm.value(i) == segment || {
                    let l = lists.value(i);
                    let s = l.as_string::<i32>();
                    (0..s.len()).any(|j| s.value(j) == segment)
                }
            })
            .collect()
    };
    let idx =
        arrow::array::UInt32Array::from(engine_rows.iter().map(|&i| i as u32).collect::<Vec<_>>());
    arrow::compute::take_record_batch(&all, &idx).unwrap()
}

#[tokio::test]
async fn segment_exports_round_trip_through_parquet_and_csv() {
    let cfg = config();
    let f = fixture(cfg.clone(), &events());
    for segment in ["big", "Prospect", "Champions"] {
        let expected = segment_rows(&f.store, &cfg, segment);
        let uri = format!("/v1/segments/{segment}/export?format=parquet");
        let (status, ctype, bytes) = get_raw(&f.app, &uri).await;
        assert_eq!(status, StatusCode::OK, "{segment}");
        assert_eq!(ctype, "application/vnd.apache.parquet");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            axum::body::Bytes::from(bytes),
        )
        .unwrap()
        .build()
        .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        let got = arrow::compute::concat_batches(&expected.schema(), &batches).unwrap();
        assert_eq!(got, expected, "{segment} parquet");

        let uri = format!("/v1/segments/{segment}/export?format=csv");
        let (status, ctype, bytes) = get_raw(&f.app, &uri).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/csv"), "{ctype}");
        let flat = patron_query::output::flatten_lists(&expected).unwrap();
        let mut reader = arrow::csv::ReaderBuilder::new(flat.schema())
            .with_header(true)
            .build(std::io::Cursor::new(bytes.to_vec()))
            .unwrap();
        let got = match reader.next() {
            Some(b) => b.unwrap(),
            None => RecordBatch::new_empty(flat.schema()),
        };
        assert!(reader.next().is_none());
        assert_eq!(got, flat, "{segment} csv");
    }
    let big = segment_rows(&f.store, &cfg, "big");
    assert_eq!(big.num_rows(), 2, "alice and carol");

    let (status, body) = get(&f.app, "/v1/segments/nope/export").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = get(&f.app, "/v1/segments/big/export?format=xlsx").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_format");
}

#[tokio::test]
async fn openapi_documents_the_monitoring_routes() {
    let f = fixture(config(), &[]);
    let (_, doc) = get(&f.app, "/openapi.json").await;
    for path in [
        "/v1/kpis",
        "/v1/kpis/cohorts",
        "/v1/kpis/history",
        "/v1/objectives",
        "/v1/segments/{name}/export",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} undocumented");
    }
    assert!(doc["components"]["schemas"]["KpisResponse"].is_object());
}

/// `docker/grafana-dashboard.json` only queries series that `/metrics` exports.
#[tokio::test]
async fn grafana_dashboard_queries_exported_metrics() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("t.redb")).unwrap();
    let ingest = Arc::new(IngestStatus::new("kafka:t", "t", "dlq"));
    // Families with labels appear once they have a series.
    ingest
        .metrics
        .rejected
        .get_or_create(&patron_stream::kafka::status::ReasonLabel {
            reason: "malformed_json".into(),
        })
        .inc();
    ingest
        .metrics
        .lag
        .get_or_create(&patron_stream::kafka::status::PartitionLabel { partition: 0 })
        .set(3);
    let state = ApiState::new(
        store,
        ingest,
        Auth::from_config(&cfg.api.keys).unwrap(),
        None,
    )
    .with_config(Arc::new(cfg));
    let app = patron_api::router(Arc::new(state));
    get(&app, "/healthz").await;
    let (status, _, text) = get_raw(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).unwrap();
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docker/grafana-dashboard.json"
    );
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("patron_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in &queried {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which /metrics does not export:\n{text}"
        );
    }
}

/// With the refresher running, the view (and the KPIs) are built before any request asks.
#[tokio::test]
async fn the_background_refresher_builds_the_view_before_requests() {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("t.redb")).unwrap();
    let state = Arc::new(
        ApiState::new(
            store,
            Arc::new(IngestStatus::new("kafka:t", "t", "dlq")),
            Auth::from_config(&cfg.api.keys).unwrap(),
            None,
        )
        .with_config(Arc::new(cfg)),
    );
    let refresher = tokio::spawn(patron_api::kpis::keep_view_fresh(state.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let asked = now_millis();
    let (status, k) = get(&patron_api::router(state), "/v1/kpis").await;
    assert_eq!(status, StatusCode::OK);
    let computed = patron_core::time::parse_rfc3339(k["computed_at"].as_str().unwrap()).unwrap();
    assert!(computed < asked, "built in the background: {k}");
    refresher.abort();
}
