//! `patron export` covers every SQL table, and both formats round-trip: read back with the
//! arrow and parquet crates, each file holds exactly the rows of the table (CSV with list
//! columns as JSON text, as documented).

mod common;

use arrow::array::RecordBatch;
use common::*;
use patron_query::{Snapshot, SnapshotOptions};
use patron_store::Store;

#[test]
fn every_table_exports_to_parquet_and_csv_and_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("golden.redb");
    let config = golden("patron.toml");
    run_ok(&[
        "--config",
        path_str(&config),
        "replay",
        "--input",
        path_str(&golden("events.jsonl")),
        "--store",
        path_str(&store),
        "--dead-letter",
        path_str(&dir.path().join("dead.jsonl")),
    ]);
    // The tables as the query engine sees them (same store, same event clock, no model).
    let snapshot = Snapshot::build(
        &Store::open_existing(&store).unwrap(),
        &SnapshotOptions::from_config(&Default::default()),
    )
    .unwrap();
    let customers = arrow::compute::concat_batches(
        &patron_query::snapshot::customers_schema(),
        &snapshot.customers,
    )
    .unwrap();
    // Ten 8-byte columns (timestamps, counts, money, scores) hold a slot per row, null or not.
    assert!(
        snapshot.customer_bytes() >= customers.num_rows() * 10 * 8,
        "{} bytes for {} rows",
        snapshot.customer_bytes(),
        customers.num_rows()
    );
    let tables: [(&str, &RecordBatch); 4] = [
        ("customers", &customers),
        ("segments", &snapshot.segments),
        ("kpi_daily", &snapshot.kpi_daily),
        ("offer_stats", &snapshot.offer_stats),
    ];
    assert_eq!(
        tables.map(|(n, _)| n),
        patron_query::sql::TABLES,
        "every SQL table is checked"
    );
    for (table, expected) in tables {
        let pq = dir.path().join(format!("{table}.parquet"));
        let csv = dir.path().join(format!("{table}.csv"));
        for (format, out) in [("parquet", &pq), ("csv", &csv)] {
            let said = run_ok(&[
                "--config",
                path_str(&config),
                "export",
                "--store",
                path_str(&store),
                "--table",
                table,
                "--format",
                format,
                "--out",
                path_str(out),
            ]);
            assert!(
                said.contains(&format!("exported {} rows", expected.num_rows())),
                "{table} {format}: {said}"
            );
        }
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&pq).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        let got = arrow::compute::concat_batches(&expected.schema(), &batches).unwrap();
        assert_eq!(&got, expected, "{table}: parquet round trip");

        let flat = patron_query::output::flatten_lists(expected).unwrap();
        let mut reader = arrow::csv::ReaderBuilder::new(flat.schema())
            .with_header(true)
            .build(std::fs::File::open(&csv).unwrap())
            .unwrap();
        let batches: Vec<RecordBatch> = reader.by_ref().map(|b| b.unwrap()).collect();
        let got = arrow::compute::concat_batches(&flat.schema(), &batches).unwrap();
        assert_eq!(got, flat, "{table}: csv round trip");
    }
    assert!(
        snapshot.kpi_daily.num_rows() > 100,
        "a non-trivial kpi_daily"
    );
}
