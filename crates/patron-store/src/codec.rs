//! Record encodings: postcard (varint integers, length-prefixed strings) over serde structs.
//!
//! postcard's wire format is stable across its 1.x releases, which is what a file format needs.
//! Each profile record starts with its owning source partition so a partition's state can be
//! found, dropped or rebuilt on its own.

use patron_core::state::CustomerState;
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
