//! `POST /v1/events`: event intake. Each event is validated with the stream's own rules, the
//! valid ones are produced to the source topic keyed by customer (or anonymous) id, and the
//! answer reports every event: accepted with its partition and offset once the broker has
//! acknowledged it, or rejected with the reason the stream would have given.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use patron_core::config::Role;
use patron_core::decode::{Decoder, Rejection};
use patron_core::event::EventBody;
use patron_core::time::now_millis;
use patron_stream::kafka::produce::IntakeProducer;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::error::{ErrorBody, ErrorDetail};
use crate::{ApiError, ApiState};

/// The answer to an intake request: totals, and one result per event in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntakeResponse {
    /// Events the broker acknowledged.
    pub accepted: usize,
    /// Events refused by validation; they were not produced.
    pub rejected: usize,
    /// Valid events the broker did not acknowledge; safe to send again.
    pub failed: usize,
    pub results: Vec<EventResult>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventResult {
    /// Position in the request (0-based; for NDJSON, the n-th non-empty line).
    pub index: usize,
    /// `accepted`, `rejected` or `failed`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Why the event was rejected (a dead-letter reason code) or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

impl EventResult {
    fn refused(index: usize, status: &'static str, code: &str, message: String) -> Self {
        Self {
            index,
            status,
            partition: None,
            offset: None,
            error: Some(ErrorDetail {
                code: code.to_owned(),
                message,
            }),
        }
    }
}

/// Send events: a JSON array of events, or NDJSON (one event per line).
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    request_body(
        content = Object,
        description = "a JSON array of events (DESIGN.md, Events) or NDJSON, at most [api] max_batch",
        content_type = "application/json"
    ),
    responses(
        (status = 200, description = "per-event results", body = IntakeResponse),
        (status = 400, description = "the body is not a JSON array or NDJSON, or is empty", body = ErrorBody),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key is not an ingest key", body = ErrorBody),
        (status = 413, description = "body over max_body_bytes or more than max_batch events", body = ErrorBody),
        (status = 503, description = "no broker to produce to", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn post_events(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IntakeResponse>, ApiError> {
    state.auth.require(&headers, Role::Ingest)?;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than [api] max_body_bytes",
            )
        } else {
            ApiError::bad_request("invalid_body", r.body_text())
        }
    })?;
    let events = split_batch(&body)?;
    let max_batch = state.config.api.max_batch;
    if events.len() > max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} events in one request; [api] max_batch is {max_batch}",
                events.len()
            ),
        ));
    }
    let producer = state.intake.as_ref().ok_or_else(no_intake)?;
    Ok(Json(
        produce(producer, &state.decoder, &events, now_millis()).await,
    ))
}

pub(crate) fn no_intake() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "intake_unavailable",
        "this server has no broker to produce events to",
    )
}

/// Validates every event, queues the valid ones, then waits for each acknowledgement.
async fn produce(
    producer: &IntakeProducer,
    decoder: &Decoder,
    events: &[&[u8]],
    now: i64,
) -> IntakeResponse {
    let mut results: Vec<Option<EventResult>> = Vec::with_capacity(events.len());
    let mut pending = Vec::new();
    for (index, raw) in events.iter().enumerate() {
        match validate(decoder, raw, now) {
            Ok(key) => match producer.enqueue(key.as_bytes(), raw) {
                Ok(p) => {
                    pending.push((index, p));
                    results.push(None);
                }
                Err(e) => results.push(Some(EventResult::refused(
                    index,
                    "failed",
                    "broker_unavailable",
                    e,
                ))),
            },
            Err(r) => results.push(Some(EventResult::refused(
                index,
                "rejected",
                r.reason.code(),
                r.detail,
            ))),
        }
    }
    for (index, p) in pending {
        results[index] = Some(match p.landed().await {
            Ok(landed) => EventResult {
                index,
                status: "accepted",
                partition: Some(landed.partition),
                offset: Some(landed.offset),
                error: None,
            },
            Err(e) => EventResult::refused(index, "failed", "broker_unavailable", e),
        });
    }
    let results: Vec<EventResult> = results.into_iter().flatten().collect();
    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    IntakeResponse {
        accepted: count("accepted"),
        rejected: count("rejected"),
        failed: count("failed"),
        results,
    }
}

/// The stream's validation, plus: erasure is only for `DELETE /v1/customers/{id}`. Returns the
/// message key.
fn validate(decoder: &Decoder, raw: &[u8], now: i64) -> Result<String, Rejection> {
    let event = decoder.decode(raw, now)?;
    if matches!(event.body, EventBody::Erase(_)) {
        return Err(Rejection::new(
            patron_core::decode::RejectReason::UnknownType,
            "`erase` is not accepted here; use DELETE /v1/customers/{id} with an admin key",
        ));
    }
    Ok(event.profile_id().to_owned())
}

/// A JSON array's elements, or NDJSON's non-empty lines, as raw bytes.
fn split_batch(body: &[u8]) -> Result<Vec<&[u8]>, ApiError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Err(ApiError::bad_request(
            "empty_batch",
            "the body holds no events",
        ));
    };
    let events: Vec<&[u8]> = if body[start] == b'[' {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("invalid_body", "the body is not UTF-8"))?;
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
            ApiError::bad_request("invalid_body", format!("not a JSON array of events: {e}"))
        })?;
        items.into_iter().map(|r| r.get().as_bytes()).collect()
    } else {
        body.split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
            .collect()
    };
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "empty_batch",
            "the body holds no events",
        ));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_arrays_and_ndjson_alike() {
        let array = br#" [ {"a": 1}, {"b": [2, 3]} ] "#;
        let got = split_batch(array).unwrap();
        assert_eq!(got, vec![&br#"{"a": 1}"#[..], &br#"{"b": [2, 3]}"#[..]]);

        let ndjson = b"{\"a\": 1}\r\n\n  \n{\"b\": 2}\n";
        let got = split_batch(ndjson).unwrap();
        assert_eq!(got, vec![&b"{\"a\": 1}"[..], &b"{\"b\": 2}"[..]]);
    }

    #[test]
    fn an_ndjson_line_that_is_not_json_is_still_one_event() {
        let got = split_batch(b"{\"a\": 1}\nnot json\n").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], b"not json");
    }

    #[test]
    fn empty_and_broken_arrays_are_refused() {
        assert_eq!(split_batch(b"  \n ").unwrap_err().code, "empty_batch");
        assert_eq!(split_batch(b"[]").unwrap_err().code, "empty_batch");
        assert_eq!(
            split_batch(b"[{\"a\": 1},").unwrap_err().code,
            "invalid_body"
        );
    }

    #[test]
    fn erase_is_refused_with_the_route_to_use() {
        let raw =
            br#"{"type":"erase","event_id":"e1","ts":"2025-01-01T00:00:00Z","customer_id":"c1"}"#;
        let err = validate(&Decoder::default(), raw, now_millis()).unwrap_err();
        assert!(
            err.detail.contains("DELETE /v1/customers"),
            "{}",
            err.detail
        );
    }

    #[test]
    fn the_key_is_the_customer_or_anonymous_id() {
        let d = Decoder::default();
        let now = now_millis();
        let purchase = br#"{"type":"purchase","event_id":"e1","ts":"2025-01-01T00:00:00Z","customer_id":"c9","amount":"12.50"}"#;
        assert_eq!(validate(&d, purchase, now).unwrap(), "c9");
        let view = br#"{"type":"interaction","event_id":"e2","ts":"2025-01-01T00:00:00Z","anonymous_id":"anon-3","kind":"page_view"}"#;
        assert_eq!(validate(&d, view, now).unwrap(), "anon-3");
    }
}
