//! What the Router tests share: a store built by the real applier, the app over it, and one
//! request helper.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use patron_api::{ApiState, Auth, QueryLimits};
use patron_core::config::PatronConfig;
use patron_core::decode::Decoder;
use patron_core::state::ApplyContext;
use patron_core::time::now_millis;
use patron_store::Store;
use patron_stream::applier::Applier;
use patron_stream::kafka::status::IngestStatus;
use tower::ServiceExt;

/// A fresh store holding `payloads` applied in order, in one checkpoint.
pub(crate) fn store_with(cfg: &PatronConfig, payloads: &[Vec<u8>]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("t.redb")).unwrap();
    apply(&store, cfg, payloads);
    (dir, store)
}

/// Applies `payloads` in order to `store` and commits them in one checkpoint.
pub(crate) fn apply(store: &Store, cfg: &PatronConfig, payloads: &[Vec<u8>]) {
    let mut applier = Applier::open(store.clone(), ApplyContext::from_config(cfg)).unwrap();
    let decoder = Decoder::from_config(cfg);
    for bytes in payloads {
        let event = decoder.decode(bytes, now_millis()).unwrap();
        applier.apply(&event, 0).unwrap();
    }
    applier.checkpoint().unwrap();
}

/// The API over `store`, with `cfg`'s keys and settings.
pub(crate) fn app(store: Store, cfg: PatronConfig, limits: QueryLimits) -> Router {
    let auth = Auth::from_config(&cfg.api.keys).unwrap();
    let state = ApiState::new(
        store,
        Arc::new(IngestStatus::new("kafka:t", "t", "dlq")),
        auth,
        None,
    )
    .with_config(Arc::new(cfg))
    .with_query_limits(limits);
    patron_api::router(Arc::new(state))
}

/// One request: the status, the Content-Type and the body.
pub(crate) async fn request(
    app: &Router,
    method: Method,
    uri: &str,
    key: Option<&str>,
    body: Option<String>,
    accept: Option<&str>,
) -> (StatusCode, String, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, ctype, bytes.to_vec())
}
