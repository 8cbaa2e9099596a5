//! Requests for a customer held by another instance go to that instance.
//!
//! Several `serve` instances split a topic's partitions, and every customer's state lives at
//! its id's home partition (see `patron_stream::applier`). When this store has no profile for
//! the id (or the customer it links to), and the members table says another instance owns
//! that id's home, the request is sent there unchanged (same path, query and key) and its
//! answer returned as is. A header counts the hops, so a request never circles.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Uri, header};
use axum::response::Response;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::ApiState;
use crate::error::ApiError;

/// Set on a forwarded request: how many instances it has been through.
pub const FORWARDED: &str = "x-patron-forwarded";
/// An id that links on at the next instance may take one more hop; never more.
const MAX_HOPS: u32 = 2;
const TIMEOUT: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpConnector, Empty<axum::body::Bytes>>;

fn client() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
}

/// `uri` with the customer id segment `id` replaced by `target`, query kept.
fn forwarded_path(uri: &Uri, id: &str, target: &str) -> String {
    let encode = |s: &str| utf8_percent_encode(s, SEGMENT).to_string();
    let path = uri.path();
    let (from, to) = (format!("/{}", encode(id)), format!("/{}", encode(target)));
    let path = match path.find(&from) {
        Some(at) if id != target => format!("{}{to}{}", &path[..at], &path[at + from.len()..]),
        _ => path.to_owned(),
    };
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// Characters a path segment must escape (RFC 3986, unreserved kept).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The owning instance's answer for `id`, or `not_found` when no other instance owns it (or
/// the request has made its hops).
pub(crate) async fn elsewhere(
    state: &ApiState,
    headers: &HeaderMap,
    uri: &Uri,
    id: &str,
    not_found: ApiError,
) -> Result<Response, ApiError> {
    let Some(members) = &state.members else {
        return Err(not_found);
    };
    let hops = headers
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
        .unwrap_or(0);
    if hops >= MAX_HOPS {
        return Err(not_found);
    }
    // A linked id goes to its canonical customer's home.
    let target = state
        .store
        .snapshot()
        .and_then(|r| r.resolve(id))
        .map_err(ApiError::internal)?;
    let Some(base) = members.owner_of(&target) else {
        return Err(not_found);
    };
    // Ask for the canonical id: the owner may not know the link that led here.
    let path = forwarded_path(uri, id, &target);
    let mut request = Request::get(format!("{base}{path}"))
        .header(FORWARDED, HeaderValue::from(hops + 1))
        .body(Empty::new())
        .map_err(ApiError::internal)?;
    if let Some(key) = headers.get(header::AUTHORIZATION) {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, key.clone());
    }
    let unavailable = |why: String| {
        ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "owner_unavailable",
            format!("`{id}` is held by the instance at {base}, which did not answer: {why}"),
        )
    };
    let response = tokio::time::timeout(TIMEOUT, client().request(request))
        .await
        .map_err(|_| unavailable(format!("no answer within {TIMEOUT:?}")))?
        .map_err(|e| unavailable(e.to_string()))?;
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(TIMEOUT, body.collect())
        .await
        .map_err(|_| unavailable(format!("no body within {TIMEOUT:?}")))?
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarded_path_names_the_canonical_id() {
        let uri: Uri = "/v1/customers/anon%201/offers?limit=2"
            .parse()
            .expect("a uri");
        assert_eq!(
            forwarded_path(&uri, "anon 1", "c/7"),
            "/v1/customers/c%2F7/offers?limit=2"
        );
        let uri: Uri = "/v1/customers/c1".parse().expect("a uri");
        assert_eq!(forwarded_path(&uri, "c1", "c1"), "/v1/customers/c1");
    }
}
