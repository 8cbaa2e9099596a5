//! `patron generate`: a seeded synthetic event stream with known BG/NBD + Gamma-Gamma truth.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use patron_synth::{Generator, SynthConfig};

use crate::{CmdResult, Failure};

/// Generate synthetic events from a BG/NBD + Gamma-Gamma process whose parameters are known.
///
/// Purchases (with items and categories), refunds, interactions, identify and alias events,
/// in time order. `--bad-rate` mixes in invalid events, one kind per rejection rule;
/// `--segment-spec-rate` writes a share in Segment Spec form. The true parameters are written
/// next to the output as `<out>.truth.json`.
///
/// Example:
///   patron generate --customers 10000 --days 365 --seed 7 --out events.jsonl
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    #[arg(long, default_value_t = 1000)]
    customers: u64,
    #[arg(long, default_value_t = 365)]
    days: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output JSONL file (`-` for stdout).
    #[arg(long, value_name = "FILE", required_unless_present = "kafka")]
    out: Option<PathBuf>,
    /// Produce to Kafka brokers instead (needs --topic).
    #[arg(
        long,
        value_name = "BROKERS",
        requires = "topic",
        conflicts_with = "out"
    )]
    kafka: Option<String>,
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
    /// Share of lines replaced by invalid events (0..1).
    #[arg(long, default_value_t = 0.0)]
    bad_rate: f64,
    /// Share of events written in Segment Spec form (0..1).
    #[arg(long, default_value_t = 0.0)]
    segment_spec_rate: f64,
    /// Share of events re-sent as exact producer duplicates (0..1).
    #[arg(long, default_value_t = 0.0)]
    duplicate_rate: f64,
    /// First day of the period (YYYY-MM-DD).
    #[arg(long, default_value = "2025-01-01")]
    start: String,
}

pub(crate) fn run(args: GenerateArgs) -> CmdResult {
    if args.kafka.is_some() {
        return Err(Failure::Usage(
            "--kafka output is not available in this build yet; use --out".into(),
        ));
    }
    let start = crate::settings::parse_as_of(&args.start).map_err(Failure::Usage)?;
    let cfg = SynthConfig {
        customers: args.customers,
        days: args.days,
        seed: args.seed,
        start: chrono::DateTime::from_timestamp_millis(start).unwrap_or_default(),
        bad_rate: args.bad_rate,
        segment_spec_rate: args.segment_spec_rate,
        duplicate_rate: args.duplicate_rate,
        ..SynthConfig::default()
    };
    let generator = Generator::try_new(cfg).map_err(|e| Failure::Usage(e.to_string()))?;
    let truth = generator.truth();
    let out = args.out.expect("clap requires --out without --kafka");
    let to_stdout = out.as_os_str() == "-";
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = std::fs::File::create(&out)
            .map_err(|e| Failure::Runtime(format!("{}: {e}", out.display())))?;
        Box::new(BufWriter::with_capacity(1 << 20, f))
    };
    let bar = if to_stdout {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} events ({per_sec}) {elapsed}")
            .expect("valid template"),
    );
    let mut n = 0u64;
    let io = |e: std::io::Error| Failure::Runtime(format!("{}: {e}", out.display()));
    for ev in generator {
        sink.write_all(&ev.payload).map_err(io)?;
        sink.write_all(b"\n").map_err(io)?;
        n += 1;
        if n.is_multiple_of(10_000) {
            bar.set_position(n);
        }
    }
    sink.flush().map_err(io)?;
    bar.finish_and_clear();
    if !to_stdout {
        let mut truth_path = out.clone().into_os_string();
        truth_path.push(".truth.json");
        let json = serde_json::to_string_pretty(&truth).expect("truth serialises");
        std::fs::write(&truth_path, json).map_err(|e| {
            Failure::Runtime(format!("{}: {e}", PathBuf::from(&truth_path).display()))
        })?;
        eprintln!(
            "wrote {n} events for {} customers to {}",
            args.customers,
            out.display()
        );
    }
    Ok(())
}
