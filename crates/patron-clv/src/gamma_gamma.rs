//! The Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV: Using Iso-Value
//! Curves for Customer Base Analysis"; Fader & Hardie 2013, "The Gamma-Gamma Model of
//! Monetary Value").
//!
//! Each transaction value is Gamma(p, ν) for a customer-specific rate ν, and
//! ν ~ Gamma(q, γ) across customers. The mean z̄ of a customer's x repeat transactions then has
//! the marginal density
//! f(z̄ | x) = Γ(px+q) / (Γ(px) Γ(q)) · γ^q (x)^(px) z̄^(px−1) / (γ + x z̄)^(px+q),
//! and E[Z | x, z̄] = p (γ + x z̄) / (p x + q − 1).

use serde::{Deserialize, Serialize};

use crate::special::{digamma, ln_gamma};
use crate::summary::SpendRow;

/// Gamma-Gamma parameters: transaction values ~ Gamma(shape `p`, rate ν), ν ~ Gamma(shape
/// `q`, rate `gamma`). `gamma` is in currency units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaParams {
    pub p: f64,
    pub q: f64,
    pub gamma: f64,
}

impl GammaGammaParams {
    /// Parameters as an array in the order (p, q, gamma).
    pub fn to_array(self) -> [f64; 3] {
        [self.p, self.q, self.gamma]
    }

    /// Parameters from an array in the order (p, q, gamma).
    pub fn from_array(v: [f64; 3]) -> Self {
        Self {
            p: v[0],
            q: v[1],
            gamma: v[2],
        }
    }

    /// ln f(mean_value | x) for one repeat buyer (x > 0).
    pub fn log_likelihood_one(&self, x: f64, mean_value: f64) -> f64 {
        let Self { p, q, gamma } = *self;
        let px = p * x;
        ln_gamma(px + q) - ln_gamma(px) - ln_gamma(q)
            + q * gamma.ln()
            + (px - 1.0) * mean_value.ln()
            + px * x.ln()
            - (px + q) * (x * mean_value + gamma).ln()
    }

    /// Weighted log-likelihood Σ weight · ln f over spend rows.
    pub fn log_likelihood(&self, rows: &[SpendRow]) -> f64 {
        rows.iter()
            .map(|row| row.weight * self.log_likelihood_one(row.x, row.mean_value))
            .sum()
    }

    /// E[transaction value | x repeat purchases with mean `mean_value`]: a credibility-weighted
    /// mix of the population mean p γ / (q − 1) and the customer's own mean, with weight
    /// p x / (p x + q − 1) on the customer's. With x = 0 it is the population mean.
    /// Requires q > 1 (the fitter guarantees it).
    pub fn conditional_expected_average_value(&self, x: f64, mean_value: f64) -> f64 {
        let Self { p, q, gamma } = *self;
        let mean_term = if x > 0.0 { x * mean_value } else { 0.0 };
        p * (gamma + mean_term) / (p * x + q - 1.0)
    }
}

/// Spend rows grouped by x with the x-only terms and Σ w ln z̄ precomputed, so one likelihood
/// evaluation costs one log and one division per row.
#[derive(Debug, Clone)]
pub(crate) struct GammaGammaData {
    groups: Vec<SpendGroup>,
    xm: Vec<f64>,
    w: Vec<f64>,
    pub(crate) total_weight: f64,
    /// Weighted mean of the mean values, the currency scale for starting points.
    pub(crate) mean_value: f64,
}

#[derive(Debug, Clone, Copy)]
struct SpendGroup {
    x: f64,
    ln_x: f64,
    weight: f64,
    sum_w_ln_m: f64,
    start: usize,
    end: usize,
}

impl GammaGammaData {
    /// Builds the layout from validated rows with positive weight.
    pub(crate) fn new(rows: &[SpendRow]) -> Self {
        let mut sorted = rows.to_vec();
        sorted.sort_by(|p, q| p.x.total_cmp(&q.x));
        let mut groups: Vec<SpendGroup> = Vec::new();
        let (mut xm, mut w) = (Vec::new(), Vec::new());
        let (mut total, mut sum_wm) = (0.0, 0.0);
        for (i, row) in sorted.iter().enumerate() {
            match groups.last_mut() {
                Some(g) if g.x == row.x => {
                    g.end = i + 1;
                    g.weight += row.weight;
                    g.sum_w_ln_m += row.weight * row.mean_value.ln();
                }
                _ => groups.push(SpendGroup {
                    x: row.x,
                    ln_x: row.x.ln(),
                    weight: row.weight,
                    sum_w_ln_m: row.weight * row.mean_value.ln(),
                    start: i,
                    end: i + 1,
                }),
            }
            xm.push(row.x * row.mean_value);
            w.push(row.weight);
            total += row.weight;
            sum_wm += row.weight * row.mean_value;
        }
        Self {
            groups,
            xm,
            w,
            total_weight: total,
            mean_value: sum_wm / total,
        }
    }

    /// Σ w·ln f and its gradient with respect to (p, q, γ).
    pub(crate) fn log_likelihood_and_gradient(&self, v: [f64; 3]) -> (f64, [f64; 3]) {
        let [p, q, gamma] = v;
        let (lg_q, psi_q, ln_gamma_par) = (ln_gamma(q), digamma(q), gamma.ln());
        let (mut ll, mut d_p, mut d_q, mut d_g) = (0.0, 0.0, 0.0, 0.0);
        for g in &self.groups {
            let x = g.x;
            let px = p * x;
            let (s_log, s_inv) = self.xm[g.start..g.end]
                .iter()
                .zip(&self.w[g.start..g.end])
                .fold((0.0, 0.0), |(s_log, s_inv), (&xm, &w)| {
                    let s = xm + gamma;
                    (s_log + w * s.ln(), s_inv + w / s)
                });
            let psi_pxq = digamma(px + q);
            let psi_px = digamma(px);
            ll += g.weight
                * (ln_gamma(px + q) - ln_gamma(px) - lg_q + q * ln_gamma_par + px * g.ln_x)
                + (px - 1.0) * g.sum_w_ln_m
                - (px + q) * s_log;
            d_p += g.weight * x * (psi_pxq - psi_px + g.ln_x) + x * g.sum_w_ln_m - x * s_log;
            d_q += g.weight * (psi_pxq - psi_q + ln_gamma_par) - s_log;
            d_g += g.weight * q / gamma - (px + q) * s_inv;
        }
        (ll, [d_p, d_q, d_g])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let rows = [
            SpendRow::new(1.0, 12.0),
            SpendRow::new(1.0, 40.0),
            SpendRow {
                x: 3.0,
                mean_value: 25.5,
                weight: 4.0,
            },
            SpendRow::new(12.0, 8.25),
        ];
        let data = GammaGammaData::new(&rows);
        let v = [6.25, 3.74, 15.44];
        let (ll, grad) = data.log_likelihood_and_gradient(v);
        let direct = GammaGammaParams::from_array(v).log_likelihood(&rows);
        assert!((ll - direct).abs() < 1e-10 * direct.abs());
        for k in 0..3 {
            let h = 1e-6 * v[k];
            let (mut up, mut down) = (v, v);
            up[k] += h;
            down[k] -= h;
            let fd = (data.log_likelihood_and_gradient(up).0
                - data.log_likelihood_and_gradient(down).0)
                / (2.0 * h);
            assert!(
                (grad[k] - fd).abs() / fd.abs().max(1.0) < 1e-6,
                "param {k}: {} vs {fd}",
                grad[k]
            );
        }
    }

    #[test]
    fn density_integrates_to_one() {
        // The marginal density of z̄ given x must integrate to 1 (checks the normalization
        // terms): substitute z̄ = γ s/(1 − s) on (0, 1) and use the midpoint rule.
        let params = GammaGammaParams {
            p: 2.5,
            q: 3.0,
            gamma: 10.0,
        };
        for &x in &[1.0, 4.0] {
            let n = 400_000;
            let mut acc = 0.0;
            for i in 0..n {
                let s = (i as f64 + 0.5) / n as f64;
                let z = params.gamma * s / (1.0 - s);
                let jac = params.gamma / ((1.0 - s) * (1.0 - s));
                acc += params.log_likelihood_one(x, z).exp() * jac;
            }
            let total = acc / n as f64;
            assert!((total - 1.0).abs() < 1e-6, "x={x}: {total}");
        }
    }

    #[test]
    fn expected_value_shrinks_toward_population_mean() {
        let params = GammaGammaParams {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let population = params.p * params.gamma / (params.q - 1.0);
        assert!((params.conditional_expected_average_value(0.0, 0.0) - population).abs() < 1e-12);
        let one = params.conditional_expected_average_value(1.0, 100.0);
        let many = params.conditional_expected_average_value(50.0, 100.0);
        assert!(population < one && one < many && many < 100.0);
    }
}
