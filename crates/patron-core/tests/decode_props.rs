//! Bad input never crashes: the decoder returns an event or a rejection for any bytes.

use patron_core::decode::Decoder;
use proptest::prelude::*;

const NOW: i64 = 1_800_000_000_000;
const VALID: &str = r#"{"event_id":"e1","type":"purchase","ts":"2025-03-01T10:00:00Z","customer_id":"c1","amount":"20.00","currency":"USD","items":[{"sku":"A","category":"shoes","quantity":2,"unit_price":10}]}"#;
const SEGMENT: &str = r#"{"type":"track","event":"Order Completed","messageId":"m1","userId":"u1","timestamp":"2025-03-01T10:00:00Z","properties":{"revenue":"12.5","products":[{"product_id":"p","price":12.5}]}}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Decoder::default().decode(&bytes, NOW);
    }

    /// Valid events with one byte replaced, inserted or deleted: the nastiest near-misses.
    #[test]
    fn mutated_events_never_panic(which in 0..2usize, pos in any::<prop::sample::Index>(), byte in any::<u8>(), op in 0..3u8) {
        let mut b = [VALID, SEGMENT][which].as_bytes().to_vec();
        let i = pos.index(b.len());
        match op {
            0 => b[i] = byte,
            1 => b.insert(i, byte),
            _ => { b.remove(i); }
        }
        let _ = Decoder::default().decode(&b, NOW);
    }

    /// Any JSON value in any field position is typed or rejected, never a panic.
    #[test]
    fn any_json_value_in_any_field(field in prop::sample::select(vec!["event_id","type","ts","customer_id","amount","currency","items","traits","kind","anonymous_id","previous_id","order_id"]),
                                   value in prop_oneof![Just("null".to_string()), Just("[]".to_string()), Just("{}".to_string()), Just("\"\"".to_string()),
                                                        any::<f64>().prop_map(|f| format!("{f:e}")), "\"[a-z0-9.\\-]{0,12}\"", Just("[{\"quantity\":-1}]".to_string())]) {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(VALID).unwrap();
        if let Ok(parsed) = serde_json::from_str::<serde_json::Value>(&value) {
            v.insert(field.to_string(), parsed);
        }
        let text = serde_json::Value::Object(v).to_string();
        let _ = Decoder::default().decode(text.as_bytes(), NOW);
    }
}
