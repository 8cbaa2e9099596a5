//! Money as exact integer micro-units of the base currency.
//!
//! Sums of money must match an independent computation exactly, so amounts are parsed from their
//! decimal text (never through a float when the text allows it) into `i64` millionths. That keeps
//! six decimal places, enough for any ISO 4217 minor unit and for FX-converted amounts, with a
//! range of ±9.2 trillion per customer.

use serde::{Deserialize, Serialize};

/// Micro-units (1e-6) of a currency.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Money(pub i64);

const SCALE: i64 = 1_000_000;

impl Money {
    pub const ZERO: Money = Money(0);
    pub const MAX: Money = Money(i64::MAX);

    pub fn from_f64(v: f64) -> Option<Money> {
        let scaled = (v * SCALE as f64).round();
        if scaled.is_finite() && scaled.abs() < i64::MAX as f64 {
            Some(Money(scaled as i64))
        } else {
            None
        }
    }

    pub fn as_f64(self) -> f64 {
        // One correctly rounded division of two exact values gives the double nearest the decimal,
        // so 12.34 prints as 12.34 (for |micros| < 2^53).
        self.0 as f64 / SCALE as f64
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn saturating_add(self, o: Money) -> Money {
        Money(self.0.saturating_add(o.0))
    }

    pub fn saturating_sub(self, o: Money) -> Money {
        Money(self.0.saturating_sub(o.0))
    }

    /// Multiplies by an FX rate, rounding half away from zero to the micro-unit.
    pub fn convert(self, rate: f64) -> Option<Money> {
        if rate == 1.0 {
            return Some(self);
        }
        // i128 keeps the exact product of the integer amount and the rate's decimal expansion
        // for rates given with up to 9 decimals, the common case for configured rates.
        let rate_nano = (rate * 1e9).round();
        if !rate_nano.is_finite() || rate_nano <= 0.0 || rate_nano > 1e18 {
            return None;
        }
        let prod = self.0 as i128 * rate_nano as i128;
        let half = 500_000_000i128 * prod.signum();
        let q = (prod + half) / 1_000_000_000;
        i64::try_from(q).ok().map(Money)
    }

    /// Parses a JSON number or decimal string such as `"12.5"`, `"-3"`, `"1e3"`.
    ///
    /// Plain decimals are parsed exactly; beyond six decimals they round half away from zero.
    /// Exponent forms go through `f64`. Returns `None` for text that is not a finite number.
    pub fn parse_decimal(text: &str) -> Option<Money> {
        let t = text.trim();
        if t.is_empty() {
            return None;
        }
        if t.bytes().any(|b| matches!(b, b'e' | b'E')) {
            return t
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .and_then(Money::from_f64);
        }
        let (neg, digits) = match t.as_bytes()[0] {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let (int_part, frac_part) = match digits.split_once('.') {
            Some((i, f)) => (i, f),
            None => (digits, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut whole: i64 = 0;
        for b in int_part.bytes() {
            whole = whole.checked_mul(10)?.checked_add((b - b'0') as i64)?;
        }
        let mut micros: i64 = 0;
        let mut round_up = false;
        for (i, b) in frac_part.bytes().enumerate() {
            let d = (b - b'0') as i64;
            if i < 6 {
                micros = micros * 10 + d;
            } else if i == 6 {
                round_up = d >= 5;
            }
        }
        for _ in frac_part.len().min(6)..6 {
            micros *= 10;
        }
        let mut total = whole.checked_mul(SCALE)?.checked_add(micros)?;
        if round_up {
            total = total.checked_add(1)?;
        }
        Some(Money(if neg { -total } else { total }))
    }
}

impl std::fmt::Display for Money {
    /// Prints the shortest exact decimal: `12.34`, `5`, `-0.000001`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / SCALE as u64;
        let frac = abs % SCALE as u64;
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let s = format!("{frac:06}");
            write!(f, "{sign}{whole}.{}", s.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(Money::parse_decimal("12.34"), Some(Money(12_340_000)));
        assert_eq!(Money::parse_decimal("-0.5"), Some(Money(-500_000)));
        assert_eq!(Money::parse_decimal(".5"), Some(Money(500_000)));
        assert_eq!(Money::parse_decimal("7"), Some(Money(7_000_000)));
        assert_eq!(Money::parse_decimal("1.0000005"), Some(Money(1_000_001)));
        assert_eq!(Money::parse_decimal("1e3"), Some(Money(1_000_000_000)));
        assert_eq!(Money::parse_decimal("abc"), None);
        assert_eq!(Money::parse_decimal("1.2.3"), None);
        assert_eq!(Money::parse_decimal("NaN"), None);
        assert_eq!(Money::parse_decimal("1e400"), None);
        assert_eq!(Money::parse_decimal("99999999999999999999"), None);
    }

    #[test]
    fn converts_with_rounding() {
        assert_eq!(Money(10_000_000).convert(1.1), Some(Money(11_000_000)));
        assert_eq!(Money(1).convert(0.5), Some(Money(1)));
        assert_eq!(Money(3).convert(1.0 / 3.0), Some(Money(1)));
    }

    #[test]
    fn displays_shortest() {
        assert_eq!(Money(12_340_000).to_string(), "12.34");
        assert_eq!(Money(-1).to_string(), "-0.000001");
        assert_eq!(Money(5_000_000).to_string(), "5");
        assert_eq!(Money(12_340_000).as_f64(), 12.34);
    }
}
