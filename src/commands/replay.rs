//! `patron replay`: rebuild or continue a store from files.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use patron_core::config::PatronConfig;
use patron_stream::input::{CsvMapping, InputFormat};
use patron_stream::kafka::KafkaSource;
use patron_stream::kafka::ingest::{self, IngestOptions, Mode, StartAt};
use patron_stream::kafka::status::IngestStatus;
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
/// twice and a killed replay resumes where it stopped. A replay checkpoints at least 10 s apart
/// (so a crash re-reads at most that much), every `[checkpoint] max_events` records, and when
/// its cache of profiles is full. Rejected records go to the dead-letter file with their
/// reasons; the exit code is still 0.
///
/// Example, a shop's order export:
///   patron replay --input orders.csv --store shop.redb --customer-col email \
///     --ts-col created_at --ts-format '%Y-%m-%d %H:%M:%S' --amount-col total
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct ReplayArgs {
    /// Input files (JSONL, CSV or Parquet), applied in the order given.
    #[arg(long, required_unless_present = "from_kafka", num_args = 1.., value_name = "PATH")]
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
    /// Read a Kafka topic instead of files, up to its current end (needs --brokers, --topic,
    /// --until-end). Rejected records go to `[source] dlq_topic` on the same brokers.
    #[arg(long, conflicts_with = "input", requires_all = ["brokers", "topic", "until_end"], help_heading = "Kafka source")]
    from_kafka: bool,
    /// Bootstrap servers, e.g. `127.0.0.1:9092`.
    #[arg(long, value_name = "BROKERS", help_heading = "Kafka source")]
    brokers: Option<String>,
    /// The topic the events are in.
    #[arg(long, value_name = "TOPIC", help_heading = "Kafka source")]
    topic: Option<String>,
    /// Where partitions the store has never read start: `earliest`, or a time (RFC 3339 or
    /// YYYY-MM-DD) resolved with the broker's offsets-for-times. Partitions with a stored
    /// position resume from it.
    #[arg(
        long,
        value_name = "earliest|TS",
        default_value = "earliest",
        help_heading = "Kafka source"
    )]
    start: String,
    /// Stop at the end of every partition, as the fetch responses report it.
    #[arg(long, help_heading = "Kafka source")]
    until_end: bool,
    /// Read only these partitions (comma-separated), e.g. to rebuild one instance's share.
    /// Identify and alias merges with ids in other partitions then go through the topic, as
    /// between `serve` instances: run each share until nothing new arrives.
    #[arg(
        long,
        value_name = "P,..",
        value_delimiter = ',',
        requires = "from_kafka",
        help_heading = "Kafka source"
    )]
    partitions: Option<Vec<u32>>,
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
    let store_path = super::store_path(args.store.clone(), &config);
    if args.from_kafka {
        return from_kafka(args, config, store_path);
    }
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
    let store = super::open_store(&store_path, &config)?;
    let progress = Arc::new(ReplayProgress::default());
    let bar = spawn_progress_bar(progress.clone());
    let result = replay(store, &config, &opts, &progress);
    bar.finish_and_clear();
    let summary = result.map_err(failure)?;
    print_summary(&summary, &store_path, &dead_letter);
    Ok(())
}

fn from_kafka(args: ReplayArgs, config: PatronConfig, store_path: PathBuf) -> CmdResult {
    let start = match args.start.as_str() {
        "earliest" => StartAt::Earliest,
        ts => StartAt::Timestamp(crate::settings::parse_as_of(ts).map_err(|_| {
            Failure::Usage(format!(
                "--start `{ts}` is not `earliest`, an RFC 3339 timestamp or a YYYY-MM-DD date"
            ))
        })?),
    };
    let source = KafkaSource {
        brokers: args.brokers.expect("clap requires --brokers"),
        topic: args.topic.expect("clap requires --topic"),
        group_id: format!("{}-replay", config.source.group_id),
        dlq_topic: config.source.dlq_topic.clone(),
        incarnation: String::new(),
        // A replay rebuilds a store from the log; the changelog belongs to `serve`.
        changelog: false,
        changelog_seed_batch: config.source.changelog_seed_batch,
        session_timeout: config.source.session_timeout,
    };
    let status = Arc::new(IngestStatus::new(
        &source.position_key(),
        &source.topic,
        &source.dlq_topic,
    ));
    let opts = IngestOptions {
        source,
        mode: Mode::UntilEnd,
        start,
        partitions: args.partitions,
    };
    let store = super::open_store(&store_path, &config)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc_on_thread(stop);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records ({per_sec}) {msg}",
        )
        .expect("valid template"),
    );
    let watcher = {
        let (bar, status) = (bar.clone(), status.clone());
        std::thread::spawn(move || {
            while !bar.is_finished() {
                let report = status.report();
                let done = status.metrics.records.get();
                let left: u64 = report
                    .partitions
                    .iter()
                    .map(|p| {
                        p.high_watermark
                            .unwrap_or(0)
                            .saturating_sub(p.applied_offset)
                    })
                    .sum();
                bar.set_length(done + left);
                bar.set_position(done);
                bar.set_message(format!("{} rejected", status.rejected_total()));
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let result = ingest::run(store, &config, &opts, status, &stop);
    bar.finish_and_clear();
    let _ = watcher.join();
    let s = result.map_err(failure)?;
    print_counts(
        s.elapsed,
        s.records,
        s.applied,
        s.duplicates,
        s.erased,
        &s.rejected,
    );
    println!(
        "  checkpoints {} (p99 {:.1} ms)",
        s.checkpoints,
        s.checkpoint_p99.as_secs_f64() * 1e3
    );
    println!("  store       {}", store_path.display());
    if s.routed_out > 0 || s.routed_in > 0 || s.routed_copies > 0 {
        println!(
            "  identity    {} records sent to other partitions' owners, {} received, {} copies dropped",
            s.routed_out, s.routed_in, s.routed_copies
        );
    }
    if s.dead_letters_pending > 0 {
        println!(
            "  {} dead letters are committed but not yet in {}; the next run sends them",
            s.dead_letters_pending, config.source.dlq_topic
        );
    }
    if !s.stopped.is_empty() {
        let why: Vec<String> = s
            .stopped
            .iter()
            .map(|(p, m)| format!("partition {p}: {m}"))
            .collect();
        return Err(Failure::Runtime(why.join("; ")));
    }
    Ok(())
}

/// Ctrl-C or SIGTERM sets `stop`; the replay checkpoints and returns.
fn ctrlc_on_thread(stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        stop.store(true, Ordering::Relaxed);
    });
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

/// A stream error as a command failure: usage mistakes exit 2, the rest 1.
fn failure(e: patron_stream::StreamError) -> Failure {
    if e.is_usage() {
        Failure::Usage(e.to_string())
    } else {
        Failure::runtime(e)
    }
}

/// The lines every replay summary starts with.
fn print_counts(
    elapsed: Duration,
    records: u64,
    applied: u64,
    duplicates: u64,
    erased: u64,
    rejected: &std::collections::BTreeMap<String, u64>,
) {
    println!(
        "replay finished in {:.2}s: {records} records, {:.0} events/s",
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    println!("  applied     {applied}");
    println!("  duplicates  {duplicates}");
    if erased > 0 {
        println!("  erased      {erased} (customers erased after these events)");
    }
    println!("  rejected    {}", rejected.values().sum::<u64>());
    for (reason, n) in rejected {
        println!("    {reason:<18}{n}");
    }
}

fn print_summary(s: &ReplaySummary, store: &std::path::Path, dead_letter: &std::path::Path) {
    print_counts(
        s.elapsed,
        s.records,
        s.applied,
        s.duplicates,
        s.erased,
        &s.rejected,
    );
    println!("  customers   {} ({} profiles)", s.customers, s.profiles);
    println!(
        "  checkpoints {} (longest {:.1} ms)",
        s.checkpoints,
        s.checkpoint_max.as_secs_f64() * 1e3
    );
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
