//! One customer's life: the BG/NBD purchase process, Gamma-Gamma spend, and the interactions,
//! refunds, identity events and duplicates around it.
//!
//! A customer is simulated lazily, one purchase ("step") at a time, so the generator only keeps a
//! few pending events per live customer. Invariant: every event a step produces has a ts at or
//! after [`CustomerSim::step_floor`], which is known before the step runs; the generator runs the
//! step before emitting anything later than that floor, so the merged stream stays in order.
//!
//! Each customer draws from its own RNG, seeded from (seed, index), so a customer's events do not
//! depend on how the streams of all customers interleave, and [`crate::customer_truths`] can
//! replay one customer alone.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Beta, Distribution, Exp1, Gamma, Poisson};

use crate::config::SynthConfig;
use crate::render::{
    self, Body, CATEGORIES, CHANNELS, COUNTRIES, FIRST_NAMES, Item, LAST_NAMES, Style, Traits, Who,
};
use crate::{CustomerTruth, SynthEvent};

pub(crate) const MILLIS_PER_DAY: i64 = 86_400_000;
/// How long before their first purchase anonymous (or legacy-id) browsing may start.
pub(crate) const PRE_BIRTH_MILLIS: i64 = 7 * MILLIS_PER_DAY;
/// Interactions leading up to a purchase fall within this window before it.
const PRE_PURCHASE_MILLIS: i64 = 3 * MILLIS_PER_DAY;
/// Share of customers who had an older id, merged by an `alias` event at their first purchase.
const ALIAS_RATE: f64 = 0.02;
/// Refunds arrive between one hour and 30 days after the purchase.
const REFUND_DELAY_MILLIS: (i64, i64) = (3_600_000, 30 * MILLIS_PER_DAY);
/// Duplicates are re-sent between one second and one hour after the original.
const DUPLICATE_DELAY_MILLIS: (i64, i64) = (1_000, 3_600_000);

/// SplitMix64 finaliser: decorrelates (seed, index) pairs into RNG seeds and id tags.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The customer id of the customer with this index.
pub fn customer_id(index: u64) -> String {
    format!("c{index:07}")
}

/// Everything shared by all customers: derived from the config once.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) seed: u64,
    /// Short per-seed tag that makes event ids of different seeds distinct.
    pub(crate) tag: u32,
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    pub(crate) currency: String,
    lambda: Gamma<f64>,
    dropout: Beta<f64>,
    nu: Gamma<f64>,
    spend_shape: f64,
    interactions: Option<Poisson<f64>>,
    refund_rate: f64,
    duplicate_rate: f64,
    segment_spec_rate: f64,
    anonymous_rate: f64,
}

impl Ctx {
    /// `cfg` must have passed [`SynthConfig::validate`].
    pub(crate) fn new(cfg: &SynthConfig) -> Self {
        let start_ms = cfg.start.timestamp_millis();
        let b = cfg.bgnbd;
        let g = cfg.gamma_gamma;
        Self {
            seed: cfg.seed,
            tag: (mix(cfg.seed) >> 32) as u32,
            start_ms,
            end_ms: start_ms + i64::from(cfg.days) * MILLIS_PER_DAY,
            currency: cfg.base_currency.clone(),
            lambda: Gamma::new(b.r, 1.0 / b.alpha).expect("validated: r, alpha > 0"),
            dropout: Beta::new(b.a, b.b).expect("validated: a, b > 0"),
            nu: Gamma::new(g.q, 1.0 / g.gamma).expect("validated: q, gamma > 0"),
            spend_shape: g.p,
            interactions: (cfg.interactions_per_purchase > 0.0).then(|| {
                Poisson::new(cfg.interactions_per_purchase).expect("validated: 0 < mean <= 1000")
            }),
            refund_rate: cfg.refund_rate,
            duplicate_rate: cfg.duplicate_rate,
            segment_spec_rate: cfg.segment_spec_rate,
            anonymous_rate: cfg.anonymous_rate,
        }
    }
}

#[derive(Debug)]
struct Pending {
    emit_ms: i64,
    ord: u32,
    event: SynthEvent,
}

#[derive(Debug)]
pub(crate) struct CustomerSim {
    pub(crate) index: u64,
    rng: Xoshiro256PlusPlus,
    lambda: f64,
    p: f64,
    nu: f64,
    birth_ms: i64,
    anonymous: bool,
    legacy: bool,
    /// Event-id counter: one per distinct event.
    seq: u32,
    /// Tie-breaker for pending events at the same millisecond, in creation order.
    ord: u32,
    purchases: u32,
    last_purchase_ms: i64,
    next_purchase_ms: Option<i64>,
    death_ms: Option<i64>,
    gross_cents: i64,
    refund_cents: i64,
    refunds: u32,
    /// Sorted by (emit_ms, ord) descending, so the next event is at the end.
    pending: Vec<Pending>,
}

impl CustomerSim {
    pub(crate) fn new(ctx: &Ctx, index: u64, birth_ms: i64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(ctx.seed ^ mix(index)));
        let lambda = ctx.lambda.sample(&mut rng);
        let p = ctx.dropout.sample(&mut rng);
        let nu = ctx.nu.sample(&mut rng);
        let anonymous = rng.random_bool(ctx.anonymous_rate);
        let legacy = !anonymous && rng.random_bool(ALIAS_RATE);
        Self {
            index,
            rng,
            lambda,
            p,
            nu,
            birth_ms,
            anonymous,
            legacy,
            seq: 0,
            ord: 0,
            purchases: 0,
            last_purchase_ms: birth_ms,
            next_purchase_ms: Some(birth_ms),
            death_ms: None,
            gross_cents: 0,
            refund_cents: 0,
            refunds: 0,
            pending: Vec::new(),
        }
    }

    /// The earliest ts the next step can produce, or `None` when no purchase is left.
    pub(crate) fn step_floor(&self, ctx: &Ctx) -> Option<i64> {
        let t = self.next_purchase_ms?;
        Some(if self.purchases == 0 {
            (t - PRE_BIRTH_MILLIS).max(ctx.start_ms)
        } else {
            (t - PRE_PURCHASE_MILLIS).max(self.last_purchase_ms + 1)
        })
    }

    /// When this customer next needs the generator's attention.
    pub(crate) fn next_time(&self, ctx: &Ctx) -> Option<i64> {
        let pending = self.pending.last().map(|p| p.emit_ms);
        match (self.step_floor(ctx), pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advances by one unit of work: runs the next step if it may produce the earliest event,
    /// else hands out the earliest pending event.
    pub(crate) fn advance(&mut self, ctx: &Ctx) -> Option<SynthEvent> {
        let pending = self.pending.last().map(|p| p.emit_ms);
        match (self.step_floor(ctx), pending) {
            (Some(floor), p) if p.is_none_or(|p| floor <= p) => {
                self.step(ctx);
                None
            }
            _ => {
                let event = self.pending.pop().map(|p| p.event);
                if self.pending.is_empty() {
                    // Most live customers wait weeks for their next purchase; do not let each
                    // keep the capacity of its busiest moment.
                    self.pending = Vec::new();
                }
                event
            }
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.next_purchase_ms.is_none() && self.pending.is_empty()
    }

    fn customer_id(&self) -> String {
        customer_id(self.index)
    }

    fn anonymous_id(&self, ctx: &Ctx) -> String {
        format!("anon-{:08x}-{:x}", ctx.tag, self.index)
    }

    fn previous_id(&self) -> String {
        format!("legacy-{}", self.index)
    }

    pub(crate) fn truth(&self, ctx: &Ctx) -> CustomerTruth {
        CustomerTruth {
            index: self.index,
            customer_id: self.customer_id(),
            anonymous_id: self.anonymous.then(|| self.anonymous_id(ctx)),
            previous_id: self.legacy.then(|| self.previous_id()),
            lambda: self.lambda,
            p: self.p,
            nu: self.nu,
            birth_millis: self.birth_ms,
            death_millis: self.death_ms,
            purchases: self.purchases,
            last_purchase_millis: self.last_purchase_ms,
            gross: self.gross_cents as f64 / 100.0,
            refunds: self.refunds,
            refunded: self.refund_cents as f64 / 100.0,
        }
    }

    /// One purchase with the interactions before it and the refund after it.
    fn step(&mut self, ctx: &Ctx) {
        let Some(t) = self.next_purchase_ms.take() else {
            return;
        };
        let cid = self.customer_id();
        if self.purchases == 0 {
            self.before_first_purchase(ctx, t, &cid);
        } else {
            let lo = (t - PRE_PURCHASE_MILLIS).max(self.last_purchase_ms + 1);
            let n = self.interaction_count(ctx);
            for _ in 0..n {
                let at = self.rng.random_range(lo..=t);
                self.interaction(ctx, at, Who::Customer(cid.clone()));
            }
        }

        let amount_cents = self.spend_cents(ctx);
        let order_id = format!("o{}-{}", self.index, self.purchases);
        let items = self.items(amount_cents);
        self.emit(
            ctx,
            t,
            Body::Purchase {
                customer_id: cid.clone(),
                order_id: order_id.clone(),
                amount_cents,
                items,
            },
        );
        self.gross_cents += amount_cents;

        if self.rng.random_bool(ctx.refund_rate) {
            let at = t + self
                .rng
                .random_range(REFUND_DELAY_MILLIS.0..=REFUND_DELAY_MILLIS.1);
            let refund = if self.rng.random_bool(0.5) {
                amount_cents
            } else {
                let share: f64 = self.rng.random_range(0.1..0.9);
                ((amount_cents as f64 * share).round() as i64).clamp(1, amount_cents)
            };
            // A refund after the end of the period is not part of the data set.
            if at < ctx.end_ms {
                self.emit(
                    ctx,
                    at,
                    Body::Refund {
                        customer_id: cid,
                        order_id,
                        amount_cents: refund,
                    },
                );
                self.refund_cents += refund;
                self.refunds += 1;
            }
        }

        let repeat = self.purchases >= 1;
        self.purchases += 1;
        self.last_purchase_ms = t;
        // BG/NBD: a customer may drop out only after a repeat purchase, never after the first.
        if repeat && self.rng.random_bool(self.p) {
            self.death_ms = Some(t);
            return;
        }
        let gap_days: f64 = Exp1.sample(&mut self.rng);
        let next = t as f64 + gap_days / self.lambda * MILLIS_PER_DAY as f64;
        if next < ctx.end_ms as f64 {
            self.next_purchase_ms = Some((next as i64).max(t + 1));
        }
    }

    /// Identity events and browsing before the first purchase at `birth`.
    fn before_first_purchase(&mut self, ctx: &Ctx, birth: i64, cid: &str) {
        let lo = (birth - PRE_BIRTH_MILLIS).max(ctx.start_ms);
        let hi = (birth - 60_000).max(lo);
        let traits = self.traits(cid);
        if self.anonymous {
            let anon = self.anonymous_id(ctx);
            let n = 1 + self.interaction_count(ctx);
            for _ in 0..n {
                let at = self.rng.random_range(lo..=hi);
                self.interaction(ctx, at, Who::Anonymous(anon.clone()));
            }
            self.emit(
                ctx,
                (birth - 30_000).max(hi),
                Body::Identify {
                    customer_id: cid.to_owned(),
                    anonymous_id: Some(anon),
                    traits,
                },
            );
        } else {
            if self.legacy {
                let prev = self.previous_id();
                let n = 1 + self.interaction_count(ctx);
                for _ in 0..n {
                    let at = self.rng.random_range(lo..=hi);
                    self.interaction(ctx, at, Who::Customer(prev.clone()));
                }
                self.emit(
                    ctx,
                    (birth - 45_000).max(hi),
                    Body::Alias {
                        customer_id: cid.to_owned(),
                        previous_id: prev,
                    },
                );
            } else {
                let lo = (birth - PRE_PURCHASE_MILLIS).max(lo);
                let n = self.interaction_count(ctx);
                for _ in 0..n {
                    let at = self.rng.random_range(lo..=hi);
                    self.interaction(ctx, at, Who::Customer(cid.to_owned()));
                }
            }
            self.emit(
                ctx,
                (birth - 30_000).max(hi),
                Body::Identify {
                    customer_id: cid.to_owned(),
                    anonymous_id: None,
                    traits,
                },
            );
        }
    }

    fn interaction_count(&mut self, ctx: &Ctx) -> u64 {
        ctx.interactions
            .as_ref()
            .map_or(0, |d| d.sample(&mut self.rng) as u64)
    }

    /// One interaction at `at`; an offer shown may be followed by the customer's answer.
    fn interaction(&mut self, ctx: &Ctx, at: i64, who: Who) {
        let roll: f64 = self.rng.random();
        let kind = match roll {
            x if x < 0.45 => "page_view",
            x if x < 0.60 => "cart_add",
            x if x < 0.72 => "email_open",
            x if x < 0.80 => "email_click",
            x if x < 0.92 => "offer_shown",
            x if x < 0.97 => "support_ticket",
            _ => "wishlist_add",
        };
        let channel = if kind.starts_with("email_") {
            "email"
        } else {
            CHANNELS[self.rng.random_range(0..CHANNELS.len())]
        };
        if kind != "offer_shown" {
            self.emit(
                ctx,
                at,
                Body::Interaction {
                    who,
                    kind,
                    offer_id: None,
                    channel,
                },
            );
            return;
        }
        let offer = format!("offer-{}", self.rng.random_range(1..=5u32));
        let answer = match self.rng.random_range(0..10u32) {
            0..=2 => Some("offer_accepted"),
            3..=7 => Some("offer_declined"),
            _ => None,
        };
        self.emit(
            ctx,
            at,
            Body::Interaction {
                who: who.clone(),
                kind,
                offer_id: Some(offer.clone()),
                channel,
            },
        );
        if let Some(answer) = answer {
            let later = at + self.rng.random_range(1_000..=600_000);
            self.emit(
                ctx,
                later,
                Body::Interaction {
                    who,
                    kind: answer,
                    offer_id: Some(offer),
                    channel,
                },
            );
        }
    }

    /// Gamma-Gamma: z ~ Gamma(shape p, rate nu), in whole cents and at least one cent.
    fn spend_cents(&mut self, ctx: &Ctx) -> i64 {
        let z = Gamma::new(ctx.spend_shape, 1.0 / self.nu)
            .map(|d| d.sample(&mut self.rng))
            .unwrap_or(ctx.spend_shape / self.nu);
        // Far beyond any realistic order; keeps the cents within i64 and under max_amount.
        (z.min(1e8) * 100.0).round().max(1.0) as i64
    }

    /// 1 to 3 items whose quantity × unit_price add up to exactly `amount_cents`; the last item
    /// (quantity 1) absorbs the rounding.
    fn items(&mut self, amount_cents: i64) -> Vec<Item> {
        let max_items = if amount_cents >= 300 { 3 } else { 1 };
        let n = self.rng.random_range(1..=max_items);
        let mut left = amount_cents;
        let mut items = Vec::with_capacity(n);
        for i in 0..n {
            let category = CATEGORIES[self.rng.random_range(0..CATEGORIES.len())];
            let sku = format!(
                "SKU-{}-{:03}",
                &category[..3],
                self.rng.random_range(0..200u32)
            );
            if i + 1 == n {
                items.push(Item {
                    sku,
                    category,
                    quantity: 1,
                    unit_price_cents: left,
                });
                break;
            }
            // Leave at least one cent per remaining item.
            let share: f64 = self.rng.random_range(0.2..0.6);
            let line = ((left as f64 * share) as i64).clamp(1, left - (n - i - 1) as i64);
            let quantity = self.rng.random_range(1..=3u32);
            let unit = (line / i64::from(quantity)).max(1);
            let quantity = if unit * i64::from(quantity) > left - (n - i - 1) as i64 {
                1
            } else {
                quantity
            };
            left -= unit * i64::from(quantity);
            items.push(Item {
                sku,
                category,
                quantity,
                unit_price_cents: unit,
            });
        }
        items
    }

    fn traits(&mut self, cid: &str) -> Traits {
        let first = FIRST_NAMES[self.rng.random_range(0..FIRST_NAMES.len())];
        let last = LAST_NAMES[self.rng.random_range(0..LAST_NAMES.len())];
        Traits {
            email: format!("{cid}@example.com"),
            name: format!("{first} {last}"),
            country: COUNTRIES[self.rng.random_range(0..COUNTRIES.len())],
        }
    }

    /// Renders an event, queues it, and maybe queues an exact duplicate shortly after.
    fn emit(&mut self, ctx: &Ctx, ts: i64, body: Body) {
        // Every draw happens whatever the rates, so changing a rendering rate does not change
        // the process itself.
        let style = Style {
            segment: self.rng.random_bool(ctx.segment_spec_rate),
            amount_as_string: self.rng.random_bool(0.5),
            with_currency: self.rng.random_bool(0.7),
            revenue: self.rng.random_bool(0.5),
        };
        let duplicate = self.rng.random_bool(ctx.duplicate_rate);
        let dup_delay = self
            .rng
            .random_range(DUPLICATE_DELAY_MILLIS.0..=DUPLICATE_DELAY_MILLIS.1);

        let event_id = format!("{:08x}-{:x}-{:x}", ctx.tag, self.index, self.seq);
        self.seq += 1;
        let payload = render::render(&event_id, ts, &body, style, &ctx.currency);
        let event = SynthEvent {
            ts_millis: ts,
            key: body.key().to_owned(),
            payload,
            expected_reject: None,
            duplicate: false,
        };
        if duplicate {
            let copy = SynthEvent {
                duplicate: true,
                ..event.clone()
            };
            self.queue(ts + dup_delay, copy);
        }
        self.queue(ts, event);
    }

    fn queue(&mut self, emit_ms: i64, event: SynthEvent) {
        let ord = self.ord;
        self.ord += 1;
        // Descending order; equal times keep creation order (smaller ord pops first).
        let pos = self
            .pending
            .partition_point(|p| (p.emit_ms, p.ord) > (emit_ms, ord));
        self.pending.insert(
            pos,
            Pending {
                emit_ms,
                ord,
                event,
            },
        );
    }
}
