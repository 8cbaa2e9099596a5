//! The pure domain of Patron: events, customer state, RFM scores and segments.
//!
//! Nothing here does I/O, spawns tasks or touches the store: every function takes state and
//! returns state, so the rules can be tested without setup and reused by every source and by the
//! API alike. Lifetime-value math lives in the `patron-clv` crate and is re-exported as [`clv`].
//!
//! Layout:
//! - [`config`]: every config section and key, with defaults.
//! - [`money`]: exact integer money in micro-units.
//! - [`time`]: event time in milliseconds, month and day indexes.
//! - [`event`]: the validated event model.
//! - [`decode`]: bytes to [`event::Event`] for the native and Segment Spec forms, with the
//!   rejection rules.
//! - [`state`]: [`state::CustomerState`], its order-independent `apply` and associative `merge`.
//! - [`rfm`]: the rank-based R, F and M scores and the segment map.

pub mod config;
pub mod decode;
pub mod event;
pub mod money;
pub mod offer;
pub mod rfm;
pub mod state;
pub mod time;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use patron_clv as clv;
