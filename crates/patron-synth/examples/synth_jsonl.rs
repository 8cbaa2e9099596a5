//! Writes a synthetic stream as JSON lines to stdout, for poking at the generator before the
//! `patron generate` command is at hand, and prints a summary to stderr.
//!
//! `cargo run --release -p patron-synth --example synth_jsonl -- CUSTOMERS DAYS SEED [BAD_RATE
//! [SEGMENT_SPEC_RATE [DUPLICATE_RATE]]]`

use std::io::{BufWriter, Write};

use patron_synth::{Generator, SynthConfig};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let cfg = SynthConfig {
        customers: arg(0).and_then(|s| s.parse().ok()).unwrap_or(1_000),
        days: arg(1).and_then(|s| s.parse().ok()).unwrap_or(365),
        seed: arg(2).and_then(|s| s.parse().ok()).unwrap_or(42),
        bad_rate: arg(3).and_then(|s| s.parse().ok()).unwrap_or(0.0),
        segment_spec_rate: arg(4).and_then(|s| s.parse().ok()).unwrap_or(0.0),
        duplicate_rate: arg(5).and_then(|s| s.parse().ok()).unwrap_or(0.0),
        ..SynthConfig::default()
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut stream = Generator::new(cfg);
    let (mut lines, mut bytes, mut max_live, mut duplicates) = (0u64, 0u64, 0usize, 0u64);
    let mut rejects = std::collections::BTreeMap::<&str, u64>::new();
    while let Some(e) = stream.next() {
        out.write_all(&e.payload)?;
        out.write_all(b"\n")?;
        lines += 1;
        duplicates += u64::from(e.duplicate);
        if let Some(r) = e.expected_reject {
            *rejects.entry(r).or_default() += 1;
        }
        bytes += e.payload.len() as u64 + 1;
        if lines % 1024 == 0 {
            max_live = max_live.max(stream.live_customers());
        }
    }
    out.flush()?;
    eprintln!(
        "lines={lines} bytes={bytes} max_live_customers={max_live} duplicates={duplicates} \
         rejects={rejects:?}"
    );
    Ok(())
}
