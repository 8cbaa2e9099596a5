//! Helpers shared by the integration tests: data loading and a BG/NBD simulator with a
//! small deterministic RNG (so results do not depend on a rand crate's version).

#![allow(dead_code)]

use std::path::PathBuf;

use patron_clv::{SpendRow, SummaryRow};

/// The workspace root (two levels above this crate's manifest).
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(manifest_dir()).join("../..")
}

/// CDNOW summaries (2357 customers, weeks) with each repeat buyer's mean repeat spend.
pub(crate) struct Cdnow {
    pub(crate) rows: Vec<SummaryRow>,
    pub(crate) spend: Vec<SpendRow>,
}

pub(crate) fn load_cdnow() -> Cdnow {
    let path =
        workspace_root().join("tests/data/clv/cdnow_customers_summary_with_transactions.csv");
    let mut reader =
        csv::Reader::from_path(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let (mut rows, mut spend) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.expect("csv record");
        // ID,x,t_x,T,zbar
        let field = |i: usize| -> f64 { record[i].trim().parse().expect("number") };
        let (x, t_x, t, zbar) = (field(1), field(2), field(3), field(4));
        rows.push(SummaryRow::new(x, t_x, t));
        if x > 0.0 {
            spend.push(SpendRow::new(x, zbar));
        }
    }
    Cdnow { rows, spend }
}

/// SplitMix64-seeded xoshiro256** generator.
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub(crate) fn normal(&mut self) -> f64 {
        // Box-Muller; one of the pair is enough here.
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    pub(crate) fn exponential(&mut self, rate: f64) -> f64 {
        -self.uniform().ln() / rate
    }

    /// Gamma(shape, scale 1) by Marsaglia & Tsang (2000), with the u^(1/shape) boost for
    /// shape < 1.
    pub(crate) fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let g = self.gamma(shape + 1.0);
            return g * self.uniform().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    pub(crate) fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        x / (x + y)
    }
}

/// Simulates one BG/NBD customer observed for `t` after the first purchase at time 0:
/// λ ~ Gamma(r, rate α), p ~ Beta(a, b); Poisson(λ) repeat purchases; after each repeat
/// purchase the customer drops out with probability p. Returns (x, t_x, T).
pub(crate) fn simulate_customer(rng: &mut Rng, params: [f64; 4], t: f64) -> (f64, f64, f64) {
    let [r, alpha, a, b] = params;
    let lambda = rng.gamma(r) / alpha;
    let p = rng.beta(a, b);
    let (mut now, mut x, mut t_x) = (0.0, 0.0, 0.0);
    loop {
        now += rng.exponential(lambda);
        if now > t {
            break;
        }
        x += 1.0;
        t_x = now;
        if rng.uniform() < p {
            break;
        }
    }
    (x, t_x, t)
}

/// `n` customers with observation lengths spread uniformly over [t_min, t_max] (staggered
/// acquisition, as in a real cohort mix).
pub(crate) fn simulate(
    seed: u64,
    params: [f64; 4],
    n: usize,
    t_min: f64,
    t_max: f64,
) -> Vec<SummaryRow> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let t = t_min + (t_max - t_min) * rng.uniform();
            let (x, t_x, t) = simulate_customer(&mut rng, params, t);
            SummaryRow::new(x, t_x, t)
        })
        .collect()
}

/// The package directory, read when the test runs: cargo sets it for test processes, and a
/// test binary reused from a checkout elsewhere (one shared target dir) must not look there.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}
