//! Invalid events, one variant per way an event can be rejected (DESIGN.md, "Events").
//!
//! Each variant breaks exactly one rule, so its rejection reason is unambiguous.

use serde_json::{Value, json};

use crate::reason;
use crate::render::rfc3339;

/// Size of the oversized event: just over the default `[ingest] max_event_bytes` of 64 KiB.
const TOO_LARGE_BYTES: usize = 64 * 1024 + 512;

/// 2099-01-01T00:00:00Z, far beyond any `max_future_skew`.
pub(crate) const FAR_FUTURE_MILLIS: i64 = 4_070_908_800_000;

/// Number of distinct variants; the generator cycles through them in order.
pub(crate) const VARIANTS: u64 = 18;

fn without(mut v: Value, field: &str) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove(field);
    }
    v
}

/// The `n`-th invalid line (cycling through every variant), about `key` at `ts_millis`.
pub(crate) fn bad_line(
    n: u64,
    event_id: &str,
    ts_millis: i64,
    key: &str,
    currency: &str,
) -> (Vec<u8>, &'static str) {
    let ts = rfc3339(ts_millis);
    let purchase = |amount: Value| {
        json!({
            "event_id": event_id, "type": "purchase", "ts": ts, "customer_id": key,
            "amount": amount, "currency": currency,
        })
    };
    let bytes = |v: Value| serde_json::to_vec(&v).expect("a serde_json::Value always serializes");
    match n % VARIANTS {
        0 => {
            // Valid JSON structure, but a string holds bytes that are not UTF-8.
            let mut b = Vec::new();
            b.extend_from_slice(
                format!(
                    r#"{{"event_id":"{event_id}","type":"interaction","ts":"{ts}","customer_id":"{key}","kind":"page_view","properties":{{"q":""#
                )
                .as_bytes(),
            );
            b.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
            b.extend_from_slice(br#""}}"#);
            (b, reason::INVALID_UTF8)
        }
        1 => {
            // A purchase cut short.
            let mut b = bytes(purchase(json!(19.99)));
            b.truncate(b.len() / 2);
            (b, reason::MALFORMED_JSON)
        }
        2 => {
            let v = without(purchase(json!(19.99)), "customer_id");
            (bytes(v), reason::MISSING_FIELD)
        }
        3 => (bytes(purchase(json!(true))), reason::WRONG_TYPE),
        4 => (
            bytes(json!({
                "event_id": event_id, "type": "teleport", "ts": ts, "customer_id": key,
            })),
            reason::UNKNOWN_TYPE,
        ),
        5 => (
            bytes(json!({
                "type": "group", "messageId": event_id, "timestamp": ts, "userId": key,
                "groupId": "acme-corp", "traits": { "name": "Acme" },
            })),
            reason::UNKNOWN_TYPE,
        ),
        6 => (bytes(purchase(json!(0))), reason::INVALID_AMOUNT),
        7 => {
            let mut v = purchase(json!(42.5));
            v["currency"] = json!("XXZ");
            (bytes(v), reason::UNKNOWN_CURRENCY)
        }
        8 => {
            let mut v = purchase(json!(42.5));
            v["ts"] = json!(rfc3339(FAR_FUTURE_MILLIS));
            (bytes(v), reason::FUTURE_TIMESTAMP)
        }
        9 => {
            // A valid interaction padded past the size limit.
            let v = json!({
                "event_id": event_id, "type": "interaction", "ts": ts, "customer_id": key,
                "kind": "page_view", "properties": { "blob": "x".repeat(TOO_LARGE_BYTES) },
            });
            (bytes(v), reason::TOO_LARGE)
        }
        10 => (bytes(purchase(json!(-12.5))), reason::INVALID_AMOUNT),
        11 => (bytes(purchase(json!(1e12))), reason::INVALID_AMOUNT),
        12 => (bytes(purchase(json!("NaN"))), reason::INVALID_AMOUNT),
        13 => {
            let v = without(purchase(json!(19.99)), "ts");
            (bytes(v), reason::MISSING_FIELD)
        }
        14 => {
            let mut v = purchase(json!(19.99));
            v["customer_id"] = json!(true);
            (bytes(v), reason::WRONG_TYPE)
        }
        15 => (b"this is not json".to_vec(), reason::MALFORMED_JSON),
        16 => {
            let v = without(purchase(json!(19.99)), "event_id");
            (bytes(v), reason::MISSING_FIELD)
        }
        _ => {
            let v = without(purchase(json!(19.99)), "type");
            (bytes(v), reason::MISSING_FIELD)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_covered_by_one_cycle() {
        let mut seen: Vec<&str> = (0..VARIANTS)
            .map(|n| bad_line(n, "bad-1", 1_735_689_600_000, "c0000001", "USD").1)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        let mut all = reason::ALL.to_vec();
        all.sort_unstable();
        assert_eq!(seen, all);
    }

    #[test]
    fn lines_are_single_lines_and_sized_as_intended() {
        for n in 0..VARIANTS {
            let (b, r) = bad_line(n, "bad-1", 1_735_689_600_000, "c0000001", "USD");
            assert!(!b.contains(&b'\n'), "variant {n} holds a newline");
            let utf8 = std::str::from_utf8(&b).is_ok();
            assert_eq!(utf8, r != reason::INVALID_UTF8, "variant {n}");
            if utf8 && r != reason::MALFORMED_JSON {
                serde_json::from_slice::<Value>(&b).expect("parses as JSON");
            }
            assert_eq!(b.len() > 64 * 1024, r == reason::TOO_LARGE, "variant {n}");
        }
    }
}
