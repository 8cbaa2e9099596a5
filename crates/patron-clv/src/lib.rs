//! patron-clv: the customer-lifetime-value models Patron fits and scores with. Pure math:
//! no I/O, no async, no global state. It owns the BG/NBD purchase/drop-out model, the
//! Gamma-Gamma spend model, their maximum-likelihood fits, and the per-customer scores
//! (P(alive), expected purchases, expected average value, CLV).
//!
//! # Layout
//! - [`summary`]: [`SummaryRow`], [`SpendRow`] and [`group_summaries`] (identical summaries
//!   become one weighted row, so a fit costs the number of distinct summaries).
//! - [`bgnbd`]: [`BgNbdParams`] with the likelihood, [`BgNbdParams::p_alive`] and
//!   [`BgNbdParams::conditional_expected_purchases`].
//! - [`gamma_gamma`]: [`GammaGammaParams`] with the likelihood and
//!   [`GammaGammaParams::conditional_expected_average_value`].
//! - [`fit`]: [`fit_bgnbd`], [`fit_gamma_gamma`], [`FitOptions`], [`FitError`].
//! - [`clv`](mod@clv): [`clv()`], [`ClvOptions`], and [`ClvModel::score`] for all scores at once.
//! - [`special`]: ln Γ, digamma and the Gaussian hypergeometric function 2F1.
//!
//! # Models and formulas
//! Customer summaries: x repeat purchases (purchases after the first), the last at t_x after
//! the first purchase, and T = time from the first purchase to the as-of instant, in one time
//! unit (day or week).
//!
//! **BG/NBD** (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way: An Alternative
//! to the Pareto/NBD Model", Marketing Science 24(2)). While alive a customer buys as a Poisson
//! process with rate λ; right after each repeat purchase they drop out for good with
//! probability p. Across customers λ ~ Gamma(r, α) (rate α) and p ~ Beta(a, b). One customer's
//! likelihood is
//!
//! L = B(a, b+x)/B(a, b) · Γ(r+x) α^r / (Γ(r)(α+T)^(r+x))
//!   + [x>0] · B(a+1, b+x−1)/B(a, b) · Γ(r+x) α^r / (Γ(r)(α+t_x)^(r+x)),
//!
//! the first term for "still alive at T", the second for "dropped out right after t_x".
//! It is evaluated in logs with a log-sum-exp. From it:
//! - P(alive | x, t_x, T) = 1 / (1 + [x>0] · a/(b+x−1) · ((α+T)/(α+t_x))^(r+x)).
//! - E[purchases in (T, T+t] | x, t_x, T] = P(alive) · (a+b+x−1)/(a−1) ·
//!   [1 − ((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x; a+b+x−1; t/(α+T+t))] (the paper's eq. 10),
//!   computed through Euler's transformation of 2F1 so no term overflows; see
//!   [`BgNbdParams::conditional_expected_purchases`].
//!
//! **Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV: Using Iso-Value Curves for
//! Customer Base Analysis", Journal of Marketing Research 42(4); Fader & Hardie 2013, "The
//! Gamma-Gamma Model of Monetary Value"). Transaction values are Gamma(p, ν) with
//! ν ~ Gamma(q, γ); fitted on repeat buyers' mean repeat-purchase value z̄, it gives
//! E[value | x, z̄] = p(γ + x z̄)/(p x + q − 1).
//!
//! **CLV.** The expected margin over a horizon of H months (30 days each), discounted monthly
//! at d = (1 + annual rate)^(1/12) − 1:
//!
//! CLV = margin · E[value] · Σ_{i=1..⌈H⌉} (E[Y(t_i)] − E[Y(t_{i−1})]) / (1+d)^{min(i,H)},
//!
//! with t_i = min(i, H) months in the time unit and E[Y(t)] the conditional expected
//! purchases above. This is the discounted-cash-flow scheme of the lifetimes library's
//! `customer_lifetime_value`, except that the discount rate is given per year and a month is
//! always 30 days (lifetimes uses 4.345 weeks per month for weekly data).
//!
//! **Fitting.** Maximum likelihood over log-parameters: BG/NBD by damped Newton with the exact
//! analytic Hessian (warm-started on a subsample for large inputs, row loop parallel with a
//! fixed chunking so results are reproducible), falling back to L-BFGS; Gamma-Gamma by L-BFGS
//! with an analytic gradient, polished by Newton steps; see [`fit`]. The objective is the negative mean log-likelihood
//! plus an optional L2 penalty, matching lifetimes' `BetaGeoFitter` and `GammaGammaFitter`.

pub mod bgnbd;
pub mod clv;
pub mod fit;
pub mod gamma_gamma;
pub mod special;
pub mod summary;

pub use bgnbd::BgNbdParams;
pub use clv::{ClvModel, ClvOptions, CustomerValue, clv};
pub use fit::{BgNbdFit, FitError, FitOptions, GammaGammaFit, fit_bgnbd, fit_gamma_gamma};
pub use gamma_gamma::GammaGammaParams;
pub use summary::{SpendRow, SummaryGrouper, SummaryRow, group_summaries};
