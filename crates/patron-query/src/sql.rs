//! Read-only SQL over a snapshot.
//!
//! The session only knows the four Patron tables, held in memory. Statements are planned with
//! DDL, DML and other statements disabled, so `CREATE EXTERNAL TABLE`, `COPY`, `INSERT` and
//! `SET` are refused before anything runs. URL tables (`SELECT * FROM 'file.csv'`) are not
//! enabled and no file-reading table function is registered, so SQL cannot read server files.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::snapshot::Snapshot;
use crate::{QueryError, Result};

pub const TABLES: [&str; 4] = ["customers", "segments", "kpi_daily", "offer_stats"];

pub struct QueryEngine {
    ctx: SessionContext,
}

fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

impl QueryEngine {
    pub fn new(snapshot: &Snapshot) -> Result<Self> {
        let config = SessionConfig::new()
            .with_information_schema(false)
            .with_target_partitions(2);
        let ctx = SessionContext::new_with_config(config);
        let register = |name: &str, batches: Vec<RecordBatch>, schema| -> Result<()> {
            let table = MemTable::try_new(schema, vec![batches])?;
            ctx.register_table(name, Arc::new(table))?;
            Ok(())
        };
        register(
            "customers",
            snapshot.customers.clone(),
            crate::snapshot::customers_schema(),
        )?;
        register(
            "segments",
            vec![snapshot.segments.clone()],
            snapshot.segments.schema(),
        )?;
        register(
            "kpi_daily",
            vec![snapshot.kpi_daily.clone()],
            snapshot.kpi_daily.schema(),
        )?;
        register(
            "offer_stats",
            vec![snapshot.offer_stats.clone()],
            snapshot.offer_stats.schema(),
        )?;
        Ok(Self { ctx })
    }

    /// Plans and runs one read-only statement.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let df = self
            .ctx
            .sql_with_options(sql, read_only())
            .await
            .map_err(refusal)?;
        Ok(df.collect().await?)
    }

    /// `SELECT * FROM table`, for exports.
    pub async fn table(&self, name: &str) -> Result<Vec<RecordBatch>> {
        if !TABLES.contains(&name) {
            return Err(QueryError::UnknownTable(name.to_owned()));
        }
        Ok(self.ctx.table(name).await?.collect().await?)
    }
}

/// Turns DataFusion's "not allowed" planning errors into explicit refusals.
fn refusal(e: datafusion::error::DataFusionError) -> QueryError {
    let msg = e.to_string();
    if msg.contains("not supported")
        && (msg.contains("DDL") || msg.contains("DML") || msg.contains("Statement"))
    {
        QueryError::Refused(format!(
            "only read-only queries are allowed ({})",
            msg.trim()
        ))
    } else {
        QueryError::DataFusion(e)
    }
}
