//! Record encodings: postcard (varint integers, length-prefixed strings) over serde structs.
//!
//! postcard's wire format is stable across its 1.x releases, which is what a file format needs.
//! Each profile record starts with its owning source partition so a partition's state can be
//! found, dropped or rebuilt on its own.

use patron_core::state::CustomerState;
use patron_core::time::Millis;
use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

#[derive(Serialize)]
struct ProfileRecordRef<'a> {
    scope: u32,
    state: &'a CustomerState,
}

#[derive(Deserialize)]
struct ProfileRecord {
    scope: u32,
    state: CustomerState,
}

pub fn encode_profile(scope: u32, state: &CustomerState) -> Vec<u8> {
    postcard::to_stdvec(&ProfileRecordRef { scope, state }).expect("in-memory encoding cannot fail")
}

pub fn decode_profile(key: &str, bytes: &[u8]) -> Result<(u32, CustomerState)> {
    let r: ProfileRecord = postcard::from_bytes(bytes).map_err(|e| corrupt("customers", key, e))?;
    Ok((r.scope, r.state))
}

/// The leading fields of a profile record: its partition and the state's first fields, in
/// their encoded order (postcard has no field names, so a prefix decodes on its own).
#[derive(Deserialize)]
struct ProfileHead {
    _scope: u32,
    _first_purchase: Option<Millis>,
    _last_purchase: Option<Millis>,
    frequency: u32,
}

/// Whether a profile record is a customer's ([`CustomerState::is_customer`]: a purchase),
/// without decoding the rest of the state.
pub fn profile_is_customer(key: &str, bytes: &[u8]) -> Result<bool> {
    let (head, _) = postcard::take_from_bytes::<ProfileHead>(bytes)
        .map_err(|e| corrupt("customers", key, e))?;
    Ok(head.frequency > 0)
}

/// The owning partition of a profile record, without decoding the state.
pub fn profile_scope(key: &str, bytes: &[u8]) -> Result<u32> {
    let (scope, _) =
        postcard::take_from_bytes::<u32>(bytes).map_err(|e| corrupt("customers", key, e))?;
    Ok(scope)
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("in-memory encoding cannot fail")
}

pub fn decode<'a, T: Deserialize<'a>>(
    table: &'static str,
    key: &str,
    bytes: &'a [u8],
) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(table, key, e))
}

/// [`decode`] for a table keyed by two strings; the key is only spelled out on error.
pub fn decode_pair<'a, T: Deserialize<'a>>(
    table: &'static str,
    (a, b): (&str, &str),
    bytes: &'a [u8],
) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(table, &format!("{a}/{b}"), e))
}

pub(crate) fn corrupt(table: &'static str, key: &str, e: postcard::Error) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use patron_core::state::DecayedCounter;

    use super::*;

    /// Counter keys are inline strings in memory, but on disk they stay what they always were: a
    /// varint length and the UTF-8 bytes, then the f64 value (little-endian) and the zigzag
    /// varint time. Bytes spelled out by hand, for a short key and for one too long to inline.
    #[test]
    fn counter_records_keep_their_wire_format() {
        for key in ["page_view", "a-category-name-longer-than-24-bytes"] {
            let counter = DecayedCounter {
                key: key.into(),
                value: 1.5,
                at: 1000,
            };
            let mut expected = vec![key.len() as u8];
            expected.extend_from_slice(key.as_bytes());
            expected.extend_from_slice(&1.5f64.to_le_bytes());
            expected.extend_from_slice(&[0xD0, 0x0F]); // zigzag(1000) = 2000 = 0x7D0
            assert_eq!(encode(&counter), expected, "{key}");
            let back: DecayedCounter = decode("test", key, &expected).expect("decodes");
            assert_eq!(back, counter);
        }
    }

    /// The head decoder reads the same fields as the whole record's: a visitor, a customer with
    /// one purchase, and one whose times and count take the longest varints.
    #[test]
    fn a_profile_head_tells_customers_as_the_whole_record_does() {
        let visitor = CustomerState::default();
        let buyer = CustomerState {
            first_purchase: Some(1_700_000_000_000),
            last_purchase: Some(1_700_000_000_000),
            frequency: 1,
            ..CustomerState::default()
        };
        let extreme = CustomerState {
            first_purchase: Some(Millis::MIN),
            last_purchase: Some(Millis::MAX),
            frequency: u32::MAX,
            ..CustomerState::default()
        };
        for (name, state, customer) in [
            ("visitor", visitor, false),
            ("buyer", buyer, true),
            ("extreme", extreme, true),
        ] {
            let bytes = encode_profile(u32::MAX, &state);
            assert_eq!(
                profile_is_customer(name, &bytes).expect("decodes"),
                customer,
                "{name}"
            );
            let (_, whole) = decode_profile(name, &bytes).expect("decodes");
            assert_eq!(whole.is_customer(), customer, "{name}");
        }
        assert!(
            profile_is_customer("cut", &[0x01]).is_err(),
            "a truncated record"
        );
    }
}
