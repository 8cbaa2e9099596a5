//! Generator configuration, the true model parameters and config validation.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::SynthError;

/// True BG/NBD parameters, with time measured in days.
///
/// Purchase rate `lambda ~ Gamma(shape r, rate alpha)` per day; drop-out probability after each
/// repeat purchase `p ~ Beta(a, b)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrueBgNbd {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

/// True Gamma-Gamma spend parameters.
///
/// Per customer `nu ~ Gamma(shape q, rate gamma)`; per transaction `z ~ Gamma(shape p, rate nu)`.
/// The mean transaction value over the population is `p * gamma / (q - 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrueGammaGamma {
    pub p: f64,
    pub q: f64,
    pub gamma: f64,
}

/// The parameters the stream was drawn from, for comparing a fit against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub bgnbd: TrueBgNbd,
    pub gamma_gamma: TrueGammaGamma,
    /// Always `"day"`: `alpha` is in days.
    pub time_unit: String,
    pub customers: u64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Everything that shapes a synthetic stream. Equal configs give byte-identical streams.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Number of known customers (each makes at least one purchase).
    pub customers: u64,
    /// Length of the period, in days from `start`. No purchase happens at or after the end.
    pub days: u32,
    pub seed: u64,
    pub start: DateTime<Utc>,
    pub bgnbd: TrueBgNbd,
    pub gamma_gamma: TrueGammaGamma,
    /// Share of output lines that are invalid events (added on top of the valid stream, so the
    /// valid events and the truth do not depend on it).
    pub bad_rate: f64,
    /// Share of valid events rendered as Segment Spec messages instead of the native form.
    pub segment_spec_rate: f64,
    /// Share of valid events sent a second time (byte-identical, same event_id) shortly after.
    pub duplicate_rate: f64,
    /// Share of purchases later (partly or fully) refunded.
    pub refund_rate: f64,
    /// Mean number of interactions (page views, cart adds, offers, ...) before each purchase.
    pub interactions_per_purchase: f64,
    /// Share of customers that browse anonymously before an `identify` links them.
    pub anonymous_rate: f64,
    /// Currency of every generated amount.
    pub base_currency: String,
    /// Customers are born (make their first purchase) uniformly over the first
    /// `birth_fraction` of the period.
    pub birth_fraction: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            customers: 10_000,
            days: 365,
            seed: 42,
            start: Utc
                .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
                .single()
                .expect("2025-01-01 is a valid date"),
            // Mean rate r / alpha = 1/120 per day: about three purchases a year while alive.
            bgnbd: TrueBgNbd {
                r: 0.25,
                alpha: 30.0,
                a: 0.8,
                b: 2.5,
            },
            // Mean transaction value p * gamma / (q - 1) = 30.
            gamma_gamma: TrueGammaGamma {
                p: 6.0,
                q: 4.0,
                gamma: 15.0,
            },
            bad_rate: 0.0,
            segment_spec_rate: 0.0,
            duplicate_rate: 0.0,
            refund_rate: 0.05,
            interactions_per_purchase: 3.0,
            anonymous_rate: 0.3,
            base_currency: "USD".to_owned(),
            birth_fraction: 0.5,
        }
    }
}

impl SynthConfig {
    /// Checks every field; the error names the first field at fault.
    pub fn validate(&self) -> Result<(), SynthError> {
        fn positive(field: &'static str, v: f64) -> Result<(), SynthError> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(SynthError::InvalidConfig {
                    field,
                    reason: format!("must be a finite number > 0, got {v}"),
                })
            }
        }
        fn share(field: &'static str, v: f64) -> Result<(), SynthError> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(SynthError::InvalidConfig {
                    field,
                    reason: format!("must be within 0..=1, got {v}"),
                })
            }
        }
        if self.days == 0 {
            return Err(SynthError::InvalidConfig {
                field: "days",
                reason: "must be at least 1".to_owned(),
            });
        }
        positive("bgnbd.r", self.bgnbd.r)?;
        positive("bgnbd.alpha", self.bgnbd.alpha)?;
        positive("bgnbd.a", self.bgnbd.a)?;
        positive("bgnbd.b", self.bgnbd.b)?;
        positive("gamma_gamma.p", self.gamma_gamma.p)?;
        positive("gamma_gamma.q", self.gamma_gamma.q)?;
        positive("gamma_gamma.gamma", self.gamma_gamma.gamma)?;
        // Strictly below 1: with bad_rate = 1 the valid stream would never advance.
        if !(0.0..1.0).contains(&self.bad_rate) {
            return Err(SynthError::InvalidConfig {
                field: "bad_rate",
                reason: format!("must be within 0..1 (exclusive), got {}", self.bad_rate),
            });
        }
        share("segment_spec_rate", self.segment_spec_rate)?;
        share("duplicate_rate", self.duplicate_rate)?;
        share("refund_rate", self.refund_rate)?;
        share("anonymous_rate", self.anonymous_rate)?;
        if !(self.birth_fraction > 0.0 && self.birth_fraction <= 1.0) {
            return Err(SynthError::InvalidConfig {
                field: "birth_fraction",
                reason: format!("must be within (0, 1], got {}", self.birth_fraction),
            });
        }
        if !(self.interactions_per_purchase.is_finite() && self.interactions_per_purchase >= 0.0)
            || self.interactions_per_purchase > 1000.0
        {
            return Err(SynthError::InvalidConfig {
                field: "interactions_per_purchase",
                reason: format!(
                    "must be within 0..=1000, got {}",
                    self.interactions_per_purchase
                ),
            });
        }
        let c = self.base_currency.as_bytes();
        if c.len() != 3 || !c.iter().all(u8::is_ascii_uppercase) {
            return Err(SynthError::InvalidConfig {
                field: "base_currency",
                reason: format!(
                    "must be a 3-letter ISO 4217 code, got {:?}",
                    self.base_currency
                ),
            });
        }
        Ok(())
    }

    /// The true parameters this config draws from.
    pub fn truth(&self) -> Truth {
        Truth {
            bgnbd: self.bgnbd,
            gamma_gamma: self.gamma_gamma,
            time_unit: "day".to_owned(),
            customers: self.customers,
            start: self.start,
            end: self.start + chrono::Duration::days(i64::from(self.days)),
        }
    }
}
