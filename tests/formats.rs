//! The same generated events as JSONL and as Parquet replay to the same customers.

mod common;

use common::*;

#[test]
fn parquet_and_jsonl_inputs_give_the_same_customers() {
    let dir = tempfile::tempdir().unwrap();
    let (pq, jl) = (dir.path().join("ev.parquet"), dir.path().join("ev.jsonl"));
    for out in [&pq, &jl] {
        run_ok(&[
            "generate",
            "--customers",
            "800",
            "--days",
            "300",
            "--seed",
            "5",
            "--out",
            path_str(out),
        ]);
    }
    let (a, b) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    run_ok(&["replay", "--input", path_str(&pq), "--store", path_str(&a)]);
    run_ok(&["replay", "--input", path_str(&jl), "--store", path_str(&b)]);
    // Parquet carries no free-form objects, so traits are left out of the comparison.
    let sql = "SELECT customer_id, first_purchase, last_purchase, frequency, monetary, avg_order_value, recency_days, \
               r_score, f_score, m_score, rfm_segment FROM customers ORDER BY customer_id";
    let qa = run_ok(&["query", "--store", path_str(&a), "--format", "csv", sql]);
    let qb = run_ok(&["query", "--store", path_str(&b), "--format", "csv", sql]);
    assert!(qa.lines().count() > 800);
    assert_eq!(qa, qb);
    // A re-run of the Parquet file is recognised by its position (rows) and applies nothing.
    let again = run_ok(&["replay", "--input", path_str(&pq), "--store", path_str(&a)]);
    assert!(again.contains("applied     0"), "{again}");
}

#[test]
fn parquet_output_refuses_what_it_cannot_hold() {
    let out = run(&[
        "generate",
        "--customers",
        "10",
        "--bad-rate",
        "0.1",
        "--out",
        "/tmp/never.parquet",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
