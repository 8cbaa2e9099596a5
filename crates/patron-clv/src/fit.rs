//! Maximum-likelihood fitting of BG/NBD and Gamma-Gamma.
//!
//! Both fits minimize the negative *mean* log-likelihood (plus an optional L2 penalty, as in
//! lifetimes) over the logarithms of the parameters, which keeps them positive without
//! bounds and makes the tolerances independent of the number of customers.
//!
//! BG/NBD has an exact analytic Hessian (one pass over the data gives value, gradient and
//! Hessian), so it is fitted by damped Newton (Levenberg–Marquardt with a step cap in log
//! space): from the data-scaled start it converges in about ten evaluations, where L-BFGS
//! needs several times more, and the evaluations are the whole cost of a fit. If Newton does
//! not converge from a start, L-BFGS (argmin) runs from that start and Newton polishes its
//! end point. Gamma-Gamma (cheap, and fitted on repeat buyers only) uses L-BFGS polished by
//! Newton steps with a finite-difference Hessian of the analytic gradient.
//!
//! Either way the optimum is reached to near machine precision, and the Hessian there gives
//! standard errors; a fit whose parameters are not pinned down by the data (huge relative
//! standard error, or a parameter running off to 0 or infinity) is reported as an error
//! instead of being returned.

use std::cell::RefCell;

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use serde::{Deserialize, Serialize};

use crate::bgnbd::{BgNbdData, BgNbdParams};
use crate::gamma_gamma::{GammaGammaData, GammaGammaParams};
use crate::summary::{SpendRow, SummaryRow};

/// Why a fit produced no parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("summary row {index} is invalid: {reason}")]
    InvalidRow { index: usize, reason: String },
    #[error("invalid fit option `{option}`: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
    #[error("too few customers to fit: {customers} (at least {minimum} needed)")]
    TooFewCustomers { customers: f64, minimum: f64 },
    #[error(
        "no repeat buyers among {customers} customers: the purchase and drop-out processes \
         cannot be identified"
    )]
    NoRepeatBuyers { customers: f64 },
    #[error(
        "the data cannot identify `{parameter}` (estimate {value:.4e}, relative standard error \
         {relative_se:.3e}); the likelihood is flat or keeps improving toward a boundary"
    )]
    NotIdentified {
        parameter: &'static str,
        value: f64,
        relative_se: f64,
    },
    #[error(
        "the optimizer did not converge from {starts} starting points (best gradient norm \
         {gradient_norm:.3e} after {iterations} iterations)"
    )]
    DidNotConverge {
        starts: usize,
        gradient_norm: f64,
        iterations: u64,
    },
    #[error(
        "fitted Gamma-Gamma q = {q:.4} <= 1: the population mean spend is infinite, so expected \
         values and CLV would be meaningless"
    )]
    InfiniteMeanSpend { q: f64 },
}

/// Options shared by both fits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitOptions {
    /// L2 penalty coefficient on the parameters added to the negative mean log-likelihood,
    /// as in lifetimes (`penalizer_coef`). 0 = plain maximum likelihood. For BG/NBD the
    /// penalty applies to α divided by the largest T, so it does not depend on the time unit
    /// (lifetimes scales time the same way before fitting).
    pub penalizer: f64,
    /// L-BFGS iteration limit per starting point.
    pub max_iterations: u64,
    /// A fit counts as converged when the gradient of the negative mean log-likelihood with
    /// respect to the log-parameters has Euclidean norm at most this.
    pub gradient_tolerance: f64,
    /// Fewer customers (total weight) than this is an error.
    pub min_customers: f64,
    /// A parameter whose relative standard error (from the inverse Hessian) exceeds this is
    /// reported as not identified.
    pub max_relative_se: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            penalizer: 0.0,
            max_iterations: 1000,
            gradient_tolerance: 1e-6,
            min_customers: 10.0,
            max_relative_se: 10.0,
        }
    }
}

impl FitOptions {
    fn validate(&self) -> Result<(), FitError> {
        let bad = |option, reason: &str| {
            Err(FitError::InvalidOption {
                option,
                reason: reason.to_owned(),
            })
        };
        if !(self.penalizer.is_finite() && self.penalizer >= 0.0) {
            return bad("penalizer", "must be finite and >= 0");
        }
        if self.max_iterations == 0 {
            return bad("max_iterations", "must be > 0");
        }
        if self.gradient_tolerance.is_nan() || self.gradient_tolerance <= 0.0 {
            return bad("gradient_tolerance", "must be > 0");
        }
        if self.min_customers.is_nan() || self.min_customers < 1.0 {
            return bad("min_customers", "must be >= 1");
        }
        if self.max_relative_se.is_nan() || self.max_relative_se <= 0.0 {
            return bad("max_relative_se", "must be > 0");
        }
        Ok(())
    }
}

/// A fitted BG/NBD model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbdFit {
    pub params: BgNbdParams,
    /// Σ weight · ln L at `params` (without the penalty).
    pub log_likelihood: f64,
    /// Σ weight: the number of customers fitted.
    pub customers: f64,
    /// Optimizer iterations of the successful start: Newton iterations, plus the L-BFGS
    /// iterations before them when Newton alone did not converge from that start.
    pub iterations: u64,
    /// Final gradient norm of the objective (see [`FitOptions::gradient_tolerance`]), at the
    /// last point where it was evaluated: the optimizer may finish with one Newton step below
    /// 1e-6 (log-parameters) without evaluating its end, where the norm is smaller still.
    pub gradient_norm: f64,
    /// Always true for a returned fit; failures are errors.
    pub converged: bool,
    /// Asymptotic standard errors from the inverse observed information.
    pub standard_errors: BgNbdParams,
}

/// A fitted Gamma-Gamma model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaFit {
    pub params: GammaGammaParams,
    /// Σ weight · ln f at `params` (without the penalty).
    pub log_likelihood: f64,
    /// Σ weight: the number of repeat buyers fitted.
    pub customers: f64,
    pub iterations: u64,
    pub gradient_norm: f64,
    pub converged: bool,
    pub standard_errors: GammaGammaParams,
}

const BG_NAMES: [&str; 4] = ["r", "alpha", "a", "b"];
const GG_NAMES: [&str; 3] = ["p", "q", "gamma"];

/// Natural parameters must stay within this factor of their scale; beyond it the optimizer
/// is chasing an optimum at 0 or infinity.
const PARAM_LIMIT: f64 = 1e8;

/// Fits BG/NBD by maximum likelihood. Rows may hold duplicates (see
/// [`crate::group_summaries`]); rows with weight 0 are ignored.
pub fn fit_bgnbd(data: &[SummaryRow], opts: &FitOptions) -> Result<BgNbdFit, FitError> {
    opts.validate()?;
    for (index, row) in data.iter().enumerate() {
        if let Some(reason) = row.problem() {
            return Err(FitError::InvalidRow { index, reason });
        }
    }
    let prepared = BgNbdData::new(data);
    let customers = prepared.total_weight;
    if customers < opts.min_customers {
        return Err(FitError::TooFewCustomers {
            customers,
            minimum: opts.min_customers,
        });
    }
    if prepared.repeat_weight == 0.0 {
        return Err(FitError::NoRepeatBuyers { customers });
    }

    // α is scaled by the largest T in the penalty (time-unit free) and in the range check.
    let time_scale = if prepared.max_t > 0.0 {
        prepared.max_t
    } else {
        1.0
    };
    let penalizer = opts.penalizer;
    let penalty_scale = [1.0, time_scale, 1.0, 1.0];
    // The objective in log-parameters θ = ln p: f(θ) = −ll(p)/N + λ Σ (p_k/c_k)². By the
    // chain rule ∂f/∂θ_k = −p_k ∂ll/∂p_k / N + 2λ s_k² and
    // ∂²f/∂θ_k∂θ_l = −(p_k p_l ∂²ll/∂p_k∂p_l + [k=l] p_k ∂ll/∂p_k)/N + [k=l] 4λ s_k²,
    // with s_k = p_k/c_k.
    let evaluate = |data: &BgNbdData, theta: &[f64], hessian: bool| -> SecondOrder {
        let customers = data.total_weight;
        let p = [
            theta[0].exp(),
            theta[1].exp(),
            theta[2].exp(),
            theta[3].exp(),
        ];
        let d = data.derivatives(p, hessian);
        let scaled: [f64; 4] = std::array::from_fn(|k| p[k] / penalty_scale[k]);
        let penalty: f64 = scaled.iter().map(|v| v * v).sum::<f64>() * penalizer;
        let cost = -d.ll / customers + penalty;
        let grad = (0..4)
            .map(|k| -d.grad[k] * p[k] / customers + 2.0 * penalizer * scaled[k] * scaled[k])
            .collect();
        let mut hess = Vec::new();
        if hessian {
            hess = vec![0.0; 16];
            for k in 0..4 {
                for l in 0..4 {
                    hess[k * 4 + l] = -d.hess[k][l] * p[k] * p[l] / customers;
                }
                hess[k * 4 + k] +=
                    -d.grad[k] * p[k] / customers + 4.0 * penalizer * scaled[k] * scaled[k];
            }
        }
        (cost, grad, hess)
    };
    let objective = |theta: &[f64]| {
        let (cost, grad, _) = evaluate(&prepared, theta, false);
        (cost, grad)
    };
    let with_hessian = |theta: &[f64]| evaluate(&prepared, theta, true);
    // Large inputs get a warm start on an evenly spaced subsample of the rows (weights scaled
    // up): far from the optimum any sample points the same way, and Newton on the subsample
    // lands within its sampling error of the optimum for a few percent of the cost of one
    // full evaluation. The full-data Newton then finishes in two or three steps instead of
    // six or seven.
    let sample = (prepared.rows() >= 4 * WARM_START_ROWS)
        .then(|| prepared.subsample(prepared.rows() / WARM_START_ROWS));
    let warm = sample
        .as_ref()
        .map(|sample| move |theta: &[f64]| evaluate(sample, theta, true));
    let newton = Newton {
        full: &with_hessian,
        warm: warm.as_ref().map(|w| w as SecondOrderFn<'_>),
    };

    // Starting points scaled to the data: with r0 = 1 the prior mean purchase rate r/α
    // matches the observed repeat rate Σx/ΣT, so day and week data start at equivalent
    // points. The others spread over shape and drop-out assumptions.
    let rate = prepared.sum_wx / prepared.sum_wt;
    let alpha_unit = if rate.is_finite() && rate > 0.0 {
        1.0 / rate
    } else {
        time_scale
    };
    let starts: Vec<Vec<f64>> = [
        [1.0, 1.0, 1.0, 3.0],
        [0.3, 0.3, 0.7, 2.0],
        [3.0, 3.0, 3.0, 10.0],
        [0.1, 0.1, 0.2, 0.5],
    ]
    .iter()
    .map(|&[r, alpha_mult, a, b]: &[f64; 4]| {
        vec![r.ln(), (alpha_mult * alpha_unit).ln(), a.ln(), b.ln()]
    })
    .collect();

    let best = minimize_with_restarts(
        &objective,
        Some(newton),
        &starts,
        &penalty_scale,
        &BG_NAMES,
        customers,
        opts,
    )?;
    let pa: [f64; 4] = std::array::from_fn(|k| best.theta[k].exp());
    let params = BgNbdParams::from_array(pa);
    // ll from the optimizer's last cost rather than another pass over the data: the cost is
    // −ll/N + penalty, so this is exact to rounding (relative ~1e-16).
    let penalty: f64 = (0..4)
        .map(|k| (pa[k] / penalty_scale[k]).powi(2))
        .sum::<f64>()
        * penalizer;
    let log_likelihood = -(best.cost - penalty) * customers;
    Ok(BgNbdFit {
        params,
        log_likelihood,
        customers,
        iterations: best.iterations,
        gradient_norm: best.gradient_norm,
        converged: true,
        standard_errors: BgNbdParams::from_array(std::array::from_fn(|k| {
            pa[k] * best.relative_se[k]
        })),
    })
}

/// Fits Gamma-Gamma by maximum likelihood on repeat buyers' mean repeat-purchase values, as
/// lifetimes' `GammaGammaFitter` does (no constraint on q during the fit; a fitted q <= 1 is
/// an error because the expected value would be infinite).
pub fn fit_gamma_gamma(data: &[SpendRow], opts: &FitOptions) -> Result<GammaGammaFit, FitError> {
    opts.validate()?;
    for (index, row) in data.iter().enumerate() {
        if let Some(reason) = row.problem() {
            return Err(FitError::InvalidRow { index, reason });
        }
    }
    let rows: Vec<SpendRow> = data.iter().copied().filter(|r| r.weight > 0.0).collect();
    let prepared = GammaGammaData::new(&rows);
    let customers = prepared.total_weight;
    if customers < opts.min_customers {
        return Err(FitError::TooFewCustomers {
            customers,
            minimum: opts.min_customers,
        });
    }
    let penalizer = opts.penalizer;
    let objective = |theta: &[f64]| -> (f64, Vec<f64>) {
        let v = [theta[0].exp(), theta[1].exp(), theta[2].exp()];
        let (ll, g) = prepared.log_likelihood_and_gradient(v);
        let penalty: f64 = v.iter().map(|x| x * x).sum::<f64>() * penalizer;
        let cost = -ll / customers + penalty;
        let grad = (0..3)
            .map(|k| -g[k] * v[k] / customers + 2.0 * penalizer * v[k] * v[k])
            .collect();
        (cost, grad)
    };
    // E[value] = p γ / (q − 1): start with that equal to the observed mean.
    let m = prepared.mean_value;
    let starts: Vec<Vec<f64>> = [[1.0, 2.0], [4.0, 4.0], [0.5, 1.5], [10.0, 10.0]]
        .iter()
        .map(|&[p, q]: &[f64; 2]| vec![p.ln(), q.ln(), (m * (q - 1.0) / p).ln()])
        .collect();
    let scales = [1.0, 1.0, m];
    let best = minimize_with_restarts(
        &objective, None, &starts, &scales, &GG_NAMES, customers, opts,
    )?;
    let params = GammaGammaParams::from_array([
        best.theta[0].exp(),
        best.theta[1].exp(),
        best.theta[2].exp(),
    ]);
    if params.q <= 1.0 {
        return Err(FitError::InfiniteMeanSpend { q: params.q });
    }
    let log_likelihood = params.log_likelihood(&rows);
    let v = params.to_array();
    Ok(GammaGammaFit {
        params,
        log_likelihood,
        customers,
        iterations: best.iterations,
        gradient_norm: best.gradient_norm,
        converged: true,
        standard_errors: GammaGammaParams::from_array([
            v[0] * best.relative_se[0],
            v[1] * best.relative_se[1],
            v[2] * best.relative_se[2],
        ]),
    })
}

/// An accepted optimum in log-parameter space.
#[derive(Debug)]
struct Optimum {
    theta: Vec<f64>,
    /// The objective at `theta`.
    cost: f64,
    gradient_norm: f64,
    iterations: u64,
    /// Standard errors of the log-parameters, i.e. relative standard errors.
    relative_se: Vec<f64>,
}

/// Cost, gradient and row-major Hessian of an objective in log-parameter space.
type SecondOrder = (f64, Vec<f64>, Vec<f64>);

/// An objective returning [`SecondOrder`].
type SecondOrderFn<'a> = &'a dyn Fn(&[f64]) -> SecondOrder;

/// An objective with an analytic Hessian, for Newton.
#[derive(Clone, Copy)]
struct Newton<'a> {
    full: SecondOrderFn<'a>,
    /// The same objective on a subsample of the data, for a cheap warm start.
    warm: Option<SecondOrderFn<'a>>,
}

/// Rows in the warm-start subsample; inputs with fewer than four times this many rows fit
/// without one.
const WARM_START_ROWS: usize = 16_384;

/// The warm start stops at this gradient norm: the subsample's optimum is only within its
/// sampling error (percents) of the full optimum, so converging it further is wasted.
const WARM_START_TOLERANCE: f64 = 1e-5;

/// Runs [`minimize_from`] from each start until one gives an identified, converged optimum.
/// If none does, reports identification trouble in preference to non-convergence, since it is
/// the more useful diagnosis when some start did converge. `newton`, when the model
/// has an analytic Hessian, switches the local search to Newton (see [`minimize_from`]).
fn minimize_with_restarts<F>(
    objective: &F,
    newton: Option<Newton<'_>>,
    starts: &[Vec<f64>],
    scales: &[f64],
    names: &[&'static str],
    customers: f64,
    opts: &FitOptions,
) -> Result<Optimum, FitError>
where
    F: Fn(&[f64]) -> (f64, Vec<f64>),
{
    let mut not_identified: Option<FitError> = None;
    let mut best_norm = f64::INFINITY;
    let mut best_iters = 0;
    for start in starts {
        let Some(found) = minimize_from(objective, newton, start, opts) else {
            continue;
        };
        // A parameter heading for 0 or infinity is a diagnosis whether or not the gradient
        // has flattened out yet.
        if let Err(e) = check_range(&found, scales, names) {
            not_identified.get_or_insert(e);
            continue;
        }
        if found.gradient_norm.is_nan() || found.gradient_norm > opts.gradient_tolerance {
            if found.gradient_norm < best_norm {
                best_norm = found.gradient_norm;
                best_iters = found.iterations;
            }
            continue;
        }
        match check_identified(&found, names, customers, opts) {
            Ok(relative_se) => {
                return Ok(Optimum {
                    theta: found.theta,
                    cost: found.cost,
                    gradient_norm: found.gradient_norm,
                    iterations: found.iterations,
                    relative_se,
                });
            }
            Err(e) => {
                not_identified.get_or_insert(e);
            }
        }
    }
    Err(not_identified.unwrap_or(FitError::DidNotConverge {
        starts: starts.len(),
        gradient_norm: best_norm,
        iterations: best_iters,
    }))
}

/// Rejects a candidate with a parameter beyond [`PARAM_LIMIT`] of its scale.
fn check_range(found: &Candidate, scales: &[f64], names: &[&'static str]) -> Result<(), FitError> {
    for k in 0..found.theta.len() {
        let value = found.theta[k].exp();
        let scaled = value / scales[k];
        if !(scaled.is_finite() && (1.0 / PARAM_LIMIT..=PARAM_LIMIT).contains(&scaled)) {
            return Err(FitError::NotIdentified {
                parameter: names[k],
                value,
                relative_se: f64::INFINITY,
            });
        }
    }
    Ok(())
}

/// Accepts an optimum only if every parameter has a finite, moderate standard error;
/// returns the relative standard errors.
fn check_identified(
    found: &Candidate,
    names: &[&'static str],
    customers: f64,
    opts: &FitOptions,
) -> Result<Vec<f64>, FitError> {
    let n = found.theta.len();
    // Covariance of θ = H⁻¹ / N, since the objective is a mean over N customers.
    let inverse = found.hessian.as_ref().and_then(|h| invert_spd(h, n));
    let Some(inverse) = inverse else {
        // Not positive definite: flat or saddle in some direction. Blame the parameter with
        // the smallest curvature.
        let k = found
            .hessian
            .as_ref()
            .map(|h| {
                (0..n)
                    .min_by(|&i, &j| h[i * n + i].total_cmp(&h[j * n + j]))
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        return Err(FitError::NotIdentified {
            parameter: names[k],
            value: found.theta[k].exp(),
            relative_se: f64::INFINITY,
        });
    };
    let relative_se: Vec<f64> = (0..n)
        .map(|k| (inverse[k * n + k] / customers).sqrt())
        .collect();
    for k in 0..n {
        if relative_se[k].is_nan() || relative_se[k] > opts.max_relative_se {
            return Err(FitError::NotIdentified {
                parameter: names[k],
                value: found.theta[k].exp(),
                relative_se: relative_se[k],
            });
        }
    }
    Ok(relative_se)
}

/// The end point of one local minimization.
#[derive(Debug)]
struct Candidate {
    theta: Vec<f64>,
    cost: f64,
    gradient_norm: f64,
    iterations: u64,
    /// Row-major Hessian of the objective at `theta`, if it could be computed.
    hessian: Option<Vec<f64>>,
}

/// Largest Newton step in log space (∞-norm): a factor e² on any parameter. Far from the
/// optimum the quadratic model is poor; the cap keeps a step from flinging a parameter into
/// a region where the likelihood underflows.
const NEWTON_MAX_STEP: f64 = 2.0;

/// Newton stops once the gradient norm is below this, a few orders below any sensible
/// [`FitOptions::gradient_tolerance`] but above the rounding noise of the mean objective's
/// gradient (~1e-14 with a million rows).
const NEWTON_GRADIENT_TOLERANCE: f64 = 1e-11;

/// A converged Newton step at most this long (∞-norm, log space) is applied without
/// evaluating its end point; see [`newton_from`].
const NEWTON_FINAL_STEP: f64 = 1e-6;

/// Newton iteration limit per local search (each iteration is one evaluation).
const NEWTON_MAX_ITERATIONS: u64 = 100;

/// A local minimization from `start`. None if the objective was never finite.
///
/// With an analytic Hessian: damped Newton from `start` (from the warm start's end point if
/// there is one); if that does not reach
/// [`FitOptions::gradient_tolerance`], L-BFGS from `start` and damped Newton from where it
/// stops. Without (or if that Newton fails too): L-BFGS, then Newton polishing with a
/// finite-difference Hessian.
fn minimize_from<F>(
    objective: &F,
    newton: Option<Newton<'_>>,
    start: &[f64],
    opts: &FitOptions,
) -> Option<Candidate>
where
    F: Fn(&[f64]) -> (f64, Vec<f64>),
{
    if let Some(nt) = newton {
        let (begin, warm_iterations) = nt
            .warm
            .and_then(|w| newton_from(w, start, WARM_START_TOLERANCE, opts))
            .filter(|c| c.gradient_norm <= WARM_START_TOLERANCE)
            .map_or((start.to_vec(), 0), |c| (c.theta, c.iterations));
        if let Some(found) = newton_from(nt.full, &begin, NEWTON_GRADIENT_TOLERANCE, opts)
            && found.gradient_norm <= opts.gradient_tolerance
        {
            return Some(Candidate {
                iterations: warm_iterations + found.iterations,
                ..found
            });
        }
    }
    let (theta, iterations) = lbfgs_from(objective, start, opts)?;
    if let Some(nt) = newton
        && let Some(found) = newton_from(nt.full, &theta, NEWTON_GRADIENT_TOLERANCE, opts)
        && found.gradient_norm <= opts.gradient_tolerance
    {
        return Some(Candidate {
            iterations: iterations + found.iterations,
            ..found
        });
    }
    polish_with_finite_differences(objective, theta, iterations)
}

/// Damped Newton (Levenberg–Marquardt) on an objective with an exact Hessian H: each step
/// solves (H + μ·diag|H|) s = −g, with μ = 0 (a pure Newton step) while that works, raised
/// tenfold whenever H + μ·diag|H| is not positive definite or the step does not lower the
/// cost, and lowered again after each success. Steps are capped at [`NEWTON_MAX_STEP`] in
/// log space. Stops at gradient norm `tolerance`. None if the objective is not finite at
/// `start`.
fn newton_from(
    objective: SecondOrderFn<'_>,
    start: &[f64],
    tolerance: f64,
    opts: &FitOptions,
) -> Option<Candidate> {
    let n = start.len();
    let eval = |theta: &[f64]| -> Option<SecondOrder> {
        // Beyond e^±50 the parameters overflow the formulas.
        if theta.iter().any(|t| t.is_nan() || t.abs() >= 50.0) {
            return None;
        }
        let (c, g, h) = objective(theta);
        (c.is_finite() && g.iter().chain(&h).all(|v| v.is_finite())).then_some((c, g, h))
    };
    let mut theta = start.to_vec();
    let (mut cost, mut grad, mut hess) = eval(&theta)?;
    let mut mu: f64 = 0.0;
    let mut iterations = 0;
    let mut failures = 0;
    while iterations < opts.max_iterations.min(NEWTON_MAX_ITERATIONS) {
        let norm = l2(&grad);
        if norm <= tolerance {
            break;
        }
        // Marquardt scaling: damping proportional to each diagonal entry keeps μ unit-free
        // (the curvatures of the four log-parameters differ by orders of magnitude).
        let max_diag = (0..n).map(|i| hess[i * n + i].abs()).fold(0.0, f64::max);
        let diag: Vec<f64> = (0..n)
            .map(|i| hess[i * n + i].abs().max(1e-12 * max_diag).max(1e-300))
            .collect();
        let step = loop {
            let mut damped = hess.clone();
            for i in 0..n {
                damped[i * n + i] += mu * diag[i];
            }
            if let Some(step) = solve_spd(&damped, &grad, n) {
                break step;
            }
            mu = (mu * 10.0).max(1e-3);
            if mu > 1e12 {
                return None;
            }
        };
        let longest = step.iter().fold(0.0, |m: f64, s| m.max(s.abs()));
        // A pure Newton step this small from a converged point is final: Newton's error after
        // it is of order step² (~1e-13), so it is taken without another pass over the data.
        // The cost, gradient and Hessian reported are those of the point it starts from.
        if mu == 0.0 && longest <= NEWTON_FINAL_STEP && norm <= opts.gradient_tolerance {
            for (t, s) in theta.iter_mut().zip(&step) {
                *t -= s;
            }
            iterations += 1;
            break;
        }
        let shrink = if longest > NEWTON_MAX_STEP {
            NEWTON_MAX_STEP / longest
        } else {
            1.0
        };
        let trial: Vec<f64> = theta
            .iter()
            .zip(&step)
            .map(|(t, s)| t - shrink * s)
            .collect();
        iterations += 1;
        match eval(&trial) {
            // Near the optimum cost changes drown in rounding, so a step that keeps the cost
            // within noise and shrinks the gradient also counts as progress.
            Some((c, g, h)) if c < cost || (c <= cost + 1e-13 * cost.abs() && l2(&g) < norm) => {
                theta = trial;
                (cost, grad, hess) = (c, g, h);
                mu = if mu > 1e-6 { mu * 0.1 } else { 0.0 };
                failures = 0;
            }
            _ => {
                // Converged as far as rounding allows: no step can improve any more.
                if norm <= opts.gradient_tolerance * 1e-2 {
                    break;
                }
                failures += 1;
                if failures > 30 {
                    break;
                }
                mu = (mu * 10.0).max(1e-3);
            }
        }
    }
    Some(Candidate {
        gradient_norm: l2(&grad),
        theta,
        cost,
        iterations,
        hessian: Some(hess),
    })
}

/// L-BFGS from `start`: the end point and the iteration count. None if the objective is not
/// finite at `start`.
fn lbfgs_from<F>(objective: &F, start: &[f64], opts: &FitOptions) -> Option<(Vec<f64>, u64)>
where
    F: Fn(&[f64]) -> (f64, Vec<f64>),
{
    let problem = LogSpaceProblem {
        objective,
        cache: RefCell::new(None),
    };
    let (start_cost, _) = objective(start);
    if !start_cost.is_finite() {
        return None;
    }
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(opts.gradient_tolerance * 1e-2)
        .ok()?
        // Stop once an iteration gains less than ~1e-13 relative: with a million rows the
        // objective's rounding noise is near there, and below it the line search only
        // thrashes (hundreds of evaluations for nothing). Newton polishing takes over.
        .with_tolerance_cost(1e-13 * start_cost.abs().max(1.0))
        .ok()?;
    let result = Executor::new(problem, solver)
        .configure(|state| state.param(start.to_vec()).max_iters(opts.max_iterations))
        .run();
    Some(match result {
        Ok(res) => {
            let state = res.state();
            let theta = state
                .get_best_param()
                .or_else(|| state.get_param())
                .cloned()
                .unwrap_or_else(|| start.to_vec());
            (theta, state.get_iter())
        }
        Err(_) => (start.to_vec(), 0),
    })
}

/// Newton polishing of an L-BFGS end point with a finite-difference Hessian (for models
/// without an analytic one). None if the objective is not finite there.
fn polish_with_finite_differences<F>(
    objective: &F,
    mut theta: Vec<f64>,
    iterations: u64,
) -> Option<Candidate>
where
    F: Fn(&[f64]) -> (f64, Vec<f64>),
{
    let (mut cost, mut grad) = objective(&theta);
    if !cost.is_finite() {
        return None;
    }

    // Newton polishing: L-BFGS stops a little short of the optimum; Newton steps from there
    // land on it to near machine precision, which matters for comparisons at 1e-6. The
    // Hessian is computed once (8 gradient evaluations) and reused: it is accurate to far
    // better than the distance still to go, so each step gains many digits. The same
    // Hessian gives the standard errors.
    let n = theta.len();
    let hessian = finite_difference_hessian(objective, &theta);
    for _ in 0..4 {
        let norm = l2(&grad);
        if norm < 1e-14 {
            break;
        }
        let Some(step) = hessian.as_ref().and_then(|h| solve_spd(h, &grad, n)) else {
            break;
        };
        let mut accepted = false;
        let mut scale = 1.0;
        for _ in 0..4 {
            let trial: Vec<f64> = theta
                .iter()
                .zip(&step)
                .map(|(t, s)| t - scale * s)
                .collect();
            let (c, g) = objective(&trial);
            // Near the optimum cost changes drown in rounding, so accept a step that keeps
            // the cost within noise and shrinks the gradient.
            if c.is_finite() && c <= cost + 1e-13 * cost.abs() && l2(&g) < norm {
                theta = trial;
                cost = c;
                grad = g;
                accepted = true;
                break;
            }
            scale *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    Some(Candidate {
        gradient_norm: l2(&grad),
        theta,
        cost,
        iterations,
        hessian,
    })
}

fn l2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Central differences of the analytic gradient (step 1e-5 in log space: truncation and
/// rounding errors both near 1e-10 relative), symmetrized. Row-major.
fn finite_difference_hessian<F>(objective: &F, theta: &[f64]) -> Option<Vec<f64>>
where
    F: Fn(&[f64]) -> (f64, Vec<f64>),
{
    const H: f64 = 1e-5;
    let n = theta.len();
    let mut hess = vec![0.0; n * n];
    for i in 0..n {
        let mut up = theta.to_vec();
        let mut down = theta.to_vec();
        up[i] += H;
        down[i] -= H;
        let (_, gu) = objective(&up);
        let (_, gd) = objective(&down);
        for j in 0..n {
            hess[i * n + j] = (gu[j] - gd[j]) / (2.0 * H);
        }
    }
    for i in 0..n {
        for j in 0..i {
            let avg = 0.5 * (hess[i * n + j] + hess[j * n + i]);
            hess[i * n + j] = avg;
            hess[j * n + i] = avg;
        }
    }
    hess.iter().all(|v| v.is_finite()).then_some(hess)
}

/// Cholesky factor (lower, row-major) of a symmetric positive-definite matrix, or None.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

fn cholesky_solve(l: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut y = vec![0.0; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * y[k];
        }
        y[i] = s / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x
}

fn solve_spd(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    cholesky(a, n).map(|l| cholesky_solve(&l, b, n))
}

fn invert_spd(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let l = cholesky(a, n)?;
    let mut inv = vec![0.0; n * n];
    for j in 0..n {
        let mut e = vec![0.0; n];
        e[j] = 1.0;
        let col = cholesky_solve(&l, &e, n);
        for i in 0..n {
            inv[i * n + j] = col[i];
        }
    }
    Some(inv)
}

/// (log-parameters, cost, gradient) of the last objective evaluation.
type Evaluation = (Vec<f64>, f64, Vec<f64>);

/// argmin adapter. argmin asks for the cost and the gradient at the same point in separate
/// calls; both come from one pass over the data, so the last evaluation is cached.
struct LogSpaceProblem<'a, F> {
    objective: &'a F,
    cache: RefCell<Option<Evaluation>>,
}

impl<F> LogSpaceProblem<'_, F>
where
    F: Fn(&[f64]) -> (f64, Vec<f64>),
{
    fn eval(&self, theta: &[f64]) -> Result<(f64, Vec<f64>), argmin::core::Error> {
        if let Some((t, c, g)) = self.cache.borrow().as_ref()
            && t.as_slice() == theta
        {
            return Ok((*c, g.clone()));
        }
        // Beyond e^±50 the parameters overflow the formulas; treat as a failed trial point
        // so the line search backs off.
        if theta.iter().any(|t| t.is_nan() || t.abs() >= 50.0) {
            return Err(argmin::core::Error::msg("log-parameter out of range"));
        }
        let (c, g) = (self.objective)(theta);
        if !c.is_finite() || g.iter().any(|v| !v.is_finite()) {
            return Err(argmin::core::Error::msg("objective not finite"));
        }
        *self.cache.borrow_mut() = Some((theta.to_vec(), c, g.clone()));
        Ok((c, g))
    }
}

impl<F> CostFunction for LogSpaceProblem<'_, F>
where
    F: Fn(&[f64]) -> (f64, Vec<f64>),
{
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, theta: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        self.eval(theta).map(|(c, _)| c)
    }
}

impl<F> Gradient for LogSpaceProblem<'_, F>
where
    F: Fn(&[f64]) -> (f64, Vec<f64>),
{
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, theta: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        self.eval(theta).map(|(_, g)| g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f(θ) = Σ_k c_k (e^θ_k − θ_k): minimum at θ = 0, convex, curvature growing fast for
    /// θ > 0 (like a log-parameter likelihood).
    fn convex(theta: &[f64]) -> SecondOrder {
        let c = [1.0, 10.0, 0.1];
        let cost = (0..3).map(|k| c[k] * (theta[k].exp() - theta[k])).sum();
        let grad = (0..3).map(|k| c[k] * (theta[k].exp() - 1.0)).collect();
        let mut hess = vec![0.0; 9];
        for k in 0..3 {
            hess[k * 3 + k] = c[k] * theta[k].exp();
        }
        (cost, grad, hess)
    }

    #[test]
    fn newton_converges_from_far_away() {
        let start = [3.0, -4.0, 6.0];
        let opts = FitOptions::default();
        let found = newton_from(&convex, &start, NEWTON_GRADIENT_TOLERANCE, &opts).expect("found");
        // (The last step may be taken unevaluated, so the reported norm is the one before it.)
        assert!(found.gradient_norm <= opts.gradient_tolerance);
        assert!(
            found.theta.iter().all(|t| t.abs() < 1e-11),
            "{:?}",
            found.theta
        );
    }

    #[test]
    fn a_failing_newton_falls_back_to_lbfgs() {
        // A Hessian that is never finite makes every Newton attempt fail; L-BFGS with
        // finite-difference polishing must still find the minimum.
        let broken = |theta: &[f64]| {
            let (c, g, _) = convex(theta);
            (c, g, vec![f64::NAN; 9])
        };
        let newton = Newton {
            full: &broken,
            warm: None,
        };
        let objective = |theta: &[f64]| {
            let (c, g, _) = convex(theta);
            (c, g)
        };
        let opts = FitOptions::default();
        let found =
            minimize_from(&objective, Some(newton), &[1.0, -1.0, 2.0], &opts).expect("found");
        assert!(found.gradient_norm <= opts.gradient_tolerance);
        assert!(
            found.theta.iter().all(|t| t.abs() < 1e-6),
            "{:?}",
            found.theta
        );
        assert!(found.iterations > 0);
    }

    #[test]
    fn cholesky_inverse_round_trip() {
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let inv = invert_spd(&a, 3).expect("spd");
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| a[i * 3 + k] * inv[k * 3 + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-14);
            }
        }
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }
}
