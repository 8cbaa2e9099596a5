//! What a user sees when something is wrong: exit codes and one clear line.

mod common;

use common::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn missing_input_file_is_a_runtime_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "replay",
        "--input",
        "/nonexistent/events.jsonl",
        "--store",
        path_str(&dir.path().join("s.redb")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("/nonexistent/events.jsonl"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_csv_mapping_is_a_usage_error_listing_the_columns() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("orders.csv");
    std::fs::write(&csv, "email,created_at,total\na@x.com,2025-01-02,10.5\n").unwrap();
    let out = run(&[
        "replay",
        "--input",
        path_str(&csv),
        "--store",
        path_str(&dir.path().join("s.redb")),
        "--customer-col",
        "customer",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.contains("--customer-col `customer`") && err.contains("email, created_at, total"),
        "{err}"
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = run(&["replay", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--frobnicate"));
}

#[test]
fn unknown_config_key_is_a_usage_error_naming_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[ingest]\nmax_event_byts = 10\n").unwrap();
    let out = run(&[
        "--config",
        path_str(&cfg),
        "query",
        "--store",
        "x.redb",
        "SELECT 1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.contains("max_event_byts") && err.contains("bad.toml"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn bad_config_value_and_env_override_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[ingest]\ndedup_window = \"seven days\"\n").unwrap();
    let out = run(&[
        "--config",
        path_str(&cfg),
        "query",
        "--store",
        "x.redb",
        "SELECT 1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("dedup_window"),
        "{}",
        stderr_of(&out)
    );
    let out = patron()
        .env("PATRON__SOURCE__SESSION_TIMEOUT", "200ms")
        .args(["query", "--store", "x.redb", "SELECT 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("[source] session_timeout = 200ms must be between 1s and 30m"),
        "{}",
        stderr_of(&out)
    );
    let out = patron()
        .env("PATRON__SCORING__CLOCK", "sundial")
        .args(["query", "--store", "x.redb", "SELECT 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).to_lowercase().contains("scoring.clock"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn query_refuses_writes_and_file_access() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = replay_golden(dir.path());
    for sql in [
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO customers (customer_id) VALUES ('x')",
        "COPY customers TO '/tmp/out.csv'",
        "DROP TABLE customers",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_csv('/etc/passwd')",
    ] {
        let out = run(&["query", "--store", path_str(&store), sql]);
        assert_eq!(out.status.code(), Some(2), "{sql} must be refused");
    }
    assert!(
        !std::path::Path::new("/tmp/out.csv").exists()
            || std::fs::metadata("/tmp/out.csv").unwrap().len() == 0
    );
}

#[test]
fn query_on_a_missing_store_says_so() {
    let out = run(&["query", "--store", "/nonexistent/s.redb", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("/nonexistent/s.redb"));
}

#[test]
fn csv_export_of_a_shop_is_mapped_by_flags() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("orders.csv");
    std::fs::write(
        &csv,
        "order;email;created;total;kind\n\
         1;a@x.com;2025-01-02 10:00:00;10.50;purchase\n\
         2;a@x.com;2025-03-02 10:00:00;20.25;purchase\n\
         3;b@x.com;2025-02-01 00:00:00;5;purchase\n\
         4;a@x.com;2025-03-03 10:00:00;0.75;refund\n\
         5;c@x.com;not a date;7;purchase\n",
    )
    .unwrap();
    let store = dir.path().join("s.redb");
    let out = run_ok(&[
        "replay",
        "--input",
        path_str(&csv),
        "--store",
        path_str(&store),
        "--delimiter",
        ";",
        "--customer-col",
        "email",
        "--ts-col",
        "created",
        "--ts-format",
        "%Y-%m-%d %H:%M:%S",
        "--amount-col",
        "total",
        "--type-col",
        "kind",
        "--event-id-col",
        "order",
    ]);
    assert!(
        out.contains("applied     4") && out.contains("wrong_type"),
        "{out}"
    );
    let rows = parse_csv(&run_ok(&[
        "query",
        "--store",
        path_str(&store),
        "--format",
        "csv",
        "SELECT customer_id, frequency, monetary, recency_days FROM customers ORDER BY customer_id",
    ]));
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0]["customer_id"].as_str(),
            rows[0]["frequency"].as_str()
        ),
        ("a@x.com", "2")
    );
    assert_eq!(
        micros(&rows[0]["monetary"]),
        30_000_000,
        "10.50 + 20.25 - 0.75"
    );
    // as_of = the last event (2025-03-03 10:00), a@x.com last bought 2025-03-02 10:00.
    assert_eq!(rows[0]["recency_days"], "1.0");
    assert_eq!(micros(&rows[1]["monetary"]), 5_000_000);
}

/// `keys new` prints a fresh key and a config entry whose hash is the key's SHA-256 (checked
/// with coreutils' sha256sum), and refuses an unknown role.
#[test]
fn keys_new_prints_a_key_and_its_hash_entry() {
    let out = run_ok(&["keys", "new", "--role", "marketing", "--name", "crm"]);
    let mut lines = out.lines();
    let key = lines.next().expect("the key").to_owned();
    assert!(key.starts_with("pk_marketing_") && key.len() > 40, "{out}");
    let entry: String = lines.collect::<Vec<_>>().join("\n");
    assert!(
        entry.contains("[[api.keys]]\nname = \"crm\"\nrole = \"marketing\""),
        "{out}"
    );
    let mut sum = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    std::io::Write::write_all(sum.stdin.as_mut().unwrap(), key.as_bytes()).unwrap();
    let digest = String::from_utf8(sum.wait_with_output().unwrap().stdout).unwrap();
    let digest = digest.split_whitespace().next().unwrap();
    assert!(entry.contains(&format!("sha256 = \"{digest}\"")), "{out}");
    // A second key is different.
    let again = run_ok(&["keys", "new", "--role", "marketing"]);
    assert_ne!(again.lines().next(), Some(key.as_str()));
    let bad = run(&["keys", "new", "--role", "owner"]);
    assert_eq!(bad.status.code(), Some(2));
}
