//! Patron's HTTP API (axum).
//!
//! Layout:
//! - [`auth`]: bearer keys stored as SHA-256 hashes, nested roles.
//! - [`error`]: the one JSON error shape, `{"error": {"code", "message"}}`.
//! - [`routes`]: health, readiness, status and metrics.

pub mod auth;
pub mod error;
pub mod routes;

use std::sync::Arc;

use patron_store::Store;
use patron_stream::kafka::status::IngestStatus;
use prometheus_client::registry::Registry;

pub use auth::Auth;
pub use error::ApiError;

/// Everything a handler can reach.
pub struct ApiState {
    pub store: Store,
    pub ingest: Arc<IngestStatus>,
    pub auth: Auth,
    pub registry: Registry,
    /// The key `/metrics` wants, if any (`[api] metrics_key`); otherwise it is open.
    pub metrics_key: Option<String>,
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
        }
    }
}

pub use routes::router;

/// Serves the API on `listener` until `shutdown` completes, then finishes open requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
