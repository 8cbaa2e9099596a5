//! Customer summaries the models are fitted on, and grouping of identical summaries.

use rayon::slice::ParallelSliceMut;
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
/// is set to 0 so those rows group on T alone. The output is sorted by (x, T, t_x), in the
/// order of `f64::total_cmp`.
///
/// Sorting then counting runs beats hashing for millions of rows. The usual case, x a small
/// whole number, is sorted in two stages: a counting sort on x, then each x's (T, t_x) pairs
/// packed into one `u128` key whose integer order is the `total_cmp` order, which sorts
/// about twice as fast as comparing three floats. Large x-buckets are sorted on the rayon
/// pool. Anything else (fractional or huge x, NaN) takes a plain sort of the same keys.
pub fn group_summaries<I>(triples: I) -> Vec<SummaryRow>
where
    I: IntoIterator<Item = (f64, f64, f64)>,
{
    // Whether every x is a whole number in 0..=MAX_BUCKETED_X, and the largest.
    let mut counts_x = Some(0u32);
    // +0.0 turns −0.0 into +0.0 so both zeros group together.
    let keys: Vec<(f64, u128)> = triples
        .into_iter()
        .map(|(x, t_x, t)| {
            let t_x = if x == 0.0 { 0.0 } else { t_x + 0.0 };
            if let Some(max) = counts_x {
                // `as` saturates (NaN gives 0), so the round trip checks both range and
                // wholeness.
                let whole = x as u32;
                counts_x =
                    (f64::from(whole) == x && whole <= MAX_BUCKETED_X).then(|| max.max(whole));
            }
            (x + 0.0, pair_key(t + 0.0, t_x))
        })
        .collect();
    let mut rows: Vec<SummaryRow> = Vec::new();
    match counts_x.map(|m| m as usize) {
        Some(max_x) => {
            // Counting sort on x: bucket sizes, bucket starts, then scatter the pair keys.
            let mut starts = vec![0usize; max_x + 2];
            for &(x, _) in &keys {
                starts[x as usize + 1] += 1;
            }
            for i in 1..starts.len() {
                starts[i] += starts[i - 1];
            }
            let mut next = starts.clone();
            let mut pairs = vec![0u128; keys.len()];
            for &(x, pair) in &keys {
                let slot = &mut next[x as usize];
                pairs[*slot] = pair;
                *slot += 1;
            }
            drop(keys);
            for (x, w) in starts.windows(2).enumerate() {
                let bucket = &mut pairs[w[0]..w[1]];
                if bucket.len() >= PARALLEL_SORT_MIN {
                    bucket.par_sort_unstable();
                } else {
                    bucket.sort_unstable();
                }
                push_runs(&mut rows, x as f64, bucket);
            }
        }
        None => {
            let mut keys: Vec<(u64, u128)> = keys
                .into_iter()
                .map(|(x, pair)| (order_key(x), pair))
                .collect();
            if keys.len() >= PARALLEL_SORT_MIN {
                keys.par_sort_unstable();
            } else {
                keys.sort_unstable();
            }
            for run in keys.chunk_by(|p, q| p.0 == q.0) {
                let x = from_order_key(run[0].0);
                let pairs: Vec<u128> = run.iter().map(|k| k.1).collect();
                push_runs(&mut rows, x, &pairs);
            }
        }
    }
    rows
}

/// [`group_summaries`] over a stream too long to hold: triples are grouped a chunk at a time
/// and the chunks' rows merged, so memory follows the distinct summaries, not the customers.
/// [`Self::finish`] returns exactly the rows `group_summaries` would for the whole stream.
#[derive(Debug, Default)]
pub struct SummaryGrouper {
    chunk: Vec<(f64, f64, f64)>,
    rows: Vec<SummaryRow>,
}

impl SummaryGrouper {
    /// Triples grouped per chunk (24 MB of them).
    const CHUNK: usize = 1 << 20;

    pub fn push(&mut self, x: f64, t_x: f64, t: f64) {
        if self.chunk.capacity() == 0 {
            self.chunk.reserve_exact(Self::CHUNK);
        }
        self.chunk.push((x, t_x, t));
        if self.chunk.len() >= Self::CHUNK {
            self.group_chunk();
        }
    }

    fn group_chunk(&mut self) {
        let grouped = group_summaries(self.chunk.drain(..));
        self.rows.extend(grouped);
        // Merged once they outnumber a chunk, so they stay about as few as the distinct ones.
        if self.rows.len() > Self::CHUNK {
            self.rows = merge_rows(std::mem::take(&mut self.rows));
        }
    }

    /// The grouped rows, sorted as [`group_summaries`] sorts them.
    pub fn finish(mut self) -> Vec<SummaryRow> {
        self.group_chunk();
        merge_rows(self.rows)
    }
}

/// Rows of several [`group_summaries`] calls as one: sorted by x, then T, then t_x, with the
/// weights of equal summaries added (whole counts, so the sums are exact).
fn merge_rows(mut rows: Vec<SummaryRow>) -> Vec<SummaryRow> {
    let key = |r: &SummaryRow| (order_key(r.x), pair_key(r.t, r.t_x));
    rows.sort_unstable_by_key(key);
    let mut out: Vec<SummaryRow> = Vec::with_capacity(rows.len());
    for row in rows {
        match out.last_mut() {
            Some(last) if key(last) == key(&row) => last.weight += row.weight,
            _ => out.push(row),
        }
    }
    out
}

/// x up to this is grouped by counting sort (one bucket per whole number).
const MAX_BUCKETED_X: u32 = 65_536;

/// Slices at least this long are sorted in parallel.
const PARALLEL_SORT_MIN: usize = 100_000;

/// Appends one row per run of equal keys in the sorted `pairs` (all with this x).
fn push_runs(rows: &mut Vec<SummaryRow>, x: f64, pairs: &[u128]) {
    for run in pairs.chunk_by(|p, q| p == q) {
        let (t, t_x) = from_pair_key(run[0]);
        rows.push(SummaryRow {
            x,
            t_x,
            t,
            weight: run.len() as f64,
        });
    }
}

/// A u64 whose unsigned order is the `f64::total_cmp` order (a bijection): the same bit
/// twiddle `total_cmp` uses to compare as i64, plus flipping the sign bit for unsigned order.
#[inline]
fn order_key(v: f64) -> u64 {
    let bits = v.to_bits() as i64;
    ((bits ^ ((((bits >> 63) as u64) >> 1) as i64)) as u64) ^ (1 << 63)
}

/// Inverse of [`order_key`].
#[inline]
fn from_order_key(k: u64) -> f64 {
    let bits = (k ^ (1 << 63)) as i64;
    f64::from_bits((bits ^ ((((bits >> 63) as u64) >> 1) as i64)) as u64)
}

/// (T, t_x) as one key ordered by T, then t_x.
#[inline]
fn pair_key(t: f64, t_x: f64) -> u128 {
    (u128::from(order_key(t)) << 64) | u128::from(order_key(t_x))
}

#[inline]
fn from_pair_key(k: u128) -> (f64, f64) {
    (from_order_key((k >> 64) as u64), from_order_key(k as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grouping in chunks and merging gives exactly the rows of grouping all at once, also
    /// when the stream spans several chunks and a summary recurs across them.
    #[test]
    fn a_grouper_over_chunks_equals_grouping_everything() {
        let n = SummaryGrouper::CHUNK * 2 + 12_345;
        // A small set of summaries (x, t_x <= T) repeated in a scrambled order, with -0.0 and
        // x = 0 rows whose t_x is ignored.
        let triple = |i: usize| {
            let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let x = (h % 7) as f64;
            let t = 20.0 + (h % 13) as f64;
            let t_x = if h.is_multiple_of(5) {
                -0.0
            } else {
                (h % 11) as f64
            };
            (x, t_x, t)
        };
        let mut grouper = SummaryGrouper::default();
        for i in 0..n {
            let (x, t_x, t) = triple(i);
            grouper.push(x, t_x, t);
        }
        let merged = grouper.finish();
        let whole = group_summaries((0..n).map(triple));
        assert_eq!(merged, whole);
        let customers: f64 = merged.iter().map(|r| r.weight).sum();
        assert_eq!(customers, n as f64);
        assert!(merged.len() < 7 * 13 * 12, "{} rows", merged.len());
    }

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
    fn grouping_with_fractional_x_and_odd_values_matches_a_plain_sort() {
        let triples = [
            (1.5, 2.0, 10.0),
            (0.0, 5.0, -1.0),
            (1.5, 2.0, 10.0),
            (2.0, f64::NAN, 3.0),
            (2.0, 1.0, 3.0),
            (-0.0, 0.0, 7.0),
            (1e9, 1.0, 3.0),
        ];
        let rows = group_summaries(triples);
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0], SummaryRow::new(0.0, 0.0, -1.0));
        assert_eq!(rows[1], SummaryRow::new(0.0, 0.0, 7.0));
        assert_eq!(rows[2], SummaryRow::new(1.5, 2.0, 10.0).with_weight(2.0));
        assert_eq!(rows[3], SummaryRow::new(2.0, 1.0, 3.0));
        assert!(rows[4].x == 2.0 && rows[4].t_x.is_nan());
        assert_eq!(rows[5], SummaryRow::new(1e9, 1.0, 3.0));
        for v in [
            0.0,
            -0.0,
            1.5,
            -2.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
        ] {
            assert_eq!(from_order_key(order_key(v)).to_bits(), v.to_bits());
            for w in [0.0, -0.0, 1.5, -2.0, f64::INFINITY, 1e-300] {
                assert_eq!(order_key(v).cmp(&order_key(w)), v.total_cmp(&w));
            }
        }
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
