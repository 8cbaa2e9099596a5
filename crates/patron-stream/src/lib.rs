//! Sources and the decode → apply → checkpoint pipeline.
//!
//! Layout:
//! - [`applier`]: the writer side: cached profiles, identity merges, daily totals, checkpoints.
//! - [`dead_letter`]: the file dead-letter sink, truncated to its committed length on reopen.
//! - [`events_parquet`]: the Parquet layout of native events (written by `generate`).
//! - [`kafka`]: the Kafka source, dead-letter topic, embedded broker, status and metrics.
//! - [`input`]: file inputs (JSONL, CSV with a column mapping, Parquet) as positioned records.
//! - [`replay`]: `patron replay` over files: read, decode in parallel, apply in order, checkpoint.

pub mod applier;
pub mod dead_letter;
pub mod events_parquet;
pub mod input;
pub mod kafka;
pub mod replay;

use std::path::PathBuf;

/// Errors of the streaming layer, naming the file or source at fault.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    /// A usage mistake, such as a CSV column that does not exist (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The broker or the Kafka client failed.
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Store(#[from] patron_store::StoreError),
}

impl StreamError {
    pub fn is_usage(&self) -> bool {
        matches!(self, StreamError::Usage(_))
    }
}

pub type Result<T, E = StreamError> = std::result::Result<T, E>;
