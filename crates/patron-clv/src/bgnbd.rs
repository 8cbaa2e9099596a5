//! The BG/NBD model (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way"):
//! per-customer likelihood, P(alive), conditional expected purchases, and the weighted
//! log-likelihood with its analytic gradient that the fitter maximizes.

use serde::{Deserialize, Serialize};

use crate::special::{digamma, hyp2f1, ln_gamma};
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

/// Summaries laid out for fast repeated likelihood evaluation: rows sorted by x and stored
/// column-wise, with the terms that depend only on x computed once per distinct x.
#[derive(Debug, Clone)]
pub(crate) struct BgNbdData {
    groups: Vec<XGroup>,
    t_x: Vec<f64>,
    t: Vec<f64>,
    w: Vec<f64>,
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
    start: usize,
    end: usize,
}

impl BgNbdData {
    /// Builds the layout from validated rows with positive weight.
    pub(crate) fn new(rows: &[SummaryRow]) -> Self {
        let mut sorted: Vec<SummaryRow> = rows.to_vec();
        sorted.sort_by(|p, q| p.x.total_cmp(&q.x));
        let mut data = Self {
            groups: Vec::new(),
            t_x: Vec::with_capacity(sorted.len()),
            t: Vec::with_capacity(sorted.len()),
            w: Vec::with_capacity(sorted.len()),
            total_weight: 0.0,
            max_t: 0.0,
            sum_wx: 0.0,
            sum_wt: 0.0,
            repeat_weight: 0.0,
        };
        for (i, row) in sorted.iter().enumerate() {
            match data.groups.last_mut() {
                Some(g) if g.x == row.x => {
                    g.end = i + 1;
                    g.weight += row.weight;
                }
                _ => data.groups.push(XGroup {
                    x: row.x,
                    weight: row.weight,
                    start: i,
                    end: i + 1,
                }),
            }
            data.t_x.push(row.t_x);
            data.t.push(row.t);
            data.w.push(row.weight);
            data.total_weight += row.weight;
            data.max_t = data.max_t.max(row.t);
            data.sum_wx += row.weight * row.x;
            data.sum_wt += row.weight * row.t;
            if row.x > 0.0 {
                data.repeat_weight += row.weight;
            }
        }
        data
    }

    /// Σ w·ln L and its gradient with respect to (r, α, a, b).
    pub(crate) fn log_likelihood_and_gradient(&self, p: [f64; 4]) -> (f64, [f64; 4]) {
        let [r, alpha, a, b] = p;
        let ln_alpha = alpha.ln();
        let (lg_r, psi_r) = (ln_gamma(r), digamma(r));
        let (lg_b, psi_b) = (ln_gamma(b), digamma(b));
        let (lg_ab, psi_ab) = (ln_gamma(a + b), digamma(a + b));
        let inv_a = 1.0 / a;

        let (mut ll, mut d_r, mut d_alpha, mut d_a, mut d_b) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for g in &self.groups {
            let x = g.x;
            let k = r + x;
            let range = g.start..g.end;
            let (t_x, t, w) = (
                &self.t_x[range.clone()],
                &self.t[range.clone()],
                &self.w[range],
            );

            // Terms that depend on x only, times the group's weight.
            let a1 = ln_gamma(k) - lg_r + r * ln_alpha;
            ll += g.weight * a1;
            d_r += g.weight * (digamma(k) - psi_r + ln_alpha);
            d_alpha += g.weight * r / alpha;

            if x == 0.0 {
                // ln L = A1 − r ln(α+T): one log and one division per row.
                let (mut s_log, mut s_inv) = (0.0, 0.0);
                for (&ti, &wi) in t.iter().zip(w) {
                    let s = alpha + ti;
                    s_log += wi * s.ln();
                    s_inv += wi / s;
                }
                ll -= r * s_log;
                d_r -= s_log;
                d_alpha -= r * s_inv;
                continue;
            }

            let a2 = lg_ab + ln_gamma(b + x) - lg_b - ln_gamma(a + b + x);
            ll += g.weight * a2;
            let psi_abx = digamma(a + b + x);
            d_a += g.weight * (psi_ab - psi_abx);
            d_b += g.weight * (psi_ab + digamma(b + x) - psi_b - psi_abx);

            let bx1 = b + x - 1.0;
            let c4 = a.ln() - bx1.ln();
            // Per row, ln L_row = A3 + ln(1 + e^u) with A3 = −k ln(α+T) ("alive at T"),
            // A4 = c4 − k ln(α+t_x) ("dropped out right after t_x") and u = A4 − A3.
            // π4 = sigmoid(u) is the posterior share of the drop-out term and weights the
            // gradient. This loop is the whole cost of a fit, so it is branch-free, takes
            // two ln, one exp, one more ln and a single division per row.
            let (mut s_lt, mut s_soft, mut s_dr, mut s_dalpha, mut s_pi4) =
                (0.0, 0.0, 0.0, 0.0, 0.0);
            for ((&txi, &ti), &wi) in t_x.iter().zip(t).zip(w) {
                let s_t = alpha + ti;
                let s_x = alpha + txi;
                let l_t = s_t.ln();
                let l_x = s_x.ln();
                let gap = l_t - l_x;
                let u = c4 + k * gap;
                let e = (-u.abs()).exp();
                let one_e = 1.0 + e;
                // One division gives 1/(1+e), 1/(α+T) and 1/(α+t_x).
                let q = 1.0 / (one_e * s_t * s_x);
                let inv = q * s_t * s_x;
                let pi4 = if u >= 0.0 { inv } else { e * inv };
                let pi3 = 1.0 - pi4;
                // ln(1 + e^u) = max(u, 0) + ln(1 + e^−|u|); ln(1 + e) rather than ln_1p(e)
                // costs at most 2e-16 absolute when e is tiny.
                s_soft += wi * (u.max(0.0) + one_e.ln());
                s_lt += wi * l_t;
                s_dr += wi * pi4 * gap;
                s_dalpha += wi * (pi3 * s_x + pi4 * s_t) * one_e * q;
                s_pi4 += wi * pi4;
            }
            ll += s_soft - k * s_lt;
            // Σ w (π3 ln(α+T) + π4 ln(α+t_x)) = Σ w ln(α+T) − Σ w π4 (ln(α+T) − ln(α+t_x)).
            d_r -= s_lt - s_dr;
            d_alpha -= k * s_dalpha;
            d_a += s_pi4 * inv_a;
            d_b -= s_pi4 / bx1;
        }
        (ll, [d_r, d_alpha, d_a, d_b])
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
