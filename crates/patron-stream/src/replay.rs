//! `patron replay` over files: read, decode in parallel, apply in order, checkpoint.
//!
//! Threads: one reader per file turns bytes into record batches and decodes each batch on the
//! rayon pool (decoding is pure and order-free); a bounded channel of two batches carries them
//! to the calling thread, which owns the [`Applier`] and applies records in file order. A
//! checkpoint commits the state together with the file's next offset, so a killed replay resumes
//! exactly where its last checkpoint ended and a re-run of a finished file applies nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use patron_core::config::PatronConfig;
use patron_core::decode::{Decoder, Rejection};
use patron_core::event::Event;
use patron_core::state::{ApplyContext, ApplyOutcome};
use patron_core::time::now_millis;
use patron_store::{SourcePosition, Store};
use rayon::prelude::*;

use crate::applier::{Applier, CheckpointStats};
use crate::dead_letter::DeadLetterFile;
use crate::input::{
    CsvInput, CsvMapping, Input, InputFormat, JsonlReader, ParquetInput, RawBatch, fingerprint,
};
use crate::{Result, StreamError};

const REPLAY_MIN_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// When a replay (of files, or of a topic to its end) checkpoints before its end.
///
/// With events in time order almost every checkpoint rewrites most cached profiles, so a
/// checkpoint costs about the size of the state, not the work since the last one: 4 s for a
/// first write of 500,000 profiles (docs/BENCHMARKS.md, File replay). A replay checkpoints no
/// sooner than `[checkpoint] interval` (raised to 10 s) and than [`Self::COST_FACTOR`] times
/// what the next checkpoint is expected to cost, so checkpoints before the last take at most
/// about a tenth of the run. A crash re-reads the input since the last checkpoint: at most 10 s,
/// or about 70 s with a full cache. `max_events` and a full cache still checkpoint at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayPacing {
    interval: Duration,
    /// What a checkpoint costs per profile written: learnt from the last large one.
    per_profile: Duration,
}

impl ReplayPacing {
    /// Applying goes on this many times as long as a checkpoint takes.
    const COST_FACTOR: u32 = 9;
    /// The cost per profile before any is measured: a first write of 500,000 profiles took 4 s.
    const PRIOR_PER_PROFILE: Duration = Duration::from_micros(8);
    /// Smaller checkpoints are mostly fixed costs (the commit's sync) and teach nothing.
    const LEARN_FROM_PROFILES: usize = 10_000;

    pub(crate) fn new(configured: Duration) -> Self {
        Self {
            interval: configured.max(REPLAY_MIN_CHECKPOINT_INTERVAL),
            per_profile: Self::PRIOR_PER_PROFILE,
        }
    }

    /// The least time from one checkpoint to the next, with what `applier` holds now.
    pub(crate) fn min_gap(&self, applier: &Applier) -> Duration {
        // Profiles dirtied since the last checkpoint: at most one per record applied, and at
        // most what the cache holds.
        let dirty = applier.uncommitted().min(applier.cached_profiles() as u64);
        let expected = self
            .per_profile
            .saturating_mul(u32::try_from(dirty).unwrap_or(u32::MAX));
        self.interval
            .max(expected.saturating_mul(Self::COST_FACTOR))
    }

    pub(crate) fn observe(&mut self, stats: CheckpointStats) {
        if stats.profiles >= Self::LEARN_FROM_PROFILES {
            self.per_profile = stats.duration / u32::try_from(stats.profiles).unwrap_or(u32::MAX);
        }
    }
}

/// Replay over files always applies as partition 0 of its source.
pub const FILE_PARTITION: u32 = 0;

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub inputs: Vec<PathBuf>,
    /// Forces a format; otherwise it comes from each file's extension.
    pub format: Option<InputFormat>,
    pub csv: CsvMapping,
    pub dead_letter: PathBuf,
    pub batch_bytes: usize,
}

/// Live counters a progress bar can poll.
#[derive(Debug, Default)]
pub struct ReplayProgress {
    pub total_bytes: AtomicU64,
    pub done_bytes: AtomicU64,
    pub records: AtomicU64,
    pub applied: AtomicU64,
    pub rejected: AtomicU64,
    pub duplicates: AtomicU64,
    /// Set by a signal handler: stop after the current batch, checkpoint, return.
    pub stop: AtomicBool,
}

#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    pub source: String,
    pub started_at: u64,
    pub ended_at: u64,
    pub records: u64,
}

/// What this run did (not the store's lifetime totals).
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    pub records: u64,
    pub applied: u64,
    pub duplicates: u64,
    /// Events dropped because their customer was erased after them.
    pub erased: u64,
    pub rejected: BTreeMap<String, u64>,
    pub customers: u64,
    pub profiles: u64,
    pub elapsed: Duration,
    pub checkpoints: u64,
    pub checkpoint_max: Duration,
    pub files: Vec<FileReport>,
    pub interrupted: bool,
}

impl ReplaySummary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    pub fn events_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

type Decoded = (RawBatch, Vec<std::result::Result<Event, Rejection>>);

pub fn replay(
    store: Store,
    config: &PatronConfig,
    opts: &ReplayOptions,
    progress: &ReplayProgress,
) -> Result<ReplaySummary> {
    let started = Instant::now();
    let decoder = Decoder::from_config(config);
    let mut applier = Applier::open(store, ApplyContext::from_config(config))?;
    let mut dead = {
        let key = opts.dead_letter.display().to_string();
        let committed = applier
            .counters()
            .dead_letter_len
            .get(&key)
            .copied()
            .unwrap_or(0);
        DeadLetterFile::open(&opts.dead_letter, committed)?
    };
    let mut summary = ReplaySummary::default();

    // Resolve every file's format and position before reading, so usage errors come first.
    let mut plans = Vec::new();
    for path in &opts.inputs {
        let meta = std::fs::metadata(path).map_err(|e| StreamError::Io {
            path: path.clone(),
            source: e,
        })?;
        if meta.is_dir() {
            return Err(StreamError::Input {
                path: path.clone(),
                message: "is a directory, not an input file".into(),
            });
        }
        let format = opts.format.or_else(|| InputFormat::from_path(path)).ok_or_else(|| {
            StreamError::Usage(format!("{}: cannot tell the format from the extension; pass --format jsonl|csv|parquet", path.display()))
        })?;
        let fp = fingerprint(path)?;
        let source = format!("file:{fp}");
        let start = applier
            .position(&source, FILE_PARTITION)?
            .map_or(0, |p| p.next_offset);
        if format != InputFormat::Parquet && start > meta.len() {
            return Err(StreamError::Input {
                path: path.clone(),
                message: format!(
                    "the store has read this file up to byte {start}, but it is only {} bytes long",
                    meta.len()
                ),
            });
        }
        let input = match format {
            InputFormat::Jsonl => Input::Jsonl(JsonlReader::open(path, start, opts.batch_bytes)?),
            InputFormat::Csv => Input::Csv(Box::new(CsvInput::open(path, start, &opts.csv, &fp)?)),
            InputFormat::Parquet => Input::Parquet(Box::new(ParquetInput::open(path, start)?)),
        };
        let skip_bytes = if format == InputFormat::Parquet {
            0
        } else {
            start.min(meta.len())
        };
        progress
            .total_bytes
            .fetch_add(meta.len(), Ordering::Relaxed);
        progress.done_bytes.fetch_add(skip_bytes, Ordering::Relaxed);
        plans.push((path.clone(), source, fp, start, skip_bytes, input));
    }

    let max_events = config.checkpoint.max_events.max(1);
    let mut pacing = ReplayPacing::new(config.checkpoint.interval);
    let mut last_checkpoint = Instant::now();
    'files: for (path, source, fp, start, skip_bytes, mut input) in plans {
        let mut report = FileReport {
            path: path.clone(),
            source: source.clone(),
            started_at: start,
            ended_at: start,
            records: 0,
        };
        let mut done_bytes = skip_bytes;
        let source_label = path.display().to_string();
        let result: Result<()> = std::thread::scope(|scope| {
            let (tx, rx) = crossbeam_channel::bounded::<Result<Decoded>>(2);
            let decoder = &decoder;
            let stop = &progress.stop;
            scope.spawn(move || {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let batch = match input.next_batch() {
                        Ok(Some(b)) => b,
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                    };
                    let now = now_millis();
                    let decoded: Vec<_> = batch
                        .records
                        .par_iter()
                        .map(|r| decoder.decode(batch.payload(r), now))
                        .collect();
                    if tx.send(Ok((batch, decoded))).is_err() {
                        break;
                    }
                }
            });
            for msg in rx {
                let (batch, decoded) = msg?;
                for (record, result) in batch.records.iter().zip(decoded) {
                    match result {
                        Ok(event) => match applier.apply(&event, FILE_PARTITION)? {
                            ApplyOutcome::Applied => summary.applied += 1,
                            ApplyOutcome::Duplicate => summary.duplicates += 1,
                            ApplyOutcome::Erased => summary.erased += 1,
                        },
                        Err(rejection) => {
                            applier.record_rejection(rejection.reason);
                            *summary
                                .rejected
                                .entry(rejection.reason.code().to_owned())
                                .or_default() += 1;
                            dead.write(
                                &rejection,
                                &source_label,
                                FILE_PARTITION,
                                record.offset,
                                batch.original(record),
                            )?;
                        }
                    }
                }
                let n = batch.records.len() as u64;
                report.records += n;
                report.ended_at = batch.end_offset;
                summary.records += n;
                progress.records.fetch_add(n, Ordering::Relaxed);
                progress.applied.store(summary.applied, Ordering::Relaxed);
                progress
                    .duplicates
                    .store(summary.duplicates, Ordering::Relaxed);
                progress
                    .rejected
                    .store(summary.rejected_total(), Ordering::Relaxed);
                progress
                    .done_bytes
                    .fetch_add(batch.end_byte.saturating_sub(done_bytes), Ordering::Relaxed);
                done_bytes = batch.end_byte.max(done_bytes);
                applier.set_position(SourcePosition {
                    source: source.clone(),
                    partition: FILE_PARTITION,
                    next_offset: batch.end_offset,
                    incarnation: fp.clone(),
                });
                if applier.needs_checkpoint(max_events)
                    || last_checkpoint.elapsed() >= pacing.min_gap(&applier)
                {
                    pacing.observe(checkpoint(&mut applier, &mut dead, &mut summary)?);
                    last_checkpoint = Instant::now();
                }
            }
            Ok(())
        });
        result?;
        checkpoint(&mut applier, &mut dead, &mut summary)?;
        summary.files.push(report);
        if progress.stop.load(Ordering::Relaxed) {
            summary.interrupted = true;
            break 'files;
        }
    }

    (summary.profiles, summary.customers) =
        applier.store().reader()?.profile_and_customer_counts()?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn checkpoint(
    applier: &mut Applier,
    dead: &mut DeadLetterFile,
    summary: &mut ReplaySummary,
) -> Result<CheckpointStats> {
    let len = dead.flush()?;
    applier.set_dead_letter_len(&dead.key(), len);
    let stats = applier.checkpoint()?;
    summary.checkpoints += 1;
    summary.checkpoint_max = summary.checkpoint_max.max(stats.duration);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use patron_core::decode::Decoder;
    use patron_core::state::ApplyContext;
    use patron_core::time::now_millis;
    use patron_store::Store;

    use super::*;

    fn applier_with_customers(dir: &std::path::Path, n: usize) -> Applier {
        let store = Store::open(dir.join("state.redb")).expect("a store");
        let mut applier = Applier::open(store, ApplyContext::default()).expect("an applier");
        let decoder = Decoder::default();
        for i in 0..n {
            let json = format!(
                r#"{{"type":"purchase","event_id":"e{i}","ts":"2025-03-01T10:00:00Z","customer_id":"c{i}","amount":"10.00"}}"#
            );
            let event = decoder
                .decode(json.as_bytes(), now_millis())
                .expect("a valid purchase");
            applier.apply(&event, FILE_PARTITION).expect("applied");
        }
        applier
    }

    /// The gap is the interval (raised to 10 s) until nine times the expected checkpoint is
    /// longer; the expected cost per profile is learnt from large checkpoints only.
    #[test]
    fn a_replay_applies_nine_times_as_long_as_its_next_checkpoint_takes() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut pacing = ReplayPacing::new(Duration::from_secs(1));
        let empty = applier_with_customers(dir.path(), 0);
        assert_eq!(pacing.min_gap(&empty), Duration::from_secs(10));
        drop(empty);

        let dir = tempfile::tempdir().expect("a temp dir");
        let applier = applier_with_customers(dir.path(), 20_000);
        // The prior, 8 us a profile: 20,000 profiles are 0.16 s, times 9 is 1.44 s < 10 s.
        assert_eq!(pacing.min_gap(&applier), Duration::from_secs(10));
        // A large checkpoint measured 2 s for 20,000 profiles: 100 us each, so 2 s expected,
        // and 18 s before the next.
        pacing.observe(CheckpointStats {
            profiles: 20_000,
            duration: Duration::from_secs(2),
        });
        assert_eq!(pacing.min_gap(&applier), Duration::from_secs(18));
        // A small one is mostly its sync: it does not change the estimate.
        pacing.observe(CheckpointStats {
            profiles: 5,
            duration: Duration::from_secs(1),
        });
        assert_eq!(pacing.min_gap(&applier), Duration::from_secs(18));
        // A configured interval longer than that wins.
        let mut slow = ReplayPacing::new(Duration::from_secs(60));
        slow.observe(CheckpointStats {
            profiles: 20_000,
            duration: Duration::from_secs(2),
        });
        assert_eq!(slow.min_gap(&applier), Duration::from_secs(60));
    }
}
