//! Times patron-clv's BG/NBD fit on a summaries CSV (columns x,t_x,T; e.g. the files written
//! by tests/clv/bench_lifetimes.py) and prints one JSON line.
//!
//! cargo run --release -p patron-clv --example fit_csv -- /tmp/patron-clv-bench/customers_100000.csv

use std::time::Instant;

use patron_clv::{FitOptions, SummaryRow, fit_bgnbd, group_summaries};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: fit_csv <summaries.csv> [repeats]")?;
    let repeats: usize = std::env::args().nth(2).map_or(Ok(3), |s| s.parse())?;
    let mut reader = csv::Reader::from_path(&path)?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("{path}: no column {name}"))
    };
    let (ix, itx, it) = (col("x")?, col("t_x")?, col("T")?);
    let mut triples = Vec::new();
    for record in reader.records() {
        let record = record?;
        triples.push((
            record[ix].parse::<f64>()?,
            record[itx].parse::<f64>()?,
            record[it].parse::<f64>()?,
        ));
    }
    let customers = triples.len();

    // Grouping and fitting are timed separately; a refit pays for both.
    let (mut best_group, mut best_fit) = (f64::INFINITY, f64::INFINITY);
    let mut result = None;
    let mut distinct = 0;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let rows: Vec<SummaryRow> = group_summaries(triples.iter().copied());
        let grouped = Instant::now();
        distinct = rows.len();
        let fit = fit_bgnbd(&rows, &FitOptions::default())?;
        best_group = best_group.min((grouped - start).as_secs_f64());
        best_fit = best_fit.min(grouped.elapsed().as_secs_f64());
        result = Some(fit);
    }
    let fit = result.ok_or("no run")?;
    let p = fit.params;
    println!(
        "{{\"csv\":\"{path}\",\"customers\":{customers},\"distinct_triples\":{distinct},\
         \"group_seconds\":{best_group:.6},\"fit_seconds\":{best_fit:.6},\"iterations\":{},\"log_likelihood\":{},\
         \"params\":{{\"r\":{},\"alpha\":{},\"a\":{},\"b\":{}}}}}",
        fit.iterations, fit.log_likelihood, p.r, p.alpha, p.a, p.b
    );
    Ok(())
}
