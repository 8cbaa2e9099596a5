//! Parameter recovery end to end: `patron generate` draws customers from known BG/NBD and
//! Gamma-Gamma parameters, `replay` builds the store, and `fit` must recover the truth.
//!
//! Tolerance: each estimate must lie within 4 of its own asymptotic standard errors (from the
//! inverse observed information, reported by the fit) of the truth, and every standard error
//! must be under 10% of its parameter, so the check is tight enough to catch a biased fit. With
//! 7 parameters, a correct fit fails this by chance with probability about 7 × 6e-5.

mod common;

use common::*;

fn recover(seed: &str, bgnbd: &str, gg: &str) {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let store = dir.path().join("s.redb");
    run_ok(&[
        "generate",
        "--customers",
        "50000",
        "--days",
        "730",
        "--start",
        "2023-01-01",
        "--seed",
        seed,
        "--bgnbd",
        bgnbd,
        "--gamma-gamma",
        gg,
        "--out",
        path_str(&events),
    ]);
    let truth: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("events.jsonl.truth.json")).unwrap(),
    )
    .unwrap();
    run_ok(&[
        "replay",
        "--input",
        path_str(&events),
        "--store",
        path_str(&store),
    ]);
    let end = truth["end"].as_str().unwrap();
    let fit: serde_json::Value = serde_json::from_str(&run_ok(&[
        "fit",
        "--store",
        path_str(&store),
        "--as-of",
        end,
        "--time-unit",
        "day",
        "--format",
        "json",
    ]))
    .unwrap();
    let check = |model: &str, truth_key: &str, names: &[&str]| {
        for name in names {
            let est = fit[model]["params"][name].as_f64().unwrap();
            let se = fit[model]["standard_errors"][name].as_f64().unwrap();
            let t = truth[truth_key][name].as_f64().unwrap();
            assert!(
                se / est < 0.10,
                "{model}.{name}: standard error {se} too large for {est}"
            );
            assert!(
                (est - t).abs() <= 4.0 * se,
                "{model}.{name} = {est}, truth {t}, se {se} (seed {seed})"
            );
        }
    };
    check("bgnbd", "bgnbd", &["r", "alpha", "a", "b"]);
    check("gamma_gamma", "gamma_gamma", &["p", "q", "gamma"]);
}

#[test]
fn fit_recovers_the_generating_parameters() {
    recover("21", "0.25,30,0.8,2.5", "6,4,15");
}

#[test]
fn fit_recovers_a_second_parameter_set() {
    recover("22", "0.5,20,1.2,3.5", "4,3,20");
}
