//! Edge cases of the fits and scores: degenerate data must give a clear error, extreme
//! values must stay finite, and predictions must not depend on the time unit.

mod common;

use patron_clv::{FitError, FitOptions, SpendRow, SummaryRow, fit_bgnbd, fit_gamma_gamma};

fn opts() -> FitOptions {
    FitOptions::default()
}

#[test]
fn a_single_customer_is_too_few() {
    let rows = [SummaryRow::new(3.0, 20.0, 30.0)];
    assert!(matches!(
        fit_bgnbd(&rows, &opts()),
        Err(FitError::TooFewCustomers { customers, .. }) if customers == 1.0
    ));
    // Even when allowed, one customer cannot identify four parameters.
    let lenient = FitOptions {
        min_customers: 1.0,
        ..opts()
    };
    let err = fit_bgnbd(&rows, &lenient).expect_err("one customer");
    eprintln!("one customer: {err}");
    assert!(
        matches!(
            err,
            FitError::NotIdentified { .. } | FitError::DidNotConverge { .. }
        ),
        "{err}"
    );
}

#[test]
fn no_repeat_buyers_is_an_error() {
    let rows: Vec<SummaryRow> = (0..500)
        .map(|i| SummaryRow::new(0.0, 0.0, f64::from(i % 50) + 1.0))
        .collect();
    let err = fit_bgnbd(&rows, &opts()).expect_err("no repeat buyers");
    assert!(matches!(err, FitError::NoRepeatBuyers { customers } if customers == 500.0));
    assert!(err.to_string().contains("no repeat buyers"));
}

#[test]
fn identical_buyers_do_not_identify_the_model() {
    // Every customer has the same history: no heterogeneity to fit, the likelihood's
    // supremum lies on the boundary. Must be an error, never parameters.
    let rows = [SummaryRow::new(2.0, 5.0, 10.0).with_weight(1000.0)];
    let err = fit_bgnbd(&rows, &opts()).expect_err("identical buyers");
    eprintln!("identical buyers: {err}");
    assert!(
        matches!(
            err,
            FitError::NotIdentified { .. } | FitError::DidNotConverge { .. }
        ),
        "{err}"
    );
}

#[test]
fn invalid_rows_are_reported_by_index() {
    let mut rows = common::load_cdnow().rows;
    rows[7].t_x = rows[7].t + 1.0;
    let err = fit_bgnbd(&rows, &opts()).expect_err("t_x > T");
    assert!(
        matches!(err, FitError::InvalidRow { index: 7, .. }),
        "{err}"
    );
    let bad = [SpendRow::new(1.0, -5.0)];
    assert!(matches!(
        fit_gamma_gamma(&bad, &opts()),
        Err(FitError::InvalidRow { index: 0, .. })
    ));
}

#[test]
fn brand_new_customers_do_not_move_the_fit() {
    // x = 0, T = 0 has likelihood exactly 1 under every parameter value.
    let base = common::load_cdnow().rows;
    let mut with_new = base.clone();
    with_new.push(SummaryRow::new(0.0, 0.0, 0.0).with_weight(500.0));
    let a = fit_bgnbd(&base, &opts()).expect("fit");
    let b = fit_bgnbd(&with_new, &opts()).expect("fit");
    for (u, v) in a.params.to_array().iter().zip(b.params.to_array()) {
        assert!(((u - v) / u).abs() < 1e-7, "{u} vs {v}");
    }
    assert_eq!(b.customers, a.customers + 500.0);
}

#[test]
fn a_huge_frequency_stays_finite() {
    let mut rows = common::load_cdnow().rows;
    rows.push(SummaryRow::new(1e6, 38.0, 38.5));
    let fit = fit_bgnbd(&rows, &opts()).expect("fit");
    assert!(fit.log_likelihood.is_finite());
    let p = fit.params;
    for v in [
        p.p_alive(1e6, 38.0, 38.5),
        p.conditional_expected_purchases(52.0, 1e6, 38.0, 38.5),
        p.conditional_expected_purchases(52.0, 1e6, 1.0, 38.5),
        p.log_likelihood_one(1e6, 38.0, 38.5),
    ] {
        assert!(v.is_finite(), "{v}");
    }
}

#[test]
fn days_and_weeks_give_the_same_predictions() {
    let weeks = common::load_cdnow().rows;
    let days: Vec<SummaryRow> = weeks
        .iter()
        .map(|r| SummaryRow {
            t_x: r.t_x * 7.0,
            t: r.t * 7.0,
            ..*r
        })
        .collect();
    let fw = fit_bgnbd(&weeks, &opts()).expect("weeks");
    let fd = fit_bgnbd(&days, &opts()).expect("days");
    // α carries the time unit; r, a, b do not.
    let tight = 1e-7;
    assert!(((fd.params.alpha / 7.0 - fw.params.alpha) / fw.params.alpha).abs() < tight);
    for (u, v) in [
        (fw.params.r, fd.params.r),
        (fw.params.a, fd.params.a),
        (fw.params.b, fd.params.b),
    ] {
        assert!(((u - v) / u).abs() < tight, "{u} vs {v}");
    }
    for (w, d) in weeks.iter().zip(&days).step_by(7) {
        let pw = fw.params.p_alive(w.x, w.t_x, w.t);
        let pd = fd.params.p_alive(d.x, d.t_x, d.t);
        assert!((pw - pd).abs() < tight, "p_alive {pw} vs {pd}");
        // 52 weeks = 364 days.
        let ew = fw
            .params
            .conditional_expected_purchases(52.0, w.x, w.t_x, w.t);
        let ed = fd
            .params
            .conditional_expected_purchases(364.0, d.x, d.t_x, d.t);
        assert!((ew - ed).abs() <= tight * ew.max(1e-3), "E {ew} vs {ed}");
    }
    // A penalizer is also unit-free: α enters it divided by the largest T.
    let pen = FitOptions {
        penalizer: 0.01,
        ..opts()
    };
    let pw = fit_bgnbd(&weeks, &pen).expect("weeks");
    let pd = fit_bgnbd(&days, &pen).expect("days");
    assert!(((pd.params.r - pw.params.r) / pw.params.r).abs() < tight);
    assert!(((pd.params.alpha / 7.0 - pw.params.alpha) / pw.params.alpha).abs() < tight);
    // And it shrinks the parameters relative to plain maximum likelihood.
    assert!(pw.log_likelihood < fw.log_likelihood);
}

#[test]
fn gamma_gamma_with_identical_spend_is_not_identified() {
    let rows = [SpendRow {
        x: 3.0,
        mean_value: 20.0,
        weight: 200.0,
    }];
    let err = fit_gamma_gamma(&rows, &opts()).expect_err("identical spend");
    eprintln!("identical spend: {err}");
    assert!(
        matches!(
            err,
            FitError::NotIdentified { .. }
                | FitError::DidNotConverge { .. }
                | FitError::InfiniteMeanSpend { .. }
        ),
        "{err}"
    );
}
