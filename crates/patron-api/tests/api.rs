//! Handler tests on the Router (no network): every route's success, 404 and validation
//! errors, the role matrix, SQL refusals and limits. The store is built by applying events
//! with the real applier; expected values are worked out by hand from those events.

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode};
use patron_api::QueryLimits;
use patron_api::auth::sha256_hex;
use patron_core::config::{ApiKeyConfig, PatronConfig, Role, SegmentConfig};
use serde_json::{Value, json};

const READER: &str = "reader-key";
const MARKETING: &str = "marketing-key";
const INGEST: &str = "ingest-key";
const ADMIN: &str = "admin-key";

fn config() -> PatronConfig {
    let mut cfg = PatronConfig {
        segments: vec![SegmentConfig {
            name: "big".into(),
            predicate: "monetary >= 150".into(),
        }],
        ..PatronConfig::default()
    };
    cfg.api.keys = [
        ("r", Role::Reader, READER),
        ("m", Role::Marketing, MARKETING),
        ("i", Role::Ingest, INGEST),
        ("a", Role::Admin, ADMIN),
    ]
    .into_iter()
    .map(|(name, role, key)| ApiKeyConfig {
        name: name.into(),
        role,
        sha256: sha256_hex(key),
    })
    .collect();
    cfg
}

/// alice: 3 purchases (100, 50, 30), traits, 2 page views at as_of, alias anon-1.
/// bob: 1 purchase (20). carol: 2 purchases (500, 500), last one is the newest event.
/// dave: only an interaction (a prospect).
fn events() -> Vec<Value> {
    vec![
        json!({"event_id": "e1", "type": "purchase", "ts": "2026-01-01T12:00:00Z", "customer_id": "alice",
               "amount": 100, "items": [{"sku": "s1", "category": "shoes", "quantity": 1, "unit_price": 100}]}),
        json!({"event_id": "e2", "type": "purchase", "ts": "2026-02-01T12:00:00Z", "customer_id": "alice", "amount": 50}),
        json!({"event_id": "e3", "type": "purchase", "ts": "2026-03-01T12:00:00Z", "customer_id": "alice", "amount": "30.00"}),
        json!({"event_id": "e4", "type": "identify", "ts": "2026-01-02T12:00:00Z", "customer_id": "alice", "traits": {"tier": "gold"}}),
        json!({"event_id": "e5", "type": "interaction", "ts": "2026-03-10T12:00:00Z", "customer_id": "alice", "kind": "page_view"}),
        json!({"event_id": "e6", "type": "interaction", "ts": "2026-03-10T12:00:00Z", "customer_id": "alice", "kind": "page_view"}),
        json!({"event_id": "e7", "type": "alias", "ts": "2026-01-03T12:00:00Z", "customer_id": "alice", "previous_id": "anon-1"}),
        json!({"event_id": "e8", "type": "purchase", "ts": "2026-01-15T12:00:00Z", "customer_id": "bob", "amount": 20}),
        json!({"event_id": "e9", "type": "purchase", "ts": "2026-02-10T12:00:00Z", "customer_id": "carol", "amount": 500}),
        json!({"event_id": "e10", "type": "purchase", "ts": "2026-03-10T12:00:00Z", "customer_id": "carol", "amount": 500}),
        json!({"event_id": "e11", "type": "interaction", "ts": "2026-02-20T12:00:00Z", "customer_id": "dave", "kind": "email_open"}),
    ]
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    store: patron_store::Store,
}

fn fixture_with(cfg: PatronConfig, events: &[Value], limits: QueryLimits) -> Fixture {
    let payloads: Vec<Vec<u8>> = events.iter().map(|e| e.to_string().into_bytes()).collect();
    fixture_from(cfg, &payloads, limits)
}

fn fixture_from(cfg: PatronConfig, payloads: &[Vec<u8>], limits: QueryLimits) -> Fixture {
    let (dir, store) = common::store_with(&cfg, payloads);
    Fixture {
        _dir: dir,
        app: common::app(store.clone(), cfg, limits),
        store,
    }
}

fn fixture() -> Fixture {
    fixture_with(config(), &events(), QueryLimits::default())
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (status, _, bytes) =
        common::request(app, method, uri, key, body.map(|b| b.to_string()), None).await;
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

/// POST `/v1/query` as admin.
async fn admin_query(app: &Router, sql: impl Into<String>) -> (StatusCode, Value) {
    let sql: String = sql.into();
    call(
        app,
        Method::POST,
        "/v1/query",
        Some(ADMIN),
        Some(json!({ "sql": sql })),
    )
    .await
}

/// PUT an offer into the catalog as admin.
async fn put_offer(app: &Router, id: &str, body: Value) -> (StatusCode, Value) {
    call(
        app,
        Method::PUT,
        &format!("/v1/offers/catalog/{id}"),
        Some(ADMIN),
        Some(body),
    )
    .await
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn profile_has_state_scores_segments_and_aliases() {
    let f = fixture();
    let (status, p) = call(
        &f.app,
        Method::GET,
        "/v1/customers/alice",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["customer_id"], "alice");
    assert_eq!(p["aliases"], json!(["anon-1"]));
    assert_eq!(p["frequency"], 3);
    assert_eq!(p["monetary"], 180.0);
    assert_eq!(p["avg_order_value"], 60.0);
    assert_eq!(p["first_purchase"], "2026-01-01T12:00:00Z");
    assert_eq!(p["last_purchase"], "2026-03-01T12:00:00Z");
    // as_of is the newest event (carol's second purchase): 9 days after alice's last.
    assert_eq!(p["as_of"], "2026-03-10T12:00:00Z");
    assert_eq!(p["recency_days"], 9.0);
    // Among alice, bob, carol: R worse = {bob} -> 1 + 5/3 = 2; F worse = {bob, carol} -> 4;
    // M worse = {bob} -> 2. (2, 4) is At Risk.
    assert_eq!(
        (
            p["r_score"].clone(),
            p["f_score"].clone(),
            p["m_score"].clone()
        ),
        (json!(2), json!(4), json!(2))
    );
    assert_eq!(p["rfm_segment"], "At Risk");
    assert_eq!(p["segments"], json!(["big"]));
    assert_eq!(p["traits"], json!({"tier": "gold"}));
    // Both page views are at as_of: no decay.
    assert_eq!(p["engagement"]["page_view"], 2.0);
    assert_eq!(p["affinity"][0]["category"], "shoes");
    // No model fitted yet.
    assert_eq!(p["clv"], Value::Null);
    assert_eq!(p["p_alive"], Value::Null);

    // The alias resolves to the same profile.
    let (status, a) = call(
        &f.app,
        Method::GET,
        "/v1/customers/anon-1",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a["customer_id"], "alice");

    let (_, c) = call(
        &f.app,
        Method::GET,
        "/v1/customers/carol",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(
        (
            c["r_score"].clone(),
            c["f_score"].clone(),
            c["m_score"].clone()
        ),
        (json!(4), json!(2), json!(4))
    );
    assert_eq!(c["rfm_segment"], "Potential Loyalists");
    assert_eq!(c["recency_days"], 0.0);
    let (_, b) = call(&f.app, Method::GET, "/v1/customers/bob", Some(READER), None).await;
    assert_eq!(b["rfm_segment"], "Lost");
    assert_eq!(b["segments"], json!([]));
    let (_, d) = call(
        &f.app,
        Method::GET,
        "/v1/customers/dave",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(d["rfm_segment"], "Prospect");
    assert_eq!(d["frequency"], 0);
    assert_eq!(d["r_score"], Value::Null);
}

#[tokio::test]
async fn cached_profiles_follow_every_commit() {
    let f = fixture();
    async fn get(app: &Router, id: &str) -> (StatusCode, Value) {
        call(
            app,
            Method::GET,
            &format!("/v1/customers/{id}"),
            Some(READER),
            None,
        )
        .await
    }
    let (status, first) = get(&f.app, "alice").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, again) = get(&f.app, "alice").await;
    assert_eq!(first, again);
    let (_, report) = call(&f.app, Method::GET, "/v1/status", Some(READER), None).await;
    assert!(
        report["profile_cache"]["enabled"].as_bool().unwrap(),
        "{report}"
    );
    assert!(
        report["profile_cache"]["hits"].as_u64().unwrap() >= 1,
        "{report}"
    );

    // A fourth purchase of 70 under alice's alias, committed after alice's profile was cached.
    let later = json!({"event_id": "e12", "type": "purchase", "ts": "2026-03-11T12:00:00Z",
                       "customer_id": "anon-1", "amount": 70});
    common::apply(&f.store, &config(), &[later.to_string().into_bytes()]);
    for id in ["alice", "anon-1"] {
        let (status, p) = get(&f.app, id).await;
        assert_eq!(status, StatusCode::OK, "{p}");
        assert_eq!(p["frequency"], 4, "{id}: {p}");
        assert_eq!(p["monetary"], 250.0, "{id}: {p}");
        assert_eq!(p["last_purchase"], "2026-03-11T12:00:00Z", "{id}: {p}");
        assert_eq!(p["as_of"], "2026-03-11T12:00:00Z", "{id}: {p}");
    }
}

#[tokio::test]
async fn unknown_customer_is_404_in_the_error_shape() {
    let f = fixture();
    let (status, body) = call(
        &f.app,
        Method::GET,
        "/v1/customers/nobody",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");
}

#[tokio::test]
async fn segments_list_counts_and_value() {
    let f = fixture();
    let (status, body) = call(&f.app, Method::GET, "/v1/segments", Some(READER), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seg = |name: &str| {
        body["segments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .clone()
    };
    assert_eq!(seg("big")["customers"], 2);
    assert_eq!(seg("big")["revenue"], 1180.0);
    assert_eq!(seg("big")["kind"], "user");
    assert_eq!(seg("At Risk")["customers"], 1);
    assert_eq!(seg("Lost")["revenue"], 20.0);
    assert_eq!(seg("Prospect")["customers"], 1);
    assert_eq!(seg("Champions")["customers"], 0);
}

#[tokio::test]
async fn segment_members_page_by_cursor() {
    let f = fixture();
    let (status, p1) = call(
        &f.app,
        Method::GET,
        "/v1/segments/big/customers?limit=1",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{p1}");
    assert_eq!(p1["customers"][0]["customer_id"], "alice");
    assert_eq!(p1["customers"].as_array().unwrap().len(), 1);
    assert_eq!(p1["next_cursor"], "alice");
    let (_, p2) = call(
        &f.app,
        Method::GET,
        "/v1/segments/big/customers?limit=1&cursor=alice",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(p2["customers"][0]["customer_id"], "carol");
    assert_eq!(p2["next_cursor"], Value::Null);
    let (_, all) = call(
        &f.app,
        Method::GET,
        "/v1/segments/Prospect/customers",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(all["customers"][0]["customer_id"], "dave");
    // An RFM segment with a space, percent-encoded.
    let (status, r) = call(
        &f.app,
        Method::GET,
        "/v1/segments/At%20Risk/customers",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["customers"][0]["customer_id"], "alice");

    let (status, body) = call(
        &f.app,
        Method::GET,
        "/v1/segments/nope/customers",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");
    for bad in ["limit=0", "limit=1001", "limit=abc"] {
        let (status, body) = call(
            &f.app,
            Method::GET,
            &format!("/v1/segments/big/customers?{bad}"),
            Some(READER),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"]["code"].is_string());
    }
}

#[tokio::test]
async fn query_returns_json_rows_and_arrow() {
    let f = fixture();
    let sql = json!({"sql": "SELECT customer_id, frequency FROM customers WHERE frequency > 0 ORDER BY customer_id"});
    let (status, body) = call(
        &f.app,
        Method::POST,
        "/v1/query",
        Some(ADMIN),
        Some(sql.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["columns"], json!(["customer_id", "frequency"]));
    assert_eq!(body["row_count"], 3);
    assert_eq!(
        body["rows"],
        json!([
            {"customer_id": "alice", "frequency": 3},
            {"customer_id": "bob", "frequency": 1},
            {"customer_id": "carol", "frequency": 2},
        ])
    );
    let (status, ctype, bytes) = common::request(
        &f.app,
        Method::POST,
        "/v1/query",
        Some(ADMIN),
        Some(sql.to_string()),
        Some("application/vnd.apache.arrow.stream"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "application/vnd.apache.arrow.stream");
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 3);
}

#[tokio::test]
async fn query_refuses_writes_and_files() {
    let f = fixture();
    for sql in [
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "COPY customers TO '/tmp/patron-api-copy.csv'",
        "INSERT INTO customers (customer_id) VALUES ('x')",
        "DROP TABLE customers",
        "SET datafusion.execution.batch_size = 1",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('/etc/passwd')",
        "not sql at all",
        "",
    ] {
        let (status, body) = admin_query(&f.app, sql).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sql}: {body}");
        assert!(body["error"]["code"].is_string(), "{sql}: {body}");
    }
    assert!(!std::path::Path::new("/tmp/patron-api-copy.csv").exists());
    for sql in [
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "COPY customers TO '/tmp/patron-api-copy.csv'",
        "INSERT INTO customers (customer_id) VALUES ('x')",
    ] {
        let (_, body) = admin_query(&f.app, sql).await;
        assert_error(&body, "refused");
    }
    // Bodies that are not {"sql": string}.
    for body in [
        json!({}),
        json!({"sql": 1}),
        json!({"sql": "SELECT 1", "x": 1}),
    ] {
        let (status, b) = call(
            &f.app,
            Method::POST,
            "/v1/query",
            Some(ADMIN),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {b}");
        assert_error(&b, "invalid_body");
    }
    let (status, _, bytes) = common::request(
        &f.app,
        Method::POST,
        "/v1/query",
        Some(ADMIN),
        Some("{not json".into()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&serde_json::from_slice(&bytes).unwrap(), "invalid_body");
}

#[tokio::test]
async fn query_row_and_time_limits() {
    let f = fixture_with(
        config(),
        &events(),
        QueryLimits {
            max_rows: 2,
            timeout: Duration::from_millis(300),
        },
    );
    let (status, body) = call(
        &f.app,
        Method::POST,
        "/v1/query",
        Some(ADMIN),
        Some(json!({"sql": "SELECT customer_id FROM customers"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "too_many_rows");
    let (status, body) = call(
        &f.app,
        Method::POST,
        "/v1/query",
        Some(ADMIN),
        Some(json!({"sql": "SELECT customer_id FROM customers ORDER BY customer_id LIMIT 2;"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["rows"],
        json!([{"customer_id": "alice"}, {"customer_id": "bob"}])
    );
    let (status, body) = call(
        &f.app,
        Method::POST,
        "/v1/query",
        Some(ADMIN),
        Some(json!({"sql": "SELECT count(*) FROM generate_series(1, 100000000000)"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "query_timeout");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let mut cfg = config();
    cfg.api.max_body_bytes = 64;
    let f = fixture_with(cfg, &events(), QueryLimits::default());
    let sql = format!("SELECT 1 -- {}", "x".repeat(200));
    let (status, body) = admin_query(&f.app, sql).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_error(&body, "payload_too_large");
}

/// Intake refuses a bad batch as a whole before it touches the broker: empty, not a JSON
/// array, over `max_batch`, over `max_body_bytes`; all in the error shape.
#[tokio::test]
async fn event_intake_refuses_bad_batches() {
    let mut cfg = config();
    cfg.api.max_batch = 2;
    cfg.api.max_body_bytes = 4096;
    let f = fixture_with(cfg, &events(), QueryLimits::default());
    let post = |body: String| {
        let app = f.app.clone();
        async move {
            let (status, _, bytes) = common::request(
                &app,
                Method::POST,
                "/v1/events",
                Some(INGEST),
                Some(body),
                None,
            )
            .await;
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    let (status, body) = post("  \n".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "empty_batch");
    let (status, body) = post("[{\"type\": \"purchase\"},".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "invalid_body");
    let three = "{}\n{}\n{}\n".to_owned();
    let (status, body) = post(three).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&body, "batch_too_large");
    let (status, body) = post(format!("[\"{}\"]", "x".repeat(5000))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&body, "payload_too_large");
    // A reader key may not ingest, and an ingest key may not read.
    let (status, _) = call(&f.app, Method::POST, "/v1/events", Some(READER), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &f.app,
        Method::GET,
        "/v1/customers/alice",
        Some(INGEST),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_error_shape() {
    let f = fixture();
    let (status, body) = call(&f.app, Method::GET, "/v1/nothing", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");
    let (status, body) = call(&f.app, Method::DELETE, "/v1/segments", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&body, "method_not_allowed");
}

/// A BG/NBD + Gamma-Gamma population from the synthetic generator, enough for both fits.
fn fit_payloads() -> Vec<Vec<u8>> {
    use chrono::TimeZone;
    let cfg = patron_synth::SynthConfig {
        customers: 300,
        days: 365,
        seed: 11,
        start: chrono::Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
        bad_rate: 0.0,
        duplicate_rate: 0.0,
        ..patron_synth::SynthConfig::default()
    };
    patron_synth::Generator::new(cfg)
        .filter(|e| e.expected_reject.is_none() && !e.duplicate)
        .map(|e| e.payload)
        .collect()
}

#[tokio::test]
async fn model_is_404_until_fitted_then_fit_scores_profiles() {
    let f = fixture_from(config(), &fit_payloads(), QueryLimits::default());
    let (status, body) = call(&f.app, Method::GET, "/v1/model", Some(READER), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");
    let (status, fit) = call(&f.app, Method::POST, "/v1/model/fit", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK, "{fit}");
    assert!(fit["bgnbd"]["log_likelihood"].is_number(), "{fit}");
    assert_eq!(fit["bgnbd"]["customers"], 300.0);
    let (status, model) = call(&f.app, Method::GET, "/v1/model", Some(READER), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(model["fitted_at"], fit["fitted_at"]);
    let (_, rows) = call(
        &f.app,
        Method::POST,
        "/v1/query",
        Some(ADMIN),
        Some(json!({"sql": "SELECT customer_id FROM customers WHERE frequency > 1 ORDER BY customer_id LIMIT 1"})),
    )
    .await;
    let id = rows["rows"][0]["customer_id"]
        .as_str()
        .expect("a repeat buyer")
        .to_owned();
    let (_, p) = call(
        &f.app,
        Method::GET,
        &format!("/v1/customers/{id}"),
        Some(READER),
        None,
    )
    .await;
    let p_alive = p["p_alive"].as_f64().expect("p_alive after a fit");
    assert!((0.0..=1.0).contains(&p_alive), "{p}");
    assert!(p["clv"].as_f64().unwrap() >= 0.0);

    let empty = fixture_with(config(), &[], QueryLimits::default());
    let (status, body) = call(&empty.app, Method::POST, "/v1/model/fit", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "no_data");
}

#[tokio::test]
async fn metrics_export_latency_quantiles_and_counts_per_route() {
    let f = fixture();
    call(
        &f.app,
        Method::GET,
        "/v1/customers/alice",
        Some(READER),
        None,
    )
    .await;
    call(
        &f.app,
        Method::GET,
        "/v1/customers/nobody",
        Some(READER),
        None,
    )
    .await;
    let (status, _, bytes) =
        common::request(&f.app, Method::GET, "/metrics", None, None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(bytes).unwrap();
    for q in ["0.5", "0.9", "0.99", "0.999"] {
        let line = format!(
            "patron_http_request_duration_seconds{{route=\"/v1/customers/{{id}}\",quantile=\"{q}\"}}"
        );
        assert!(text.contains(&line), "{line} missing in\n{text}");
    }
    assert!(
        text.contains("patron_http_requests_total{route=\"/v1/customers/{id}\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("patron_http_requests_total{route=\"/v1/customers/{id}\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"));
    let (_, status_body) = call(&f.app, Method::GET, "/v1/status", Some(READER), None).await;
    assert!(status_body["http"].is_array(), "{status_body}");
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let f = fixture();
    let (status, doc) = call(&f.app, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/status", "get"),
        ("/v1/customers/{id}", "get"),
        ("/v1/segments", "get"),
        ("/v1/segments/{name}/customers", "get"),
        ("/v1/query", "post"),
        ("/v1/model", "get"),
        ("/v1/model/fit", "post"),
        ("/v1/customers/{id}", "delete"),
        ("/v1/customers/{id}/offers", "get"),
        ("/v1/events", "post"),
        ("/v1/offers/catalog", "get"),
        ("/v1/offers/catalog/{id}", "get"),
        ("/v1/offers/catalog/{id}", "put"),
        ("/v1/offers/catalog/{id}", "delete"),
        ("/", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    assert!(doc["components"]["schemas"]["Profile"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

/// The contract's role table, written out: admin ⊃ marketing ⊃ reader; ingest apart.
fn may(has: Role, needs: Role) -> bool {
    use Role::*;
    matches!(
        (has, needs),
        (Reader, Reader)
            | (Marketing, Reader | Marketing)
            | (Admin, Reader | Marketing | Admin)
            | (Ingest, Ingest)
    )
}

/// Every route × {no key, unknown key, each role}: the exact status.
#[tokio::test]
async fn role_matrix() {
    let f = fixture();
    let empty = fixture_with(config(), &[], QueryLimits::default());
    let sql = json!({"sql": "SELECT 1 AS one"});
    // (app, method, path, body, needed role or None when open, status when allowed)
    type Case<'a> = (
        &'a Router,
        Method,
        &'a str,
        Option<Value>,
        Option<Role>,
        StatusCode,
    );
    let routes: Vec<Case<'_>> = vec![
        (&f.app, Method::GET, "/healthz", None, None, StatusCode::OK),
        (
            &f.app,
            Method::GET,
            "/v1/kpis",
            None,
            Some(Role::Reader),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/kpis/cohorts",
            None,
            Some(Role::Reader),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/kpis/history?days=7",
            None,
            Some(Role::Reader),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/objectives",
            None,
            Some(Role::Reader),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/segments/big/export?format=csv",
            None,
            Some(Role::Reader),
            StatusCode::OK,
        ),
        // Not running: the status was never marked ready.
        (
            &f.app,
            Method::GET,
            "/readyz",
            None,
            None,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (&f.app, Method::GET, "/metrics", None, None, StatusCode::OK),
        (
            &f.app,
            Method::GET,
            "/openapi.json",
            None,
            None,
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/status",
            None,
            Some(Role::Reader),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/customers/alice",
            None,
            Some(Role::Reader),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/customers/nobody",
            None,
            Some(Role::Reader),
            StatusCode::NOT_FOUND,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/segments",
            None,
            Some(Role::Reader),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/segments/big/customers",
            None,
            Some(Role::Reader),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::POST,
            "/v1/query",
            Some(sql),
            Some(Role::Admin),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/model",
            None,
            Some(Role::Reader),
            StatusCode::NOT_FOUND,
        ),
        (
            &empty.app,
            Method::POST,
            "/v1/model/fit",
            None,
            Some(Role::Admin),
            StatusCode::CONFLICT,
        ),
        (
            &f.app,
            Method::DELETE,
            "/v1/customers/nobody",
            None,
            Some(Role::Admin),
            StatusCode::NOT_FOUND,
        ),
        // The fixture has no broker: an allowed key gets as far as "no intake".
        (
            &f.app,
            Method::POST,
            "/v1/events",
            Some(
                json!([{"type": "purchase", "event_id": "m1", "ts": "2025-01-01T00:00:00Z",
                "customer_id": "zed", "amount": 5}]),
            ),
            Some(Role::Ingest),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/customers/alice/offers",
            None,
            Some(Role::Marketing),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/offers/catalog",
            None,
            Some(Role::Admin),
            StatusCode::OK,
        ),
        (
            &f.app,
            Method::PUT,
            "/v1/offers/catalog/matrix",
            Some(json!({"name": "Matrix", "value": 1.0})),
            Some(Role::Admin),
            StatusCode::CREATED,
        ),
        (
            &f.app,
            Method::GET,
            "/v1/offers/catalog/none",
            None,
            Some(Role::Admin),
            StatusCode::NOT_FOUND,
        ),
        (
            &f.app,
            Method::DELETE,
            "/v1/offers/catalog/none",
            None,
            Some(Role::Admin),
            StatusCode::NOT_FOUND,
        ),
        (&f.app, Method::GET, "/", None, None, StatusCode::OK),
    ];
    let keys: [(Option<&str>, Option<Role>); 6] = [
        (None, None),
        (Some("not-a-key"), None),
        (Some(READER), Some(Role::Reader)),
        (Some(MARKETING), Some(Role::Marketing)),
        (Some(INGEST), Some(Role::Ingest)),
        (Some(ADMIN), Some(Role::Admin)),
    ];
    for (app, method, path, body, needs, allowed) in &routes {
        for (key, role) in keys {
            let expected = match (needs, role) {
                (None, _) => *allowed,
                (Some(_), None) => StatusCode::UNAUTHORIZED,
                (Some(n), Some(r)) if may(r, *n) => *allowed,
                (Some(_), Some(_)) => StatusCode::FORBIDDEN,
            };
            let (status, resp) = call(app, method.clone(), path, key, body.clone()).await;
            assert_eq!(status, expected, "{method} {path} with {key:?}: {resp}");
            if status == StatusCode::UNAUTHORIZED {
                assert_error(&resp, "unauthorized");
            } else if status == StatusCode::FORBIDDEN {
                assert_error(&resp, "forbidden");
            }
        }
    }
}

/// Offers: catalog checks on write; decisions filter by window, channel, eligibility, holdout
/// and contact policy, and score the rest p_accept × value − cost + affinity boost.
#[tokio::test]
async fn offers_rank_eligible_offers_and_explain_the_rest() {
    let mut cfg = config();
    cfg.offers = patron_core::config::OffersSection::Table(patron_core::config::OffersTable {
        exploration: patron_core::config::Exploration::Greedy,
        ..Default::default()
    });
    let mut evs = events();
    // Alice saw `capped` twice and declined `cool`, in March 2026.
    for (i, (kind, offer)) in [
        ("offer_shown", "capped"),
        ("offer_shown", "capped"),
        ("offer_declined", "cool"),
    ]
    .into_iter()
    .enumerate()
    {
        evs.push(json!({"event_id": format!("o{i}"), "type": "interaction",
            "ts": "2026-03-05T12:00:00Z", "customer_id": "alice", "kind": kind, "offer_id": offer}));
    }
    let f = fixture_with(cfg, &evs, QueryLimits::default());
    let long = "3650days";
    for (id, body) in [
        ("plain", json!({"name": "Plain", "value": 10, "cost": 1})),
        (
            "shoes",
            json!({"name": "Shoes", "value": 10, "cost": 1, "category": "shoes"}),
        ),
        (
            "never",
            json!({"name": "Never", "value": 10, "eligible": "monetary > 1000000"}),
        ),
        (
            "web",
            json!({"name": "Web", "value": 10, "channels": ["web"]}),
        ),
        (
            "gone",
            json!({"name": "Gone", "value": 10, "ends": "2026-01-01T00:00:00Z"}),
        ),
        (
            "capped",
            json!({"name": "Capped", "value": 10, "max_impressions": 2, "window": long}),
        ),
        (
            "cool",
            json!({"name": "Cool", "value": 10, "cooldown_after_decline": long}),
        ),
        (
            "control",
            json!({"name": "Control", "value": 10, "holdout": 0.999}),
        ),
    ] {
        let (status, body) = put_offer(&f.app, id, body).await;
        assert_eq!(status, StatusCode::CREATED, "{id}: {body}");
    }
    // Bad offers are refused with the field named, and change nothing.
    let (status, body) = put_offer(
        &f.app,
        "bad",
        json!({"name": "Bad", "value": 1, "eligible": "no_such_col > 1"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "invalid_offer");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`eligible`"),
        "{body}"
    );
    let (status, body) = put_offer(
        &f.app,
        "plain",
        json!({"id": "other", "name": "X", "value": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = put_offer(
        &f.app,
        "plain",
        json!({"name": "Plain", "value": 10, "cost": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "replacing: {body}");
    let (_, catalog) = call(&f.app, Method::GET, "/v1/offers/catalog", Some(ADMIN), None).await;
    assert_eq!(catalog["offers"].as_array().unwrap().len(), 8, "{catalog}");

    let uri = "/v1/customers/anon-1/offers?channel=email&limit=5&explain=true";
    let (status, d) = call(&f.app, Method::GET, uri, Some(MARKETING), None).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["customer_id"], "alice", "an alias resolves");
    assert_eq!(d["exploration"], "greedy");
    let ranked: Vec<(&str, f64)> = d["offers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["offer_id"].as_str().unwrap(),
                o["score"].as_f64().unwrap(),
            )
        })
        .collect();
    // No feedback yet: P(accept) is the Beta(1, 1) mean, 0.5. Shoes is alice's top category:
    // + 0.1 × 10.
    assert_eq!(ranked, vec![("shoes", 5.0), ("plain", 4.0)], "{d:#}");
    assert_eq!(d["offers"][0]["affinity_boost"], 1.0);
    assert_eq!(d["offers"][0]["p_accept"], 0.5);
    assert_eq!(d["offers"][0]["holdout"], false);
    assert_eq!(d["held_out"][0]["offer_id"], "control");
    assert_eq!(d["held_out"][0]["holdout"], true);
    let reasons: std::collections::BTreeMap<&str, &str> = d["suppressed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let reason = w["reason"].as_str().unwrap();
            (
                w["offer_id"].as_str().unwrap(),
                reason.split(':').next().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("capped", "capped"),
            ("cool", "cooldown"),
            ("gone", "not_active"),
            ("never", "not_eligible"),
            ("web", "channel"),
        ]
        .into_iter()
        .collect(),
        "{d:#}"
    );
    assert!(
        d["decision_id"]
            .as_str()
            .unwrap()
            .ends_with(d["rfm_segment"].as_str().unwrap())
    );
    // Without `explain` the same decision leaves out only the suppressed list.
    let (status, mut plain) = call(
        &f.app,
        Method::GET,
        "/v1/customers/anon-1/offers?channel=email&limit=5",
        Some(MARKETING),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    assert!(plain.get("suppressed").is_none(), "{plain:#}");
    let mut explained = d.clone();
    for decision in [&mut plain, &mut explained] {
        let fields = decision.as_object_mut().unwrap();
        fields.remove("decision_id");
        fields.remove("suppressed");
    }
    assert_eq!(plain, explained);

    // Validation and lookups.
    let (status, _) = call(
        &f.app,
        Method::GET,
        "/v1/customers/alice/offers?limit=0",
        Some(MARKETING),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &f.app,
        Method::GET,
        "/v1/customers/nobody/offers",
        Some(MARKETING),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &f.app,
        Method::DELETE,
        "/v1/offers/catalog/plain",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &f.app,
        Method::GET,
        "/v1/offers/catalog/plain",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Decisions read eligibility from the view's plan (every predicate evaluated over the whole
/// population at once) while nothing was committed since the view, or while the customer's
/// record and the catalog are unchanged since it, and from the customer's own row otherwise.
/// Both must agree with SQL over the `customers` table, an independent evaluation of the same
/// predicates, and with each other.
#[tokio::test]
async fn planned_and_per_row_decisions_agree_with_sql() {
    let mut cfg = config();
    cfg.offers = patron_core::config::OffersSection::Table(patron_core::config::OffersTable {
        exploration: patron_core::config::Exploration::Greedy,
        ..Default::default()
    });
    // The view is not rebuilt during the test, so the commit below leaves it behind.
    cfg.kpi.refresh_interval = Duration::from_secs(3600);
    let f = fixture_from(cfg, &fit_payloads(), QueryLimits::default());
    let (status, fit) = call(&f.app, Method::POST, "/v1/model/fit", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK, "{fit}");
    let predicates = [
        ("clv", "clv > 40"),
        ("fading", "p_alive < 0.6 AND frequency >= 2"),
        ("best", "rfm_segment IN ('Champions', 'Loyal Customers')"),
        ("recent", "r_score >= 3"),
        ("big", "array_has(segments, 'big')"),
        ("aov", "avg_order_value BETWEEN 20 AND 60 AND m_score >= 3"),
    ];
    // One category per offer, from the synthetic purchases' categories: planned decisions
    // read each customer's top categories from the view, per-row ones from its state.
    let categories = ["books", "electronics", "garden", "grocery", "home", "toys"];
    for (i, (id, eligible)) in predicates.iter().enumerate() {
        let body = json!({"name": id, "value": 10 + i, "cost": 1, "eligible": eligible,
                          "holdout": 0.3, "category": categories[i]});
        let (status, body) = put_offer(&f.app, id, body).await;
        assert_eq!(status, StatusCode::CREATED, "{id}: {body}");
    }
    let sql_ids = |sql: String| {
        let app = f.app.clone();
        async move {
            let (status, rows) = admin_query(&app, sql).await;
            assert_eq!(status, StatusCode::OK, "{rows}");
            rows["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["customer_id"].as_str().unwrap().to_owned())
                .collect::<std::collections::BTreeSet<String>>()
        }
    };
    let customers = sql_ids("SELECT customer_id FROM customers".into()).await;
    assert_eq!(customers.len(), 300);
    let mut expected = std::collections::BTreeMap::new();
    for (id, eligible) in predicates {
        let ids = sql_ids(format!(
            "SELECT customer_id FROM customers WHERE {eligible}"
        ))
        .await;
        assert!(
            !ids.is_empty() && ids.len() < customers.len(),
            "`{eligible}` should split the population: {} of {}",
            ids.len(),
            customers.len()
        );
        expected.insert(id.to_owned(), ids);
    }
    // Every decision, without the decision id and without offer `bump` (added below).
    let decide_all = || {
        let app = f.app.clone();
        let customers = customers.clone();
        async move {
            let mut out = std::collections::BTreeMap::new();
            for c in &customers {
                let uri = format!("/v1/customers/{c}/offers?limit=50&explain=true");
                let (status, mut d) = call(&app, Method::GET, &uri, Some(MARKETING), None).await;
                assert_eq!(status, StatusCode::OK, "{d}");
                d.as_object_mut().unwrap().remove("decision_id");
                for list in ["offers", "held_out", "suppressed"] {
                    d[list]
                        .as_array_mut()
                        .unwrap()
                        .retain(|o| o["offer_id"] != "bump");
                }
                out.insert(c.clone(), d);
            }
            out
        }
    };
    let decisions_status = || {
        let app = f.app.clone();
        async move {
            let (_, s) = call(&app, Method::GET, "/v1/status", Some(READER), None).await;
            s["offer_decisions"].clone()
        }
    };
    let planned = decide_all().await;
    let counts = decisions_status().await;
    assert_eq!(counts["planned"], 300, "{counts}");
    assert_eq!(counts["evaluated"], 0, "{counts}");
    // Asked again, each customer's inputs come from the decision cache, with the same result.
    assert_eq!(decide_all().await, planned);
    let (_, status) = call(&f.app, Method::GET, "/v1/status", Some(READER), None).await;
    assert_eq!(status["decision_cache"]["hits"], 300, "{status}");
    assert_eq!(status["offer_decisions"]["planned"], 600, "{status}");
    let eligible_by_decision = |decisions: &std::collections::BTreeMap<String, Value>| {
        let mut by_offer: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            predicates
                .iter()
                .map(|(id, _)| (id.to_string(), Default::default()))
                .collect();
        for (c, d) in decisions {
            for list in ["offers", "held_out"] {
                for o in d[list].as_array().unwrap() {
                    by_offer
                        .get_mut(o["offer_id"].as_str().unwrap())
                        .unwrap()
                        .insert(c.clone());
                }
            }
        }
        by_offer
    };
    assert_eq!(eligible_by_decision(&planned), expected);
    let boosted = planned
        .values()
        .flat_map(|d| d["offers"].as_array().unwrap())
        .filter(|o| o["affinity_boost"].as_f64().unwrap() > 0.0)
        .count();
    assert!(boosted > 0, "no decision had an affinity boost");

    // A commit that changes one customer's stored record (a page view dated inside the history,
    // so the event clock stays put, and touching no column the predicates read): the other 299
    // are still answered from the plan, the changed one on its own row, all with the same
    // result as before.
    let changed = customers.iter().next().unwrap().clone();
    let late = json!({"event_id": "late-view", "type": "interaction", "ts": "2025-01-02T00:00:00Z",
                      "customer_id": changed, "kind": "page_view"});
    common::apply(&f.store, &config(), &[late.to_string().into_bytes()]);
    let after_commit = decide_all().await;
    let counts = decisions_status().await;
    assert_eq!(counts["planned"], 600 + 299, "{counts}");
    assert_eq!(counts["planned_unchanged"], 299, "{counts}");
    assert_eq!(counts["evaluated"], 1, "{counts}");
    assert_eq!(after_commit, planned);

    // A commit (a catalog change) leaves the view behind: eligibility is evaluated per row.
    let (status, body) = put_offer(&f.app, "bump", json!({"name": "bump", "value": 1})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let evaluated = decide_all().await;
    let counts = decisions_status().await;
    assert_eq!(counts["planned"], 899, "{counts}");
    assert_eq!(counts["evaluated"], 301, "{counts}");
    assert_eq!(eligible_by_decision(&evaluated), expected);
    for (c, d) in &planned {
        assert_eq!(d, &evaluated[c], "{c}");
    }
}

/// A cached decision is answered only until the next instant that could change it: here an
/// offer's `starts`.
#[tokio::test]
async fn a_cached_decision_ends_when_an_offer_starts() {
    let f = fixture();
    let starts = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    for (id, body) in [
        ("plain", json!({"name": "Plain", "value": 10})),
        (
            "soon",
            json!({"name": "Soon", "value": 10,
                   "starts": starts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}),
        ),
    ] {
        let (status, body) = put_offer(&f.app, id, body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let offered = || {
        let app = f.app.clone();
        async move {
            let uri = "/v1/customers/bob/offers?limit=5&explain=true";
            let (status, d) = call(&app, Method::GET, uri, Some(MARKETING), None).await;
            assert_eq!(status, StatusCode::OK, "{d}");
            let ids = |list: &str| -> Vec<String> {
                d[list]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["offer_id"].as_str().unwrap().to_owned())
                    .collect()
            };
            (ids("offers"), ids("suppressed"))
        }
    };
    let before = offered().await;
    assert_eq!(before, (vec!["plain".to_owned()], vec!["soon".to_owned()]));
    assert_eq!(offered().await, before, "answered from the cache");
    let (_, status) = call(&f.app, Method::GET, "/v1/status", Some(READER), None).await;
    assert_eq!(status["decision_cache"]["hits"], 1, "{status}");
    let wait = (starts - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let (mut offers, suppressed) = offered().await;
    offers.sort();
    assert_eq!(offers, vec!["plain".to_owned(), "soon".to_owned()]);
    assert!(suppressed.is_empty(), "{suppressed:?}");
}

/// The customers table's batches are in id order, so a customer's row is found by bisection.
#[test]
fn a_customer_row_is_found_across_batches() {
    let cfg = config();
    let (_dir, store) = common::store_with(&cfg, &fit_payloads());
    let mut opts = patron_query::SnapshotOptions::from_config(&cfg);
    opts.batch_rows = 7;
    let snap = patron_query::Snapshot::build(&store, &opts).unwrap();
    assert!(snap.customers.len() > 10);
    let mut seen = 0;
    for (b, batch) in snap.customers.iter().enumerate() {
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        for r in 0..batch.num_rows() {
            let id = ids.value(r);
            assert_eq!(snap.customer_row(id), Some((b, r)), "{id}");
            assert_eq!(snap.customer_row(&format!("{id}~")), None);
            seen += 1;
        }
    }
    assert_eq!(seen, 300);
    assert_eq!(snap.customer_row(""), None);
    assert_eq!(snap.customer_row("\u{10FFFF}"), None);
}

/// `[api] request_timeout`: a request that is still waiting when it runs out gets 503 `timeout`
/// in the error shape. (A zero limit: the profile route waits for the view on a blocking thread.)
#[tokio::test]
async fn a_request_over_the_time_limit_is_503() {
    let mut cfg = config();
    cfg.api.request_timeout = std::time::Duration::ZERO;
    let f = fixture_with(cfg, &events(), QueryLimits::default());
    let (status, body) = call(
        &f.app,
        Method::GET,
        "/v1/customers/alice",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_error(&body, "timeout");
}

/// The history carries, for as_of's day, the whole KPI set as served by `GET /v1/kpis`.
#[tokio::test]
async fn kpi_history_keeps_the_full_set_of_the_days_it_was_computed() {
    let f = fixture();
    let (status, kpis) = call(&f.app, Method::GET, "/v1/kpis", Some(READER), None).await;
    assert_eq!(status, StatusCode::OK, "{kpis}");
    let (status, history) = call(
        &f.app,
        Method::GET,
        "/v1/kpis/history?days=30",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let days = history["days"].as_array().unwrap();
    // as_of is carol's purchase on 2026-03-10; the days before it were never computed live.
    let last = days.last().unwrap();
    assert_eq!(last["date"], "2026-03-10");
    assert_eq!(last["kpis"], kpis, "{history:#}");
    assert_eq!(last["kpis"]["customers"], 3);
    assert!(days[..days.len() - 1].iter().all(|d| d["kpis"].is_null()));
}
