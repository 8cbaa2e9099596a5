//! Criterion benches: BG/NBD fit on 10k and 100k distinct-ish summaries, and per-customer
//! scoring cost (P(alive), expected purchases, CLV).
//!
//! Data: by default simulated here (CDNOW's parameters with α in days, T uniform in 30..730
//! days, times rounded to 0.01 days so almost every summary is distinct). Set
//! PATRON_CLV_BENCH_DIR to the directory written by tests/clv/bench_lifetimes.py to fit
//! exactly the files lifetimes was timed on (customers_10000.csv, customers_100000.csv).
//!
//! cargo bench -p patron-clv --bench fit

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use patron_clv::{
    BgNbdParams, ClvModel, ClvOptions, FitOptions, GammaGammaParams, SummaryRow, fit_bgnbd,
    group_summaries,
};

const TRUTH_DAYS: [f64; 4] = [0.243, 4.414 * 7.0, 0.793, 2.426];

fn customers(n: usize) -> Vec<(f64, f64, f64)> {
    if let Some(dir) = std::env::var_os("PATRON_CLV_BENCH_DIR") {
        let path = PathBuf::from(dir).join(format!("customers_{n}.csv"));
        let mut reader = csv::Reader::from_path(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        return reader
            .records()
            .map(|r| {
                let r = r.expect("record");
                let f = |i: usize| r[i].parse::<f64>().expect("number");
                (f(0), f(1), f(2))
            })
            .collect();
    }
    let round = |v: f64| (v * 100.0).round() / 100.0;
    common::simulate(7 + n as u64, TRUTH_DAYS, n, 30.0, 730.0)
        .into_iter()
        .map(|r| (r.x, round(r.t_x).min(round(r.t)), round(r.t)))
        .collect()
}

fn bench_fit(c: &mut Criterion) {
    let mut group = c.benchmark_group("fit_bgnbd");
    group.sample_size(10);
    for n in [10_000usize, 100_000] {
        let triples = customers(n);
        let rows: Vec<SummaryRow> = group_summaries(triples.iter().copied());
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("grouped", n), &rows, |b, rows| {
            b.iter(|| fit_bgnbd(black_box(rows), &FitOptions::default()).expect("fit"))
        });
        group.bench_with_input(BenchmarkId::new("group_then_fit", n), &triples, |b, t| {
            b.iter(|| {
                let rows = group_summaries(black_box(t).iter().copied());
                fit_bgnbd(&rows, &FitOptions::default()).expect("fit")
            })
        });
    }
    group.finish();
}

fn bench_score(c: &mut Criterion) {
    let bg = BgNbdParams::from_array(TRUTH_DAYS);
    let gg = GammaGammaParams {
        p: 6.25,
        q: 3.74,
        gamma: 15.44,
    };
    let model = ClvModel { bg, gg };
    let opts = ClvOptions {
        horizon_months: 12.0,
        time_unit_days: 1.0,
        margin: 0.3,
        annual_discount_rate: 0.1,
    };
    let sample: Vec<(f64, f64, f64)> = customers(10_000).into_iter().take(1000).collect();
    let horizon = opts.horizon_in_time_units();

    let mut group = c.benchmark_group("score_per_customer");
    group.throughput(Throughput::Elements(sample.len() as u64));
    group.bench_function("p_alive", |b| {
        b.iter(|| {
            sample
                .iter()
                .map(|&(x, t_x, t)| bg.p_alive(x, t_x, t))
                .sum::<f64>()
        })
    });
    group.bench_function("expected_purchases_12m", |b| {
        b.iter(|| {
            sample
                .iter()
                .map(|&(x, t_x, t)| bg.conditional_expected_purchases(horizon, x, t_x, t))
                .sum::<f64>()
        })
    });
    group.bench_function("score_all_12m_clv", |b| {
        b.iter(|| {
            sample
                .iter()
                .map(|&(x, t_x, t)| model.score(x, t_x, t, 30.0, black_box(&opts)).clv)
                .sum::<f64>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_fit, bench_score);
criterion_main!(benches);
