//! The golden data set: a few hundred events covering every type, Segment Spec messages,
//! duplicates, out-of-order arrival and every rejection reason. The expected `customers` table
//! and counts come from `tests/oracle/rfm_oracle.py`, an independent implementation of
//! DESIGN.md's rules; this test only compares.

mod common;

use common::*;

fn query_csv(store: &std::path::Path, sql: &str) -> String {
    run_ok(&[
        "--config",
        path_str(&golden("patron.toml")),
        "query",
        "--store",
        path_str(store),
        "--format",
        "csv",
        sql,
    ])
}

#[test]
fn customers_table_matches_the_independent_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = replay_golden(dir.path());
    let actual = parse_csv(&query_csv(&store, RFM_SQL));
    let expected = parse_csv(&std::fs::read_to_string(golden("expected_customers.csv")).unwrap());
    assert_eq!(
        actual.iter().map(|r| &r["customer_id"]).collect::<Vec<_>>(),
        expected
            .iter()
            .map(|r| &r["customer_id"])
            .collect::<Vec<_>>(),
        "the same profiles"
    );
    for (a, e) in actual.iter().zip(&expected) {
        let id = &e["customer_id"];
        assert_eq!(a["frequency"], e["frequency"], "{id} frequency");
        assert_eq!(
            micros(&a["monetary"]),
            micros(&e["monetary"]),
            "{id} monetary"
        );
        match (a["recency_days"].as_str(), e["recency_days"].as_str()) {
            ("", "") => {}
            (x, y) => {
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((x - y).abs() <= 1e-6, "{id} recency {x} vs {y}");
            }
        }
        for col in ["r_score", "f_score", "m_score", "rfm_segment"] {
            assert_eq!(a[col], e[col], "{id} {col}");
        }
    }
}

#[test]
fn every_rejection_is_counted_and_dead_lettered_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (_, summary) = replay_golden(dir.path());
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("expected_summary.json")).unwrap())
            .unwrap();
    let line = |label: &str| -> u64 {
        summary
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(label)
                    .map(|v| v.split_whitespace().next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no `{label}` in summary:\n{summary}"))
    };
    assert_eq!(line("applied"), expected["applied"].as_u64().unwrap());
    assert_eq!(line("duplicates"), expected["duplicates"].as_u64().unwrap());
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    let mut by_reason = std::collections::BTreeMap::<String, u64>::new();
    for l in dead.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "a reason detail: {l}"
        );
        assert!(v["offset"].as_u64().is_some(), "an offset: {l}");
        assert!(
            v.get("raw").is_some() || v.get("raw_hex").is_some(),
            "the raw record: {l}"
        );
        *by_reason
            .entry(v["reason"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let want: std::collections::BTreeMap<String, u64> = expected["rejected"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(by_reason, want);
    for (reason, n) in &want {
        assert_eq!(line(reason), *n, "summary count for {reason}");
    }
}

#[test]
fn replaying_the_same_file_again_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = replay_golden(dir.path());
    let before = query_csv(&store, RFM_SQL);
    let (_, second) = replay_golden(dir.path());
    assert!(second.contains("applied     0"), "{second}");
    assert!(second.contains("nothing new"), "{second}");
    assert_eq!(query_csv(&store, RFM_SQL), before);
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    assert_eq!(
        dead.lines().count(),
        33,
        "dead letters are not written twice"
    );
}

#[test]
fn as_of_moves_recency_and_segments_table_sums_up() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = replay_golden(dir.path());
    let expected = parse_csv(&std::fs::read_to_string(golden("expected_customers.csv")).unwrap());
    // One day later than the event clock adds exactly one day of recency to every customer.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("expected_summary.json")).unwrap())
            .unwrap();
    let as_of = chrono::DateTime::parse_from_rfc3339(summary["as_of"].as_str().unwrap()).unwrap();
    let later = (as_of + chrono::Duration::days(1)).to_rfc3339();
    let out = run_ok(&[
        "--config",
        path_str(&golden("patron.toml")),
        "query",
        "--store",
        path_str(&store),
        "--as-of",
        &later,
        "--format",
        "csv",
        RFM_SQL,
    ]);
    for (a, e) in parse_csv(&out).iter().zip(&expected) {
        if let (Ok(x), Ok(y)) = (
            a["recency_days"].parse::<f64>(),
            e["recency_days"].parse::<f64>(),
        ) {
            assert!((x - y - 1.0).abs() < 1e-6);
        }
    }
    let segs = parse_csv(&query_csv(&store, "SELECT name, customers FROM segments"));
    let total: i64 = segs
        .iter()
        .map(|r| r["customers"].parse::<i64>().unwrap())
        .sum();
    assert_eq!(
        total as usize,
        expected.len(),
        "each profile is in exactly one RFM segment"
    );
    for r in &segs {
        let n = expected
            .iter()
            .filter(|e| e["rfm_segment"] == r["name"])
            .count();
        assert_eq!(
            r["customers"].parse::<usize>().unwrap(),
            n,
            "segment {}",
            r["name"]
        );
    }
}

#[test]
fn exports_round_trip_through_parquet_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = replay_golden(dir.path());
    let pq = dir.path().join("customers.parquet");
    let csv_out = dir.path().join("customers.csv");
    for (fmt, out) in [("parquet", &pq), ("csv", &csv_out)] {
        run_ok(&[
            "--config",
            path_str(&golden("patron.toml")),
            "export",
            "--store",
            path_str(&store),
            "--table",
            "customers",
            "--format",
            fmt,
            "--out",
            path_str(out),
        ]);
    }
    let file = std::fs::File::open(&pq).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = batch.column_by_name("customer_id").unwrap();
        let arr = col
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        ids.extend(arr.iter().map(|v| v.unwrap().to_owned()));
    }
    let csv_rows = parse_csv(&std::fs::read_to_string(&csv_out).unwrap());
    let expected = parse_csv(&std::fs::read_to_string(golden("expected_customers.csv")).unwrap());
    let mut want: Vec<String> = expected.iter().map(|r| r["customer_id"].clone()).collect();
    want.sort();
    ids.sort();
    assert_eq!(ids, want);
    let mut csv_ids: Vec<String> = csv_rows.iter().map(|r| r["customer_id"].clone()).collect();
    csv_ids.sort();
    assert_eq!(csv_ids, want);
}
