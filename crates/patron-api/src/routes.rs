//! The router, and the operational routes: liveness, readiness, ingest status, metrics.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use patron_core::config::Role;
use serde_json::json;

use crate::error::ErrorBody;
use crate::{
    ApiError, ApiState, customers, events, http_metrics, model, offers, openapi, query, segments,
};

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/assets/{file}", get(crate::dashboard::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route(
            "/v1/customers/{id}",
            get(customers::get_customer).delete(customers::delete_customer),
        )
        .route("/v1/customers/{id}/offers", get(offers::decide))
        .route("/v1/offers/catalog", get(offers::list_catalog))
        .route(
            "/v1/offers/catalog/{id}",
            get(offers::get_offer)
                .put(offers::put_offer)
                .delete(offers::delete_offer),
        )
        .route("/v1/events", post(events::post_events))
        .route("/v1/segments", get(segments::list_segments))
        .route(
            "/v1/segments/{name}/customers",
            get(segments::segment_customers),
        )
        .route("/v1/query", post(query::run_query))
        .route("/v1/model", get(model::get_model))
        .route("/v1/model/fit", post(model::fit_model))
        .route("/v1/kpis", get(crate::kpis::get_kpis))
        .route("/v1/kpis/cohorts", get(crate::kpis::get_cohorts))
        .route("/v1/kpis/history", get(crate::kpis::get_history))
        .route("/v1/objectives", get(crate::kpis::get_objectives))
        .route(
            "/v1/segments/{name}/export",
            get(crate::kpis::export_segment),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.api.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.config.api.request_timeout,
            time_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http_metrics::track,
        ))
        .with_state(state)
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "the process is up", body = Object)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when the store is open and the broker answers, else 503 with what is missing.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "ready: store open and broker connected", body = Object),
        (status = 503, description = "not ready; the body says what is missing", body = Object),
    ))]
pub async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let running = state
        .ingest
        .running
        .load(std::sync::atomic::Ordering::Relaxed);
    let connected = state
        .ingest
        .broker_connected
        .load(std::sync::atomic::Ordering::Relaxed);
    let body = Json(json!({
        "ready": running && connected,
        "store_open": running,
        "broker_connected": connected,
    }));
    if running && connected {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// Ingest status: per-partition offsets and lag, counts, as_of; and HTTP latency per route.
#[utoipa::path(get, path = "/v1/status", tag = "operations",
    responses(
        (status = 200, description = "the ingest status report, with `identity_routing` (whether identify/alias merges go through the topic, records sent, received, dropped as copies and pending), `changelog` (the changelog topic: records sent, checkpoints not yet in it, partitions and profiles restored from it), plus `http` (latency quantiles and counts per route), `erasures`, `profile_cache` and `decision_cache` (hits, misses, entries, bytes) and `offer_decisions` (made, and how many read eligibility from the view's plan)", body = Object),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not reader or above", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn status(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.require(&headers, Role::Reader)?;
    let mut report = serde_json::to_value(state.ingest.report()).map_err(ApiError::internal)?;
    if let Some(obj) = report.as_object_mut() {
        obj.insert(
            "http".into(),
            serde_json::to_value(state.http.summaries()).map_err(ApiError::internal)?,
        );
        let erasures = state
            .store
            .reader()
            .and_then(|r| r.erasures())
            .map_err(ApiError::internal)?;
        obj.insert(
            "erasures".into(),
            serde_json::to_value(erasures).map_err(ApiError::internal)?,
        );
        obj.insert(
            "profile_cache".into(),
            serde_json::to_value(state.profiles.stats()).map_err(ApiError::internal)?,
        );
        obj.insert(
            "decision_cache".into(),
            serde_json::to_value(state.decisions.stats()).map_err(ApiError::internal)?,
        );
        obj.insert(
            "offer_decisions".into(),
            serde_json::to_value(state.offers.stats()).map_err(ApiError::internal)?,
        );
    }
    Ok(Json(report))
}

/// Prometheus metrics (OpenMetrics text): ingest throughput, lag, rejections, and HTTP latency
/// quantiles (p50, p90, p99, p99.9) and request counts per route and status.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text"),
        (status = 401, description = "`[api] metrics_key` is set and was not presented", body = ErrorBody),
    ))]
pub async fn metrics(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Some(key) = &state.metrics_key {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        return ApiError::internal(e).into_response();
    }
    // The HTTP families go before the registry's closing `# EOF`.
    if text.ends_with("# EOF\n") {
        text.truncate(text.len() - "# EOF\n".len());
    }
    state.http.encode(&mut text);
    text.push_str("# EOF\n");
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// `[api] request_timeout`: a request still running after it is answered 503 `timeout`, and
/// its handler is dropped.
async fn time_limit(
    State(limit): State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than [api] request_timeout ({} ms)",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}
