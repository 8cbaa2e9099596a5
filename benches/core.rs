//! Micro-benchmarks of the per-event hot path: decode, apply, encode/decode, scoring.
//!
//! Run: `cargo bench --bench core`. Results and the machine they ran on: docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use patron_core::decode::Decoder;
use patron_core::rfm::{RfmDistribution, RfmMap};
use patron_core::state::{ApplyContext, CustomerState};
use patron_core::time::MILLIS_PER_DAY;
use patron_store::codec::{decode_profile, encode_profile};

const PURCHASE: &[u8] = br#"{"event_id":"e-000123456","type":"purchase","ts":"2025-03-01T10:00:00Z","customer_id":"c0012345","amount":"59.90","currency":"USD","order_id":"o-99812","items":[{"sku":"A1","category":"shoes","quantity":1,"unit_price":59.9}]}"#;
const INTERACTION: &[u8] = br#"{"event_id":"e-000123457","type":"interaction","ts":"2025-03-01T09:58:00Z","customer_id":"c0012345","kind":"page_view","channel":"web"}"#;
const SEGMENT: &[u8] = br#"{"type":"track","event":"Order Completed","messageId":"m-1","userId":"c0012345","timestamp":"2025-03-01T10:00:00Z","properties":{"revenue":59.9,"products":[{"product_id":"A1","category":"shoes","price":59.9,"quantity":1}]}}"#;
const NOW: i64 = 1_800_000_000_000;

fn decode(c: &mut Criterion) {
    let d = Decoder::default();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("native_purchase", |b| {
        b.iter(|| d.decode(black_box(PURCHASE), NOW).unwrap())
    });
    g.bench_function("native_interaction", |b| {
        b.iter(|| d.decode(black_box(INTERACTION), NOW).unwrap())
    });
    g.bench_function("segment_order_completed", |b| {
        b.iter(|| d.decode(black_box(SEGMENT), NOW).unwrap())
    });
    g.bench_function("rejected_malformed", |b| {
        b.iter(|| d.decode(black_box(&PURCHASE[..90]), NOW).unwrap_err())
    });
    g.finish();
}

/// A profile with a realistic history: 12 purchases and 40 interactions over a year.
fn history() -> (CustomerState, Vec<patron_core::event::Event>) {
    let d = Decoder::default();
    let ctx = ApplyContext::default();
    let mut events = Vec::new();
    for i in 0..52 {
        let ts = format!("2025-{:02}-{:02}T10:00:00Z", 1 + i % 12, 1 + i % 28);
        let json = if i % 4 == 0 {
            format!(
                r#"{{"event_id":"e{i}","type":"purchase","ts":"{ts}","customer_id":"c1","amount":"{}.50","items":[{{"sku":"s","category":"cat{}","quantity":1,"unit_price":10}}]}}"#,
                10 + i,
                i % 5
            )
        } else {
            format!(
                r#"{{"event_id":"e{i}","type":"interaction","ts":"{ts}","customer_id":"c1","kind":"k{}"}}"#,
                i % 6
            )
        };
        events.push(d.decode(json.as_bytes(), NOW).unwrap());
    }
    let mut s = CustomerState::default();
    for e in &events {
        s.apply(e, &ctx);
    }
    (s, events)
}

fn apply(c: &mut Criterion) {
    let d = Decoder::default();
    let ctx = ApplyContext::default();
    let (state, _) = history();
    let purchase = d.decode(PURCHASE, NOW).unwrap();
    let interaction = d.decode(INTERACTION, NOW).unwrap();
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(1));
    g.bench_function("purchase_to_rich_profile", |b| {
        b.iter_batched_ref(
            || state.clone(),
            |s| s.apply(black_box(&purchase), &ctx),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("interaction_to_rich_profile", |b| {
        b.iter_batched_ref(
            || state.clone(),
            |s| s.apply(black_box(&interaction), &ctx),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("purchase_to_new_profile", |b| {
        b.iter_batched_ref(
            CustomerState::default,
            |s| s.apply(black_box(&purchase), &ctx),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let (state, _) = history();
    let bytes = encode_profile(3, &state);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("encode_profile_{}B", bytes.len()), |b| {
        b.iter(|| encode_profile(3, black_box(&state)))
    });
    g.bench_function(format!("decode_profile_{}B", bytes.len()), |b| {
        b.iter(|| decode_profile("c1", black_box(&bytes)).unwrap())
    });
    g.finish();
}

fn scoring(c: &mut Criterion) {
    // One million customers' (last purchase, frequency, monetary), a deterministic spread.
    let n = 1_000_000u64;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut last, mut freq, mut money) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        last.push(1_700_000_000_000 + (next() % 365) as i64 * MILLIS_PER_DAY);
        freq.push(1 + (next() % 20) as u32);
        money.push((next() % 5_000_000_000) as i64);
    }
    let mut g = c.benchmark_group("scoring");
    g.sample_size(10);
    g.bench_function("rfm_distribution_build_1M", |b| {
        b.iter(|| RfmDistribution::new(last.clone(), freq.clone(), money.clone()))
    });
    // The baseline: the whole population sorted, ranked by binary search (what a view kept
    // until the quintile bounds).
    let sorted = |mut v: Vec<i64>| {
        v.sort_unstable();
        v
    };
    g.bench_function("baseline_sorted_population_build_1M", |b| {
        b.iter(|| {
            let f: Vec<i64> = freq.iter().map(|&f| i64::from(f)).collect();
            (sorted(last.clone()), sorted(f), sorted(money.clone()))
        })
    });
    let population = (
        sorted(last.clone()),
        sorted(freq.iter().map(|&f| i64::from(f)).collect()),
        sorted(money.clone()),
    );
    let dist = RfmDistribution::new(last, freq, money);
    let map = RfmMap::default();
    g.sample_size(100);
    g.throughput(Throughput::Elements(1));
    g.bench_function("rfm_score_and_segment_among_1M", |b| {
        b.iter(|| {
            let s = dist.scores(
                black_box(1_700_000_000_000 + 100 * MILLIS_PER_DAY),
                7,
                patron_core::money::Money(1_234_000_000),
            );
            map.segment(s.r, s.f).len() + usize::from(s.m)
        })
    });
    g.bench_function("baseline_sorted_population_score_among_1M", |b| {
        let score = |v: &[i64], x: i64| {
            let worse = v.partition_point(|&y| y < x);
            (1 + 5 * worse / v.len()).min(5) as u8
        };
        b.iter(|| {
            let r = score(
                &population.0,
                black_box(1_700_000_000_000 + 100 * MILLIS_PER_DAY),
            );
            let f = score(&population.1, 7);
            let m = score(&population.2, 1_234_000_000);
            map.segment(r, f).len() + usize::from(m)
        })
    });
    let model = patron_core::clv::ClvModel {
        bg: patron_core::clv::BgNbdParams {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
        },
        gg: patron_core::clv::GammaGammaParams {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        },
    };
    let opts = patron_core::clv::ClvOptions {
        horizon_months: 12.0,
        time_unit_days: 7.0,
        margin: 0.3,
        annual_discount_rate: 0.1,
    };
    g.bench_function("clv_score_12_months", |b| {
        b.iter(|| model.score(black_box(4.0), 30.0, 38.0, 25.0, &opts))
    });
    g.finish();
}

criterion_group!(benches, decode, apply, codec, scoring);
criterion_main!(benches);
