//! `patron export`: write a table to Parquet or CSV.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use patron_core::config::PatronConfig;
use patron_query::QueryEngine;
use patron_query::output::{ExportFormat, export};

use crate::{CmdResult, Failure};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum FormatArg {
    Parquet,
    Csv,
}

/// Export a table (customers, segments, kpi_daily, offer_stats) to a file.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    #[arg(long, value_name = "NAME")]
    table: String,
    #[arg(long, value_enum)]
    format: FormatArg,
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The clock for time-relative columns (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "TS")]
    as_of: Option<String>,
}

pub(crate) fn run(args: ExportArgs, config: PatronConfig) -> CmdResult {
    if !patron_query::sql::TABLES.contains(&args.table.as_str()) {
        return Err(Failure::Usage(format!(
            "unknown table `{}` (tables: {})",
            args.table,
            patron_query::sql::TABLES.join(", ")
        )));
    }
    let store = super::open_existing(&super::store_path(args.store, &config), &config)?;
    let snapshot = super::query::build_snapshot(&store, &config, args.as_of.as_deref())?;
    let rt = super::runtime()?;
    let batches = rt
        .block_on(async { QueryEngine::new(&snapshot)?.table(&args.table).await })
        .map_err(Failure::runtime)?;
    let schema = match args.table.as_str() {
        "customers" => patron_query::snapshot::customers_schema(),
        "segments" => snapshot.segments.schema(),
        "kpi_daily" => snapshot.kpi_daily.schema(),
        _ => snapshot.offer_stats.schema(),
    };
    let format = match args.format {
        FormatArg::Parquet => ExportFormat::Parquet,
        FormatArg::Csv => ExportFormat::Csv,
    };
    let rows = export(&batches, schema, format, &args.out).map_err(Failure::runtime)?;
    println!(
        "exported {rows} rows of {} to {}",
        args.table,
        args.out.display()
    );
    Ok(())
}
