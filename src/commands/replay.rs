//! `patron replay`: rebuild or continue a store from files.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use patron_core::config::PatronConfig;
use patron_store::Store;
use patron_stream::input::{CsvMapping, InputFormat};
use patron_stream::replay::{ReplayOptions, ReplayProgress, ReplaySummary, replay};

use crate::{CmdResult, Failure};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
    Jsonl,
    Csv,
    Parquet,
}

/// Rebuild state from event files, with a progress bar, then exit.
///
/// Each file's position is checkpointed with the state, so re-running a file applies nothing
/// twice and a killed replay resumes where it stopped. Rejected records go to the dead-letter
/// file with their reasons; the exit code is still 0.
///
/// Example, a shop's order export:
///   patron replay --input orders.csv --store shop.redb --customer-col email \
///     --ts-col created_at --ts-format '%Y-%m-%d %H:%M:%S' --amount-col total
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// Input files (JSONL, CSV or Parquet), applied in the order given.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    input: Vec<PathBuf>,
    /// Input format; by default taken from each file's extension.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// The store to write (created if missing). Default: `[store] path`.
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// Where rejected records go, one JSON line each. Default: `<store>.dead-letters.jsonl`.
    #[arg(long, value_name = "PATH")]
    dead_letter: Option<PathBuf>,
    /// Kafka-style incremental source from a topic (available with the Kafka source).
    #[arg(long, hide = true)]
    from_kafka: bool,
    /// CSV: column with the customer id.
    #[arg(
        long,
        default_value = "customer_id",
        help_heading = "CSV column mapping"
    )]
    customer_col: String,
    /// CSV: column with the event time.
    #[arg(long, default_value = "ts", help_heading = "CSV column mapping")]
    ts_col: String,
    /// CSV: `rfc3339`, `unix` (seconds), `unix_ms`, or a strftime pattern like `%Y-%m-%d %H:%M:%S` (UTC).
    #[arg(long, default_value = "rfc3339", help_heading = "CSV column mapping")]
    ts_format: String,
    /// CSV: column with the amount.
    #[arg(long, default_value = "amount", help_heading = "CSV column mapping")]
    amount_col: String,
    /// CSV: field delimiter (one character; `\t` for tab).
    #[arg(long, default_value = ",", help_heading = "CSV column mapping")]
    delimiter: String,
    /// CSV: column holding `purchase` or `refund` (all rows are purchases without it).
    #[arg(long, help_heading = "CSV column mapping")]
    type_col: Option<String>,
    /// CSV: column with a unique event id (default: derived from the file and row position).
    #[arg(long, help_heading = "CSV column mapping")]
    event_id_col: Option<String>,
    /// CSV: column with the ISO 4217 currency.
    #[arg(long, help_heading = "CSV column mapping")]
    currency_col: Option<String>,
    /// CSV: column with the order id.
    #[arg(long, help_heading = "CSV column mapping")]
    order_id_col: Option<String>,
}

fn delimiter(text: &str) -> Result<u8, Failure> {
    match text {
        "\\t" | "tab" => Ok(b'\t'),
        t if t.len() == 1 && t.is_ascii() => Ok(t.as_bytes()[0]),
        t => Err(Failure::Usage(format!(
            "--delimiter `{t}` must be a single ASCII character"
        ))),
    }
}

pub(crate) fn run(args: ReplayArgs, config: PatronConfig) -> CmdResult {
    if args.from_kafka {
        return Err(Failure::Usage(
            "--from-kafka is not available in this build yet; replay files with --input".into(),
        ));
    }
    let store_path = super::store_path(args.store, &config);
    let dead_letter = args.dead_letter.unwrap_or_else(|| {
        let mut p = store_path.clone().into_os_string();
        p.push(".dead-letters.jsonl");
        PathBuf::from(p)
    });
    for p in &args.input {
        if !p.exists() {
            return Err(Failure::Runtime(format!("{}: no such file", p.display())));
        }
    }
    let opts = ReplayOptions {
        inputs: args.input,
        format: args.format.map(|f| match f {
            FormatArg::Jsonl => InputFormat::Jsonl,
            FormatArg::Csv => InputFormat::Csv,
            FormatArg::Parquet => InputFormat::Parquet,
        }),
        csv: CsvMapping {
            customer_col: args.customer_col,
            ts_col: args.ts_col,
            ts_format: args.ts_format,
            amount_col: args.amount_col,
            delimiter: delimiter(&args.delimiter)?,
            type_col: args.type_col,
            event_id_col: args.event_id_col,
            currency_col: args.currency_col,
            order_id_col: args.order_id_col,
        },
        dead_letter: dead_letter.clone(),
        batch_bytes: 4 << 20,
    };
    let store = Store::open(&store_path).map_err(Failure::runtime)?;
    let progress = Arc::new(ReplayProgress::default());
    let bar = spawn_progress_bar(progress.clone());
    let result = replay(store, &config, &opts, &progress);
    bar.finish_and_clear();
    let summary = result.map_err(|e| {
        if e.is_usage() {
            Failure::Usage(e.to_string())
        } else {
            Failure::runtime(e)
        }
    })?;
    print_summary(&summary, &store_path, &dead_letter);
    Ok(())
}

fn spawn_progress_bar(progress: Arc<ReplayProgress>) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} ETA {eta}",
        )
        .expect("valid template"),
    );
    let b = bar.clone();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while !b.is_finished() {
            b.set_length(progress.total_bytes.load(Ordering::Relaxed));
            b.set_position(progress.done_bytes.load(Ordering::Relaxed));
            let records = progress.records.load(Ordering::Relaxed);
            let rate = records as f64 / started.elapsed().as_secs_f64().max(1e-3);
            b.set_message(format!(
                "{records} events ({rate:.0}/s), {} rejected, {} duplicates",
                progress.rejected.load(Ordering::Relaxed),
                progress.duplicates.load(Ordering::Relaxed)
            ));
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    bar
}

fn print_summary(s: &ReplaySummary, store: &std::path::Path, dead_letter: &std::path::Path) {
    println!(
        "replay finished in {:.2}s: {} records, {:.0} events/s",
        s.elapsed.as_secs_f64(),
        s.records,
        s.events_per_second()
    );
    println!("  applied     {}", s.applied);
    println!("  duplicates  {}", s.duplicates);
    println!("  rejected    {}", s.rejected_total());
    for (reason, n) in &s.rejected {
        println!("    {reason:<18}{n}");
    }
    println!("  customers   {} ({} profiles)", s.customers, s.profiles);
    for f in &s.files {
        if f.records == 0 && f.started_at > 0 {
            println!(
                "  {}: already applied up to offset {}, nothing new",
                f.path.display(),
                f.started_at
            );
        }
    }
    println!("  store       {}", store.display());
    if s.rejected_total() > 0 {
        println!("  dead letters {}", dead_letter.display());
    }
}
