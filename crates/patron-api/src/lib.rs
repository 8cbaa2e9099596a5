//! Patron's HTTP API (axum).
//!
//! Read paths open their own MVCC read snapshot of the store, so they never wait on the
//! pipeline's writer thread. Population-relative figures (RFM ranks, segment membership) come
//! from a [`view::View`] cached for at most `[kpi] refresh_interval`.
//!
//! Layout:
//! - [`auth`]: bearer keys stored as SHA-256 hashes, nested roles.
//! - [`error`]: the one JSON error shape, `{"error": {"code", "message"}}`, and the JSON body
//!   extractor that keeps rejections in that shape.
//! - [`view`]: the cached scoring view (snapshot tables, RFM distribution, CLV model).
//! - [`customers`]: `GET /v1/customers/{id}`, the profile; `DELETE`, erasure through the log.
//! - [`events`]: `POST /v1/events`, validated intake produced to the source topic.
//! - [`offers`]: the offer catalog and next-best-offer decisions; [`decision_json`] writes
//!   their response bodies from pieces escaped once.
//! - [`segments`]: segment counts and paged members.
//! - [`kpis`]: KPIs, cohorts, KPI history, objectives; streamed segment exports.
//! - [`query`]: read-only SQL with row and time limits; JSON or Arrow IPC.
//! - [`model`]: the stored CLV model and on-demand refits.
//! - [`http_metrics`]: per-route latency histograms and request counts.
//! - [`routes`]: the router, health, readiness, status and metrics.
//! - [`openapi`]: the OpenAPI 3 document, generated from the handlers.
//! - [`dashboard`]: the page at `/` and its assets, compiled in; charts drawn in the browser.

pub mod auth;
pub mod customers;
pub mod dashboard;
pub mod decision_json;
pub mod error;
pub mod events;
pub mod forward;
pub mod hot_cache;
pub mod http_metrics;
pub mod kpis;
pub mod model;
pub mod offers;
pub mod openapi;
pub mod query;
pub mod routes;
pub mod segments;
pub mod view;

use std::sync::Arc;

use patron_core::config::PatronConfig;
use patron_core::decode::Decoder;
use patron_store::Store;
use patron_stream::kafka::produce::IntakeProducer;
use patron_stream::kafka::status::IngestStatus;
use prometheus_client::registry::Registry;

pub use auth::Auth;
pub use error::ApiError;
pub use query::QueryLimits;

/// Everything a handler can reach.
pub struct ApiState {
    pub store: Store,
    pub ingest: Arc<IngestStatus>,
    pub auth: Auth,
    pub registry: Registry,
    /// The key `/metrics` wants, if any (`[api] metrics_key`); otherwise it is open.
    pub metrics_key: Option<String>,
    /// Scoring, segments, CLV options and `[api]` limits. Defaults until [`ApiState::with_config`].
    pub config: Arc<PatronConfig>,
    pub views: view::ViewCache,
    pub http: http_metrics::HttpMetrics,
    pub query_limits: QueryLimits,
    /// The stream's validation rules, for event intake.
    pub decoder: Decoder,
    /// The producer to the source topic (`POST /v1/events`, erasure); `None` answers 503.
    pub intake: Option<Arc<IntakeProducer>>,
    /// The compiled offer catalog.
    pub offers: offers::OfferBook,
    /// Serialized profiles of hot customers (`[api] profile_cache_mb`).
    pub profiles: hot_cache::ProfileCache,
    /// Hot customers' decision inputs (`[api] decision_cache_mb`).
    pub decisions: hot_cache::TaggedCache<Arc<offers::Prepared>>,
    /// Which instance owns which partition, when several split the topic; requests for a
    /// customer held elsewhere are forwarded there.
    pub members: Option<Arc<patron_stream::kafka::members::Membership>>,
}

impl ApiState {
    pub fn new(
        store: Store,
        ingest: Arc<IngestStatus>,
        auth: Auth,
        metrics_key: Option<String>,
    ) -> Self {
        let mut registry = Registry::default();
        ingest.metrics.register(&mut registry);
        Self {
            store,
            ingest,
            auth,
            registry,
            metrics_key,
            config: Arc::new(PatronConfig::default()),
            views: view::ViewCache::default(),
            http: http_metrics::HttpMetrics::default(),
            query_limits: QueryLimits::default(),
            decoder: Decoder::default(),
            intake: None,
            members: None,
            offers: offers::OfferBook::default(),
            profiles: hot_cache::ProfileCache::new(0),
            decisions: hot_cache::TaggedCache::new(0),
        }
    }

    /// The configuration the routes score and limit with (segments, RFM map, clock, `[clv]`,
    /// `[engagement]`, `[kpi] refresh_interval`, `[api] max_body_bytes`).
    pub fn with_config(mut self, config: Arc<PatronConfig>) -> Self {
        self.decoder = Decoder::from_config(&config);
        self.profiles = hot_cache::ProfileCache::for_config(&config, config.api.profile_cache_mb);
        self.decisions = hot_cache::TaggedCache::for_config(&config, config.api.decision_cache_mb);
        self.config = config;
        self.views = view::ViewCache::default();
        self
    }

    /// Where `POST /v1/events` and erasures are produced.
    pub fn with_intake(mut self, producer: Arc<IntakeProducer>) -> Self {
        self.intake = Some(producer);
        self
    }

    /// The members table: requests for customers another instance holds go there.
    pub fn with_members(mut self, members: Arc<patron_stream::kafka::members::Membership>) -> Self {
        self.members = Some(members);
        self
    }

    pub fn with_query_limits(mut self, limits: QueryLimits) -> Self {
        self.query_limits = limits;
        self
    }
}

pub use routes::router;

/// Serves the API on `listener` until `shutdown` completes, then finishes open requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Answers are small and latency is what the API is measured on: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
