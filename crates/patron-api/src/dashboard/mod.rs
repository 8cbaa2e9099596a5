//! The dashboard at `/`: one page, its script and its style sheet, compiled into the binary.
//!
//! The HTML shell needs no key: it holds no data. The page asks for a reader key once, keeps it
//! in the browser's `localStorage` and sends it as `Authorization: Bearer` to the JSON routes
//! (`/v1/kpis`, `/v1/kpis/cohorts`, `/v1/kpis/history`, `/v1/objectives`, `/v1/segments`,
//! `/v1/status`), so every figure on the page goes through the same role check as any client.
//! A key can also arrive in the URL fragment (`/#key=...`, never sent to the server); the page
//! stores it and strips it from the address bar.
//!
//! Charts are SVG drawn by `app.js`, a few hundred lines of our own with no library, because the
//! machines that run Patron may be offline and a CDN is both a dependency and a leak. The
//! Content-Security-Policy allows only this origin: no inline script, no inline style, no
//! external connection.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::http::header::{self, HeaderName};
use axum::response::{IntoResponse, Response};

use crate::{ApiError, ApiState};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Same-origin only. `img-src data:` is for the empty favicon; SVG is built with DOM calls and
/// styled by class or presentation attributes, which `style-src 'self'` allows.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The placeholder in `index.html` that becomes `[money] base_currency`, for axis units.
const CURRENCY_PLACEHOLDER: &str = "{{BASE_CURRENCY}}";

/// The dashboard page. No key needed: the page fetches its data with the key the user enters.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "the dashboard (HTML); it asks for a reader key once and keeps it in the browser", body = String, content_type = "text/html")))]
pub async fn index(State(state): State<Arc<ApiState>>) -> Response {
    let html = INDEX_HTML.replace(
        CURRENCY_PLACEHOLDER,
        &currency_code(&state.config.money.base_currency),
    );
    with_headers(html, "text/html; charset=utf-8")
}

/// `/assets/app.js` and `/assets/app.css`.
#[utoipa::path(get, path = "/assets/{file}", tag = "dashboard",
    params(("file" = String, Path, description = "`app.js` or `app.css`")),
    responses(
        (status = 200, description = "the dashboard's script or style sheet", body = String),
        (status = 404, description = "no such asset", body = crate::error::ErrorBody),
    ))]
pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => with_headers(APP_JS.to_owned(), "text/javascript; charset=utf-8"),
        "app.css" => with_headers(APP_CSS.to_owned(), "text/css; charset=utf-8"),
        _ => ApiError::not_found("no such dashboard asset").into_response(),
    }
}

/// The currency code as it may appear in the page: ISO 4217 codes are letters, so anything else
/// (which config validation should already have refused) is not echoed into HTML.
fn currency_code(code: &str) -> String {
    if !code.is_empty() && code.len() <= 8 && code.chars().all(|c| c.is_ascii_alphanumeric()) {
        code.to_owned()
    } else {
        String::new()
    }
}

fn with_headers(body: String, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Small and compiled in: revalidate so an upgraded binary's page is picked up at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use patron_core::config::PatronConfig;
    use patron_store::Store;
    use patron_stream::kafka::status::IngestStatus;
    use tower::ServiceExt;

    use crate::Auth;

    fn app(cfg: PatronConfig) -> (tempfile::TempDir, axum::Router) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("t.redb")).unwrap();
        let auth = Auth::from_config(&[]).unwrap();
        let state = ApiState::new(
            store,
            Arc::new(IngestStatus::new("kafka:t", "t", "dlq")),
            auth,
            None,
        )
        .with_config(Arc::new(cfg));
        (dir, crate::router(Arc::new(state)))
    }

    async fn get(app: &axum::Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_page_needs_no_key_and_carries_a_strict_policy() {
        let mut cfg = PatronConfig::default();
        cfg.money.base_currency = "EUR".into();
        let (_dir, app) = app(cfg);
        let (status, headers, body) = get(&app, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(body.contains(r#"<meta name="patron-currency" content="EUR">"#));
        assert!(!body.contains(CURRENCY_PLACEHOLDER));
        assert!(body.contains(r#"src="/assets/app.js""#));
        assert!(body.contains(r#"href="/assets/app.css""#));
    }

    #[tokio::test]
    async fn assets_are_served_and_unknown_ones_are_json_404s() {
        let (_dir, app) = app(PatronConfig::default());
        let (status, headers, body) = get(&app, "/assets/app.js").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(body, APP_JS);
        let (status, headers, body) = get(&app, "/assets/app.css").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
        assert_eq!(body, APP_CSS);
        let (status, _, body) = get(&app, "/assets/../Cargo.toml").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains(r#""code":"not_found""#), "{body}");
        let (status, _, _) = get(&app, "/assets/other.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// The machines may be offline and the policy forbids other origins: nothing in the page may
    /// point elsewhere, and the script may not use what the policy blocks.
    #[test]
    fn the_assets_reach_no_other_origin_and_use_no_inline_code() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                // The SVG namespace is a name, not a fetch.
                let hits = text
                    .match_indices(needle)
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/2000/svg"))
                    .count();
                assert_eq!(hits, 0, "{name} contains {needle}");
            }
        }
        assert!(!INDEX_HTML.contains("<script>"), "inline script");
        assert!(!INDEX_HTML.contains("style="), "inline style attribute");
        assert!(!has_inline_handler(INDEX_HTML), "inline event handler");
        for banned in ["eval(", "new Function", "innerHTML", "setAttribute('style'"] {
            assert!(!APP_JS.contains(banned), "app.js uses {banned}");
        }
    }

    /// ` onclick=`, ` onload=` and the like.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.chars().take_while(char::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    #[test]
    fn only_a_plain_currency_code_reaches_the_page() {
        assert_eq!(currency_code("USD"), "USD");
        assert_eq!(currency_code("\"><script>"), "");
        assert_eq!(currency_code(""), "");
    }
}
