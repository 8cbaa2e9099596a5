//! The KPI golden data sets: every KPI, the cohort matrix, objective progress, the KPI history
//! and the `kpi_daily` table equal an independent computation.
//!
//! Two event logs are replayed with the real binary: `tests/data/golden/kpi/events.jsonl`
//! (from `patron generate`, 200 customers over 380 days, with duplicates and Segment Spec
//! messages) and the hand-made `tests/data/golden/events.jsonl` (every event type, merges,
//! rejections). A CLV model with the fixed parameters of `kpi/model.json` is stored, so the
//! P(alive) and CLV figures are checked too. The expected values come from
//! `tests/oracle/kpi_oracle.py` (stdlib Python plus the `lifetimes` package, written from
//! DESIGN.md); this test only compares.

mod common;

use std::path::Path;

use common::*;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use patron_api::kpis::{CohortsResponse, HistoryResponse, KpisResponse, ObjectivesResponse};
use patron_api::view::View;
use patron_core::clv::{BgNbdFit, BgNbdParams, GammaGammaFit, GammaGammaParams};
use patron_core::config::{PatronConfig, TimeUnit};
use patron_query::clv::{StoredModel, save_model};
use patron_store::Store;
use serde_json::Value;

fn kpi_file(name: &str) -> std::path::PathBuf {
    golden("kpi").join(name)
}

fn load_config() -> PatronConfig {
    Figment::from(Serialized::defaults(PatronConfig::default()))
        .merge(Toml::file_exact(kpi_file("patron.toml")))
        .extract()
        .expect("kpi/patron.toml parses")
}

/// The model of `kpi/model.json`, stored as if fitted.
fn store_model(store: &Path) {
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(kpi_file("model.json")).unwrap()).unwrap();
    let f = |section: &str, key: &str| m[section][key].as_f64().unwrap();
    let bg = BgNbdParams {
        r: f("bgnbd", "r"),
        alpha: f("bgnbd", "alpha"),
        a: f("bgnbd", "a"),
        b: f("bgnbd", "b"),
    };
    let gg = GammaGammaParams {
        p: f("gamma_gamma", "p"),
        q: f("gamma_gamma", "q"),
        gamma: f("gamma_gamma", "gamma"),
    };
    assert_eq!(m["time_unit"], "week");
    let model = StoredModel {
        time_unit: TimeUnit::Week,
        as_of: 0,
        fitted_at: 0,
        fit_seconds: 0.0,
        bgnbd: BgNbdFit {
            params: bg,
            log_likelihood: 0.0,
            customers: 0.0,
            iterations: 0,
            gradient_norm: 0.0,
            converged: true,
            standard_errors: bg,
        },
        gamma_gamma: GammaGammaFit {
            params: gg,
            log_likelihood: 0.0,
            customers: 0.0,
            iterations: 0,
            gradient_norm: 0.0,
            converged: true,
            standard_errors: gg,
        },
    };
    save_model(&Store::open_existing(store).unwrap(), &model).unwrap();
}

/// Numbers equal to 1e-9 relative (1e-6 for money sums and CLV, which the oracle keeps in
/// exact decimals or computes with another library); everything else exactly.
fn assert_same(path: &str, actual: &Value, expected: &Value) {
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            let loose = [
                "clv",
                "revenue",
                "refunded",
                "avg_order_value",
                "expected",
                "current",
            ]
            .iter()
            .any(|k| path.contains(k));
            let tol = if loose { 1e-6 } else { 1e-9 } * e.abs().max(1.0);
            assert!((a - e).abs() <= tol, "{path}: {a} vs expected {e}");
        }
        (Value::Object(a), Value::Object(e)) => {
            for (k, ev) in e {
                let av = a.get(k).unwrap_or(&Value::Null);
                assert_same(&format!("{path}.{k}"), av, ev);
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{path}: length");
            for (i, (av, ev)) in a.iter().zip(e).enumerate() {
                assert_same(&format!("{path}[{i}]"), av, ev);
            }
        }
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

fn check(events: &Path, expected_file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("kpi.redb");
    let config_path = kpi_file("patron.toml");
    run_ok(&[
        "--config",
        path_str(&config_path),
        "replay",
        "--input",
        path_str(events),
        "--store",
        path_str(&store),
        "--dead-letter",
        path_str(&dir.path().join("dead.jsonl")),
    ]);
    store_model(&store);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(kpi_file(expected_file)).unwrap()).unwrap();

    // The `kpi_daily` SQL table, through the CLI.
    let daily = run_ok(&[
        "--config",
        path_str(&config_path),
        "query",
        "--store",
        path_str(&store),
        "--format",
        "json",
        "SELECT CAST(day AS VARCHAR) AS date, * FROM kpi_daily ORDER BY day",
    ]);
    let daily: Value = serde_json::from_str(&daily).unwrap();
    assert_same("kpi_daily", &daily, &expected["kpi_daily"]);

    // The API's responses, from the view the handlers answer from.
    let config = load_config();
    let view = View::build(&Store::open_existing(&store).unwrap(), &config).unwrap();
    let days = expected["history_days"].as_u64().unwrap() as u32;
    let k = to_json(&KpisResponse::new(&view.kpis, view.computed_at));
    let c = to_json(&CohortsResponse::new(&view));
    let h = to_json(&HistoryResponse::new(&view, days));
    let o = to_json(&ObjectivesResponse::new(&view, &config.objectives));
    assert_eq!(k["as_of"], expected["as_of"]);
    assert_same("kpis", &k, &expected["kpis"]);
    // Every KPI of the contract is there (and checked above).
    for key in expected["kpis"].as_object().unwrap().keys() {
        assert!(k.get(key).is_some(), "GET /v1/kpis lacks `{key}`");
    }
    assert_same("cohorts", &c["cohorts"], &expected["cohorts"]);
    assert_same("history", &h["days"], &expected["history"]);
    assert_same("objectives", &o["objectives"], &expected["objectives"]);
}

fn to_json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap()
}

#[test]
fn kpis_of_a_generated_stream_match_the_independent_oracle() {
    check(&kpi_file("events.jsonl"), "expected_kpis.json");
}

#[test]
fn kpis_of_the_hand_made_golden_set_match_the_independent_oracle() {
    check(&golden("events.jsonl"), "expected_kpis_edge.json");
}
