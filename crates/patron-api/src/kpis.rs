//! Monitoring: `GET /v1/kpis`, `/v1/kpis/cohorts`, `/v1/kpis/history`, `/v1/objectives`, and
//! segment exports (`GET /v1/segments/{name}/export`).
//!
//! The KPI set needs a scan of every profile, so it is computed with the cached scoring view
//! (see [`crate::view`]), at most once per `[kpi] refresh_interval`. Cohorts, history and
//! objectives come from aggregates that view already holds (monthly activity counts, daily
//! totals), so no request scans the store. Every response carries `as_of` (the clock the figures
//! are computed at) and `computed_at` (when the view was built).
//!
//! The definitions are in `patron_query::kpi`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use patron_core::config::{ObjectiveConfig, Role};
use patron_core::time::to_rfc3339;
use patron_query::kpi::{self, CohortRow, DayKpis, KpiSet, ObjectiveStatus};
use patron_query::output::{ChunkedExport, ExportFormat};
use patron_query::snapshot::customers_schema;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ErrorBody;
use crate::view::View;
use crate::{ApiError, ApiState};

/// `GET /v1/kpis`. Money in base currency; rates are fractions in 0..1, null when their
/// denominator is empty.
#[derive(Debug, Serialize, ToSchema)]
pub struct KpisResponse {
    /// The clock the KPIs are computed at (RFC 3339); null for an empty store.
    pub as_of: Option<String>,
    /// When they were computed (RFC 3339, wall clock).
    pub computed_at: String,
    /// Profiles with at least one purchase.
    pub customers: u64,
    /// Profiles with no purchase.
    pub prospects: u64,
    /// Customers whose last purchase is within `[kpi] active_window` of as_of.
    pub active_customers: u64,
    /// First purchases in the 30 UTC days ending with as_of's day.
    pub new_customers_30d: i64,
    /// Gross purchases in those 30 days.
    pub revenue_30d: f64,
    pub orders_30d: u64,
    /// Gross purchases / purchases, all customers, all time.
    pub avg_order_value: Option<f64>,
    /// Share of customers with frequency ≥ 2.
    pub repeat_purchase_rate: Option<f64>,
    /// Share of the customers active in the previous calendar month who are active this month.
    pub retention_rate: Option<f64>,
    /// 1 − retention_rate.
    pub churn_rate: Option<f64>,
    /// Share of scored customers with p_alive < 0.5; null without a CLV model.
    pub predicted_churn_rate: Option<f64>,
    /// customers / (customers + prospects).
    pub conversion_rate: Option<f64>,
    /// Offers accepted / offers shown over the 30 days.
    pub offer_acceptance_rate_30d: Option<f64>,
    /// Conversion of treated minus holdout; null until offer outcomes exist.
    pub offer_uplift: Option<f64>,
    /// Mean CLV; null without a CLV model.
    pub avg_clv: Option<f64>,
    pub total_clv: Option<f64>,
    /// Profiles per rfm_segment, `Prospect` included.
    pub segments: BTreeMap<String, u64>,
    /// 5 × 5 customer counts: `rfm_grid[r_score - 1][f_score - 1]`.
    pub rfm_grid: Vec<Vec<u64>>,
}

impl KpisResponse {
    pub fn new(k: &KpiSet, computed_at: i64) -> Self {
        Self {
            as_of: k.as_of.map(to_rfc3339),
            computed_at: to_rfc3339(computed_at),
            customers: k.customers,
            prospects: k.prospects,
            active_customers: k.active_customers,
            new_customers_30d: k.new_customers_30d,
            revenue_30d: k.revenue_30d,
            orders_30d: k.orders_30d,
            avg_order_value: k.avg_order_value,
            repeat_purchase_rate: k.repeat_purchase_rate,
            retention_rate: k.retention_rate,
            churn_rate: k.churn_rate,
            predicted_churn_rate: k.predicted_churn_rate,
            conversion_rate: k.conversion_rate,
            offer_acceptance_rate_30d: k.offer_acceptance_rate_30d,
            offer_uplift: k.offer_uplift,
            avg_clv: k.avg_clv,
            total_clv: k.total_clv,
            segments: k.segments.clone(),
            rfm_grid: k.rfm_grid.iter().map(|row| row.to_vec()).collect(),
        }
    }
}

/// The KPI set.
#[utoipa::path(get, path = "/v1/kpis", tag = "kpis",
    responses(
        (status = 200, description = "every KPI as of as_of", body = KpisResponse),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not reader or above", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_kpis(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<KpisResponse>, ApiError> {
    let view = reader_view(&state, &headers).await?;
    Ok(Json(KpisResponse::new(&view.kpis, view.computed_at)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CohortsResponse {
    pub as_of: Option<String>,
    pub computed_at: String,
    /// One row per first-purchase month, oldest first.
    pub cohorts: Vec<Cohort>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Cohort {
    /// First-purchase month, `YYYY-MM`.
    pub cohort: String,
    /// Customers whose first purchase is in that month.
    pub customers: u64,
    /// `retention[k]`: share of the cohort with a purchase k months after its first month,
    /// k = 0 (always 1) up to as_of's month.
    pub retention: Vec<f64>,
}

impl From<CohortRow> for Cohort {
    fn from(c: CohortRow) -> Self {
        Self {
            cohort: c.cohort,
            customers: c.customers,
            retention: c.retention,
        }
    }
}

/// The cohort retention matrix: first-purchase month × months since.
#[utoipa::path(get, path = "/v1/kpis/cohorts", tag = "kpis",
    responses(
        (status = 200, description = "the cohort matrix", body = CohortsResponse),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not reader or above", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_cohorts(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<CohortsResponse>, ApiError> {
    let view = reader_view(&state, &headers).await?;
    Ok(Json(CohortsResponse::new(&view)))
}

impl CohortsResponse {
    pub fn new(view: &View) -> Self {
        let snapshot = &view.snapshot;
        Self {
            as_of: snapshot.as_of.map(to_rfc3339),
            computed_at: to_rfc3339(view.computed_at),
            cohorts: kpi::cohorts(&snapshot.population, snapshot.as_of)
                .into_iter()
                .map(Cohort::from)
                .collect(),
        }
    }
}

pub const DEFAULT_HISTORY_DAYS: u32 = 90;
pub const MAX_HISTORY_DAYS: u32 = 3660;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// How many days up to as_of's day, 1 to 3660 (default 90).
    pub days: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    pub as_of: Option<String>,
    pub computed_at: String,
    /// Every day from `days` before as_of's day (or the first day with data, if later) to
    /// as_of's day, oldest first.
    pub days: Vec<HistoryDay>,
}

/// One day of event time (UTC): its totals, and the KPIs that are exact for the end of that
/// day. Active customers, retention, RFM and CLV figures are not in the history: they depend
/// on state that later events overwrite.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryDay {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Gross purchases that day.
    pub revenue: f64,
    /// Refunds that day (amount).
    pub refunded: f64,
    pub orders: u64,
    pub refunds: u64,
    /// Customers whose first purchase is that day.
    pub new_customers: i64,
    pub interactions: u64,
    pub offers_shown: u64,
    pub offers_accepted: u64,
    pub offers_declined: u64,
    /// That day's revenue / orders.
    pub avg_order_value: Option<f64>,
    /// Customers whose first purchase is on or before that day.
    pub customers: i64,
    pub new_customers_30d: i64,
    pub revenue_30d: f64,
    pub orders_30d: u64,
    pub offer_acceptance_rate_30d: Option<f64>,
    /// The whole KPI set (as `GET /v1/kpis`) as last computed while this was the newest event
    /// day; null for days no server computed live (for example days only replayed).
    #[schema(value_type = Option<Object>)]
    pub kpis: Option<serde_json::Value>,
}

impl From<DayKpis> for HistoryDay {
    fn from(d: DayKpis) -> Self {
        Self {
            date: d.date,
            revenue: d.revenue,
            refunded: d.refunded,
            orders: d.orders,
            refunds: d.refunds,
            new_customers: d.new_customers,
            interactions: d.interactions,
            offers_shown: d.offers_shown,
            offers_accepted: d.offers_accepted,
            offers_declined: d.offers_declined,
            avg_order_value: d.avg_order_value,
            customers: d.customers,
            new_customers_30d: d.new_customers_30d,
            revenue_30d: d.revenue_30d,
            orders_30d: d.orders_30d,
            offer_acceptance_rate_30d: d.offer_acceptance_rate_30d,
            kpis: None,
        }
    }
}

/// Daily KPI snapshots by day of event time.
#[utoipa::path(get, path = "/v1/kpis/history", tag = "kpis",
    params(HistoryParams),
    responses(
        (status = 200, description = "one entry per day", body = HistoryResponse),
        (status = 400, description = "days out of range", body = ErrorBody),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not reader or above", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_history(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryResponse>, ApiError> {
    state.auth.require(&headers, Role::Reader)?;
    let Query(params) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let days = params.days.unwrap_or(DEFAULT_HISTORY_DAYS);
    if !(1..=MAX_HISTORY_DAYS).contains(&days) {
        return Err(ApiError::bad_request(
            "invalid_days",
            format!("days must be between 1 and {MAX_HISTORY_DAYS}"),
        ));
    }
    let view = state.views.get(&state.store, &state.config).await?;
    let mut history = HistoryResponse::new(&view, days);
    attach_snapshots(&state.store, &mut history)?;
    Ok(Json(history))
}

/// Adds each day's stored KPI snapshot.
fn attach_snapshots(
    store: &patron_store::Store,
    history: &mut HistoryResponse,
) -> Result<(), ApiError> {
    let day = |d: &HistoryDay| {
        chrono::NaiveDate::parse_from_str(&d.date, "%Y-%m-%d")
            .ok()
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(|t| patron_core::time::day_index(t.and_utc().timestamp_millis()))
    };
    let (Some(from), Some(to)) = (
        history.days.first().and_then(day),
        history.days.last().and_then(day),
    ) else {
        return Ok(());
    };
    let stored: std::collections::HashMap<i32, Vec<u8>> = store
        .kpi_snapshots(from, to)
        .map_err(ApiError::internal)?
        .into_iter()
        .collect();
    for d in &mut history.days {
        if let Some(json) = day(d).and_then(|k| stored.get(&k)) {
            d.kpis = serde_json::from_slice(json).ok();
        }
    }
    Ok(())
}

impl HistoryResponse {
    /// The last `days` days up to as_of's day.
    pub fn new(view: &View, days: u32) -> Self {
        Self {
            as_of: view.snapshot.as_of.map(to_rfc3339),
            computed_at: to_rfc3339(view.computed_at),
            days: kpi::history(&view.snapshot, days)
                .into_iter()
                .map(HistoryDay::from)
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectivesResponse {
    pub as_of: Option<String>,
    pub computed_at: String,
    /// One entry per `[[objectives]]`, in config order.
    pub objectives: Vec<Objective>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Objective {
    pub name: String,
    /// The KPI tracked, a field of `GET /v1/kpis`.
    pub kpi: String,
    /// The KPI now; null while the KPI is null.
    pub current: Option<f64>,
    pub baseline: f64,
    /// The absolute target (a relative one such as "-25%" resolved against the baseline).
    pub target: Option<f64>,
    /// (current − baseline) / (target − baseline): 0 at the baseline, 1 at the target, not
    /// clamped.
    pub progress: Option<f64>,
    /// Whether current is at or beyond `expected` in the target's direction.
    pub on_track: Option<bool>,
    /// Where a straight line from the baseline at `start` to the target at `deadline` is at
    /// as_of.
    pub expected: Option<f64>,
    /// The line's start: the configured `start`, else the first day with data (RFC 3339).
    pub start: Option<String>,
    /// RFC 3339 (a bare date is midnight UTC).
    pub deadline: Option<String>,
    /// Set when the config entry is invalid; the other figures are then null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<ObjectiveStatus> for Objective {
    fn from(o: ObjectiveStatus) -> Self {
        Self {
            name: o.name,
            kpi: o.kpi,
            current: o.current,
            baseline: o.baseline,
            target: o.target,
            progress: o.progress,
            on_track: o.on_track,
            expected: o.expected,
            start: o.start,
            deadline: o.deadline,
            error: o.error,
        }
    }
}

/// Progress of each `[[objectives]]` entry against a straight line from baseline to target.
#[utoipa::path(get, path = "/v1/objectives", tag = "kpis",
    responses(
        (status = 200, description = "every objective", body = ObjectivesResponse),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not reader or above", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_objectives(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<ObjectivesResponse>, ApiError> {
    let view = reader_view(&state, &headers).await?;
    Ok(Json(ObjectivesResponse::new(
        &view,
        &state.config.objectives,
    )))
}

impl ObjectivesResponse {
    pub fn new(view: &View, objectives: &[ObjectiveConfig]) -> Self {
        let start = kpi::data_start(&view.snapshot);
        Self {
            as_of: view.snapshot.as_of.map(to_rfc3339),
            computed_at: to_rfc3339(view.computed_at),
            objectives: kpi::objectives(objectives, &view.kpis, start)
                .into_iter()
                .map(Objective::from)
                .collect(),
        }
    }
}

/// Keeps the scoring view, and with it the KPI set, fresh in the background: asks the view
/// cache every half `[kpi] refresh_interval`, so the rebuild (a full scan) happens here rather
/// than in the first request after the view expires. Runs until its task is dropped (spawn it
/// on the server's runtime).
pub async fn keep_view_fresh(state: Arc<ApiState>) {
    let period = state
        .config
        .kpi
        .refresh_interval
        .max(std::time::Duration::from_secs(1))
        / 2;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = state.views.refresh(&state.store, &state.config).await {
            tracing::warn!(code = e.code, "background view refresh failed");
        }
    }
}

async fn reader_view(state: &ApiState, headers: &HeaderMap) -> Result<Arc<View>, ApiError> {
    state.auth.require(headers, Role::Reader)?;
    state.views.get(&state.store, &state.config).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `csv` (default) or `parquet`.
    pub format: Option<String>,
}

/// Rows per streamed CSV chunk; Parquet writes one row group per snapshot batch instead.
const CSV_CHUNK_ROWS: usize = 8192;

/// The members of one segment as a file: the `customers` columns, in customer-id order,
/// streamed (the body is produced batch by batch, never held whole).
#[utoipa::path(get, path = "/v1/segments/{name}/export", tag = "segments",
    params(
        ("name" = String, Path, description = "segment name, e.g. `Champions` or a `[[segments]]` name"),
        ExportParams,
    ),
    responses(
        (status = 200, description = "CSV with a header row, or Parquet",
            content((String = "text/csv"), (Vec<u8> = "application/vnd.apache.parquet"))),
        (status = 400, description = "unknown format", body = ErrorBody),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not reader or above", body = ErrorBody),
        (status = 404, description = "no such segment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn export_segment(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<ExportParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    state.auth.require(&headers, Role::Reader)?;
    let Query(params) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let (format, content_type, ext) = match params.format.as_deref().unwrap_or("csv") {
        "csv" => (ExportFormat::Csv, "text/csv; charset=utf-8", "csv"),
        "parquet" => (
            ExportFormat::Parquet,
            "application/vnd.apache.parquet",
            "parquet",
        ),
        other => {
            return Err(ApiError::bad_request(
                "invalid_format",
                format!("format must be csv or parquet, not `{other}`"),
            ));
        }
    };
    let view = state.views.get(&state.store, &state.config).await?;
    if !view.has_segment(&name) {
        return Err(ApiError::not_found(format!("no segment `{name}`")));
    }
    let encoder = ChunkedExport::new(format, customers_schema()).map_err(ApiError::internal)?;
    // Header-safe file name: the segment name with anything but [A-Za-z0-9_-] as `_`.
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!("attachment; filename=\"{stem}.{ext}\"");
    // A small bound: the encoder runs at most a few chunks ahead of a slow client.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = produce_export(&view, &name, format, encoder, &tx) {
            tracing::error!(segment = %name, error = %e, "segment export failed mid-stream");
            let _ = tx.blocking_send(Err(std::io::Error::other("export failed")));
        }
    });
    let mut response = Body::from_stream(ChunkStream(rx)).into_response();
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

type Chunk = Result<Vec<u8>, std::io::Error>;

/// Filters the view's `customers` batches to the segment and sends the encoded chunks. Stops
/// quietly when the client has gone (the receiver is dropped).
fn produce_export(
    view: &View,
    segment: &str,
    format: ExportFormat,
    mut encoder: ChunkedExport,
    tx: &tokio::sync::mpsc::Sender<Chunk>,
) -> Result<(), String> {
    let send = |bytes: Vec<u8>| bytes.is_empty() || tx.blocking_send(Ok(bytes)).is_ok();
    for batch in &view.snapshot.customers {
        let members = arrow::compute::filter_record_batch(batch, &membership(batch, segment))
            .map_err(|e| e.to_string())?;
        let step = match format {
            ExportFormat::Csv => CSV_CHUNK_ROWS,
            ExportFormat::Parquet => members.num_rows().max(1),
        };
        let mut offset = 0;
        while offset < members.num_rows() {
            let len = step.min(members.num_rows() - offset);
            let bytes = encoder
                .write(&members.slice(offset, len))
                .map_err(|e| e.to_string())?;
            if !send(bytes) {
                return Ok(());
            }
            offset += len;
        }
    }
    let tail = encoder.finish().map_err(|e| e.to_string())?;
    send(tail);
    Ok(())
}

/// Rows whose `rfm_segment` is `segment` or whose user segments include it.
fn membership(batch: &RecordBatch, segment: &str) -> BooleanArray {
    let rfm = batch
        .column_by_name("rfm_segment")
        .expect("customers column")
        .as_string::<i32>();
    let lists = batch
        .column_by_name("segments")
        .expect("customers column")
        .as_list::<i32>();
    (0..batch.num_rows())
        .map(|i| {
            Some(
                rfm.value(i) == segment || {
                    let l = lists.value(i);
                    let names = l.as_string::<i32>();
                    (0..names.len()).any(|j| names.value(j) == segment)
                },
            )
        })
        .collect()
}

/// The receiving end of the export channel as a body stream.
struct ChunkStream(tokio::sync::mpsc::Receiver<Chunk>);

impl futures_core::Stream for ChunkStream {
    type Item = Chunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        self.0.poll_recv(cx)
    }
}
