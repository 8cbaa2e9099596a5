//! Customer summaries the models are fitted on, and grouping of identical summaries.

use serde::{Deserialize, Serialize};

/// One BG/NBD summary: `x` repeat purchases (frequency − 1), the last at `t_x` after the
/// first purchase, observed for `t` (= T, as_of − first purchase), all in one time unit.
/// `weight` is how many customers share the summary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub x: f64,
    pub t_x: f64,
    pub t: f64,
    pub weight: f64,
}

impl SummaryRow {
    /// One customer's summary (weight 1).
    pub fn new(x: f64, t_x: f64, t: f64) -> Self {
        Self {
            x,
            t_x,
            t,
            weight: 1.0,
        }
    }

    /// The same summary standing for `weight` customers.
    pub fn with_weight(self, weight: f64) -> Self {
        Self { weight, ..self }
    }

    /// Why this row cannot be fitted, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        let Self { x, t_x, t, weight } = *self;
        if !(x.is_finite() && x >= 0.0) {
            return Some(format!("x = {x} must be a finite count >= 0"));
        }
        if !(t.is_finite() && t >= 0.0) {
            return Some(format!("T = {t} must be finite and >= 0"));
        }
        // Checked even when x = 0 (where the model ignores t_x): t_x > T means corrupt input.
        if !(t_x.is_finite() && (0.0..=t).contains(&t_x)) {
            return Some(format!("t_x = {t_x} must lie in [0, T = {t}]"));
        }
        if !(weight.is_finite() && weight >= 0.0) {
            return Some(format!("weight = {weight} must be finite and >= 0"));
        }
        None
    }
}

/// One Gamma-Gamma observation: a repeat buyer's `x` (> 0) repeat purchases and the mean
/// value of those repeat purchases, standing for `weight` customers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpendRow {
    pub x: f64,
    pub mean_value: f64,
    pub weight: f64,
}

impl SpendRow {
    /// One customer's spend summary (weight 1).
    pub fn new(x: f64, mean_value: f64) -> Self {
        Self {
            x,
            mean_value,
            weight: 1.0,
        }
    }

    pub(crate) fn problem(&self) -> Option<String> {
        let Self {
            x,
            mean_value,
            weight,
        } = *self;
        if !(x.is_finite() && x > 0.0) {
            return Some(format!(
                "x = {x} must be a finite repeat count > 0 (Gamma-Gamma uses repeat buyers only)"
            ));
        }
        if !(mean_value.is_finite() && mean_value > 0.0) {
            return Some(format!("mean_value = {mean_value} must be finite and > 0"));
        }
        if !(weight.is_finite() && weight >= 0.0) {
            return Some(format!("weight = {weight} must be finite and >= 0"));
        }
        None
    }
}

/// Groups identical (x, t_x, T) triples into weighted rows, so a fit costs the number of
/// distinct triples rather than customers. Triples are compared by value (round the times
/// first, e.g. to whole days, to get more sharing). For x = 0, t_x carries no information and
/// is set to 0 so those rows group on T alone. The output is sorted by (x, T, t_x).
///
/// Sorting then counting runs is several times faster than hashing for millions of rows.
pub fn group_summaries<I>(triples: I) -> Vec<SummaryRow>
where
    I: IntoIterator<Item = (f64, f64, f64)>,
{
    // +0.0 turns −0.0 into +0.0 so both zeros group together.
    let mut keys: Vec<(f64, f64, f64)> = triples
        .into_iter()
        .map(|(x, t_x, t)| {
            let t_x = if x == 0.0 { 0.0 } else { t_x + 0.0 };
            (x + 0.0, t + 0.0, t_x)
        })
        .collect();
    keys.sort_unstable_by(|p, q| {
        p.0.total_cmp(&q.0)
            .then(p.1.total_cmp(&q.1))
            .then(p.2.total_cmp(&q.2))
    });
    let mut rows: Vec<SummaryRow> = Vec::new();
    for (x, t, t_x) in keys {
        match rows.last_mut() {
            Some(last)
                if last.x.to_bits() == x.to_bits()
                    && last.t.to_bits() == t.to_bits()
                    && last.t_x.to_bits() == t_x.to_bits() =>
            {
                last.weight += 1.0;
            }
            _ => rows.push(SummaryRow {
                x,
                t_x,
                t,
                weight: 1.0,
            }),
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_counts_identical_triples() {
        let rows = group_summaries([
            (1.0, 2.0, 10.0),
            (0.0, 0.0, 10.0),
            (1.0, 2.0, 10.0),
            (0.0, 0.0, 7.0),
            (0.0, -0.0, 10.0),
            (1.0, 3.0, 10.0),
        ]);
        assert_eq!(
            rows,
            vec![
                SummaryRow::new(0.0, 0.0, 7.0),
                SummaryRow::new(0.0, 0.0, 10.0).with_weight(2.0),
                SummaryRow::new(1.0, 2.0, 10.0).with_weight(2.0),
                SummaryRow::new(1.0, 3.0, 10.0),
            ]
        );
    }

    #[test]
    fn invalid_rows_are_explained() {
        assert!(SummaryRow::new(1.0, 11.0, 10.0).problem().is_some());
        assert!(SummaryRow::new(-1.0, 0.0, 10.0).problem().is_some());
        assert!(SummaryRow::new(0.0, 0.0, f64::NAN).problem().is_some());
        assert!(SummaryRow::new(2.0, 10.0, 10.0).problem().is_none());
        assert!(SpendRow::new(0.0, 10.0).problem().is_some());
        assert!(SpendRow::new(1.0, 0.0).problem().is_some());
    }
}
