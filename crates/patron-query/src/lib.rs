//! Analytics over the store: the SQL tables, read-only SQL, and exports.
//!
//! A [`Snapshot`] reads the store once (one MVCC read transaction) and derives every
//! time-relative and population-relative column as of one `as_of`: recency, the rank-based RFM
//! scores, the segment, user-defined segment membership (the same SQL predicates the API uses)
//! and the CLV scores when a model is fitted. SQL runs in DataFusion over that snapshot with
//! DDL, DML and statements refused.
//!
//! Layout:
//! - [`snapshot`]: building the `customers`, `segments`, `kpi_daily` and `offer_stats` tables.
//! - [`kpi`]: the KPI set, cohort retention, objective progress and the daily KPI history.
//! - [`sql`]: the read-only session and query execution.
//! - [`clv`]: fitting the CLV models on the store's customer summaries; the stored model.
//! - [`output`]: table, CSV and JSON rendering; Parquet and CSV export.

pub mod clv;
pub mod kpi;
pub mod output;
pub mod snapshot;
pub mod spill;
pub mod sql;

pub use snapshot::{Snapshot, SnapshotOptions};
pub use sql::QueryEngine;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] patron_store::StoreError),
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("{0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("segment `{name}`: invalid predicate: {message}")]
    SegmentPredicate { name: String, message: String },
    #[error("SQL refused: {0}")]
    Refused(String),
    #[error("unknown table `{0}` (tables: customers, segments, kpi_daily, offer_stats)")]
    UnknownTable(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("CLV fit: {0}")]
    Fit(#[from] patron_core::clv::FitError),
    #[error("the store has no purchases to fit a model on")]
    NoCustomers,
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;
