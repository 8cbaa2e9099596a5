//! Routes: liveness, readiness, ingest status and Prometheus metrics.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use patron_core::config::Role;
use serde_json::json;

use crate::{ApiError, ApiState};

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when the store is open and the broker answers, else 503 with what is missing.
async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
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

async fn status(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<patron_stream::kafka::status::StatusReport>, ApiError> {
    state.auth.require(&headers, Role::Reader)?;
    Ok(Json(state.ingest.report()))
}

async fn metrics(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
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
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
