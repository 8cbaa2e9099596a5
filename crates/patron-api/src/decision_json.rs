//! The decision response (`GET /v1/customers/{id}/offers`) written straight into bytes.
//!
//! A decision's body is mostly text that does not change between requests: each offer's id,
//! name, value, cost, category and the fixed end of its reason, and the customer's id and
//! segment. Those pieces are escaped once (per catalog, per prepared decision) and copied in;
//! per request only the draws, the decision id and the numbers in the reason are written. The
//! shape is [`offers::Decision`](crate::offers::Decision), the type the OpenAPI document shows;
//! a test parses the written body and compares it with serde's serialization of that type.
//!
//! The per-request numbers (score, p_accept, affinity_boost) are rounded to [`DECIMALS`]
//! decimals and printed in fixed point with integer arithmetic: shortest round-trip printing
//! of 17 significant digits cost more than the rest of a cached decision's body, and no reader
//! of a random draw needs them.

use crate::offers::Offer;

/// The JSON of one ranked offer around its per-request numbers, escaped once per catalog.
pub struct RankedJson {
    /// `{"offer_id":…,"name":…,"score":`
    head: String,
    /// `,"value":…,"cost":…,"affinity_boost":`
    middle: String,
    /// `,"category":…,"holdout":false,"reason":"`
    before_reason: String,
    /// The reason's fixed end, ` × value V − cost C`, escaped, without quotes.
    reason_tail: String,
}

impl RankedJson {
    pub fn new(offer: &Offer, reason_tail: &str) -> serde_json::Result<Self> {
        let mut head = br#"{"offer_id":"#.to_vec();
        serde_json::to_writer(&mut head, &offer.id)?;
        head.extend_from_slice(br#","name":"#);
        serde_json::to_writer(&mut head, &offer.name)?;
        head.extend_from_slice(br#","score":"#);
        // As given, like every other number in the catalog.
        let mut middle = br#","value":"#.to_vec();
        serde_json::to_writer(&mut middle, &offer.value)?;
        middle.extend_from_slice(br#","cost":"#);
        serde_json::to_writer(&mut middle, &offer.cost)?;
        middle.extend_from_slice(br#","affinity_boost":"#);
        let mut before_reason = br#","category":"#.to_vec();
        serde_json::to_writer(&mut before_reason, &offer.category)?;
        before_reason.extend_from_slice(br#","holdout":false,"reason":""#);
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("JSON is UTF-8");
        Ok(Self {
            head: text(head),
            middle: text(middle),
            before_reason: text(before_reason),
            reason_tail: escaped(reason_tail)?,
        })
    }

    /// Its fixed bytes plus room for the numbers and the reason's start.
    pub fn capacity_hint(&self) -> usize {
        self.head.len()
            + self.middle.len()
            + self.before_reason.len()
            + self.reason_tail.len()
            + 200
    }
}

/// The per-request parts of one ranked offer.
pub struct Ranked<'a> {
    pub json: &'a RankedJson,
    pub score: f64,
    pub p_accept: f64,
    /// The Beta parameters drawn from (counts plus one).
    pub alpha: f64,
    pub beta: f64,
    /// Set when the offer's category is among the customer's top categories.
    pub affinity_boost: Option<f64>,
}

/// The per-customer parts, escaped once per prepared decision.
pub struct CustomerJson {
    /// The customer id as a JSON string, quotes included.
    id: String,
    /// The rfm segment escaped, without quotes (it also goes into the decision id and reasons).
    segment: String,
}

impl CustomerJson {
    pub fn new(customer_id: &str, rfm_segment: &str) -> serde_json::Result<Self> {
        Ok(Self {
            id: serde_json::to_string(customer_id)?,
            segment: escaped(rfm_segment)?,
        })
    }

    pub fn weight(&self) -> usize {
        self.id.len() + self.segment.len()
    }
}

/// Writes a whole decision body. `token` is the decision id's unique part; `held_out` and
/// `suppressed` are JSON arrays written earlier (`suppressed` is left out when `None`).
pub fn write(
    out: &mut Vec<u8>,
    customer: &CustomerJson,
    token: u64,
    exploration: &str,
    offers: &[Ranked<'_>],
    held_out: &str,
    suppressed: Option<&str>,
) {
    out.extend_from_slice(br#"{"customer_id":"#);
    out.extend_from_slice(customer.id.as_bytes());
    out.extend_from_slice(br#","rfm_segment":""#);
    out.extend_from_slice(customer.segment.as_bytes());
    out.extend_from_slice(br#"","decision_id":""#);
    // `patron_core::offer::decision_id(token, segment)`, escaped.
    out.extend_from_slice(&patron_core::offer::decision_id_prefix(token));
    out.extend_from_slice(customer.segment.as_bytes());
    out.extend_from_slice(br#"","exploration":""#);
    out.extend_from_slice(exploration.as_bytes());
    out.extend_from_slice(br#"","offers":["#);
    for (i, r) in offers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_ranked(out, r, exploration, &customer.segment);
    }
    out.extend_from_slice(br#"],"held_out":"#);
    out.extend_from_slice(held_out.as_bytes());
    if let Some(suppressed) = suppressed {
        out.extend_from_slice(br#","suppressed":"#);
        out.extend_from_slice(suppressed.as_bytes());
    }
    out.push(b'}');
}

fn write_ranked(out: &mut Vec<u8>, r: &Ranked<'_>, exploration: &str, segment: &str) {
    let json = r.json;
    out.extend_from_slice(json.head.as_bytes());
    push_number(out, r.score);
    out.extend_from_slice(br#","p_accept":"#);
    push_number(out, r.p_accept);
    out.extend_from_slice(json.middle.as_bytes());
    push_number(out, r.affinity_boost.unwrap_or(0.0));
    out.extend_from_slice(json.before_reason.as_bytes());
    // `p_accept P (thompson of Beta(A, B) for SEGMENT) × value V − cost C[ + affinity X (top
    // category)]`, the numbers rounded, without trailing zeros.
    out.extend_from_slice(b"p_accept ");
    push_fixed(out, r.p_accept, 4, false);
    out.extend_from_slice(b" (");
    out.extend_from_slice(exploration.as_bytes());
    out.extend_from_slice(b" of Beta(");
    push_fixed(out, r.alpha, 0, false);
    out.extend_from_slice(b", ");
    push_fixed(out, r.beta, 0, false);
    out.extend_from_slice(b") for ");
    out.extend_from_slice(segment.as_bytes());
    out.push(b')');
    out.extend_from_slice(json.reason_tail.as_bytes());
    if let Some(boost) = r.affinity_boost {
        out.extend_from_slice(b" + affinity ");
        push_fixed(out, boost, 2, false);
        out.extend_from_slice(b" (top category)");
    }
    out.extend_from_slice(b"\"}");
}

/// Decimals of the per-request numbers in a decision.
pub const DECIMALS: u32 = 6;

/// `x` rounded to `digits` decimals.
pub fn rounded(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// A per-request JSON number: rounded to [`DECIMALS`] decimals, with at least one (`1.0`, as
/// serde_json writes an `f64`).
fn push_number(out: &mut Vec<u8>, x: f64) {
    push_fixed(out, x, DECIMALS, true);
}

/// `x` rounded to `decimals` (at most 9) decimals in fixed point, trailing zeros dropped;
/// `point` keeps one zero after the point for whole numbers. Magnitudes too large to scale
/// exactly fall back to shortest round-trip printing, and non-finite values print `null`.
fn push_fixed(out: &mut Vec<u8>, x: f64, decimals: u32, point: bool) {
    const POW10: [u64; 10] = [
        1,
        10,
        100,
        1_000,
        10_000,
        100_000,
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
    ];
    let decimals = (decimals as usize).min(9);
    let scale = POW10[decimals];
    let scaled = (x.abs() * scale as f64).round();
    if !x.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    if scaled >= 2f64.powi(53) {
        out.extend_from_slice(ryu::Buffer::new().format_finite(x).as_bytes());
        return;
    }
    let scaled = scaled as u64;
    if x < 0.0 && scaled != 0 {
        out.push(b'-');
    }
    out.extend_from_slice(itoa::Buffer::new().format(scaled / scale).as_bytes());
    // The fraction's digits, most significant first, then cut after the last non-zero one.
    let mut digits = [b'0'; 9];
    let mut fraction = scaled % scale;
    for d in digits[..decimals].iter_mut().rev() {
        *d = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    let width = digits[..decimals]
        .iter()
        .rposition(|&d| d != b'0')
        .map_or(0, |last| last + 1);
    if width > 0 {
        out.push(b'.');
        out.extend_from_slice(&digits[..width]);
    } else if point {
        out.extend_from_slice(b".0");
    }
}

/// `text` as the inside of a JSON string.
fn escaped(text: &str) -> serde_json::Result<String> {
    let quoted = serde_json::to_string(text)?;
    Ok(quoted[1..quoted.len() - 1].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(x: f64, decimals: u32, point: bool) -> String {
        let mut out = Vec::new();
        push_fixed(&mut out, x, decimals, point);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fixed_point_numbers_round_and_drop_trailing_zeros() {
        assert_eq!(fixed(0.612_345_67, 6, true), "0.612346");
        assert_eq!(fixed(0.612_345_67, 4, false), "0.6123");
        assert_eq!(fixed(0.05, 6, true), "0.05");
        assert_eq!(fixed(0.000_001_4, 6, true), "0.000001");
        assert_eq!(fixed(0.000_000_4, 6, true), "0.0");
        assert_eq!(fixed(-0.000_000_4, 6, true), "0.0");
        assert_eq!(fixed(-2.5, 6, true), "-2.5");
        assert_eq!(fixed(7.0, 6, true), "7.0");
        assert_eq!(fixed(7.0, 0, false), "7");
        assert_eq!(fixed(1.875, 2, false), "1.88");
        assert_eq!(fixed(0.123_456_789, 9, true), "0.123456789");
        assert_eq!(fixed(12.000_5, 3, true), "12.001");
        assert_eq!(fixed(0.101, 3, false), "0.101");
        assert_eq!(fixed(0.999_999_9, 6, true), "1.0");
        assert_eq!(fixed(1e300, 6, true), "1e300");
        assert_eq!(fixed(f64::NAN, 6, true), "null");
        assert_eq!(fixed(f64::INFINITY, 6, true), "null");
    }
}
