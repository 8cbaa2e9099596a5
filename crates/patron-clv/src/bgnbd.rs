//! The BG/NBD model (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way"):
//! per-customer likelihood, P(alive), conditional expected purchases, and the weighted
//! log-likelihood with its analytic gradient that the fitter maximizes.

use serde::{Deserialize, Serialize};

use rayon::prelude::*;

use crate::special::{digamma, hyp2f1, ln_gamma, trigamma};
use crate::summary::SummaryRow;

/// BG/NBD parameters. Purchase rates λ ~ Gamma(shape `r`, rate `alpha`) with `alpha` in the
/// time unit of the summaries; drop-out probabilities p ~ Beta(`a`, `b`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbdParams {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

/// Above this z the 2F1 series in [`BgNbdParams::conditional_expected_purchases`] needs
/// hundreds of terms, so the general [`hyp2f1`] (connection formula to 1 − z) takes over.
const SERIES_Z_MAX: f64 = 0.9;

impl BgNbdParams {
    /// Parameters as an array in the order (r, alpha, a, b).
    pub fn to_array(self) -> [f64; 4] {
        [self.r, self.alpha, self.a, self.b]
    }

    /// Parameters from an array in the order (r, alpha, a, b).
    pub fn from_array(p: [f64; 4]) -> Self {
        Self {
            r: p[0],
            alpha: p[1],
            a: p[2],
            b: p[3],
        }
    }

    /// ln L for one customer with `x` repeat purchases, the last at `t_x`, observed for `t`.
    ///
    /// L = B(a, b+x)/B(a, b) · Γ(r+x) α^r / (Γ(r) (α+T)^(r+x))
    ///   + [x > 0] B(a+1, b+x−1)/B(a, b) · Γ(r+x) α^r / (Γ(r) (α+t_x)^(r+x)).
    ///
    /// Evaluated in logs with ln-gamma and a log-sum-exp of the two terms, so it stays finite
    /// for x in the millions and for T = 0. `t_x` is ignored when x = 0.
    pub fn log_likelihood_one(&self, x: f64, t_x: f64, t: f64) -> f64 {
        let Self { r, alpha, a, b } = *self;
        let k = r + x;
        let a1 = ln_gamma(k) - ln_gamma(r) + r * alpha.ln();
        let a3 = -k * (alpha + t).ln();
        if x == 0.0 {
            return a1 + a3;
        }
        let a2 = ln_gamma(a + b) + ln_gamma(b + x) - ln_gamma(b) - ln_gamma(a + b + x);
        let a4 = a.ln() - (b + x - 1.0).ln() - k * (alpha + t_x).ln();
        a1 + a2 + log_add_exp(a3, a4)
    }

    /// Weighted log-likelihood Σ weight · ln L over summary rows.
    pub fn log_likelihood(&self, rows: &[SummaryRow]) -> f64 {
        rows.iter()
            .map(|row| row.weight * self.log_likelihood_one(row.x, row.t_x, row.t))
            .sum()
    }

    /// P(alive at T | x, t_x, T): the probability that the customer has not dropped out.
    ///
    /// 1 / (1 + [x > 0] · a/(b+x−1) · ((α+T)/(α+t_x))^(r+x)); exactly 1 when x = 0 because in
    /// BG/NBD a customer can only drop out right after a repeat purchase.
    pub fn p_alive(&self, x: f64, t_x: f64, t: f64) -> f64 {
        if x == 0.0 {
            return 1.0;
        }
        let Self { r, alpha, a, b } = *self;
        // ln((α+T)/(α+t_x)) via ln_1p keeps precision when T ≈ t_x.
        let log_odds_dead =
            (r + x) * ((t - t_x) / (alpha + t_x)).ln_1p() + (a / (b + x - 1.0)).ln();
        1.0 / (1.0 + log_odds_dead.exp())
    }

    /// Expected number of purchases in (T, T + `horizon`] for a customer with history
    /// (x, t_x, T) (FHL 2005, eq. 10).
    ///
    /// E = P(alive) · (a+b+x−1)/(a−1) · [1 − ((α+T)/(α+T+t))^(r+x) 2F1(r+x, b+x; a+b+x−1; z)]
    /// with z = t/(α+T+t). Euler's transformation turns the bracket into
    /// 1 − (1−z)^(a−1) 2F1(a+b−1−r, a−1; a+b+x−1; z), whose upper parameters do not grow
    /// with x, so nothing overflows. Writing ε = a − 1 and 2F1(·, ε; ·; z) = 1 + ε·G(z)
    /// (G is the same series with (ε)_n replaced by (ε+1)_{n−1}) divides the ε out
    /// analytically, which removes the 0/0 at a = 1 that the textbook form has.
    pub fn conditional_expected_purchases(&self, horizon: f64, x: f64, t_x: f64, t: f64) -> f64 {
        if horizon <= 0.0 {
            return 0.0;
        }
        let Self { r, alpha, a, b } = *self;
        let c = a + b + x - 1.0;
        let z = horizon / (alpha + t + horizon);
        self.p_alive(x, t_x, t) * c * purchases_bracket(r, a, b, c, z)
    }

    /// [`Self::conditional_expected_purchases`] at several horizons at once (one result per
    /// horizon, in order). The 2F1 series coefficients do not depend on the horizon, so they
    /// are computed once and every horizon's power series advances together; CLV uses this
    /// for its monthly steps, several times faster than one call per horizon.
    pub fn conditional_expected_purchases_at(
        &self,
        horizons: &[f64],
        x: f64,
        t_x: f64,
        t: f64,
    ) -> Vec<f64> {
        let Self { r, alpha, a, b } = *self;
        let c = a + b + x - 1.0;
        let scale = self.p_alive(x, t_x, t) * c;
        let zs: Vec<f64> = horizons
            .iter()
            .map(|&h| if h > 0.0 { h / (alpha + t + h) } else { 0.0 })
            .collect();
        purchases_brackets(r, a, b, c, &zs)
            .into_iter()
            .map(|q| scale * q)
            .collect()
    }

    /// Expected purchases in (0, t] for a customer just acquired at time 0, E[X(t)]: the
    /// conditional expectation with no history (x = t_x = T = 0).
    pub fn expected_purchases_new_customer(&self, t: f64) -> f64 {
        self.conditional_expected_purchases(t, 0.0, 0.0, 0.0)
    }
}

/// [1 − (1−z)^ε 2F1(A, ε; c; z)] / ε with ε = a − 1, A = a + b − 1 − r, c = a + b + x − 1.
fn purchases_bracket(r: f64, a: f64, b: f64, c: f64, z: f64) -> f64 {
    let eps = a - 1.0;
    let big_a = a + b - 1.0 - r;
    let log_1mz = (-z).ln_1p();
    if z > SERIES_Z_MAX && eps.abs() > 1e-6 {
        // The connection formula converges fast here; dividing by ε costs at most
        // ln(1e-6)/ln(2) ≈ 20 bits only when a is within 1e-6 of 1, so that case stays on
        // the series below.
        let f = hyp2f1(big_a, eps, c, z);
        return -((eps * log_1mz).exp() * f - 1.0) / eps;
    }
    // Σ_{n≥1} (A)_n (ε+1)_{n−1} / ((c)_n n!) z^n.
    let mut term = big_a * z / c;
    let mut g = term;
    let mut n = 1.0;
    while n < 1e6 {
        let ratio = (big_a + n) * (eps + n) / ((c + n) * (n + 1.0)) * z;
        term *= ratio;
        g += term;
        // Tail bound term·ρ/(1−ρ) below half an ulp of the sum, written without a division.
        let rho = ratio.abs();
        if term == 0.0
            || (rho < 1.0 && term.abs() * rho <= 0.5 * f64::EPSILON * g.abs() * (1.0 - rho))
        {
            break;
        }
        n += 1.0;
    }
    // −expm1(ε·ln(1−z))/ε, with its limit −ln(1−z) at ε = 0.
    let first = if eps == 0.0 {
        -log_1mz
    } else {
        -(eps * log_1mz).exp_m1() / eps
    };
    first - (eps * log_1mz).exp() * g
}

/// [`purchases_bracket`] for several z at once; z = 0 gives 0.
fn purchases_brackets(r: f64, a: f64, b: f64, c: f64, zs: &[f64]) -> Vec<f64> {
    let eps = a - 1.0;
    let big_a = a + b - 1.0 - r;
    let mut out = vec![0.0; zs.len()];
    // The z's handled by the series, with z^n and the partial sums G, as parallel arrays so
    // the per-term update vectorizes.
    let mut index = Vec::with_capacity(zs.len());
    let mut z_series = Vec::with_capacity(zs.len());
    for (j, &z) in zs.iter().enumerate() {
        if z <= 0.0 {
            continue;
        }
        if z > SERIES_Z_MAX && eps.abs() > 1e-6 {
            out[j] = purchases_bracket(r, a, b, c, z);
        } else {
            index.push(j);
            z_series.push(z);
        }
    }
    if index.is_empty() {
        return out;
    }
    let mut coef = big_a / c;
    let mut power = z_series.clone();
    let mut g: Vec<f64> = z_series.iter().map(|z| coef * z).collect();
    // Same series and stopping rule as `purchases_bracket`, with the coefficient
    // (A)_n (ε+1)_{n−1} / ((c)_n n!) shared by all z. Every z keeps being updated until all
    // have converged (extra terms are below half an ulp, so harmless).
    let mut n = 1.0;
    while n < 1e6 {
        let ratio = (big_a + n) * (eps + n) / ((c + n) * (n + 1.0));
        coef *= ratio;
        let mut all_done = true;
        for ((p, s), &z) in power.iter_mut().zip(g.iter_mut()).zip(&z_series) {
            *p *= z;
            let term = coef * *p;
            *s += term;
            let rho = (ratio * z).abs();
            all_done &= term == 0.0
                || (rho < 1.0 && term.abs() * rho <= 0.5 * f64::EPSILON * s.abs() * (1.0 - rho));
        }
        if all_done {
            break;
        }
        n += 1.0;
    }
    for ((j, z), g) in index.into_iter().zip(z_series).zip(g) {
        let log_1mz = (-z).ln_1p();
        let first = if eps == 0.0 {
            -log_1mz
        } else {
            -(eps * log_1mz).exp_m1() / eps
        };
        out[j] = first - (eps * log_1mz).exp() * g;
    }
    out
}

/// ln(e^u + e^v) without overflow.
#[inline]
fn log_add_exp(u: f64, v: f64) -> f64 {
    let (hi, lo) = if u >= v { (u, v) } else { (v, u) };
    hi + (lo - hi).exp().ln_1p()
}

/// Rows per work chunk of a likelihood evaluation. Fixed, not derived from the number of
/// threads: each chunk's partial sums are computed the same way wherever it runs and are
/// added in chunk order, so an evaluation is bit-for-bit reproducible whether it runs on one
/// thread or several.
const CHUNK_ROWS: usize = 8192;

/// Evaluations over fewer rows than this stay on the calling thread: below it rayon's
/// fork-join overhead (thread wake-ups, a few microseconds per chunk) eats the gain.
const PARALLEL_MIN_ROWS: usize = 20_000;

/// A jump between consecutive distinct x of at most this many unit steps is taken with the
/// ln Γ / ψ / ψ₁ recurrences; larger or fractional jumps evaluate the functions afresh.
const LADDER_MAX_STEPS: f64 = 16.0;

/// Summaries laid out for fast repeated likelihood evaluation: rows sorted by x and stored
/// column-wise, split into fixed chunks (see [`CHUNK_ROWS`]) of per-x segments.
#[derive(Debug, Clone)]
pub(crate) struct BgNbdData {
    groups: Vec<XGroup>,
    t_x: Vec<f64>,
    t: Vec<f64>,
    w: Vec<f64>,
    /// Runs of rows sharing one x, cut at chunk boundaries.
    segments: Vec<Segment>,
    /// Each chunk's range of `segments`.
    chunks: Vec<std::ops::Range<usize>>,
    /// Σ weight (number of customers).
    pub(crate) total_weight: f64,
    /// Largest T; the time scale used to make the penalizer unit-free.
    pub(crate) max_t: f64,
    /// Σ weight · x and Σ weight · T, for data-driven starting points.
    pub(crate) sum_wx: f64,
    pub(crate) sum_wt: f64,
    /// Σ weight over rows with x > 0.
    pub(crate) repeat_weight: f64,
}

#[derive(Debug, Clone, Copy)]
struct XGroup {
    x: f64,
    weight: f64,
}

/// Rows `start..end`, all with the x of `groups[group]`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    group: usize,
    start: usize,
    end: usize,
}

/// Σ w·ln L with its gradient and Hessian with respect to the natural parameters
/// (r, α, a, b). `hess` is only filled when asked for; it is symmetric.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Derivatives {
    pub(crate) ll: f64,
    pub(crate) grad: [f64; 4],
    pub(crate) hess: [[f64; 4]; 4],
}

impl Derivatives {
    fn add(&mut self, other: &Self) {
        self.ll += other.ll;
        for i in 0..4 {
            self.grad[i] += other.grad[i];
            for j in 0..4 {
                self.hess[i][j] += other.hess[i][j];
            }
        }
    }
}

/// Weighted sums over the rows of one segment, from which the segment's contribution to
/// the derivatives follows (see [`BgNbdData::segment`]). Per row, with L_T = ln(α+T),
/// L_X = ln(α+t_x), i_T = 1/(α+T), i_X = 1/(α+t_x), gap = L_T − L_X, d = i_T − i_X,
/// π = the posterior share of the drop-out term and v = π(1−π):
#[derive(Debug, Clone, Copy, Default)]
struct RowSums {
    /// Σ w softplus(u), u = ln a − ln(b+x−1) + k·gap
    soft: f64,
    /// Σ w L_T
    lt: f64,
    /// Σ w i_T
    it: f64,
    /// Σ w π, Σ w π gap, Σ w π d
    pi: f64,
    pi_gap: f64,
    pi_d: f64,
    /// Hessian only: Σ w i_T², Σ w π (i_X² − i_T²)
    it2: f64,
    pi_dd: f64,
    /// Hessian only: Σ w v, Σ w v gap, Σ w v gap², Σ w v d, Σ w v d², Σ w v gap d
    v: f64,
    v_gap: f64,
    v_gap2: f64,
    v_d: f64,
    v_d2: f64,
    v_gap_d: f64,
}

/// lnΓ(z+x) − lnΓ(z), ψ(z+x) − ψ(z) and ψ₁(z+x) − ψ₁(z) for the increasing distinct x of
/// the groups. Consecutive counts usually differ by 1, and then the recurrences
/// lnΓ(y+1) = lnΓ(y) + ln y, ψ(y+1) = ψ(y) + 1/y, ψ₁(y+1) = ψ₁(y) − 1/y² cost one ln and two
/// divisions instead of three special-function evaluations (that matters when there are
/// few rows per x). Working with differences also avoids cancelling two large ln Γ values.
struct GammaLadder {
    z: f64,
    lg_z: f64,
    psi_z: f64,
    tri_z: f64,
    x: f64,
    d_lg: f64,
    d_psi: f64,
    d_tri: f64,
}

impl GammaLadder {
    fn new(z: f64, hessian: bool) -> Self {
        Self {
            z,
            lg_z: ln_gamma(z),
            psi_z: digamma(z),
            tri_z: if hessian { trigamma(z) } else { 0.0 },
            x: 0.0,
            d_lg: 0.0,
            d_psi: 0.0,
            d_tri: 0.0,
        }
    }

    fn advance_to(&mut self, x: f64, hessian: bool) {
        let steps = x - self.x;
        if (0.0..=LADDER_MAX_STEPS).contains(&steps) && steps.fract() == 0.0 {
            while self.x < x {
                let y = self.z + self.x;
                let inv = 1.0 / y;
                self.d_lg += y.ln();
                self.d_psi += inv;
                self.d_tri -= inv * inv;
                self.x += 1.0;
            }
        } else {
            let y = self.z + x;
            self.x = x;
            self.d_lg = ln_gamma(y) - self.lg_z;
            self.d_psi = digamma(y) - self.psi_z;
            self.d_tri = if hessian {
                trigamma(y) - self.tri_z
            } else {
                0.0
            };
        }
    }
}

impl BgNbdData {
    /// Builds the layout from validated rows; rows with weight 0 are dropped.
    pub(crate) fn new(rows: &[SummaryRow]) -> Self {
        // group_summaries' output (sorted by x, positive weights) is laid out in one pass
        // straight from the input; anything else is filtered and sorted by x first.
        if let Some(data) = Self::from_sorted(rows) {
            return data;
        }
        let mut sorted: Vec<SummaryRow> = rows.iter().copied().filter(|r| r.weight > 0.0).collect();
        sorted.sort_by(|p, q| p.x.total_cmp(&q.x));
        Self::from_sorted(&sorted).expect("rows sorted by x with positive weights")
    }

    /// The layout of rows sorted by x with positive weights; None if they are not.
    fn from_sorted(rows: &[SummaryRow]) -> Option<Self> {
        let n = rows.len();
        let mut data = Self {
            groups: Vec::new(),
            t_x: Vec::with_capacity(n),
            t: Vec::with_capacity(n),
            w: Vec::with_capacity(n),
            segments: Vec::new(),
            chunks: Vec::new(),
            total_weight: 0.0,
            max_t: 0.0,
            sum_wx: 0.0,
            sum_wt: 0.0,
            repeat_weight: 0.0,
        };
        // Row index where each group starts.
        let mut starts: Vec<usize> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if row.weight.is_nan() || row.weight <= 0.0 {
                return None;
            }
            match data.groups.last_mut() {
                Some(g) if g.x == row.x => g.weight += row.weight,
                Some(g) if g.x.total_cmp(&row.x).is_gt() => return None,
                _ => {
                    starts.push(i);
                    data.groups.push(XGroup {
                        x: row.x,
                        weight: row.weight,
                    });
                }
            }
            data.t_x.push(row.t_x);
            data.t.push(row.t);
            data.w.push(row.weight);
            data.sum_wt += row.weight * row.t;
            data.max_t = data.max_t.max(row.t);
        }
        starts.push(n);
        for (group, g) in data.groups.iter().enumerate() {
            data.total_weight += g.weight;
            data.sum_wx += g.weight * g.x;
            if g.x > 0.0 {
                data.repeat_weight += g.weight;
            }
            // This x's segments: its rows cut at chunk boundaries.
            let (mut s, end) = (starts[group], starts[group + 1]);
            while s < end {
                let e = end.min((s / CHUNK_ROWS + 1) * CHUNK_ROWS);
                data.segments.push(Segment {
                    group,
                    start: s,
                    end: e,
                });
                s = e;
            }
        }
        // Chunk c holds the segments whose rows lie in [c·CHUNK_ROWS, (c+1)·CHUNK_ROWS).
        let mut first = 0;
        for (i, seg) in data.segments.iter().enumerate() {
            if i > 0 && seg.start % CHUNK_ROWS == 0 {
                data.chunks.push(first..i);
                first = i;
            }
        }
        if !data.segments.is_empty() {
            data.chunks.push(first..data.segments.len());
        }
        Some(data)
    }

    /// Number of (weighted) rows.
    pub(crate) fn rows(&self) -> usize {
        self.w.len()
    }

    /// Every `stride`-th row (starting mid-stride), with its weight multiplied by `stride`.
    /// Rows are sorted by x (and, from group_summaries, by T within x), so this is a sample
    /// stratified over x and T.
    pub(crate) fn subsample(&self, stride: usize) -> Self {
        let stride = stride.max(1);
        let scale = stride as f64;
        let rows: Vec<SummaryRow> = self
            .segments
            .iter()
            .flat_map(|s| {
                let x = self.groups[s.group].x;
                (s.start..s.end)
                    .filter(|i| i % stride == stride / 2)
                    .map(move |i| SummaryRow {
                        x,
                        t_x: self.t_x[i],
                        t: self.t[i],
                        weight: self.w[i] * scale,
                    })
            })
            .collect();
        Self::new(&rows)
    }

    /// Σ w·ln L and its gradient with respect to (r, α, a, b).
    #[cfg(test)]
    pub(crate) fn log_likelihood_and_gradient(&self, p: [f64; 4]) -> (f64, [f64; 4]) {
        let d = self.derivatives(p, false);
        (d.ll, d.grad)
    }

    /// Σ w·ln L, its gradient and (if `hessian`) its Hessian with respect to (r, α, a, b),
    /// all from one pass over the rows.
    ///
    /// ln L = A1 + [x>0] A2 + R per row, where A1 = lnΓ(r+x) − lnΓ(r) + r ln α and
    /// A2 = lnΓ(a+b) + lnΓ(b+x) − lnΓ(b) − lnΓ(a+b+x) depend on x only (summed once per
    /// distinct x, times its weight), and the row part is R = −r L_T for x = 0 and
    /// R = −k L_T + softplus(u) for x > 0, with k = r + x and
    /// u = ln a − ln(b+x−1) + k (L_T − L_X) the log-odds of "dropped out after t_x" against
    /// "alive at T". With π = sigmoid(u), ∂R = ∂(−k L_T) + π ∂u and
    /// ∂²R = ∂²(−k L_T) + π ∂²u + π(1−π) ∂u ∂uᵀ, where ∂u = (gap, k d, 1/a, −1/(b+x−1)).
    pub(crate) fn derivatives(&self, p: [f64; 4], hessian: bool) -> Derivatives {
        let [r, alpha, a, b] = p;
        let ln_alpha = alpha.ln();
        let mut total = Derivatives::default();

        // The x-only terms, over the distinct x.
        let mut lad_r = GammaLadder::new(r, hessian);
        let mut lad_b = GammaLadder::new(b, hessian);
        let mut lad_ab = GammaLadder::new(a + b, hessian);
        for g in &self.groups {
            let (x, wt) = (g.x, g.weight);
            lad_r.advance_to(x, hessian);
            total.ll += wt * (lad_r.d_lg + r * ln_alpha);
            total.grad[0] += wt * (lad_r.d_psi + ln_alpha);
            total.grad[1] += wt * r / alpha;
            total.hess[0][0] += wt * lad_r.d_tri;
            total.hess[0][1] += wt / alpha;
            total.hess[1][1] -= wt * r / (alpha * alpha);
            if x > 0.0 {
                lad_b.advance_to(x, hessian);
                lad_ab.advance_to(x, hessian);
                total.ll += wt * (lad_b.d_lg - lad_ab.d_lg);
                total.grad[2] -= wt * lad_ab.d_psi;
                total.grad[3] += wt * (lad_b.d_psi - lad_ab.d_psi);
                total.hess[2][2] -= wt * lad_ab.d_tri;
                total.hess[2][3] -= wt * lad_ab.d_tri;
                total.hess[3][3] += wt * (lad_b.d_tri - lad_ab.d_tri);
            }
        }

        // The row terms, chunk by chunk; partial sums are added in chunk order.
        let ln_a = a.ln();
        let chunk = |c: &std::ops::Range<usize>| {
            let mut part = Derivatives::default();
            for s in &self.segments[c.clone()] {
                let x = self.groups[s.group].x;
                if hessian {
                    self.segment::<true>(&mut part, s, x, p, ln_a);
                } else {
                    self.segment::<false>(&mut part, s, x, p, ln_a);
                }
            }
            part
        };
        let partials: Vec<Derivatives> = if self.w.len() >= PARALLEL_MIN_ROWS {
            self.chunks.par_iter().map(chunk).collect()
        } else {
            self.chunks.iter().map(chunk).collect()
        };
        for part in &partials {
            total.add(part);
        }
        for i in 0..4 {
            for j in 0..i {
                total.hess[i][j] = total.hess[j][i];
            }
        }
        total
    }

    /// Adds one segment's row terms (rows sharing x) to `out` (upper triangle of the Hessian).
    #[inline]
    fn segment<const HESSIAN: bool>(
        &self,
        out: &mut Derivatives,
        s: &Segment,
        x: f64,
        p: [f64; 4],
        ln_a: f64,
    ) {
        let [r, alpha, a, b] = p;
        let range = s.start..s.end;
        let (t_x, t, w) = (
            &self.t_x[range.clone()],
            &self.t[range.clone()],
            &self.w[range],
        );
        let mut m = RowSums::default();
        if x == 0.0 {
            // R = −r L_T: one log and one division per row.
            for (&ti, &wi) in t.iter().zip(w) {
                let s_t = alpha + ti;
                let i_t = 1.0 / s_t;
                m.lt += wi * s_t.ln();
                m.it += wi * i_t;
                if HESSIAN {
                    m.it2 += wi * i_t * i_t;
                }
            }
            out.ll -= r * m.lt;
            out.grad[0] -= m.lt;
            out.grad[1] -= r * m.it;
            out.hess[0][1] -= m.it;
            out.hess[1][1] += r * m.it2;
            return;
        }

        let k = r + x;
        let bx1 = b + x - 1.0;
        let c4 = ln_a - bx1.ln();
        // This loop is the whole cost of a fit: per row two ln for L_T and L_X, one exp and
        // one ln for the softplus, and a single division that yields 1/(1+e^−|u|), i_T and
        // i_X together. It is branch-free (the select compiles to a blend).
        for ((&txi, &ti), &wi) in t_x.iter().zip(t).zip(w) {
            let s_t = alpha + ti;
            let s_x = alpha + txi;
            let l_t = s_t.ln();
            let gap = l_t - s_x.ln();
            let u = c4 + k * gap;
            let e = (-u.abs()).exp();
            let one_e = 1.0 + e;
            let q = 1.0 / (one_e * s_t * s_x);
            let sig = q * s_t * s_x; // 1/(1+e)
            let i_t = q * one_e * s_x;
            let i_x = q * one_e * s_t;
            // sigmoid(u) is 1/(1+e) for u ≥ 0 and e/(1+e) below; π(1−π) = e/(1+e)² either way.
            let pi = if u >= 0.0 { sig } else { e * sig };
            let d = i_t - i_x;
            let wpi = wi * pi;
            // ln(1 + e^u) = max(u, 0) + ln(1 + e^−|u|); ln(1 + e) rather than ln_1p(e)
            // costs at most 2e-16 absolute when e is tiny.
            m.soft += wi * (u.max(0.0) + one_e.ln());
            m.lt += wi * l_t;
            m.it += wi * i_t;
            m.pi += wpi;
            m.pi_gap += wpi * gap;
            m.pi_d += wpi * d;
            if HESSIAN {
                let wv = wi * e * sig * sig;
                m.it2 += wi * i_t * i_t;
                m.pi_dd += wpi * (i_x - i_t) * (i_x + i_t);
                m.v += wv;
                m.v_gap += wv * gap;
                m.v_gap2 += wv * gap * gap;
                m.v_d += wv * d;
                m.v_d2 += wv * d * d;
                m.v_gap_d += wv * gap * d;
            }
        }
        let inv_a = 1.0 / a;
        let inv_bx1 = 1.0 / bx1;
        out.ll += m.soft - k * m.lt;
        // ∂R/∂r = −L_T + π gap; ∂R/∂α = −k i_T + π k d; ∂R/∂a = π/a; ∂R/∂b = −π/(b+x−1).
        out.grad[0] += m.pi_gap - m.lt;
        out.grad[1] -= k * (m.it - m.pi_d);
        out.grad[2] += m.pi * inv_a;
        out.grad[3] -= m.pi * inv_bx1;
        if HESSIAN {
            let h = &mut out.hess;
            h[0][0] += m.v_gap2;
            h[0][1] += m.pi_d - m.it + k * m.v_gap_d;
            h[0][2] += m.v_gap * inv_a;
            h[0][3] -= m.v_gap * inv_bx1;
            h[1][1] += k * (m.it2 + m.pi_dd) + k * k * m.v_d2;
            h[1][2] += k * m.v_d * inv_a;
            h[1][3] -= k * m.v_d * inv_bx1;
            h[2][2] += (m.v - m.pi) * inv_a * inv_a;
            h[2][3] -= m.v * inv_a * inv_bx1;
            h[3][3] += (m.pi + m.v) * inv_bx1 * inv_bx1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDNOW: BgNbdParams = BgNbdParams {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };

    #[test]
    fn likelihood_is_finite_at_extremes() {
        for &(x, t_x, t) in &[
            (0.0, 0.0, 0.0),
            (0.0, 0.0, 1e9),
            (1e6, 30.0, 39.0),
            (1e6, 0.0, 1e-9),
            (1.0, 0.0, 0.0),
            (3.0, 1e8, 1e8),
        ] {
            // (Densities of event times can exceed 1, so ln L may be positive for huge x.)
            let ll = CDNOW.log_likelihood_one(x, t_x, t);
            assert!(ll.is_finite(), "ll({x},{t_x},{t}) = {ll}");
        }
        // A brand-new customer (x = 0, T = 0) has probability 1 of what was observed.
        assert!(CDNOW.log_likelihood_one(0.0, 0.0, 0.0).abs() < 1e-15);
    }

    #[test]
    fn likelihood_matches_direct_formula_for_small_values() {
        // Direct evaluation of FHL 2005 eq. 6 in plain arithmetic for small x.
        let BgNbdParams { r, alpha, a, b } = CDNOW;
        let beta = |p: f64, q: f64| (ln_gamma(p) + ln_gamma(q) - ln_gamma(p + q)).exp();
        let gamma = |v: f64| ln_gamma(v).exp();
        for &(x, t_x, t) in &[(2.0, 30.43, 38.86), (1.0, 1.71, 38.86), (0.0, 0.0, 38.86)] {
            let common = gamma(r + x) * alpha.powf(r) / gamma(r);
            let mut l = beta(a, b + x) / beta(a, b) * common / (alpha + t).powf(r + x);
            if x > 0.0 {
                l += beta(a + 1.0, b + x - 1.0) / beta(a, b) * common / (alpha + t_x).powf(r + x);
            }
            let got = CDNOW.log_likelihood_one(x, t_x, t);
            assert!((got - l.ln()).abs() < 1e-12, "{got} vs {}", l.ln());
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let rows = [
            SummaryRow::new(0.0, 0.0, 38.0),
            SummaryRow::new(0.0, 0.0, 5.0).with_weight(3.0),
            SummaryRow::new(1.0, 1.7, 38.9),
            SummaryRow::new(2.0, 30.4, 38.9).with_weight(2.5),
            SummaryRow::new(7.0, 35.0, 36.0),
            SummaryRow::new(40.0, 10.0, 77.0),
            SummaryRow::new(3.0, 0.0, 0.0),
        ];
        let data = BgNbdData::new(&rows);
        for p in [[0.243, 4.414, 0.793, 2.426], [2.0, 0.3, 5.0, 0.4]] {
            let (ll, grad) = data.log_likelihood_and_gradient(p);
            let direct = BgNbdParams::from_array(p).log_likelihood(&rows);
            assert!(
                (ll - direct).abs() < 1e-10 * direct.abs(),
                "{ll} vs {direct}"
            );
            for k in 0..4 {
                let h = 1e-6 * p[k];
                let (mut up, mut down) = (p, p);
                up[k] += h;
                down[k] -= h;
                let fd = (data.log_likelihood_and_gradient(up).0
                    - data.log_likelihood_and_gradient(down).0)
                    / (2.0 * h);
                let err = (grad[k] - fd).abs() / fd.abs().max(1.0);
                assert!(err < 1e-6, "param {k}: analytic {} vs fd {fd}", grad[k]);
            }
        }
    }

    #[test]
    fn hessian_matches_finite_differences_of_the_gradient() {
        // Includes consecutive x (ladder recurrences), a jump of 33 and a fractional x (fresh
        // evaluations), x = 0 rows and T = t_x.
        let rows = [
            SummaryRow::new(0.0, 0.0, 38.0),
            SummaryRow::new(0.0, 0.0, 5.0).with_weight(3.0),
            SummaryRow::new(1.0, 1.7, 38.9),
            SummaryRow::new(2.0, 30.4, 38.9).with_weight(2.5),
            SummaryRow::new(2.5, 20.0, 30.0),
            SummaryRow::new(7.0, 35.0, 36.0),
            SummaryRow::new(40.0, 10.0, 77.0),
            SummaryRow::new(3.0, 0.0, 0.0),
            SummaryRow::new(4.0, 9.0, 9.0),
        ];
        let data = BgNbdData::new(&rows);
        for p in [[0.243, 4.414, 0.793, 2.426], [2.0, 0.3, 5.0, 0.4]] {
            let full = data.derivatives(p, true);
            let (ll, grad) = data.log_likelihood_and_gradient(p);
            assert_eq!(ll, full.ll);
            assert_eq!(grad, full.grad);
            let direct = BgNbdParams::from_array(p).log_likelihood(&rows);
            assert!(
                (ll - direct).abs() < 1e-10 * direct.abs(),
                "{ll} vs {direct}"
            );
            for k in 0..4 {
                let h = 1e-5 * p[k];
                let (mut up, mut down) = (p, p);
                up[k] += h;
                down[k] -= h;
                let (gu, gd) = (
                    data.log_likelihood_and_gradient(up).1,
                    data.log_likelihood_and_gradient(down).1,
                );
                for j in 0..4 {
                    let fd = (gu[j] - gd[j]) / (2.0 * h);
                    let err = (full.hess[k][j] - fd).abs() / fd.abs().max(1.0);
                    assert!(
                        err < 1e-6,
                        "H[{k}][{j}]: analytic {} vs fd {fd}",
                        full.hess[k][j]
                    );
                }
            }
        }
    }

    #[test]
    fn chunked_evaluation_is_deterministic_and_matches_the_direct_sum() {
        // More rows than PARALLEL_MIN_ROWS, so the chunks run on the thread pool.
        let rows: Vec<SummaryRow> = (0..50_000)
            .map(|i| {
                let x = f64::from(i % 7);
                let t = 10.0 + f64::from(i % 997) * 0.1;
                let t_x = if x == 0.0 {
                    0.0
                } else {
                    t * f64::from(i % 13) / 13.0
                };
                SummaryRow::new(x, t_x, t)
            })
            .collect();
        let data = BgNbdData::new(&rows);
        let p = [0.243, 4.414, 0.793, 2.426];
        let one = data.derivatives(p, true);
        for _ in 0..3 {
            let again = data.derivatives(p, true);
            assert_eq!(one.ll.to_bits(), again.ll.to_bits());
            assert_eq!(one.grad, again.grad);
            assert_eq!(one.hess, again.hess);
        }
        let direct = BgNbdParams::from_array(p).log_likelihood(&rows);
        assert!(
            (one.ll - direct).abs() < 1e-11 * direct.abs(),
            "{} vs {direct}",
            one.ll
        );
    }

    #[test]
    fn p_alive_properties() {
        assert_eq!(CDNOW.p_alive(0.0, 0.0, 50.0), 1.0);
        // Buying right up to T leaves the customer very likely alive; a long silence lowers it.
        let recent = CDNOW.p_alive(5.0, 38.0, 38.0);
        let silent = CDNOW.p_alive(5.0, 5.0, 38.0);
        assert!(recent > 0.5 && silent < recent && silent > 0.0);
        // Huge x with a long silence: essentially dead, but a number, not NaN.
        let p = CDNOW.p_alive(1e6, 1.0, 1e4);
        assert!(p.is_finite() && (0.0..1e-300).contains(&p), "{p}");
    }

    #[test]
    fn expected_purchases_series_and_connection_formula_agree() {
        // Straddle the z = 0.9 switch: horizon such that z = horizon/(α+T+horizon) ≈ 0.9.
        for &x in &[0.0, 1.0, 5.0, 40.0] {
            let base = CDNOW.alpha + 10.0;
            let h = 9.0 * base;
            let lo = CDNOW.conditional_expected_purchases(h * (1.0 - 1e-9), x, 9.0, 10.0);
            let hi = CDNOW.conditional_expected_purchases(h * (1.0 + 1e-9), x, 9.0, 10.0);
            assert!(((lo - hi) / lo).abs() < 1e-8, "x={x}: {lo} vs {hi}");
        }
    }

    #[test]
    fn expected_purchases_continuous_in_a_through_one() {
        // The ε = a − 1 factorization must make a = 1 a regular point.
        for &z_h in &[10.0, 1000.0] {
            let at = |a: f64| {
                BgNbdParams { a, ..CDNOW }.conditional_expected_purchases(z_h, 2.0, 20.0, 30.0)
            };
            let (m, o, p) = (at(1.0 - 1e-7), at(1.0), at(1.0 + 1e-7));
            assert!(((m - o) / o).abs() < 1e-6 && ((p - o) / o).abs() < 1e-6);
        }
    }

    #[test]
    fn expected_purchases_match_mpmath() {
        // FHL 2005 eq. 10 evaluated literally (no transformation) with mpmath at 40 digits:
        // (params, horizon, x, t_x, T, expected purchases). Covers z on both sides of 0.9,
        // a < 1 and a > 1, x = 0 and x = 200.
        // (params, horizon, x, t_x, T, expected purchases)
        type Case = ([f64; 4], f64, f64, f64, f64, f64);
        let cases: &[Case] = &[
            (
                [0.243, 4.414, 0.793, 2.426],
                10.0,
                2.0,
                20.0,
                30.0,
                0.406_644_155_213_412_8,
            ),
            (
                [0.243, 4.414, 0.793, 2.426],
                52.0,
                0.0,
                0.0,
                38.0,
                0.256_557_363_628_008_4,
            ),
            (
                [0.243, 4.414, 0.793, 2.426],
                500.0,
                0.0,
                0.0,
                1.0,
                4.452_859_802_835_498,
            ),
            (
                [0.243, 4.414, 0.793, 2.426],
                52.0,
                5.0,
                30.5,
                38.86,
                3.479_169_767_790_155_6,
            ),
            (
                [0.243, 4.414, 0.793, 2.426],
                1000.0,
                50.0,
                300.0,
                310.0,
                78.717_372_707_787_6,
            ),
            (
                [0.243, 4.414, 0.793, 2.426],
                39.0,
                200.0,
                38.0,
                39.0,
                96.958_136_240_231_75,
            ),
            (
                [0.243, 4.414, 0.793, 2.426],
                5000.0,
                1.0,
                0.5,
                0.5,
                26.957_007_996_102_79,
            ),
            (
                [0.8, 3.0, 1.7, 2.2],
                10.0,
                2.0,
                20.0,
                30.0,
                0.296_732_884_776_449_9,
            ),
            (
                [0.8, 3.0, 1.7, 2.2],
                52.0,
                0.0,
                0.0,
                38.0,
                0.701_040_335_553_397_6,
            ),
            (
                [0.8, 3.0, 1.7, 2.2],
                500.0,
                0.0,
                0.0,
                1.0,
                3.475_996_141_303_047,
            ),
            (
                [0.8, 3.0, 1.7, 2.2],
                52.0,
                5.0,
                30.5,
                38.86,
                2.038_555_322_999_259,
            ),
            (
                [0.8, 3.0, 1.7, 2.2],
                1000.0,
                50.0,
                300.0,
                310.0,
                40.300_010_927_582_01,
            ),
            (
                [0.8, 3.0, 1.7, 2.2],
                39.0,
                200.0,
                38.0,
                39.0,
                51.365_005_944_288_32,
            ),
            (
                [0.8, 3.0, 1.7, 2.2],
                5000.0,
                1.0,
                0.5,
                0.5,
                3.099_645_005_831_766,
            ),
            (
                [2.5, 40.0, 0.3, 9.0],
                10.0,
                2.0,
                20.0,
                30.0,
                0.600_323_434_027_229_6,
            ),
            (
                [2.5, 40.0, 0.3, 9.0],
                52.0,
                0.0,
                0.0,
                38.0,
                1.610_654_147_320_050_4,
            ),
            (
                [2.5, 40.0, 0.3, 9.0],
                500.0,
                0.0,
                0.0,
                1.0,
                22.463_905_943_655_716,
            ),
            (
                [2.5, 40.0, 0.3, 9.0],
                52.0,
                5.0,
                30.5,
                38.86,
                4.458_059_038_751_633,
            ),
            (
                [2.5, 40.0, 0.3, 9.0],
                1000.0,
                50.0,
                300.0,
                310.0,
                117.009_506_698_730_36,
            ),
            (
                [2.5, 40.0, 0.3, 9.0],
                39.0,
                200.0,
                38.0,
                39.0,
                92.198_209_372_275_7,
            ),
            (
                [2.5, 40.0, 0.3, 9.0],
                5000.0,
                1.0,
                0.5,
                0.5,
                175.540_217_511_330_77,
            ),
        ];
        for &(p, h, x, t_x, t, want) in cases {
            let got = BgNbdParams::from_array(p).conditional_expected_purchases(h, x, t_x, t);
            let rel = ((got - want) / want).abs();
            assert!(
                rel < 1e-11,
                "{p:?} h={h} x={x}: {got} vs {want} (rel {rel:e})"
            );
        }
    }

    #[test]
    fn many_horizons_match_one_at_a_time() {
        let horizons: Vec<f64> = (0..=40).map(|i| f64::from(i) * 13.0).collect();
        for p in [CDNOW, BgNbdParams::from_array([0.8, 3.0, 1.7, 2.2])] {
            for &(x, t_x, t) in &[(0.0, 0.0, 0.0), (2.0, 30.0, 38.0), (50.0, 20.0, 40.0)] {
                let many = p.conditional_expected_purchases_at(&horizons, x, t_x, t);
                for (&h, &m) in horizons.iter().zip(&many) {
                    let one = p.conditional_expected_purchases(h, x, t_x, t);
                    assert!((m - one).abs() <= 1e-13 * one.abs(), "h={h}: {m} vs {one}");
                }
            }
        }
    }

    #[test]
    fn new_customer_expectation_is_increasing_and_starts_at_zero() {
        assert_eq!(CDNOW.expected_purchases_new_customer(0.0), 0.0);
        let mut prev = 0.0;
        for i in 1..200 {
            let e = CDNOW.expected_purchases_new_customer(f64::from(i) * 2.0);
            assert!(e > prev, "not increasing at {i}");
            prev = e;
        }
    }
}
