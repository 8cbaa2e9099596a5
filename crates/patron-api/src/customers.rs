//! `GET /v1/customers/{id}`: one profile, read from a fresh read snapshot and scored against
//! the cached [`View`].

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder, TimestampMillisecondArray, UInt8Array,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use patron_core::config::{Clock, PatronConfig, Role};
use patron_core::rfm::PROSPECT;
use patron_core::state::CustomerState;
use patron_core::time::{MILLIS_PER_DAY, Millis, now_millis, to_rfc3339};
use patron_query::snapshot::customers_schema;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ErrorBody;
use crate::hot_cache::Tag;
use crate::view::View;
use crate::{ApiError, ApiState};

/// A customer profile: state, scores, segments, CLV, engagement, affinity, traits, aliases.
#[derive(Debug, Serialize, ToSchema)]
pub struct Profile {
    /// The canonical id (the requested id may have been an alias of it).
    pub customer_id: String,
    /// Ids merged into this profile (anonymous and previous ids).
    pub aliases: Vec<String>,
    /// The source partition that owns the profile.
    pub partition: u32,
    /// RFC 3339.
    pub first_purchase: Option<String>,
    pub last_purchase: Option<String>,
    /// Number of purchase events.
    pub frequency: u32,
    /// Purchases minus refunds, base currency.
    pub monetary: f64,
    /// Gross purchases / frequency.
    pub avg_order_value: Option<f64>,
    /// (as_of − last_purchase) in days.
    pub recency_days: Option<f64>,
    pub r_score: Option<u8>,
    pub f_score: Option<u8>,
    pub m_score: Option<u8>,
    pub rfm_segment: String,
    /// User-defined segments (`[[segments]]`) the profile belongs to.
    pub segments: Vec<String>,
    pub p_alive: Option<f64>,
    pub expected_purchases: Option<f64>,
    pub expected_avg_value: Option<f64>,
    pub clv: Option<f64>,
    /// Decayed interaction counters per kind, at `as_of`.
    pub engagement: BTreeMap<String, f64>,
    /// Top categories by decayed spend, largest first.
    pub affinity: Vec<CategoryAffinity>,
    /// Traits from `identify` events.
    #[schema(value_type = Object)]
    pub traits: Box<serde_json::value::RawValue>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// The clock the time-relative figures use (RFC 3339).
    pub as_of: Option<String>,
    /// Age of the population ranking the scores and segments were computed against; 0 when
    /// nothing was committed since it was computed.
    pub staleness_seconds: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryAffinity {
    pub category: String,
    pub score: f64,
}

/// The profile of a customer or of any of its aliases.
#[utoipa::path(
    get,
    path = "/v1/customers/{id}",
    tag = "customers",
    params(("id" = String, Path, description = "customer id, or an alias of one")),
    responses(
        (status = 200, description = "the profile (from the instance that holds it, when several split the topic)", body = Profile),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not reader or above", body = ErrorBody),
        (status = 404, description = "no such customer", body = ErrorBody),
        (status = 502, description = "the customer is held by another instance, which did not answer", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_customer(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.auth.require(&headers, Role::Reader)?;
    let view = state.views.get(&state.store, &state.config).await?;
    let reader = state.store.snapshot().map_err(ApiError::internal)?;
    let tag = Tag {
        generation: reader.generation(),
        view: view.id,
    };
    if let Some(body) = state.profiles.get(&id, tag) {
        return Ok(json_body(body));
    }
    let found = match find(&state, view, &reader, &id) {
        Ok(found) => found,
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
            return crate::forward::elsewhere(&state, &headers, &uri, &id, e).await;
        }
        Err(e) => return Err(e),
    };
    let mut p = profile(
        &found.view,
        &state.config,
        found.stored.customer_id,
        found.stored.scope,
        &found.stored.state,
        found.as_of,
    )?;
    if tag.generation == found.view.generation {
        // Nothing was committed since the ranking was computed: it is current.
        p.staleness_seconds = 0.0;
    }
    let body = Bytes::from(serde_json::to_vec(&p).map_err(ApiError::internal)?);
    state.profiles.insert(&id, tag, body.clone());
    Ok(json_body(body))
}

/// A 200 with a JSON body already serialized.
pub(crate) fn json_body(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A customer's committed state, the view to score it against, and the clock.
pub(crate) struct Found {
    pub view: Arc<View>,
    pub stored: patron_store::StoredProfile,
    pub as_of: Option<Millis>,
}

/// Finds `id` (or the customer it is an alias of) in `reader`, a point read on a committed MVCC
/// snapshot that never waits on the writer: 404 when there is none.
pub(crate) fn find(
    state: &ApiState,
    view: Arc<View>,
    reader: &patron_store::StoreReader,
    id: &str,
) -> Result<Found, ApiError> {
    let stored = reader.profile(id).map_err(ApiError::internal)?;
    let Some(stored) = stored else {
        return Err(ApiError::not_found(format!("no customer `{id}`")));
    };
    let as_of = match state.config.scoring.clock {
        Clock::Event => reader.event_clock().map_err(ApiError::internal)?,
        Clock::Wall => Some(now_millis()),
    };
    Ok(Found {
        view,
        stored,
        as_of,
    })
}

fn profile(
    view: &View,
    config: &PatronConfig,
    customer_id: String,
    partition: u32,
    s: &CustomerState,
    as_of: Option<Millis>,
) -> Result<Profile, ApiError> {
    profile_and_row(view, config, customer_id, partition, s, as_of, false).map(|(p, _)| p)
}

/// The profile and, when `want_row`, its `customers` row with the user segments filled in (the
/// row offer predicates run on). The row is built once and also decides the user segments.
pub(crate) fn profile_and_row(
    view: &View,
    config: &PatronConfig,
    customer_id: String,
    partition: u32,
    s: &CustomerState,
    as_of: Option<Millis>,
    want_row: bool,
) -> Result<(Profile, Option<RecordBatch>), ApiError> {
    let scores = match s.last_purchase {
        Some(last) if s.frequency >= 1 => Some(view.snapshot.distribution.scores(
            last,
            s.frequency,
            s.monetary(),
        )),
        _ => None,
    };
    let rfm_segment = match scores {
        Some(sc) => view.rfm_map.segment(sc.r, sc.f).to_owned(),
        None => PROSPECT.to_owned(),
    };
    let recency_days = s
        .last_purchase
        .zip(as_of)
        .filter(|_| s.frequency >= 1)
        .map(|(last, t)| (t - last) as f64 / MILLIS_PER_DAY as f64);
    let value = match (
        &view.model,
        view.clv_options,
        as_of,
        s.first_purchase,
        s.last_purchase,
    ) {
        (Some(model), Some(opts), Some(t), Some(first), Some(last)) if s.frequency >= 1 => {
            let unit = |ms: i64| ms as f64 / MILLIS_PER_DAY as f64 / opts.time_unit_days;
            let mean = s.avg_repeat_value().map_or(0.0, |m| m.as_f64());
            Some(model.model().score(
                f64::from(s.frequency - 1),
                unit(last - first),
                unit((t - first).max(0)),
                mean,
                &opts,
            ))
        }
        _ => None,
    };
    let traits_json = traits_text(s);
    let mut p = Profile {
        customer_id,
        aliases: s.aliases.clone(),
        partition,
        first_purchase: s.first_purchase.map(to_rfc3339),
        last_purchase: s.last_purchase.map(to_rfc3339),
        frequency: s.frequency,
        monetary: s.monetary().as_f64(),
        avg_order_value: s.avg_order_value().map(|m| m.as_f64()),
        recency_days,
        r_score: scores.map(|x| x.r),
        f_score: scores.map(|x| x.f),
        m_score: scores.map(|x| x.m),
        rfm_segment,
        segments: Vec::new(),
        p_alive: value.map(|v| v.p_alive),
        expected_purchases: value.map(|v| v.expected_purchases),
        expected_avg_value: value.map(|v| v.expected_avg_value),
        clv: value.map(|v| v.clv),
        engagement: BTreeMap::new(),
        affinity: Vec::new(),
        traits: serde_json::value::RawValue::from_string(traits_json.clone())
            .map_err(ApiError::internal)?,
        first_seen: (s.first_seen != Millis::MAX).then(|| to_rfc3339(s.first_seen)),
        last_seen: (s.last_seen != Millis::MIN).then(|| to_rfc3339(s.last_seen)),
        as_of: as_of.map(to_rfc3339),
        staleness_seconds: view.built.elapsed().as_secs_f64(),
    };
    let now = as_of.unwrap_or_else(now_millis);
    let half_life_ms = half_life_ms(config);
    p.engagement = s
        .engagement
        .iter()
        .map(|c| (c.key.to_string(), c.value_at(now, half_life_ms)))
        .collect();
    p.affinity = top_categories(config, s, as_of)
        .into_iter()
        .map(|(category, score)| CategoryAffinity { category, score })
        .collect();
    if view.predicates.is_empty() && !want_row {
        return Ok((p, None));
    }
    let row = customers_row(&p, s, &traits_json)?;
    for (name, predicate) in &view.predicates {
        let mask = predicate.evaluate(&row).map_err(ApiError::internal)?;
        if mask.is_valid(0) && mask.value(0) {
            p.segments.push(name.clone());
        }
    }
    let row = match want_row {
        false => None,
        true if p.segments.is_empty() => Some(row),
        true => Some(with_segments(row, &p.segments)?),
    };
    Ok((p, row))
}

/// `[engagement] half_life` in milliseconds, at least 1.
pub(crate) fn half_life_ms(config: &PatronConfig) -> f64 {
    config.engagement.half_life.as_millis().max(1) as f64
}

/// The customer's top categories (`[engagement] top_categories`) by spend decayed to `as_of`
/// (now on the wall clock), best first.
pub(crate) fn top_categories(
    config: &PatronConfig,
    s: &CustomerState,
    as_of: Option<Millis>,
) -> Vec<(String, f64)> {
    let at = as_of.unwrap_or_else(now_millis);
    s.top_categories(config.engagement.top_categories, at, half_life_ms(config))
}

/// `row` with its `segments` column replaced by `segments`.
fn with_segments(row: RecordBatch, segments: &[String]) -> Result<RecordBatch, ApiError> {
    let schema = row.schema();
    let at = schema.index_of("segments").map_err(ApiError::internal)?;
    let mut list = ListBuilder::new(StringBuilder::new());
    list.append_value(segments.iter().map(Some));
    let mut columns = row.columns().to_vec();
    columns[at] = Arc::new(list.finish());
    RecordBatch::try_new(schema, columns).map_err(ApiError::internal)
}

/// The `traits` column: the traits object as JSON text.
fn traits_text(s: &CustomerState) -> String {
    if s.traits.is_empty() {
        "{}".to_owned()
    } else {
        s.traits_json()
    }
}

/// The profile as one row of the `customers` table, so user segments are decided by the same
/// predicates over the same columns as in SQL.
fn customers_row(
    p: &Profile,
    s: &CustomerState,
    traits_json: &str,
) -> Result<RecordBatch, ApiError> {
    let ts = |ms: Option<Millis>| {
        Arc::new(TimestampMillisecondArray::from(vec![ms]).with_timezone("UTC")) as ArrayRef
    };
    let f = |v: Option<f64>| Arc::new(Float64Array::from(vec![v])) as ArrayRef;
    let u = |v: Option<u8>| Arc::new(UInt8Array::from(vec![v])) as ArrayRef;
    let mut segments = ListBuilder::new(StringBuilder::new());
    segments.append(true);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![p.customer_id.as_str()])),
        ts(s.first_purchase),
        ts(s.last_purchase),
        Arc::new(Int64Array::from(vec![i64::from(p.frequency)])),
        Arc::new(Float64Array::from(vec![p.monetary])),
        f(p.avg_order_value),
        f(p.recency_days),
        u(p.r_score),
        u(p.f_score),
        u(p.m_score),
        Arc::new(StringArray::from(vec![p.rfm_segment.as_str()])),
        f(p.p_alive),
        f(p.expected_purchases),
        f(p.expected_avg_value),
        f(p.clv),
        Arc::new(segments.finish()),
        Arc::new(StringArray::from(vec![traits_json])),
    ];
    RecordBatch::try_new(customers_schema(), columns).map_err(ApiError::internal)
}

/// What an erasure did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Erasure {
    /// The canonical id that was erased.
    pub customer_id: String,
    /// Every id erased and tombstoned: the canonical id and its aliases.
    pub ids: Vec<String>,
    /// `true` once the erasure is in the committed state (200); `false` when it is in the log
    /// but not applied yet (202): it will be, in log order.
    pub erased: bool,
    /// Where the erase record landed in the source topic.
    pub partition: i32,
    pub offset: i64,
}

/// How long `DELETE` waits for its erasure to be committed before answering 202.
const ERASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Erase a customer, its aliases and their state (right to be forgotten).
///
/// The erasure goes through the source topic like any event, so every replica and every replay
/// applies it at the same place in the log. A tombstone on each id then drops older events for
/// it, so replaying them does not bring the customer back; events newer than the erasure start
/// a new profile. Daily revenue and orders keep the customer's share (aggregates, not personal
/// data).
#[utoipa::path(
    delete,
    path = "/v1/customers/{id}",
    tag = "customers",
    params(("id" = String, Path, description = "customer id, or an alias of one")),
    responses(
        (status = 200, description = "erased and committed", body = Erasure),
        (status = 202, description = "in the log, not yet applied", body = Erasure),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key is not an admin key", body = ErrorBody),
        (status = 404, description = "no such customer", body = ErrorBody),
        (status = 503, description = "no broker to produce the erasure to", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_customer(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(axum::http::StatusCode, Json<Erasure>), ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let reader = state.store.reader().map_err(ApiError::internal)?;
    let stored = reader.profile(&id).map_err(ApiError::internal)?;
    drop(reader);
    let Some(stored) = stored else {
        return Err(ApiError::not_found(format!("no customer `{id}`")));
    };
    let producer = state.intake.as_ref().ok_or_else(crate::events::no_intake)?;
    let at = now_millis();
    let record = serde_json::json!({
        "type": "erase",
        "event_id": format!("erase:{id}:{at}"),
        "ts": to_rfc3339(at),
        "customer_id": id,
    })
    .to_string();
    // Keyed by the canonical id, so the erasure lands where the profile lives (see
    // docs/ARCHITECTURE.md, Identity).
    let landed = producer
        .enqueue(stored.customer_id.as_bytes(), record.as_bytes())
        .map_err(ApiError::internal)?
        .landed()
        .await
        .map_err(ApiError::internal)?;
    let mut ids = stored.state.aliases.clone();
    ids.push(stored.customer_id.clone());
    if !ids.contains(&id) {
        ids.push(id.clone());
    }
    ids.sort();
    ids.dedup();
    let deadline = tokio::time::Instant::now() + ERASE_WAIT;
    let erased = loop {
        let reader = state.store.snapshot().map_err(ApiError::internal)?;
        if reader
            .tombstone(&id)
            .map_err(ApiError::internal)?
            .is_some_and(|t| t >= at)
        {
            break true;
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    let status = if erased {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(Erasure {
            customer_id: stored.customer_id,
            ids,
            erased,
            partition: landed.partition,
            offset: landed.offset,
        }),
    ))
}
