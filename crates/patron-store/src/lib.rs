//! The embedded redb store: per-customer state, source positions and counters, committed
//! together.
//!
//! The store is synchronous. One writer (the pipeline's writer thread) commits [`Checkpoint`]s;
//! any number of readers open MVCC read snapshots through [`StoreReader`] without waiting on it.
//! Point reads that only need the latest committed state share one snapshot
//! ([`Store::snapshot`]), replaced after each commit, instead of opening their own.
//! The table layout, key encoding and invariants are in `docs/STATE_FORMAT.md`.
//!
//! Layout:
//! - [`tables`]: table definitions and the format version.
//! - [`codec`]: the compact binary encoding of records.
//! - [`checkpoint`]: the atomic unit of writing: profiles, aliases, daily totals, positions,
//!   counters.
//! - [`reader`]: point lookups with alias resolution, and full scans.
//! - [`scan`]: scans as Arrow `RecordBatch`es.
//! - [`offers`]: the offer catalog, contact histories and learning counts.
//! - [`changelog`]: the changelog outbox (keys each checkpoint changed) and restoring a
//!   partition from a changelog image.

pub mod changelog;
pub mod checkpoint;
pub mod codec;
pub mod offers;
pub mod reader;
pub mod scan;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use redb::ReadableDatabase;

pub use changelog::{
    ChangeKind, ChangedKey, ChangelogSeed, PartitionImage, RestoreStats, SeedCursor,
};
pub use checkpoint::{
    Checkpoint, DailyTotals, DeadLetterRecord, ErasureCounters, ProfileWrite, RouteKind,
    RoutedRecord, ScopedId, SourcePosition, StoreCounters,
};
pub use offers::{ContactRecord, OfferCounts};
pub use reader::{StoreReader, StoredProfile};

/// Everything that can go wrong in the store, with the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("store {path} does not exist")]
    Missing { path: PathBuf },
    #[error("store {path} has format version {found}, this build reads version {expected}")]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("store transaction failed: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("store table error: {0}")]
    Table(#[from] redb::TableError),
    #[error("store I/O error: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("store commit failed: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("corrupt record in table {table} at key {key}: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on one store file. Cheap to clone; all clones share the database.
#[derive(Clone)]
pub struct Store {
    db: Arc<redb::Database>,
    path: PathBuf,
    latest: Arc<Latest>,
}

/// The latest committed state, as a shared read snapshot.
///
/// Opening a snapshot (a read transaction and its tables) costs more than the point read a
/// request makes, so requests share one until the next commit. A commit drops it, so a snapshot
/// never pins old pages longer than the requests still using it.
#[derive(Default)]
struct Latest {
    /// Bumped by every commit that changes customer state, counters or models.
    generation: AtomicU64,
    snapshot: RwLock<Option<Arc<StoreReader>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The page cache of [`Store::open`]: `[store] cache_mb`'s default.
pub const DEFAULT_CACHE_BYTES: usize = patron_core::config::DEFAULT_STORE_CACHE_MB << 20;

impl Store {
    /// Opens the store, creating the file and its tables when missing, with the default page
    /// cache ([`DEFAULT_CACHE_BYTES`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_cached(path, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with a page cache of at most `cache_bytes` (`[store] cache_mb`): reads,
    /// and writes buffered until their commit (half of it at most; more goes to the file early).
    pub fn open_cached(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(parent);
        }
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let store = Self {
            db: Arc::new(db),
            path,
            latest: Arc::default(),
        };
        tables::initialise(&store.db, &store.path)?;
        Ok(store)
    }

    /// Opens a store that must already exist (query, export, fit), with the default page cache.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_existing_cached(path, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open_existing`] with a page cache of at most `cache_bytes`.
    pub fn open_existing_cached(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Self> {
        let p = path.as_ref();
        if !p.exists() {
            return Err(StoreError::Missing {
                path: p.to_path_buf(),
            });
        }
        Self::open_cached(p, cache_bytes)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A consistent read snapshot of its own. Never waits on the writer.
    pub fn reader(&self) -> Result<StoreReader> {
        // Read before opening: the snapshot holds at least this generation's commits.
        let generation = self.generation();
        StoreReader::new(self.db.begin_read()?, generation)
    }

    /// A snapshot of the latest committed state, shared with other callers until the next
    /// commit. Never waits on the writer; the first caller after a commit opens it.
    pub fn snapshot(&self) -> Result<Arc<StoreReader>> {
        let slot = &self.latest.snapshot;
        if let Some(s) = slot.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(s.clone());
        }
        let fresh = Arc::new(self.reader()?);
        let mut current = slot.write().unwrap_or_else(|e| e.into_inner());
        // Kept only if no commit landed since it was opened (a commit drops the slot after
        // bumping the generation, so a snapshot is never kept past one).
        if current.is_none() && self.generation() == fresh.generation() {
            *current = Some(fresh.clone());
        }
        Ok(fresh)
    }

    /// How many commits have changed customer state, counters or models since the store was
    /// opened: equal generations mean equal data.
    pub fn generation(&self) -> u64 {
        self.latest.generation.load(Ordering::Acquire)
    }

    /// After a commit: the shared snapshot is out of date.
    fn committed(&self) {
        self.latest.generation.fetch_add(1, Ordering::AcqRel);
        *self
            .latest
            .snapshot
            .write()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Commits one checkpoint in one durable write transaction.
    pub fn commit(&self, checkpoint: &Checkpoint) -> Result<()> {
        checkpoint::commit(&self.db, checkpoint)?;
        self.committed();
        Ok(())
    }

    /// Writes one named singleton (a fitted model) in its own transaction.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(tables::META)?;
            meta.insert(key, value)?;
        }
        txn.commit()?;
        self.committed();
        Ok(())
    }

    /// Bytes the file occupies on disk.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patron_core::state::CustomerState;

    fn upsert(store: &Store, id: &str, frequency: u32) {
        let state = CustomerState {
            frequency,
            ..CustomerState::default()
        };
        let cp = Checkpoint {
            profiles: vec![ProfileWrite::upsert(id, 0, &state)],
            ..Checkpoint::default()
        };
        store.commit(&cp).unwrap();
    }

    #[test]
    fn the_shared_snapshot_lasts_until_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb")).unwrap();
        upsert(&store, "c1", 1);
        let g1 = store.generation();
        let a = store.snapshot().unwrap();
        let b = store.snapshot().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "no commit in between: one snapshot");
        assert_eq!(a.profile("c1").unwrap().unwrap().state.frequency, 1);

        upsert(&store, "c1", 2);
        assert_eq!(store.generation(), g1 + 1);
        let c = store.snapshot().unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "a commit replaces the snapshot");
        assert_eq!(c.profile("c1").unwrap().unwrap().state.frequency, 2);
        // Holders of the old snapshot keep reading what it held.
        assert_eq!(a.profile("c1").unwrap().unwrap().state.frequency, 1);

        store.put_meta("model", b"x").unwrap();
        assert_eq!(store.generation(), g1 + 2, "a model write is a change too");
        store.put_kpi_snapshot(1, b"{}").unwrap();
        assert_eq!(store.generation(), g1 + 2, "a KPI snapshot is not");
    }

    #[test]
    fn identity_records_of_an_older_build_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb")).unwrap();
        let current = RoutedRecord {
            kind: RouteKind::Merge,
            key: "carol".into(),
            other: Some("anon-7".into()),
            origin_partition: 3,
            origin_offset: 41,
            payload: vec![1, 2, 3],
            origin_ts: Some(1_700_000_000_000),
        };
        store
            .commit(&Checkpoint {
                routed: vec![(2, current.clone())],
                ..Checkpoint::default()
            })
            .unwrap();
        // A row as builds before `origin_ts` wrote it: postcard writes a struct as its fields in
        // order, so this tuple is that layout (kind, key, other, origin partition and offset,
        // payload).
        let older = (
            RouteKind::Handoff,
            "anon-9",
            Some("dave"),
            1u32,
            7u64,
            Vec::<u8>::new(),
        );
        let txn = store.db.begin_write().unwrap();
        txn.open_table(tables::ROUTE_OUTBOX)
            .unwrap()
            .insert(1, codec::encode(&older).as_slice())
            .unwrap();
        txn.commit().unwrap();

        let rows = store.reader().unwrap().pending_routed().unwrap();
        let expected_older = RoutedRecord {
            kind: RouteKind::Handoff,
            key: "anon-9".into(),
            other: Some("dave".into()),
            origin_partition: 1,
            origin_offset: 7,
            payload: Vec::new(),
            origin_ts: None,
        };
        assert_eq!(rows, vec![(1, expected_older), (2, current)]);
    }
}
