//! Merging all customers into one stream ordered by time, and mixing in invalid lines.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::bad;
use crate::config::{SynthConfig, Truth};
use crate::customer::{Ctx, CustomerSim, PRE_BIRTH_MILLIS, mix};
use crate::{CustomerTruth, SynthError, SynthEvent, reason};

/// Birth times in increasing order, uniform over the birth span, drawn one at a time.
///
/// Uses the order statistics of uniforms: the largest of k uniforms is `V^(1/k)`, so walking
/// `w *= V^(1/k)` for k = n..1 yields all n in decreasing order; `1 - w` then increases. That
/// needs O(1) memory where sorting n draws would need O(n).
#[derive(Debug, Clone)]
struct Births {
    rng: Xoshiro256PlusPlus,
    remaining: u64,
    next_index: u64,
    w: f64,
    start_ms: i64,
    span_ms: f64,
    end_ms: i64,
}

impl Births {
    fn new(cfg: &SynthConfig, ctx: &Ctx) -> Self {
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(mix(cfg.seed ^ 0x6269_7274_6873)),
            remaining: cfg.customers,
            next_index: 0,
            w: 1.0,
            start_ms: ctx.start_ms,
            span_ms: (ctx.end_ms - ctx.start_ms) as f64 * cfg.birth_fraction,
            end_ms: ctx.end_ms,
        }
    }
}

impl Iterator for Births {
    /// (customer index, birth ms)
    type Item = (u64, i64);

    fn next(&mut self) -> Option<(u64, i64)> {
        if self.remaining == 0 {
            return None;
        }
        // In (0, 1], so the power never collapses to 0.
        let v = 1.0 - self.rng.random::<f64>();
        self.w *= v.powf(1.0 / self.remaining as f64);
        self.remaining -= 1;
        let index = self.next_index;
        self.next_index += 1;
        let birth = self.start_ms + ((1.0 - self.w) * self.span_ms) as i64;
        Some((index, birth.min(self.end_ms - 1)))
    }
}

/// A live customer in the merge heap, ordered by when it next needs attention.
#[derive(Debug)]
struct Entry {
    at: i64,
    sim: Box<CustomerSim>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest; ties by customer index.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.sim.index).cmp(&(self.at, self.sim.index))
    }
}

/// A seeded stream of [`SynthEvent`]s, in time order.
///
/// Memory is bounded by the customers alive at once (one heap entry with a few pending events
/// each), not by the length of the stream.
#[derive(Debug)]
pub struct Generator {
    cfg: SynthConfig,
    ctx: Ctx,
    births: std::iter::Peekable<Births>,
    heap: BinaryHeap<Entry>,
    bad_rng: Xoshiro256PlusPlus,
    bad_lines: u64,
    lookahead: Option<SynthEvent>,
}

impl Generator {
    /// A generator for `cfg`.
    ///
    /// # Panics
    /// If `cfg` fails [`SynthConfig::validate`]; use [`Generator::try_new`] to get the error.
    pub fn new(cfg: SynthConfig) -> Generator {
        match Self::try_new(cfg) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_new(cfg: SynthConfig) -> Result<Generator, SynthError> {
        cfg.validate()?;
        let ctx = Ctx::new(&cfg);
        Ok(Generator {
            births: Births::new(&cfg, &ctx).peekable(),
            bad_rng: Xoshiro256PlusPlus::seed_from_u64(mix(cfg.seed ^ 0x0062_6164)),
            ctx,
            cfg,
            heap: BinaryHeap::new(),
            bad_lines: 0,
            lookahead: None,
        })
    }

    /// The true parameters the stream is drawn from.
    pub fn truth(&self) -> Truth {
        self.cfg.truth()
    }

    pub fn config(&self) -> &SynthConfig {
        &self.cfg
    }

    /// Customers currently held in memory (for tests of the memory bound).
    pub fn live_customers(&self) -> usize {
        self.heap.len()
    }

    /// The next valid event, merging customers in time order.
    fn next_valid(&mut self) -> Option<SynthEvent> {
        loop {
            // A customer not yet born cannot produce anything before its first step floor, and
            // floors increase with birth; admit it once nothing live comes earlier.
            while let Some(&(index, birth)) = self.births.peek() {
                let floor = (birth - PRE_BIRTH_MILLIS).max(self.ctx.start_ms);
                if self.heap.peek().is_some_and(|top| top.at < floor) {
                    break;
                }
                self.births.next();
                let sim = Box::new(CustomerSim::new(&self.ctx, index, birth));
                if let Some(at) = sim.next_time(&self.ctx) {
                    self.heap.push(Entry { at, sim });
                }
            }
            let mut entry = self.heap.pop()?;
            let event = entry.sim.advance(&self.ctx);
            if !entry.sim.is_done()
                && let Some(at) = entry.sim.next_time(&self.ctx)
            {
                entry.at = at;
                self.heap.push(entry);
            }
            if event.is_some() {
                return event;
            }
        }
    }
}

impl Iterator for Generator {
    type Item = SynthEvent;

    fn next(&mut self) -> Option<SynthEvent> {
        let valid = match self.lookahead.take() {
            Some(e) => e,
            None => self.next_valid()?,
        };
        // Invalid lines come on top of the valid stream, so a share `bad_rate` of all lines is
        // invalid while the valid events, and the truth, stay the same for every bad_rate.
        if self.cfg.bad_rate > 0.0 && self.bad_rng.random_bool(self.cfg.bad_rate) {
            let n = self.bad_lines;
            self.bad_lines += 1;
            let event_id = format!("bad-{:08x}-{n:x}", self.ctx.tag);
            let (payload, why) = bad::bad_line(
                n,
                &event_id,
                valid.ts_millis,
                &valid.key,
                &self.ctx.currency,
            );
            let ts_millis = if why == reason::FUTURE_TIMESTAMP {
                bad::FAR_FUTURE_MILLIS
            } else {
                valid.ts_millis
            };
            let bad = SynthEvent {
                ts_millis,
                key: valid.key.clone(),
                payload,
                expected_reject: Some(why),
                duplicate: false,
            };
            self.lookahead = Some(valid);
            return Some(bad);
        }
        Some(valid)
    }
}

/// The per-customer truth of every customer `cfg` generates, in index order.
///
/// Each customer is replayed on its own, so this costs about as much as generating the stream
/// but holds one customer at a time.
pub fn customer_truths(cfg: &SynthConfig) -> Result<CustomerTruths, SynthError> {
    cfg.validate()?;
    let ctx = Ctx::new(cfg);
    Ok(CustomerTruths {
        births: Births::new(cfg, &ctx),
        ctx,
    })
}

/// Iterator returned by [`customer_truths`].
#[derive(Debug)]
pub struct CustomerTruths {
    ctx: Ctx,
    births: Births,
}

impl Iterator for CustomerTruths {
    type Item = CustomerTruth;

    fn next(&mut self) -> Option<CustomerTruth> {
        let (index, birth) = self.births.next()?;
        let mut sim = CustomerSim::new(&self.ctx, index, birth);
        while !sim.is_done() {
            sim.advance(&self.ctx);
        }
        Some(sim.truth(&self.ctx))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::Value;

    use super::*;

    fn small(seed: u64) -> SynthConfig {
        SynthConfig {
            customers: 2_000,
            days: 365,
            seed,
            duplicate_rate: 0.02,
            segment_spec_rate: 0.3,
            bad_rate: 0.02,
            refund_rate: 0.1,
            ..SynthConfig::default()
        }
    }

    /// An amount in a JSON number or decimal string, in cents.
    fn cents(v: &Value) -> i64 {
        let x = match v {
            Value::Number(n) => n.as_f64().expect("finite"),
            Value::String(s) => s.parse::<f64>().expect("decimal string"),
            other => panic!("not an amount: {other}"),
        };
        (x * 100.0).round() as i64
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a: Vec<SynthEvent> = Generator::new(small(7)).take(5_000).collect();
        let b: Vec<SynthEvent> = Generator::new(small(7)).take(5_000).collect();
        let c: Vec<SynthEvent> = Generator::new(small(8)).take(5_000).collect();
        assert_eq!(a.len(), 5_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn stream_is_in_ts_order_and_ids_are_unique() {
        let cfg = small(1);
        let end = cfg.truth().end.timestamp_millis();
        let mut last = i64::MIN;
        let mut ids = HashSet::new();
        let mut seen_payloads = HashSet::new();
        let mut duplicates = 0;
        for e in Generator::new(cfg) {
            if e.expected_reject.is_some() {
                continue;
            }
            if e.duplicate {
                duplicates += 1;
                assert!(
                    seen_payloads.contains(&e.payload),
                    "a duplicate repeats an earlier line"
                );
                continue;
            }
            assert!(e.ts_millis >= last, "out of order at {}", e.ts_millis);
            last = e.ts_millis;
            assert!(e.ts_millis < end + 3_600_000);
            let v: Value = serde_json::from_slice(&e.payload).expect("valid JSON");
            let id = v
                .get("event_id")
                .or_else(|| v.get("messageId"))
                .and_then(Value::as_str)
                .expect("an event id")
                .to_owned();
            assert!(ids.insert(id), "event ids are unique");
            assert!(!e.key.is_empty());
            seen_payloads.insert(e.payload);
        }
        assert!(duplicates > 0);
        assert!(ids.len() > 10_000);
    }

    #[test]
    fn bad_share_is_close_to_bad_rate_and_covers_every_reason() {
        let cfg = SynthConfig {
            customers: 1_000,
            bad_rate: 0.1,
            ..SynthConfig::default()
        };
        let mut total = 0usize;
        let mut bad = 0usize;
        let mut reasons = HashSet::new();
        for e in Generator::new(cfg) {
            total += 1;
            if let Some(r) = e.expected_reject {
                bad += 1;
                reasons.insert(r);
                if r == reason::FUTURE_TIMESTAMP {
                    assert!(e.ts_millis > 4_000_000_000_000);
                }
            }
        }
        let share = bad as f64 / total as f64;
        assert!(
            (0.085..0.115).contains(&share),
            "bad share {share} of {total}"
        );
        assert_eq!(reasons.len(), reason::ALL.len());
    }

    #[test]
    fn purchase_items_add_up_to_the_amount() {
        let mut checked = 0;
        for e in Generator::new(small(3)) {
            if e.expected_reject.is_some() {
                continue;
            }
            let v: Value = serde_json::from_slice(&e.payload).expect("valid JSON");
            let (amount, items, price) = match v["type"].as_str() {
                Some("purchase") => (&v["amount"], &v["items"], "unit_price"),
                Some("track") if v["event"] == "Order Completed" => {
                    let p = &v["properties"];
                    let a = if p.get("revenue").is_some() {
                        &p["revenue"]
                    } else {
                        &p["total"]
                    };
                    (a, &p["products"], "price")
                }
                _ => continue,
            };
            let items = items.as_array().expect("items");
            assert!((1..=3).contains(&items.len()));
            let sum: i64 = items
                .iter()
                .map(|it| it["quantity"].as_i64().expect("quantity") * cents(&it[price]))
                .sum();
            assert!(items.iter().all(|it| cents(&it[price]) > 0));
            assert_eq!(
                sum,
                cents(amount),
                "{}",
                String::from_utf8_lossy(&e.payload)
            );
            checked += 1;
        }
        assert!(checked > 2_000);
    }

    #[test]
    fn stream_agrees_with_customer_truths() {
        let cfg = SynthConfig {
            customers: 500,
            ..small(11)
        };
        let truths: Vec<CustomerTruth> = customer_truths(&cfg).expect("valid").collect();
        let mut purchases = std::collections::HashMap::<String, (u32, i64)>::new();
        for e in Generator::new(cfg) {
            if e.expected_reject.is_some() || e.duplicate {
                continue;
            }
            let v: Value = serde_json::from_slice(&e.payload).expect("valid JSON");
            let (who, amount) = match (v["type"].as_str(), v["event"].as_str()) {
                (Some("purchase"), _) => (v["customer_id"].as_str(), cents(&v["amount"])),
                (Some("refund"), _) => (v["customer_id"].as_str(), -cents(&v["amount"])),
                (Some("track"), Some("Order Completed")) => {
                    let p = &v["properties"];
                    let a = p.get("revenue").unwrap_or(&p["total"]);
                    (v["userId"].as_str(), cents(a))
                }
                (Some("track"), Some("Order Refunded")) => {
                    (v["userId"].as_str(), -cents(&v["properties"]["total"]))
                }
                _ => continue,
            };
            let s = purchases
                .entry(who.expect("a customer").to_owned())
                .or_default();
            if amount > 0 {
                s.0 += 1;
            }
            s.1 += amount;
        }
        assert_eq!(purchases.len(), truths.len());
        for t in &truths {
            let (n, net) = purchases[&t.customer_id];
            assert_eq!(n, t.purchases, "{}", t.customer_id);
            assert_eq!(net, ((t.gross - t.refunded) * 100.0).round() as i64);
        }
    }

    /// E[repeat purchases in (0, T]] under BG/NBD: E[X | lambda, p] = (1 - e^(-lambda p T)) / p,
    /// integrated over lambda in closed form and over p ~ Beta(a, b) numerically.
    fn expected_repeats(cfg: &SynthConfig, t_days: f64) -> f64 {
        let b = cfg.bgnbd;
        // p = u^(1/a) turns the Beta density p^(a-1) (1-p)^(b-1) dp into (1/a) (1-p)^(b-1) du.
        let steps = 4_000;
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..steps {
            let u = (f64::from(i) + 0.5) / f64::from(steps);
            let p = u.powf(1.0 / b.a);
            let w = (1.0 - p).powf(b.b - 1.0);
            let f = (1.0 - (b.alpha / (b.alpha + p * t_days)).powf(b.r)) / p;
            num += f * w;
            den += w;
        }
        num / den
    }

    #[test]
    fn empirical_purchases_match_bgnbd_theory() {
        let cfg = SynthConfig {
            customers: 20_000,
            interactions_per_purchase: 0.0,
            ..SynthConfig::default()
        };
        let end = cfg.truth().end.timestamp_millis();
        let truths: Vec<CustomerTruth> = customer_truths(&cfg).expect("valid").collect();
        let n = truths.len() as f64;
        // Expected repeats on a one-day grid of T, interpolated per customer.
        let grid: Vec<f64> = (0..=cfg.days)
            .map(|d| expected_repeats(&cfg, f64::from(d)))
            .collect();
        let mut theory = 0.0;
        let mut actual = 0.0;
        let (mut lambda, mut p, mut spend) = (0.0, 0.0, 0.0);
        for t in &truths {
            let days = (end - t.birth_millis) as f64 / 86_400_000.0;
            let i = (days.floor() as usize).min(grid.len() - 2);
            let frac = days - i as f64;
            theory += grid[i] * (1.0 - frac) + grid[i + 1] * frac;
            actual += f64::from(t.purchases - 1);
            lambda += t.lambda;
            p += t.p;
            spend += cfg.gamma_gamma.p / t.nu;
        }
        let (theory, actual) = (theory / n, actual / n);
        assert!(
            (actual / theory - 1.0).abs() < 0.1,
            "mean repeat purchases {actual} vs theory {theory}"
        );
        let b = cfg.bgnbd;
        let g = cfg.gamma_gamma;
        assert!(((lambda / n) / (b.r / b.alpha) - 1.0).abs() < 0.1);
        assert!(((p / n) / (b.a / (b.a + b.b)) - 1.0).abs() < 0.05);
        assert!(((spend / n) / (g.p * g.gamma / (g.q - 1.0)) - 1.0).abs() < 0.05);
    }

    #[test]
    fn segment_rate_one_renders_everything_as_segment() {
        let cfg = SynthConfig {
            customers: 200,
            segment_spec_rate: 1.0,
            ..SynthConfig::default()
        };
        let mut kinds = HashSet::new();
        for e in Generator::new(cfg) {
            let v: Value = serde_json::from_slice(&e.payload).expect("valid JSON");
            assert!(v.get("messageId").is_some() && v.get("event_id").is_none());
            kinds.insert(v["type"].as_str().expect("type").to_owned());
        }
        for k in ["track", "page", "identify"] {
            assert!(kinds.contains(k), "{k} missing from {kinds:?}");
        }
    }

    #[test]
    fn births_are_sorted_and_within_the_birth_span() {
        let cfg = SynthConfig {
            customers: 10_000,
            ..SynthConfig::default()
        };
        let ctx = Ctx::new(&cfg);
        let births: Vec<i64> = Births::new(&cfg, &ctx).map(|(_, b)| b).collect();
        assert!(births.windows(2).all(|w| w[0] <= w[1]));
        let span = (ctx.end_ms - ctx.start_ms) as f64 * cfg.birth_fraction;
        let mean = births
            .iter()
            .map(|b| (b - ctx.start_ms) as f64)
            .sum::<f64>()
            / 10_000.0;
        assert!((mean / (span / 2.0) - 1.0).abs() < 0.03);
        assert!(*births.last().expect("some") <= ctx.start_ms + span as i64);
    }

    #[test]
    fn invalid_config_is_refused_with_the_field() {
        let cfg = SynthConfig {
            duplicate_rate: 1.5,
            ..SynthConfig::default()
        };
        let err = Generator::try_new(cfg).expect_err("invalid");
        assert!(err.to_string().contains("duplicate_rate"));
    }
}
