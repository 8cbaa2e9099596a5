//! `patron demo`: a first look at Patron with nothing to install.
//!
//! Until the streaming server lands, the demo runs the batch loop end to end: it generates a
//! realistic synthetic stream, replays it into a fresh store, fits the CLV models and prints the
//! segment map and the most valuable customers.

use std::path::PathBuf;

use clap::Args;
use patron_core::config::PatronConfig;

use crate::{CmdResult, Failure};

/// Generate a synthetic stream, replay it, fit CLV and show segments (no setup needed).
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many synthetic customers.
    #[arg(long, default_value_t = 20_000)]
    customers: u64,
    /// Working directory for the events file and the store.
    #[arg(long, value_name = "DIR", default_value = "patron-demo")]
    dir: PathBuf,
}

pub(crate) fn run(args: DemoArgs, config: PatronConfig) -> CmdResult {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| Failure::Runtime(format!("{}: {e}", args.dir.display())))?;
    let events = args.dir.join("events.jsonl");
    let store = args.dir.join("demo.redb");
    if store.exists() {
        std::fs::remove_file(&store)
            .map_err(|e| Failure::Runtime(format!("{}: {e}", store.display())))?;
    }
    let bin = std::env::current_exe().map_err(Failure::runtime)?;
    let step = |title: &str, argv: &[&str]| -> CmdResult {
        println!("\n== {title}\n$ patron {}", argv.join(" "));
        let status = std::process::Command::new(&bin)
            .args(argv)
            .status()
            .map_err(Failure::runtime)?;
        if status.success() {
            Ok(())
        } else {
            Err(Failure::Runtime(format!("demo step `{title}` failed")))
        }
    };
    let (ev, st) = (events.display().to_string(), store.display().to_string());
    let customers = args.customers.to_string();
    // Two years that end today, so no event is dated in the future.
    let start = (chrono::Utc::now() - chrono::Duration::days(730))
        .format("%Y-%m-%d")
        .to_string();
    step(
        "generate",
        &[
            "generate",
            "--customers",
            &customers,
            "--days",
            "730",
            "--start",
            &start,
            "--seed",
            "7",
            "--bad-rate",
            "0.002",
            "--duplicate-rate",
            "0.01",
            "--segment-spec-rate",
            "0.1",
            "--out",
            &ev,
        ],
    )?;
    step("replay", &["replay", "--input", &ev, "--store", &st])?;
    step("fit", &["fit", "--store", &st])?;
    step(
        "segments",
        &[
            "query",
            "--store",
            &st,
            "SELECT name, customers, round(revenue, 2) AS revenue, round(avg_clv, 2) AS avg_clv FROM segments WHERE customers > 0",
        ],
    )?;
    step(
        "top customers by CLV",
        &[
            "query",
            "--store",
            &st,
            "SELECT customer_id, frequency, round(monetary, 2) AS monetary, r_score, f_score, m_score, rfm_segment, round(p_alive, 3) AS p_alive, round(clv, 2) AS clv FROM customers ORDER BY clv DESC NULLS LAST LIMIT 10",
        ],
    )?;
    let _ = config;
    println!(
        "\nThe store is {st}; try: patron query --store {st} \"SELECT * FROM customers LIMIT 5\""
    );
    Ok(())
}
