//! Special functions the models need: log-gamma, digamma and the Gaussian hypergeometric
//! function 2F1.
//!
//! `std` has no stable `ln_gamma`, so log-gamma comes from `libm` (a port of musl's, accurate
//! to about 1 ulp). Digamma and 2F1 are written here; their accuracy is tested against
//! closed forms and against high-precision values computed with mpmath.

/// ln |Γ(x)|.
#[inline]
pub fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// 1/Γ(x) as (ln |1/Γ(x)|, sign), with sign 0 at the poles (x a non-positive integer), where
/// 1/Γ is exactly zero. Working with the reciprocal keeps connection formulas finite when a
/// parameter lands on a pole.
fn ln_recip_gamma_signed(x: f64) -> (f64, f64) {
    if x <= 0.0 && x == x.floor() {
        return (f64::NEG_INFINITY, 0.0);
    }
    let (lg, sign) = libm::lgamma_r(x);
    (-lg, f64::from(sign))
}

/// ln |Γ(x)| and the sign of Γ(x); x must not be a pole.
fn ln_gamma_signed(x: f64) -> (f64, f64) {
    let (lg, sign) = libm::lgamma_r(x);
    (lg, f64::from(sign))
}

/// Digamma ψ(x) = d/dx ln Γ(x) for x > 0.
///
/// Shifts x up to at least 10 with ψ(x) = ψ(x + 1) − 1/x, then uses the asymptotic
/// (Stirling) series to the x^-14 term; the first omitted term is below 1e-16 there.
pub fn digamma(mut x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        // Non-positive arguments are never needed by the models (all parameters are positive).
        return f64::NAN;
    }
    let mut shift = 0.0;
    while x < 10.0 {
        shift -= 1.0 / x;
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    // Σ B_2k / (2k x^2k) for k = 1..7.
    let series = inv2
        * (1.0 / 12.0
            - inv2
                * (1.0 / 120.0
                    - inv2
                        * (1.0 / 252.0
                            - inv2
                                * (1.0 / 240.0
                                    - inv2
                                        * (1.0 / 132.0
                                            - inv2 * (691.0 / 32760.0 - inv2 / 12.0))))));
    shift + x.ln() - 0.5 * inv - series
}

/// Trigamma ψ₁(x) = d²/dx² ln Γ(x) for x > 0 (the BG/NBD fit's analytic Hessian needs it).
///
/// Same scheme as [`digamma`]: shift x up to at least 10 with ψ₁(x) = ψ₁(x + 1) + 1/x², then
/// the asymptotic series 1/x + 1/(2x²) + Σ B_2k / x^(2k+1) to the x^-15 term (the first
/// omitted term is below 1e-16 relative there).
pub fn trigamma(mut x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    let mut shift = 0.0;
    while x < 10.0 {
        shift += 1.0 / (x * x);
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    // Σ B_2k / x^(2k+1) for k = 1..7, as inv · inv2 · (1/6 − inv2 (1/30 − …)).
    let series = inv
        * inv2
        * (1.0 / 6.0
            - inv2
                * (1.0 / 30.0
                    - inv2
                        * (1.0 / 42.0
                            - inv2
                                * (1.0 / 30.0
                                    - inv2
                                        * (5.0 / 66.0
                                            - inv2 * (691.0 / 2730.0 - inv2 * 7.0 / 6.0))))));
    shift + inv + 0.5 * inv2 + series
}

/// Maximum number of series terms before a series is declared non-convergent.
const MAX_TERMS: usize = 200_000;

/// Sum of the hypergeometric power series Σ (a)_n (b)_n / ((c)_n n!) z^n.
///
/// Stops when the next term can no longer change the sum in the last bit, counting the
/// geometric tail bound once the term ratio is below one. Returns NaN if it has not
/// converged within [`MAX_TERMS`] terms (only possible for z very close to 1).
fn series_2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 0..MAX_TERMS {
        let nf = n as f64;
        let ratio = (a + nf) * (b + nf) / ((c + nf) * (nf + 1.0)) * z;
        term *= ratio;
        sum += term;
        if term == 0.0 {
            return sum;
        }
        // Once terms shrink monotonically the tail is bounded by term * ρ / (1 − ρ), ρ < |z|
        // eventually; demand that bound be negligible.
        let rho = ratio.abs();
        if rho < 1.0 && nf > (a.abs() + b.abs()).min(1e6) {
            let tail = term.abs() * rho / (1.0 - rho);
            if tail <= f64::EPSILON * 0.5 * sum.abs() {
                return sum;
            }
        }
    }
    f64::NAN
}

/// Gaussian hypergeometric function 2F1(a, b; c; z) for real parameters and real z < 1
/// (and z = 1 when c − a − b > 0, by Gauss's theorem).
///
/// Method, by region:
/// - z < 0: Pfaff's transformation 2F1(a,b;c;z) = (1−z)^(−a) 2F1(a, c−b; c; z/(z−1)) maps the
///   argument into (0, 1).
/// - 0 ≤ z ≤ 0.9: the power series, applied to whichever of the function or its Euler
///   transform (1−z)^(c−a−b) 2F1(c−a, c−b; c; z) has smaller upper parameters (the BG/NBD
///   calls have large a, b and small c−a, c−b, where the Euler form avoids huge terms).
/// - 0.9 < z < 1: the linear connection formula to 1 − z (Abramowitz & Stegun 15.3.6), whose
///   two series converge fast. When c − a − b is within 1e-3 of an integer k the formula's
///   two terms blow up and cancel, so the function is evaluated at c − a − b = k ± 1e-3,
///   ± 2e-3, ± 3e-3 and interpolated with a quintic (2F1 is analytic in c).
///
/// Returns NaN outside the domain (z > 1, c a non-positive integer) or if a series fails to
/// converge.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    if [a, b, c, z].iter().any(|v| v.is_nan()) || z > 1.0 {
        return f64::NAN;
    }
    if c <= 0.0 && c == c.floor() {
        return f64::NAN;
    }
    if z == 0.0 || a == 0.0 || b == 0.0 {
        return 1.0;
    }
    let is_poly = |p: f64| p < 0.0 && p == p.floor();
    if z == 1.0 {
        let m = c - a - b;
        if m <= 0.0 {
            return f64::NAN;
        }
        return gamma_ratio(&[c, m], &[c - a, c - b]);
    }
    if is_poly(a) || is_poly(b) {
        // A terminating polynomial: the plain series is exact (finitely many terms).
        return series_2f1(a, b, c, z);
    }
    if z < 0.0 {
        let w = z / (z - 1.0);
        // Either upper parameter may be kept; keep the one giving the smaller prefactor growth.
        let (keep, other) = if a.abs() <= b.abs() { (a, b) } else { (b, a) };
        return (1.0 - z).powf(-keep) * hyp2f1_unit(keep, c - other, c, w);
    }
    hyp2f1_unit(a, b, c, z)
}

/// 2F1 for 0 < z < 1.
fn hyp2f1_unit(a: f64, b: f64, c: f64, z: f64) -> f64 {
    if z <= 0.9 {
        let direct = a.abs() * b.abs();
        let euler = (c - a).abs() * (c - b).abs();
        if euler < direct {
            (1.0 - z).powf(c - a - b) * series_2f1(c - a, c - b, c, z)
        } else {
            series_2f1(a, b, c, z)
        }
    } else {
        let m = c - a - b;
        let k = m.round();
        // Near an integer the two connection terms grow like 1/(m − k) and cancel, losing
        // about eps/|m − k| relative. Within DELTA, interpolate instead with the quintic
        // through m = k ± DELTA, ±2·DELTA, ±3·DELTA (2F1 is analytic in c). Its error is of
        // order DELTA^6 · ln(1−z)^6 / 6!, about 1e-14 even at z = 1 − 1e-6, and the loss
        // to cancellation at the nodes is about 1e-12.
        const DELTA: f64 = 1e-3;
        if (m - k).abs() < DELTA {
            let nodes = [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0].map(|j| k + j * DELTA);
            let values = nodes.map(|node| connection_1mz(a, b, c + (node - m), z));
            lagrange(&nodes, &values, m)
        } else {
            connection_1mz(a, b, c, z)
        }
    }
}

/// The interpolating polynomial through (nodes, values) evaluated at `at`.
fn lagrange(nodes: &[f64], values: &[f64], at: f64) -> f64 {
    let mut sum = 0.0;
    for (i, (&xi, &vi)) in nodes.iter().zip(values).enumerate() {
        let mut basis = 1.0;
        for (j, &xj) in nodes.iter().enumerate() {
            if i != j {
                basis *= (at - xj) / (xi - xj);
            }
        }
        sum += basis * vi;
    }
    sum
}

/// A&S 15.3.6 with y = 1 − z, valid when c − a − b is not an integer:
/// 2F1(a,b;c;z) = Γ(c)Γ(m)/(Γ(c−a)Γ(c−b)) 2F1(a,b;1−m;y)
///              + y^m Γ(c)Γ(−m)/(Γ(a)Γ(b)) 2F1(c−a,c−b;1+m;y),   m = c − a − b.
fn connection_1mz(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let y = 1.0 - z;
    let m = c - a - b;
    let first = gamma_ratio(&[c, m], &[c - a, c - b]);
    let first = if first == 0.0 {
        0.0
    } else {
        first * series_2f1(a, b, 1.0 - m, y)
    };
    let second = gamma_ratio(&[c, -m], &[a, b]);
    let second = if second == 0.0 {
        0.0
    } else {
        second * y.powf(m) * series_2f1(c - a, c - b, 1.0 + m, y)
    };
    first + second
}

/// Π Γ(num) / Π Γ(den), computed in log space with signs; zero when a denominator argument
/// is a pole.
fn gamma_ratio(num: &[f64], den: &[f64]) -> f64 {
    let mut log = 0.0;
    let mut sign = 1.0;
    for &x in num {
        let (l, s) = ln_gamma_signed(x);
        log += l;
        sign *= s;
    }
    for &x in den {
        let (l, s) = ln_recip_gamma_signed(x);
        if s == 0.0 {
            return 0.0;
        }
        log += l;
        sign *= s;
    }
    sign * log.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_rel(actual: f64, expected: f64, tol: f64, what: &str) {
        let rel = ((actual - expected) / expected).abs();
        assert!(
            rel <= tol,
            "{what}: got {actual:e}, expected {expected:e}, relative error {rel:e} > {tol:e}"
        );
    }

    #[test]
    fn digamma_known_values() {
        const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;
        assert_rel(digamma(1.0), -EULER_GAMMA, 1e-14, "psi(1)");
        assert_rel(
            digamma(0.5),
            -EULER_GAMMA - 2.0 * std::f64::consts::LN_2,
            1e-14,
            "psi(1/2)",
        );
        // ψ(n) = H_{n-1} − γ.
        let h9: f64 = (1..10).map(|k| 1.0 / f64::from(k)).sum();
        assert_rel(digamma(10.0), h9 - EULER_GAMMA, 1e-14, "psi(10)");
        // mpmath.digamma(0.243) and digamma(1234.5).
        assert_rel(digamma(0.243), -4.351_093_864_423_211, 1e-13, "psi(0.243)");
        assert_rel(digamma(1234.5), 7.118_016_231_827_998, 1e-14, "psi(1234.5)");
    }

    #[test]
    fn digamma_matches_derivative_of_ln_gamma() {
        for &x in &[0.05f64, 0.3, 1.7, 4.2, 37.0, 1e6] {
            let h = 1e-5 * x.max(1.0);
            let fd = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert_rel(digamma(x), fd, 1e-7, "psi vs finite difference");
        }
    }

    #[test]
    fn trigamma_known_values_and_derivative_of_digamma() {
        let pi2 = std::f64::consts::PI * std::f64::consts::PI;
        assert_rel(trigamma(1.0), pi2 / 6.0, 1e-14, "psi1(1)");
        assert_rel(trigamma(0.5), pi2 / 2.0, 1e-14, "psi1(1/2)");
        // ψ₁(n) = π²/6 − Σ_{k<n} 1/k².
        let s: f64 = (1..10).map(|k| 1.0 / f64::from(k * k)).sum();
        assert_rel(trigamma(10.0), pi2 / 6.0 - s, 1e-14, "psi1(10)");
        for &x in &[0.05f64, 0.3, 1.7, 4.2, 37.0, 1e6] {
            let h = 1e-5 * x.max(1.0);
            let fd = (digamma(x + h) - digamma(x - h)) / (2.0 * h);
            assert_rel(trigamma(x), fd, 1e-7, "psi1 vs finite difference");
        }
    }

    #[test]
    fn hyp2f1_closed_forms() {
        for &z in &[
            -50.0f64, -3.0, -0.95, -0.2, 1e-8, 0.1, 0.5, 0.85, 0.9, 0.91, 0.99, 0.999_999,
        ] {
            // 2F1(1,1;2;z) = −ln(1−z)/z. Here c − a − b = 0 exactly, the degenerate case of the
            // connection formula (z > 0.9, or z < −9 after Pfaff), which is interpolated and
            // so held to 1e-11 instead of 1e-13.
            let f: f64 = -(-z).ln_1p() / z;
            let tol = if (-9.0..=0.9).contains(&z) {
                1e-13
            } else {
                1e-11
            };
            assert_rel(hyp2f1(1.0, 1.0, 2.0, z), f, tol, &format!("2F1(1,1;2;{z})"));
            // 2F1(a,b;b;z) = (1−z)^(−a).
            let f = (1.0 - z).powf(-0.37);
            assert_rel(
                hyp2f1(0.37, 2.5, 2.5, z),
                f,
                1e-12,
                &format!("2F1(.37,2.5;2.5;{z})"),
            );
        }
        for &s in &[0.1f64, 0.5, 0.9, 0.999] {
            // 2F1(1/2,1/2;3/2;s²) = arcsin(s)/s and 2F1(1/2,1;3/2;−s²) = arctan(s)/s.
            assert_rel(hyp2f1(0.5, 0.5, 1.5, s * s), s.asin() / s, 1e-12, "arcsin");
            assert_rel(hyp2f1(0.5, 1.0, 1.5, -s * s), s.atan() / s, 1e-13, "arctan");
        }
        // Terminating polynomial: 2F1(−2,b;c;z) = 1 − 2bz/c + b(b+1)z²/(c(c+1)).
        let (b, c, z) = (3.0, 1.5, -7.0);
        let f = 1.0 - 2.0 * b * z / c + b * (b + 1.0) * z * z / (c * (c + 1.0));
        assert_rel(hyp2f1(-2.0, b, c, z), f, 1e-13, "polynomial");
        // Gauss's theorem at z = 1.
        let g = ln_gamma(4.0) + ln_gamma(1.5) - ln_gamma(3.0) - ln_gamma(2.5);
        assert_rel(hyp2f1(1.0, 1.5, 4.0, 1.0), g.exp(), 1e-13, "Gauss z=1");
    }

    #[test]
    fn hyp2f1_against_mpmath() {
        // (a, b, c, z, mpmath.hyp2f1(a, b, c, z) at 30 digits). The parameter sets mirror the
        // BG/NBD calls: (r+x, b+x; a+b+x−1; z) and its Euler-transformed partner.
        let cases: &[(f64, f64, f64, f64, f64)] = &[
            (0.243, 2.426, 2.219, 0.5, 1.207_097_007_044_042_3),
            (2.243, 4.426, 4.219, 0.7, 17.513_211_961_569_027),
            (2.243, 4.426, 4.219, 0.95, 1_344.340_278_175_993_8),
            (2.976, -0.207, 4.219, 0.95, 0.771_308_754_576_830_7),
            (2.976, -0.207, 4.219, 0.3, 0.951_533_971_177_746_3),
            (2.976, -0.207, 104.219, 0.97, 0.994_180_708_927_344_2),
            (1.5, 2.5, 4.0, 0.97, 9.784_734_861_085_16),
            (0.7, 1.3, 2.2, 0.95, 2.458_337_750_317_095),
            (0.7, 1.3, 3.1, -4.0, 0.548_156_086_805_853_5),
            (5.0, 0.5, 2.0, -20.0, 0.121_844_801_901_556_7),
            (3.0, 4.0, 1.5, 0.8, 22_607.035_379_385_165),
            (10.243, 12.426, 12.219, 0.93, 1_131_349_043_842.829),
            (0.55, -0.207, 1002.219, 0.999, 0.999_886_446_114_844_4),
            (1.3, 0.4, 1.7, -0.999, 0.802_601_278_281_237_6),
        ];
        for &(a, b, c, z, want) in cases {
            assert_rel(
                hyp2f1(a, b, c, z),
                want,
                1e-11,
                &format!("2F1({a},{b};{c};{z})"),
            );
        }
    }

    #[test]
    fn hyp2f1_continuous_across_region_boundaries() {
        // The region switch at z = 0.9 and the near-integer c−a−b interpolation must not
        // introduce jumps.
        for &(a, b, c) in &[(0.7, 1.3, 2.2), (1.0, 1.0, 2.0), (0.5, 0.5, 3.0 + 1e-7)] {
            let below = hyp2f1(a, b, c, 0.9 - 1e-12);
            let above = hyp2f1(a, b, c, 0.9 + 1e-12);
            assert_rel(above, below, 1e-11, "jump at 0.9");
        }
        let exact = hyp2f1(0.5, 0.5, 2.0, 0.95);
        let near = hyp2f1(0.5, 0.5, 2.0 + 3e-6, 0.95);
        assert_rel(near, exact, 1e-5, "near-integer c-a-b");
    }
}
