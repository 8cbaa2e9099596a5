//! `GET /v1/segments` and `GET /v1/segments/{name}/customers`: counts and value per segment,
//! and the members of one, paged by customer id.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type, UInt8Type};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use patron_core::config::Role;
use patron_core::time::to_rfc3339;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ErrorBody;
use crate::{ApiError, ApiState};

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentList {
    /// The clock the segments were computed at (RFC 3339).
    pub as_of: Option<String>,
    pub segments: Vec<SegmentSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentSummary {
    pub name: String,
    /// `rfm` for a segment of the RFM map (and `Prospect`), `user` for a `[[segments]]` one.
    pub kind: String,
    pub customers: i64,
    /// Purchases minus refunds of its members, base currency.
    pub revenue: f64,
    /// Mean CLV of its members; null without a fitted model.
    pub avg_clv: Option<f64>,
}

/// Counts and value of every segment.
#[utoipa::path(
    get,
    path = "/v1/segments",
    tag = "segments",
    responses(
        (status = 200, description = "every segment", body = SegmentList),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not reader or above", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_segments(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<SegmentList>, ApiError> {
    state.auth.require(&headers, Role::Reader)?;
    let view = state.views.get(&state.store, &state.config).await?;
    let t = &view.snapshot.segments;
    let col = |name: &str| t.column_by_name(name).expect("segments column");
    let names = col("name").as_string::<i32>();
    let customers = col("customers").as_primitive::<Int64Type>();
    let revenue = col("revenue").as_primitive::<Float64Type>();
    let avg_clv = col("avg_clv").as_primitive::<Float64Type>();
    let segments = (0..t.num_rows())
        .map(|i| {
            let name = names.value(i).to_owned();
            let user = view.predicates.iter().any(|(n, _)| *n == name);
            SegmentSummary {
                kind: if user { "user" } else { "rfm" }.to_owned(),
                name,
                customers: customers.value(i),
                revenue: revenue.value(i),
                avg_clv: avg_clv.is_valid(i).then(|| avg_clv.value(i)),
            }
        })
        .collect();
    Ok(Json(SegmentList {
        as_of: view.snapshot.as_of.map(to_rfc3339),
        segments,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// The last customer id of the previous page (its `next_cursor`); omit for the first page.
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentMembers {
    pub segment: String,
    pub as_of: Option<String>,
    pub customers: Vec<SegmentMember>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentMember {
    pub customer_id: String,
    pub rfm_segment: String,
    pub frequency: i64,
    pub monetary: f64,
    pub r_score: Option<u8>,
    pub f_score: Option<u8>,
    pub m_score: Option<u8>,
    pub clv: Option<f64>,
}

/// Members of one segment in customer-id order. The cursor is the last id of the previous
/// page, so paging is stable while customers join or leave.
#[utoipa::path(
    get,
    path = "/v1/segments/{name}/customers",
    tag = "segments",
    params(
        ("name" = String, Path, description = "segment name, e.g. `Champions` or a `[[segments]]` name"),
        PageParams,
    ),
    responses(
        (status = 200, description = "one page of members", body = SegmentMembers),
        (status = 400, description = "limit out of range", body = ErrorBody),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not reader or above", body = ErrorBody),
        (status = 404, description = "no such segment", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn segment_customers(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SegmentMembers>, ApiError> {
    state.auth.require(&headers, Role::Reader)?;
    let Query(page) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let view = state.views.get(&state.store, &state.config).await?;
    if !view.has_segment(&name) {
        return Err(ApiError::not_found(format!("no segment `{name}`")));
    }
    let cursor = page.cursor.as_deref();
    let mut members = Vec::with_capacity(limit.min(64));
    let mut more = false;
    // The batches are in customer-id order (a key-ordered scan of the store).
    'scan: for b in &view.snapshot.customers {
        let col = |n: &str| b.column_by_name(n).expect("customers column");
        let ids = col("customer_id").as_string::<i32>();
        let rfm = col("rfm_segment").as_string::<i32>();
        let lists = col("segments").as_list::<i32>();
        let freq = col("frequency").as_primitive::<Int64Type>();
        let money = col("monetary").as_primitive::<Float64Type>();
        let clv = col("clv").as_primitive::<Float64Type>();
        let (r, f, m) = (
            col("r_score").as_primitive::<UInt8Type>(),
            col("f_score").as_primitive::<UInt8Type>(),
            col("m_score").as_primitive::<UInt8Type>(),
        );
        let opt = |a: &arrow::array::PrimitiveArray<UInt8Type>, i: usize| {
            a.is_valid(i).then(|| a.value(i))
        };
        for i in 0..b.num_rows() {
            let id = ids.value(i);
            if cursor.is_some_and(|c| id <= c) {
                continue;
            }
            let member = rfm.value(i) == name || {
                let l = lists.value(i);
                let s = l.as_string::<i32>();
                (0..s.len()).any(|j| s.value(j) == name)
            };
            if !member {
                continue;
            }
            if members.len() == limit {
                more = true;
                break 'scan;
            }
            members.push(SegmentMember {
                customer_id: id.to_owned(),
                rfm_segment: rfm.value(i).to_owned(),
                frequency: freq.value(i),
                monetary: money.value(i),
                r_score: opt(r, i),
                f_score: opt(f, i),
                m_score: opt(m, i),
                clv: clv.is_valid(i).then(|| clv.value(i)),
            });
        }
    }
    let next_cursor = more
        .then(|| members.last().map(|m| m.customer_id.clone()))
        .flatten();
    Ok(Json(SegmentMembers {
        segment: name,
        as_of: view.snapshot.as_of.map(to_rfc3339),
        customers: members,
        next_cursor,
    }))
}
