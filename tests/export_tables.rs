//! `patron export` covers every SQL table, and both formats round-trip: read back with the
//! arrow and parquet crates, each file holds exactly the rows of the table (CSV with list
//! columns as JSON text, as documented).

mod common;

use arrow::array::{Array, RecordBatch};
use common::*;
use patron_query::{Snapshot, SnapshotOptions};
use patron_store::Store;

#[test]
fn every_table_exports_to_parquet_and_csv_and_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = replay_golden(dir.path());
    let config = golden("patron.toml");
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

/// A snapshot whose per-customer tables are spilled to a file (the server's scoring views)
/// holds exactly the tables of one built in memory, with user segments and top categories, over
/// many batches; and the spill file leaves nothing in its directory.
#[test]
fn a_spilled_snapshot_equals_one_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = replay_golden(dir.path());
    let store = Store::open_existing(&store).unwrap();
    let mut opts = SnapshotOptions::from_config(&Default::default());
    opts.batch_rows = 7; // many batches, the last one short
    opts.segments = vec![
        patron_core::config::SegmentConfig {
            name: "big_spenders".into(),
            predicate: "monetary > 500".into(),
        },
        patron_core::config::SegmentConfig {
            name: "lapsing".into(),
            predicate: "recency_days > 60 AND frequency >= 2".into(),
        },
    ];
    opts.top_categories = Some(patron_query::snapshot::TopCategoryOptions {
        k: 3,
        half_life_ms: 30.0 * 86_400_000.0,
    });
    let in_memory = Snapshot::build(&store, &opts).unwrap();
    let spill = tempfile::tempdir().unwrap();
    opts.spill_dir = Some(spill.path().to_owned());
    let spilled = Snapshot::build(&store, &opts).unwrap();

    assert!(in_memory.customers.len() > 2, "several batches");
    assert_eq!(in_memory.customers_spilled, 0);
    assert!(
        spilled.customers_spilled > 0,
        "the spilled build made no file"
    );
    // Only the top categories stay on the heap (the digests are spilled too): less than the
    // batches' ten 8-byte columns alone.
    let rows = in_memory.customer_count();
    assert!(
        spilled.customer_bytes() < rows * 10 * 8,
        "{} heap bytes for {rows} spilled rows",
        spilled.customer_bytes()
    );
    assert_eq!(spilled.customers, in_memory.customers);
    assert_eq!(spilled.segments, in_memory.segments);
    assert_eq!(spilled.kpi_daily, in_memory.kpi_daily);
    assert_eq!(spilled.offer_stats, in_memory.offer_stats);
    // User segments are filled in on both paths (not merely equal and empty).
    let member_rows = spilled
        .customers
        .iter()
        .map(|b| {
            let lists = b.column_by_name("segments").unwrap();
            let lists = lists
                .as_any()
                .downcast_ref::<arrow::array::ListArray>()
                .unwrap();
            (0..lists.len())
                .filter(|&i| !lists.value(i).is_empty())
                .count()
        })
        .sum::<usize>();
    assert!(member_rows > 0, "no customer is in a user segment");
    for (b, batch) in in_memory.customers.iter().enumerate() {
        for row in 0..batch.num_rows() {
            let digest = spilled.digests.get(b, row);
            assert!(digest.is_some(), "no digest for row {row} of batch {b}");
            assert_eq!(digest, in_memory.digests.get(b, row));
            let top = |s: &Snapshot| {
                s.top_categories
                    .as_ref()
                    .unwrap()
                    .of(b, row)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            assert_eq!(top(&spilled), top(&in_memory));
        }
    }
    let left: Vec<_> = std::fs::read_dir(spill.path()).unwrap().collect();
    assert!(left.is_empty(), "spill files left behind: {left:?}");
}
