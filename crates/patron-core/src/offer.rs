//! Next-best-offer primitives shared by the pipeline (which learns from feedback) and the API
//! (which decides): decision ids, holdout assignment, and the Beta posterior of an arm.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The segment a decision was made in travels inside its `decision_id`, so feedback events that
/// carry the id credit the arm (offer, segment) the decision actually used.
const DECISION_SEPARATOR: char = '~';

/// Feedback without a decision id (or with a foreign one) is counted under this segment.
pub const UNATTRIBUTED: &str = "unattributed";

/// A decision id: a unique token, then the segment it was decided in.
pub fn decision_id(token: u64, segment: &str) -> String {
    let mut id = String::with_capacity(17 + segment.len());
    id.extend(decision_id_prefix(token).map(char::from));
    id.push_str(segment);
    id
}

/// A decision id up to its segment: the token as 16 hex digits, then the separator.
pub fn decision_id_prefix(token: u64) -> [u8; 17] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut prefix = [DECISION_SEPARATOR as u8; 17];
    for (i, digit) in prefix[..16].iter_mut().enumerate() {
        *digit = HEX[(token >> (60 - 4 * i)) as usize & 0xf];
    }
    prefix
}

/// The segment a feedback event's decision id names, or [`UNATTRIBUTED`].
pub fn decision_segment(decision_id: Option<&str>) -> &str {
    decision_id
        .and_then(|d| d.split_once(DECISION_SEPARATOR))
        .map(|(_, segment)| segment)
        .filter(|s| !s.is_empty())
        .unwrap_or(UNATTRIBUTED)
}

/// A stable position of (customer, offer) in [0, 1): the same on every server and every run,
/// independent across offers.
pub fn holdout_position(customer_id: &str, offer_id: &str) -> f64 {
    let seed = xxhash_rust::xxh3::xxh3_64(offer_id.as_bytes());
    let h = xxh3_64_with_seed(customer_id.as_bytes(), seed);
    // The top 53 bits, as a double in [0, 1).
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether the customer is in the offer's control group.
pub fn in_holdout(customer_id: &str, offer_id: &str, share: f64) -> bool {
    share > 0.0 && holdout_position(customer_id, offer_id) < share
}

/// The Beta(α, β) posterior of an arm's acceptance probability from a uniform prior: successes
/// are acceptances; failures are declines, and impressions whose response window has passed
/// without an answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Posterior {
    pub alpha: f64,
    pub beta: f64,
}

impl Posterior {
    /// `matured`: impressions old enough that their answer is due. Answered impressions are
    /// trials whatever their age; matured ones beyond the answers are silent declines.
    pub fn from_counts(matured: u64, accepted: u64, declined: u64) -> Self {
        let silent = matured.saturating_sub(accepted + declined);
        Self {
            alpha: 1.0 + accepted as f64,
            beta: 1.0 + (declined + silent) as f64,
        }
    }

    pub fn mean(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_carry_their_segment() {
        let id = decision_id(0xabc, "Can't Lose Them");
        assert_eq!(id, "0000000000000abc~Can't Lose Them");
        assert_eq!(decision_id(0xfedc_ba98_7654_3210, ""), "fedcba9876543210~");
        assert_eq!(decision_segment(Some(&id)), "Can't Lose Them");
        assert_eq!(decision_segment(Some("foreign-id")), UNATTRIBUTED);
        assert_eq!(decision_segment(None), UNATTRIBUTED);
    }

    #[test]
    fn holdout_share_is_close_to_the_configured_share() {
        let n = 100_000;
        let held = (0..n)
            .filter(|i| in_holdout(&format!("c{i}"), "spring-sale", 0.1))
            .count();
        let share = held as f64 / n as f64;
        // Binomial sd at n = 100k is 0.00095; 5 sd.
        assert!((share - 0.1).abs() < 0.005, "{share}");
        // Stable, and a different offer draws a different group.
        assert_eq!(in_holdout("c7", "a", 0.5), in_holdout("c7", "a", 0.5));
        let differ = (0..1000)
            .filter(|i| {
                let c = format!("c{i}");
                in_holdout(&c, "a", 0.5) != in_holdout(&c, "b", 0.5)
            })
            .count();
        assert!((400..600).contains(&differ), "{differ}");
    }

    #[test]
    fn posterior_from_counts() {
        let p = Posterior::from_counts(10, 3, 2);
        assert_eq!((p.alpha, p.beta), (4.0, 8.0));
        assert!((p.mean() - 1.0 / 3.0).abs() < 1e-12);
        // Answers count even before their impressions mature; young silence does not.
        let q = Posterior::from_counts(0, 1, 1);
        assert_eq!((q.alpha, q.beta), (2.0, 2.0));
    }
}
