//! `GET /v1/model` and `POST /v1/model/fit`: the stored CLV model, and refitting it now.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use patron_core::config::Role;
use patron_query::QueryError;
use patron_query::clv::{StoredModel, fit_store, load_model, save_model};

use crate::error::ErrorBody;
use crate::{ApiError, ApiState};

/// The stored BG/NBD and Gamma-Gamma fit: parameters, log-likelihood, fit time.
#[utoipa::path(
    get,
    path = "/v1/model",
    tag = "model",
    responses(
        (status = 200, description = "the stored model: time_unit, as_of, fitted_at, fit_seconds, bgnbd, gamma_gamma", body = Object),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not reader or above", body = ErrorBody),
        (status = 404, description = "no model has been fitted yet", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_model(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<StoredModel>, ApiError> {
    state.auth.require(&headers, Role::Reader)?;
    let store = state.store.clone();
    let model = tokio::task::spawn_blocking(move || load_model(&store))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    model
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no CLV model has been fitted yet"))
}

/// Fits both models on the store now, stores and returns the fit.
#[utoipa::path(
    post,
    path = "/v1/model/fit",
    tag = "model",
    responses(
        (status = 200, description = "the new model", body = Object),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not admin", body = ErrorBody),
        (status = 409, description = "the store has no purchases to fit on", body = ErrorBody),
        (status = 422, description = "the fit did not converge", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn fit_model(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<StoredModel>, ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let store = state.store.clone();
    let unit = state.config.clv.time_unit;
    // Seconds of CPU on a large store: off the async workers.
    let model = tokio::task::spawn_blocking(move || {
        let model = fit_store(&store, None, unit)?;
        save_model(&store, &model)?;
        Ok::<_, QueryError>(model)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| match e {
        QueryError::NoCustomers => ApiError::new(
            StatusCode::CONFLICT,
            "no_data",
            "the store has no purchases to fit a model on",
        ),
        QueryError::Fit(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "fit_failed",
            format!("the CLV fit failed: {e}"),
        ),
        other => ApiError::internal(other),
    })?;
    state.views.invalidate();
    Ok(Json(model))
}
