//! The embedded redb store: per-customer state, source positions and counters, committed
//! together.
//!
//! The store is synchronous. One writer (the pipeline's writer thread) commits [`Checkpoint`]s;
//! any number of readers open MVCC read snapshots through [`StoreReader`] without waiting on it.
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

pub mod checkpoint;
pub mod codec;
pub mod offers;
pub mod reader;
pub mod scan;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::ReadableDatabase;

pub use checkpoint::{
    Checkpoint, DailyTotals, DeadLetterRecord, ErasureCounters, ProfileWrite, SourcePosition,
    StoreCounters,
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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the store, creating the file and its tables when missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(parent);
        }
        let db = redb::Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Self {
            db: Arc::new(db),
            path,
        };
        tables::initialise(&store.db, &store.path)?;
        Ok(store)
    }

    /// Opens a store that must already exist (query, export, fit).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        if !p.exists() {
            return Err(StoreError::Missing {
                path: p.to_path_buf(),
            });
        }
        Self::open(p)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A consistent read snapshot. Never waits on the writer.
    pub fn reader(&self) -> Result<StoreReader> {
        StoreReader::new(self.db.begin_read()?)
    }

    /// Commits one checkpoint in one durable write transaction.
    pub fn commit(&self, checkpoint: &Checkpoint) -> Result<()> {
        checkpoint::commit(&self.db, checkpoint)
    }

    /// Writes one named singleton (a fitted model) in its own transaction.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(tables::META)?;
            meta.insert(key, value)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Bytes the file occupies on disk.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}
