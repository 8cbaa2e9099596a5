//! `POST /v1/query`: read-only SQL over the cached view's tables.
//!
//! Read-only is enforced by `patron-query`'s session (DDL, DML and statements are refused at
//! planning; no URL tables or file-reading functions exist). Here come the limits: a query runs
//! at most `timeout` and returns at most `max_rows` rows. A `SELECT`/`WITH` is wrapped in an
//! outer `LIMIT max_rows + 1`, so a huge result is cut off in the engine rather than
//! materialised; one row too many means the client must narrow its query.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use patron_core::config::Role;
use patron_query::output::{OutputFormat, write_results};
use patron_query::{QueryEngine, QueryError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ErrorBody, JsonBody};
use crate::{ApiError, ApiState};

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub max_rows: usize,
    pub timeout: Duration,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_rows: 100_000,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One read-only SQL statement over `customers`, `segments`, `kpi_daily`, `offer_stats`.
    pub sql: String,
}

/// The JSON answer (Arrow IPC stream answers carry only the batches).
#[derive(Debug, Serialize, ToSchema)]
pub struct QueryResult {
    pub columns: Vec<String>,
    /// One object per row, keyed by column name (null columns are omitted).
    #[schema(value_type = Vec<Object>)]
    pub rows: Box<serde_json::value::RawValue>,
    pub row_count: usize,
}

/// Runs one read-only SQL statement.
#[utoipa::path(
    post,
    path = "/v1/query",
    tag = "query",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "the rows, as JSON or (with `Accept: application/vnd.apache.arrow.stream`) an Arrow IPC stream",
            content(
                (QueryResult = "application/json"),
                (String = "application/vnd.apache.arrow.stream"),
            )),
        (status = 400, description = "invalid or refused SQL (DDL, DML, COPY, statements), too many rows, or over the time limit", body = ErrorBody),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not admin", body = ErrorBody),
        (status = 413, description = "body over [api] max_body_bytes", body = ErrorBody),
        (status = 415, description = "the body is not sent as application/json", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn run_query(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<JsonBody<QueryRequest>, ApiError>,
) -> Result<Response, ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let JsonBody(req) = body?;
    let sql = req.sql.trim().trim_end_matches(';').trim();
    if sql.is_empty() {
        return Err(ApiError::bad_request("invalid_sql", "sql is empty"));
    }
    let limits = state.query_limits;
    let view = state.views.get(&state.store, &state.config).await?;
    let engine = QueryEngine::new(&view.snapshot).map_err(ApiError::internal)?;
    let statement = limited(sql, limits.max_rows);
    let batches = match tokio::time::timeout(limits.timeout, engine.sql(&statement)).await {
        Err(_) => {
            return Err(ApiError::bad_request(
                "query_timeout",
                format!(
                    "the query ran longer than the {:.1} s limit",
                    limits.timeout.as_secs_f64()
                ),
            ));
        }
        Ok(Err(e)) => return Err(query_error(e)),
        Ok(Ok(b)) => b,
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows > limits.max_rows {
        return Err(ApiError::bad_request(
            "too_many_rows",
            format!(
                "the query returns more than {} rows; add a LIMIT or aggregate",
                limits.max_rows
            ),
        ));
    }
    let arrow = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(ARROW_STREAM));
    if arrow {
        arrow_stream(&batches)
    } else {
        json_rows(&batches, rows)
    }
}

/// Wraps a query so the engine stops after one row more than allowed.
fn limited(sql: &str, max_rows: usize) -> String {
    let head = sql
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if head == "select" || head == "with" {
        format!(
            "SELECT * FROM (\n{sql}\n) AS patron_limited LIMIT {}",
            max_rows + 1
        )
    } else {
        sql.to_owned()
    }
}

fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::Refused(m) => ApiError::bad_request("refused", m),
        QueryError::DataFusion(e) => {
            ApiError::bad_request("invalid_sql", e.strip_backtrace().trim().to_owned())
        }
        QueryError::Arrow(e) => ApiError::bad_request("invalid_sql", e.to_string()),
        other => ApiError::internal(other),
    }
}

fn json_rows(batches: &[arrow::array::RecordBatch], rows: usize) -> Result<Response, ApiError> {
    let columns = batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    let mut buf = Vec::new();
    if batches.is_empty() {
        buf.extend_from_slice(b"[]");
    } else {
        write_results(batches, OutputFormat::Json, &mut buf).map_err(ApiError::internal)?;
    }
    let text = String::from_utf8(buf).map_err(ApiError::internal)?;
    let trimmed = text.trim();
    let rows_json = serde_json::value::RawValue::from_string(if trimmed.is_empty() {
        "[]".to_owned()
    } else {
        trimmed.to_owned()
    })
    .map_err(ApiError::internal)?;
    let body = QueryResult {
        columns,
        rows: rows_json,
        row_count: rows,
    };
    Ok(axum::Json(body).into_response())
}

fn arrow_stream(batches: &[arrow::array::RecordBatch]) -> Result<Response, ApiError> {
    let Some(first) = batches.first() else {
        // No batch means no schema: an empty stream still needs one, so answer an empty
        // schema.
        let schema = arrow::datatypes::Schema::empty();
        let mut buf = Vec::new();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema)
            .map_err(ApiError::internal)?;
        w.finish().map_err(ApiError::internal)?;
        drop(w);
        return Ok(arrow_response(buf));
    };
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &first.schema())
        .map_err(ApiError::internal)?;
    for b in batches {
        w.write(b).map_err(ApiError::internal)?;
    }
    w.finish().map_err(ApiError::internal)?;
    drop(w);
    Ok(arrow_response(buf))
}

fn arrow_response(buf: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static(ARROW_STREAM))],
        buf,
    )
        .into_response()
}
