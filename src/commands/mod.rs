//! One module per subcommand.

pub(crate) mod demo;
pub(crate) mod export;
pub(crate) mod fit;
pub(crate) mod generate;
pub(crate) mod keys;
pub(crate) mod query;
pub(crate) mod replay;
pub(crate) mod serve;

use std::path::{Path, PathBuf};

use patron_core::config::PatronConfig;
use patron_store::Store;

use crate::Failure;

/// `--store` wins over `[store] path`.
pub(crate) fn store_path(flag: Option<PathBuf>, config: &PatronConfig) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(&config.store.path))
}

/// `[store] cache_mb` in bytes.
pub(crate) fn store_cache(config: &PatronConfig) -> usize {
    config.store.cache_mb.saturating_mul(1 << 20)
}

/// Opens (or creates) the store at `path` with the configured page cache.
pub(crate) fn open_store(path: &Path, config: &PatronConfig) -> Result<Store, Failure> {
    Store::open_cached(path, store_cache(config)).map_err(Failure::runtime)
}

pub(crate) fn open_existing(path: &Path, config: &PatronConfig) -> Result<Store, Failure> {
    Store::open_existing_cached(path, store_cache(config)).map_err(|e| match e {
        patron_store::StoreError::Missing { .. } => Failure::Usage(e.to_string()),
        other => Failure::runtime(other),
    })
}

/// The async runtime of `serve`, `query` and `export`: one worker per core (tokio's default;
/// `TOKIO_WORKER_THREADS` overrides it), so the API uses every core of a larger host.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)
}
