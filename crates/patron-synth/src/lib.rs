//! patron-synth: seeded synthetic Patron event streams with known truth.
//!
//! Customers follow the BG/NBD purchase process (Fader, Hardie & Lee 2005) with Gamma-Gamma
//! spend, so a CLV fit on the stream can be checked against the parameters it was drawn from.
//! Around the purchases it adds what a real feed carries: interactions, refunds, anonymous
//! browsing linked by `identify`, `alias` merges, Segment Spec messages, producer duplicates and
//! invalid lines, each in a share set by [`SynthConfig`].
//!
//! The process, per customer (time in days):
//! - born at a time uniform over the first `birth_fraction` of the period; the first purchase is
//!   at birth;
//! - `lambda ~ Gamma(r, rate alpha)`, `p ~ Beta(a, b)`; repeat purchases arrive as a Poisson
//!   process of rate `lambda`; after each repeat purchase the customer drops out with probability
//!   `p`; nothing happens at or after the end of the period;
//! - `nu ~ Gamma(q, rate gamma)`; each transaction is worth `z ~ Gamma(p, rate nu)`, in cents.
//!
//! The same config always yields the same bytes.
//!
//! Layout:
//! - `config`: [`SynthConfig`], the true parameters, validation.
//! - `customer`: one customer's lazily simulated life.
//! - `generator`: [`Generator`], the time-ordered merge of all customers, and
//!   [`customer_truths`].
//! - `render`: native and Segment Spec JSON.
//! - `bad`: invalid lines, one per rejection reason.

mod bad;
mod config;
mod customer;
mod generator;
mod render;

pub use config::{SynthConfig, TrueBgNbd, TrueGammaGamma, Truth};
pub use customer::customer_id;
pub use generator::{CustomerTruths, Generator, customer_truths};

/// The rejection reasons that [`SynthEvent::expected_reject`] can hold, one per rule in
/// DESIGN.md ("Events").
pub mod reason {
    pub const INVALID_UTF8: &str = "invalid_utf8";
    pub const MALFORMED_JSON: &str = "malformed_json";
    pub const MISSING_FIELD: &str = "missing_field";
    pub const WRONG_TYPE: &str = "wrong_type";
    /// An unknown `type`, a Segment `group` call included.
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    /// Not finite, ≤ 0, or over `[money] max_amount` (the generator uses 1e12 for "over").
    pub const INVALID_AMOUNT: &str = "invalid_amount";
    pub const UNKNOWN_CURRENCY: &str = "unknown_currency";
    pub const FUTURE_TIMESTAMP: &str = "future_timestamp";
    /// Larger than `[ingest] max_event_bytes` (the generator exceeds the 64 KiB default).
    pub const TOO_LARGE: &str = "too_large";

    pub const ALL: [&str; 9] = [
        INVALID_UTF8,
        MALFORMED_JSON,
        MISSING_FIELD,
        WRONG_TYPE,
        UNKNOWN_TYPE,
        INVALID_AMOUNT,
        UNKNOWN_CURRENCY,
        FUTURE_TIMESTAMP,
        TOO_LARGE,
    ];
}

/// One generated line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthEvent {
    /// The event's own `ts` in Unix milliseconds. The stream is in order of this field, except
    /// that a duplicate comes up to an hour after its original (it carries the original's ts)
    /// and a `future_timestamp` line carries its far-future ts.
    pub ts_millis: i64,
    /// The Kafka message key: customer_id, or anonymous_id if the event has none.
    pub key: String,
    /// The JSON bytes, without a trailing newline. Not UTF-8 for an `invalid_utf8` line.
    pub payload: Vec<u8>,
    /// `None` for a valid event, else the reason a consumer must reject it with (see [`reason`]).
    pub expected_reject: Option<&'static str>,
    /// A byte-identical re-send of an earlier event (same event_id): counted, not applied.
    pub duplicate: bool,
}

/// What one customer was drawn with and what they did, for checking fits and aggregates.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerTruth {
    pub index: u64,
    pub customer_id: String,
    /// Set if the customer browsed anonymously before `identify` linked this id.
    pub anonymous_id: Option<String>,
    /// Set if an `alias` event merged this older id into the customer.
    pub previous_id: Option<String>,
    /// Purchase rate per day.
    pub lambda: f64,
    /// Drop-out probability after each repeat purchase.
    pub p: f64,
    /// Gamma-Gamma spend rate: mean transaction value is `gamma_gamma.p / nu`.
    pub nu: f64,
    /// First purchase, Unix ms.
    pub birth_millis: i64,
    /// When the customer dropped out (at their last purchase), if they did.
    pub death_millis: Option<i64>,
    /// Number of purchases (frequency), the first one included.
    pub purchases: u32,
    pub last_purchase_millis: i64,
    /// Sum of purchase amounts, in base currency.
    pub gross: f64,
    /// Number of refunds emitted.
    pub refunds: u32,
    /// Sum of refund amounts, in base currency; monetary = gross − refunded.
    pub refunded: f64,
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid synth config: `{field}` {reason}")]
    InvalidConfig { field: &'static str, reason: String },
}
