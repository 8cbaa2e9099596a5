//! `patron generate`: a seeded synthetic event stream with known BG/NBD + Gamma-Gamma truth.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use patron_stream::kafka::produce::EventProducer;
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
    /// True BG/NBD parameters `r,alpha,a,b` (rates per day). Default: the generator's.
    #[arg(long, value_name = "R,ALPHA,A,B", value_parser = params::<4>)]
    bgnbd: Option<[f64; 4]>,
    /// True Gamma-Gamma parameters `p,q,gamma`. Default: the generator's.
    #[arg(long, value_name = "P,Q,GAMMA", value_parser = params::<3>)]
    gamma_gamma: Option<[f64; 3]>,
}

fn params<const N: usize>(text: &str) -> Result<[f64; N], String> {
    let v: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    v.try_into()
        .map_err(|_| format!("expected {N} comma-separated numbers"))
}

pub(crate) fn run(args: GenerateArgs) -> CmdResult {
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
    let mut cfg = cfg;
    if let Some([r, alpha, a, b]) = args.bgnbd {
        cfg.bgnbd = patron_synth::TrueBgNbd { r, alpha, a, b };
    }
    if let Some([p, q, gamma]) = args.gamma_gamma {
        cfg.gamma_gamma = patron_synth::TrueGammaGamma { p, q, gamma };
    }
    let generator = Generator::try_new(cfg).map_err(|e| Failure::Usage(e.to_string()))?;
    let truth = generator.truth();
    if let Some(brokers) = &args.kafka {
        let topic = args.topic.as_deref().expect("clap requires --topic");
        return produce(generator, brokers, topic);
    }
    let out = args.out.expect("clap requires --out without --kafka");
    if out.extension().is_some_and(|e| e == "parquet") {
        if args.bad_rate > 0.0 || args.segment_spec_rate > 0.0 {
            return Err(Failure::Usage(
                "Parquet output holds native events only: drop --bad-rate and --segment-spec-rate, or write JSONL".into(),
            ));
        }
        let events: Vec<Vec<u8>> = generator.map(|e| e.payload).collect();
        let rows = patron_stream::events_parquet::write_events_parquet(
            events.iter().map(Vec::as_slice),
            &out,
        )
        .map_err(Failure::runtime)?;
        write_truth(&out, &truth)?;
        eprintln!(
            "wrote {rows} events for {} customers to {}",
            args.customers,
            out.display()
        );
        return Ok(());
    }
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
        write_truth(&out, &truth)?;
        eprintln!(
            "wrote {n} events for {} customers to {}",
            args.customers,
            out.display()
        );
    }
    Ok(())
}

/// Produces every event keyed by customer (or anonymous) id, waiting for acknowledgements.
fn produce(generator: Generator, brokers: &str, topic: &str) -> CmdResult {
    let mut producer = EventProducer::new(brokers, topic).map_err(Failure::runtime)?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} events produced ({per_sec}) {elapsed}")
            .expect("valid template"),
    );
    for (n, ev) in generator.enumerate() {
        producer
            .send(ev.key.as_bytes(), &ev.payload)
            .map_err(Failure::runtime)?;
        if n % 10_000 == 0 {
            bar.set_position(n as u64);
        }
    }
    producer
        .flush(std::time::Duration::from_secs(120))
        .map_err(Failure::runtime)?;
    bar.finish_and_clear();
    eprintln!(
        "produced {} events to {topic} on {brokers}",
        producer.sent()
    );
    Ok(())
}

/// The true parameters go next to the output as `<out>.truth.json`.
fn write_truth(out: &std::path::Path, truth: &patron_synth::Truth) -> CmdResult {
    let mut path = out.to_path_buf().into_os_string();
    path.push(".truth.json");
    let path = PathBuf::from(path);
    let json = serde_json::to_string_pretty(truth).expect("truth serialises");
    std::fs::write(&path, json).map_err(|e| Failure::Runtime(format!("{}: {e}", path.display())))
}
