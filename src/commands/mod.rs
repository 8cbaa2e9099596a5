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

pub(crate) fn open_existing(path: &Path) -> Result<Store, Failure> {
    Store::open_existing(path).map_err(|e| match e {
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
