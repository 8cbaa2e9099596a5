//! The OpenAPI 3 document, generated from the handlers' annotations so it cannot drift.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{customers, error, model, query, routes, segments};

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
        segments::list_segments,
        segments::segment_customers,
        query::run_query,
        model::get_model,
        model::fit_model,
    ),
    components(schemas(
        error::ErrorBody,
        error::ErrorDetail,
        customers::Profile,
        customers::CategoryAffinity,
        segments::SegmentList,
        segments::SegmentSummary,
        segments::SegmentMembers,
        segments::SegmentMember,
        query::QueryRequest,
        query::QueryResult,
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
