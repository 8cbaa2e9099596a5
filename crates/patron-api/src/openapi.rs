//! The OpenAPI 3 document, generated from the handlers' annotations so it cannot drift.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{customers, error, events, model, offers, query, routes, segments};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Patron",
        description = "Streaming customer-value scoring: profiles, segments, SQL, CLV model. \
            Every error is `{\"error\": {\"code\", \"message\"}}`. Roles nest: admin ⊃ marketing ⊃ reader; ingest is separate."
    ),
    paths(
        routes::healthz,
        routes::readyz,
        routes::status,
        routes::metrics,
        openapi_json,
        customers::get_customer,
        customers::delete_customer,
        events::post_events,
        offers::decide,
        crate::dashboard::index,
        crate::dashboard::asset,
        offers::list_catalog,
        offers::get_offer,
        offers::put_offer,
        offers::delete_offer,
        segments::list_segments,
        segments::segment_customers,
        query::run_query,
        model::get_model,
        model::fit_model,
        crate::kpis::get_kpis,
        crate::kpis::get_cohorts,
        crate::kpis::get_history,
        crate::kpis::get_objectives,
        crate::kpis::export_segment,
    ),
    components(schemas(
        error::ErrorBody,
        error::ErrorDetail,
        customers::Profile,
        customers::CategoryAffinity,
        customers::Erasure,
        events::IntakeResponse,
        offers::Offer,
        offers::Catalog,
        offers::Decision<'static>,
        offers::RankedOffer<'static>,
        offers::Withheld,
        events::EventResult,
        segments::SegmentList,
        segments::SegmentSummary,
        segments::SegmentMembers,
        segments::SegmentMember,
        query::QueryRequest,
        query::QueryResult,
        crate::kpis::KpisResponse,
        crate::kpis::CohortsResponse,
        crate::kpis::Cohort,
        crate::kpis::HistoryResponse,
        crate::kpis::HistoryDay,
        crate::kpis::ObjectivesResponse,
        crate::kpis::Objective,
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI 3 document", body = Object)))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
