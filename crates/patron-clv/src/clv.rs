//! Customer lifetime value: discounted expected margin over a horizon, from BG/NBD purchase
//! counts and Gamma-Gamma expected values.

use serde::{Deserialize, Serialize};

use crate::bgnbd::BgNbdParams;
use crate::gamma_gamma::GammaGammaParams;

/// Days in the month used for CLV steps (a month is 30 days, whatever the time unit).
pub const DAYS_PER_MONTH: f64 = 30.0;

/// How CLV is computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClvOptions {
    /// Horizon in months (30 days each). A fractional tail is one shorter final step.
    pub horizon_months: f64,
    /// Length of the summaries' time unit in days: 1 for day, 7 for week.
    pub time_unit_days: f64,
    /// Fraction of revenue that is margin, applied to expected spend.
    pub margin: f64,
    /// Annual discount rate, e.g. 0.1 for 10% a year.
    pub annual_discount_rate: f64,
}

impl ClvOptions {
    /// One month in the summaries' time unit.
    pub fn month_in_time_units(&self) -> f64 {
        DAYS_PER_MONTH / self.time_unit_days
    }

    /// The horizon in the summaries' time unit.
    pub fn horizon_in_time_units(&self) -> f64 {
        self.horizon_months * self.month_in_time_units()
    }

    /// Monthly rate equivalent to the annual one: (1 + annual)^(1/12) − 1.
    pub fn monthly_discount_rate(&self) -> f64 {
        (self.annual_discount_rate.ln_1p() / 12.0).exp_m1()
    }
}

/// Discounted expected margin of one customer over the horizon:
///
/// CLV = Σ_{i=1..n} (E[Y(t_i)] − E[Y(t_{i−1})]) · E[value] · margin / (1 + d)^{m_i}
///
/// where m_i = min(i, H) months for i = 1..n = ⌈H⌉, t_i is m_i months in time units,
/// E[Y(t)] is BG/NBD's conditional expected purchases in (T, T + t], E[value] is
/// Gamma-Gamma's conditional expected transaction value, and d the monthly discount rate
/// derived from the annual one. With no history (x = 0) the value is the population mean.
pub fn clv(
    bg: &BgNbdParams,
    gg: &GammaGammaParams,
    x: f64,
    t_x: f64,
    t: f64,
    mean_value: f64,
    opts: ClvOptions,
) -> f64 {
    let value = gg.conditional_expected_average_value(x, mean_value);
    clv_with_value(bg, x, t_x, t, value, &opts).0
}

/// CLV from a precomputed expected value; also returns E[Y(horizon)], the last cumulative
/// expectation, which scoring reports as expected purchases.
fn clv_with_value(
    bg: &BgNbdParams,
    x: f64,
    t_x: f64,
    t: f64,
    value: f64,
    opts: &ClvOptions,
) -> (f64, f64) {
    let h = opts.horizon_months;
    if h.is_nan() || h <= 0.0 {
        return (0.0, 0.0);
    }
    let month = opts.month_in_time_units();
    let growth = 1.0 + opts.monthly_discount_rate();
    let steps = h.ceil() as u64;
    let months: Vec<f64> = (1..=steps).map(|i| (i as f64).min(h)).collect();
    let horizons: Vec<f64> = months.iter().map(|m| m * month).collect();
    let cumulative = bg.conditional_expected_purchases_at(&horizons, x, t_x, t);
    let (mut total, mut prev) = (0.0, 0.0);
    // (1+d)^−i by repeated multiplication for whole months (a powf each would cost more
    // than the rest of the step); a fractional last month uses powf.
    let (shrink, mut discount) = (1.0 / growth, 1.0);
    for (&m, &cum) in months.iter().zip(&cumulative) {
        discount = if m == m.floor() {
            discount * shrink
        } else {
            growth.powf(-m)
        };
        total += (cum - prev) * discount;
        prev = cum;
    }
    (total * value * opts.margin, prev)
}

/// The per-customer scores of the design: P(alive), expected purchases over the horizon,
/// expected average value and CLV.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CustomerValue {
    pub p_alive: f64,
    pub expected_purchases: f64,
    pub expected_avg_value: f64,
    pub clv: f64,
}

/// Both fitted models, for scoring customers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClvModel {
    pub bg: BgNbdParams,
    pub gg: GammaGammaParams,
}

impl ClvModel {
    /// All four scores for one customer; the expected purchases are over
    /// `opts.horizon_months` and share their work with the CLV sum.
    pub fn score(
        &self,
        x: f64,
        t_x: f64,
        t: f64,
        mean_value: f64,
        opts: &ClvOptions,
    ) -> CustomerValue {
        let expected_avg_value = self.gg.conditional_expected_average_value(x, mean_value);
        let (clv, expected_purchases) =
            clv_with_value(&self.bg, x, t_x, t, expected_avg_value, opts);
        CustomerValue {
            p_alive: self.bg.p_alive(x, t_x, t),
            expected_purchases,
            expected_avg_value,
            clv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BG: BgNbdParams = BgNbdParams {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };
    const GG: GammaGammaParams = GammaGammaParams {
        p: 6.25,
        q: 3.74,
        gamma: 15.44,
    };

    fn opts() -> ClvOptions {
        ClvOptions {
            horizon_months: 12.0,
            time_unit_days: 7.0,
            margin: 0.3,
            annual_discount_rate: 0.1,
        }
    }

    #[test]
    fn without_discount_clv_is_purchases_times_value_times_margin() {
        let o = ClvOptions {
            annual_discount_rate: 0.0,
            ..opts()
        };
        let (x, t_x, t, m) = (3.0, 20.0, 38.0, 40.0);
        let e = BG.conditional_expected_purchases(o.horizon_in_time_units(), x, t_x, t);
        let v = GG.conditional_expected_average_value(x, m);
        let got = clv(&BG, &GG, x, t_x, t, m, o);
        assert!((got - e * v * 0.3).abs() < 1e-12 * got);
    }

    #[test]
    fn discount_matches_direct_sum() {
        let o = opts();
        let (x, t_x, t, m) = (3.0, 20.0, 38.0, 40.0);
        let d = 1.1f64.powf(1.0 / 12.0);
        let v = GG.conditional_expected_average_value(x, m);
        let month = 30.0 / 7.0;
        let direct: f64 = (1..=12)
            .map(|i| {
                let i = f64::from(i);
                let inc = BG.conditional_expected_purchases(i * month, x, t_x, t)
                    - BG.conditional_expected_purchases((i - 1.0) * month, x, t_x, t);
                inc * v * 0.3 / d.powf(i)
            })
            .sum();
        let got = clv(&BG, &GG, x, t_x, t, m, o);
        assert!((got - direct).abs() < 1e-12 * direct, "{got} vs {direct}");
        // Discounting lowers value; a longer horizon raises it.
        let undiscounted = clv(
            &BG,
            &GG,
            x,
            t_x,
            t,
            m,
            ClvOptions {
                annual_discount_rate: 0.0,
                ..o
            },
        );
        let longer = clv(
            &BG,
            &GG,
            x,
            t_x,
            t,
            m,
            ClvOptions {
                horizon_months: 24.0,
                ..o
            },
        );
        assert!(got < undiscounted && longer > got);
    }

    #[test]
    fn fractional_horizon_lies_between_neighbours() {
        let o = opts();
        let at = |h: f64| {
            clv(
                &BG,
                &GG,
                2.0,
                30.0,
                38.0,
                30.0,
                ClvOptions {
                    horizon_months: h,
                    ..o
                },
            )
        };
        assert!(at(6.0) < at(6.5) && at(6.5) < at(7.0));
        assert_eq!(at(0.0), 0.0);
    }

    #[test]
    fn score_agrees_with_the_parts() {
        let model = ClvModel { bg: BG, gg: GG };
        let o = opts();
        let s = model.score(2.0, 30.43, 38.86, 22.35, &o);
        assert_eq!(s.p_alive, BG.p_alive(2.0, 30.43, 38.86));
        assert_eq!(s.clv, clv(&BG, &GG, 2.0, 30.43, 38.86, 22.35, o));
        let e = BG.conditional_expected_purchases(o.horizon_in_time_units(), 2.0, 30.43, 38.86);
        assert!((s.expected_purchases - e).abs() < 1e-14);
    }
}
