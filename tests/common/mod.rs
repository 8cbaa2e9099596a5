//! Helpers for the end-to-end tests: run the real `patron` binary and read its results.

#![allow(dead_code, unreachable_pub)]

pub mod kafka;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn patron() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patron"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(manifest_dir())
}

pub fn golden(name: &str) -> PathBuf {
    repo().join("tests/data/golden").join(name)
}

pub fn run(args: &[&str]) -> Output {
    patron().args(args).output().expect("patron runs")
}

pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "patron {args:?} failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Parses CSV text with a header into rows keyed by column name.
pub fn parse_csv(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers = r.headers().expect("header").clone();
    r.records()
        .map(|rec| {
            let rec = rec.expect("row");
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// A decimal string as exact micro-units, so "150" and "150.0" compare equal and 0.1+0.2 noise
/// cannot hide.
pub fn micros(text: &str) -> i64 {
    let t = text.trim();
    let (neg, t) = t.strip_prefix('-').map_or((false, t), |r| (true, r));
    let (i, f) = t.split_once('.').unwrap_or((t, ""));
    assert!(f.len() <= 6, "more than 6 decimals in {text}");
    let v = i.parse::<i64>().expect("integer part") * 1_000_000
        + format!("{f:0<6}").parse::<i64>().expect("fraction");
    if neg { -v } else { v }
}

pub const RFM_SQL: &str = "SELECT customer_id, frequency, monetary, recency_days, r_score, f_score, m_score, rfm_segment FROM customers ORDER BY customer_id";

/// The package directory, read when the test runs: cargo sets it for test processes, and a
/// test binary reused from a checkout elsewhere (one shared target dir) must not look there.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

/// Replays the golden events into `dir/golden.redb` (dead letters to `dir/dead.jsonl`): the
/// store's path and the replay's summary.
pub fn replay_golden(dir: &Path) -> (PathBuf, String) {
    let store = dir.join("golden.redb");
    let out = run_ok(&[
        "--config",
        path_str(&golden("patron.toml")),
        "replay",
        "--input",
        path_str(&golden("events.jsonl")),
        "--store",
        path_str(&store),
        "--dead-letter",
        path_str(&dir.join("dead.jsonl")),
    ]);
    (store, out)
}
