//! `patron query`: read-only SQL over a store.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use patron_core::config::PatronConfig;
use patron_query::output::{OutputFormat, write_results};
use patron_query::{QueryEngine, Snapshot, SnapshotOptions};

use crate::settings::parse_as_of;
use crate::{CmdResult, Failure};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
    Table,
    Csv,
    Json,
}

/// Run read-only SQL over a store that no running server holds.
///
/// Tables: customers, segments, kpi_daily, offer_stats. DDL, DML and COPY are refused.
///
/// Example:
///   patron query --store shop.redb "SELECT rfm_segment, count(*) FROM customers GROUP BY 1"
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The store to read. Default: `[store] path`.
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// The clock for recency and other time-relative columns (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "TS")]
    as_of: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: FormatArg,
    /// The SQL statement.
    sql: String,
}

pub(crate) fn build_snapshot(
    store: &patron_store::Store,
    config: &PatronConfig,
    as_of: Option<&str>,
) -> Result<Snapshot, Failure> {
    let mut opts = SnapshotOptions::from_config(config);
    opts.as_of = as_of.map(parse_as_of).transpose().map_err(Failure::Usage)?;
    if let Some(model) = patron_query::clv::load_model(store).map_err(Failure::runtime)? {
        opts.clv = Some((model.model(), model.options(&config.clv)));
    }
    Snapshot::build_beside_store(store, &opts).map_err(|e| match e {
        patron_query::QueryError::SegmentPredicate { .. } => Failure::Usage(e.to_string()),
        other => Failure::runtime(other),
    })
}

pub(crate) fn run(args: QueryArgs, config: PatronConfig) -> CmdResult {
    let store = super::open_existing(&super::store_path(args.store, &config), &config)?;
    let snapshot = build_snapshot(&store, &config, args.as_of.as_deref())?;
    let rt = super::runtime()?;
    let batches = rt.block_on(async {
        let engine = QueryEngine::new(&snapshot)?;
        engine.sql(&args.sql).await
    });
    let batches = batches.map_err(|e| match e {
        patron_query::QueryError::Refused(_) | patron_query::QueryError::DataFusion(_) => {
            Failure::Usage(e.to_string())
        }
        other => Failure::runtime(other),
    })?;
    let format = match args.format {
        FormatArg::Table => OutputFormat::Table,
        FormatArg::Csv => OutputFormat::Csv,
        FormatArg::Json => OutputFormat::Json,
    };
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    write_results(&batches, format, &mut lock).map_err(Failure::runtime)
}
