//! Property tests: the scores stay in range and behave monotonically for any plausible
//! parameters and customer history.

use patron_clv::{BgNbdParams, ClvOptions, GammaGammaParams, clv};
use proptest::prelude::*;

fn params() -> impl Strategy<Value = BgNbdParams> {
    (0.05f64..5.0, 0.1f64..200.0, 0.05f64..5.0, 0.05f64..20.0)
        .prop_map(|(r, alpha, a, b)| BgNbdParams { r, alpha, a, b })
}

fn history() -> impl Strategy<Value = (f64, f64, f64)> {
    (0u32..500, 0.0f64..1.0, 0.0f64..2000.0)
        .prop_map(|(x, frac, t)| (f64::from(x), if x == 0 { 0.0 } else { frac * t }, t))
}

proptest! {
    #[test]
    fn scores_are_in_range_and_monotone(p in params(), (x, t_x, t) in history(), h in 0.5f64..500.0) {
        let alive = p.p_alive(x, t_x, t);
        prop_assert!((0.0..=1.0).contains(&alive), "p_alive {alive}");
        let e1 = p.conditional_expected_purchases(h, x, t_x, t);
        let e2 = p.conditional_expected_purchases(2.0 * h, x, t_x, t);
        prop_assert!(e1.is_finite() && e1 >= 0.0, "E {e1}");
        prop_assert!(e2 >= e1 * (1.0 - 1e-12), "not monotone: {e1} then {e2}");
        prop_assert!(p.log_likelihood_one(x, t_x, t).is_finite());
    }

    #[test]
    fn clv_is_nonnegative_and_grows_with_margin(p in params(), (x, t_x, t) in history(), m in 1.0f64..500.0) {
        let gg = GammaGammaParams { p: 6.25, q: 3.74, gamma: 15.44 };
        let opts = ClvOptions { horizon_months: 12.0, time_unit_days: 7.0, margin: 0.2, annual_discount_rate: 0.1 };
        let v = clv(&p, &gg, x, t_x, t, m, opts);
        let v2 = clv(&p, &gg, x, t_x, t, m, ClvOptions { margin: 0.4, ..opts });
        prop_assert!(v.is_finite() && v >= 0.0, "clv {v}");
        prop_assert!((v2 - 2.0 * v).abs() <= 1e-12 * v2.abs().max(1e-300));
    }
}
