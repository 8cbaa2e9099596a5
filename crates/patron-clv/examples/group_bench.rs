use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let mut reader = csv::Reader::from_path(&path).unwrap();
    let triples: Vec<(f64, f64, f64)> = reader.records().map(|r| { let r = r.unwrap(); (r[0].parse().unwrap(), r[1].parse().unwrap(), r[2].parse().unwrap()) }).collect();
    let mut ts = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let rows = patron_clv::group_summaries(triples.iter().copied());
        ts.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(rows);
    }
    ts.sort_by(f64::total_cmp);
    println!("{path}: min {:.3} med {:.3} ms", ts[0], ts[7]);
}
