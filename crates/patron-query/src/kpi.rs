//! KPIs, cohort retention, objective progress and the daily KPI history (DESIGN.md, "KPIs").
//!
//! Everything here is a pure function of one [`Snapshot`] (its `customers` table, the daily
//! totals and the [`PopulationStats`] gathered in the same scan) and of config. The API caches
//! the result with its scoring view; `patron query` gets the same figures through `kpi_daily`.
//!
//! Definitions, as of `as_of` (the snapshot's clock):
//! - `customers`: profiles with frequency ≥ 1; `prospects`: profiles with none.
//! - `active_customers`: `as_of − last_purchase ≤ [kpi] active_window`.
//! - `*_30d`: the daily totals of the 30 UTC days ending with as_of's day (that day included,
//!   however far into it as_of is). `revenue` is gross purchases; refunds are apart.
//! - `avg_order_value`: gross purchases / purchases, over every current customer, all time.
//! - `repeat_purchase_rate`: customers with frequency ≥ 2 / customers.
//! - `retention_rate`: of the customers with a purchase in the calendar month before as_of's,
//!   the share with one in as_of's month too (from the monthly activity bitmaps); `churn_rate`
//!   is 1 − that.
//! - `predicted_churn_rate`: share of scored customers with `p_alive < 0.5` (null without a
//!   model). `avg_clv`, `total_clv`: mean and sum of `clv` (null without a model).
//! - `conversion_rate`: customers / (customers + prospects).
//! - `offer_acceptance_rate_30d`: offers accepted / offers shown over the 30-day window.
//! - `offer_uplift`: treated minus holdout conversion (see `snapshot::offer_uplift`); null until
//!   both groups have members.
//! - A rate whose denominator is empty is null.
//!
//! Exactness: all of the above are exact for the stored state. Identity merges rewrite history
//! (a merged profile's first purchase moves), so `new_customers` per day and the cohort matrix
//! reflect the identities as they are now, not as they were on that day.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType, UInt8Type};
use patron_core::config::toml_like::NumberOrString;
use patron_core::config::{ObjectiveConfig, PatronConfig};
use patron_core::rfm::PROSPECT;
use patron_core::state::CustomerState;
use patron_core::time::{MILLIS_PER_DAY, Millis, day_index, month_index, parse_rfc3339};
use patron_store::DailyTotals;
use serde::Serialize;

use crate::Snapshot;

/// Length of the rolling `_30d` windows, in UTC days.
pub const WINDOW_DAYS: i32 = 30;

/// `p_alive` below this counts as predicted churn.
pub const CHURN_P_ALIVE: f64 = 0.5;

/// Aggregates of the stored states that the `customers` table does not carry: exact gross
/// money and the monthly activity bitmaps. Filled by [`Snapshot::build`] in its one scan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PopulationStats {
    /// Σ gross purchases of the customers, in micro-units.
    pub gross_micros: i128,
    /// Σ frequency of the customers.
    pub orders: u64,
    /// First-purchase month (months since 1970-01) → its cohort.
    pub cohorts: BTreeMap<i32, CohortCounts>,
    /// Month → (customers with a purchase in it, of those, customers with one in the next month).
    pub month_pairs: BTreeMap<i32, (u64, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CohortCounts {
    pub customers: u64,
    /// `active[k]`: customers of the cohort with a purchase k months after the cohort month.
    pub active: Vec<u64>,
}

impl PopulationStats {
    pub fn add(&mut self, s: &CustomerState) {
        let Some(first) = s.first_purchase.filter(|_| s.frequency > 0) else {
            return;
        };
        self.gross_micros += i128::from(s.gross.micros());
        self.orders += u64::from(s.frequency);
        let cohort_month = month_index(first);
        let cohort = self.cohorts.entry(cohort_month).or_default();
        cohort.customers += 1;
        for m in s.activity.months() {
            // Bit 0 of the bitmap is the first purchase's month, so k ≥ 0 always holds.
            if let Ok(k) = usize::try_from(m - cohort_month) {
                if cohort.active.len() <= k {
                    cohort.active.resize(k + 1, 0);
                }
                cohort.active[k] += 1;
            }
            let pair = self.month_pairs.entry(m).or_default();
            pair.0 += 1;
            if s.activity.contains(m + 1) {
                pair.1 += 1;
            }
        }
    }
}

/// The config a KPI computation needs.
#[derive(Debug, Clone)]
pub struct KpiOptions {
    pub active_window_ms: i64,
    /// Every RFM segment name (the map's, then `Prospect`), reported even when empty.
    pub segment_names: Vec<String>,
}

impl KpiOptions {
    pub fn from_config(config: &PatronConfig) -> Self {
        Self {
            active_window_ms: i64::try_from(config.kpi.active_window.as_millis())
                .unwrap_or(i64::MAX),
            segment_names: config.rfm.segment_map().segment_names(),
        }
    }
}

/// The KPI set of `GET /v1/kpis`. Money in base currency, rates as fractions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KpiSet {
    #[serde(skip)]
    pub as_of: Option<Millis>,
    pub customers: u64,
    pub prospects: u64,
    pub active_customers: u64,
    pub new_customers_30d: i64,
    pub revenue_30d: f64,
    pub orders_30d: u64,
    pub avg_order_value: Option<f64>,
    pub repeat_purchase_rate: Option<f64>,
    pub retention_rate: Option<f64>,
    pub churn_rate: Option<f64>,
    pub predicted_churn_rate: Option<f64>,
    pub conversion_rate: Option<f64>,
    pub offer_acceptance_rate_30d: Option<f64>,
    pub offer_uplift: Option<f64>,
    pub avg_clv: Option<f64>,
    pub total_clv: Option<f64>,
    /// Profiles per `rfm_segment` (Prospect included).
    pub segments: BTreeMap<String, u64>,
    /// `rfm_grid[r - 1][f - 1]`: customers with that R and F score.
    pub rfm_grid: [[u64; 5]; 5],
}

/// The KPIs an objective can track: every numeric field of [`KpiSet`].
pub const OBJECTIVE_KPIS: [&str; 16] = [
    "customers",
    "prospects",
    "active_customers",
    "new_customers_30d",
    "revenue_30d",
    "orders_30d",
    "avg_order_value",
    "repeat_purchase_rate",
    "retention_rate",
    "churn_rate",
    "predicted_churn_rate",
    "conversion_rate",
    "offer_acceptance_rate_30d",
    "offer_uplift",
    "avg_clv",
    "total_clv",
];

impl KpiSet {
    /// The value of the KPI called `name`: `None` for an unknown name, `Some(None)` when the
    /// KPI is null.
    pub fn value(&self, name: &str) -> Option<Option<f64>> {
        Some(match name {
            "customers" => Some(self.customers as f64),
            "prospects" => Some(self.prospects as f64),
            "active_customers" => Some(self.active_customers as f64),
            "new_customers_30d" => Some(self.new_customers_30d as f64),
            "revenue_30d" => Some(self.revenue_30d),
            "orders_30d" => Some(self.orders_30d as f64),
            "avg_order_value" => self.avg_order_value,
            "repeat_purchase_rate" => self.repeat_purchase_rate,
            "retention_rate" => self.retention_rate,
            "churn_rate" => self.churn_rate,
            "predicted_churn_rate" => self.predicted_churn_rate,
            "conversion_rate" => self.conversion_rate,
            "offer_acceptance_rate_30d" => self.offer_acceptance_rate_30d,
            "offer_uplift" => self.offer_uplift,
            "avg_clv" => self.avg_clv,
            "total_clv" => self.total_clv,
            _ => return None,
        })
    }
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den > 0.0).then(|| num / den)
}

fn micros_to_f64(m: i128) -> f64 {
    m as f64 / 1e6
}

/// Every KPI of the snapshot, as of its `as_of`.
pub fn compute(snapshot: &Snapshot, opts: &KpiOptions) -> KpiSet {
    let as_of = snapshot.as_of;
    let mut k = KpiSet {
        as_of,
        segments: opts
            .segment_names
            .iter()
            .map(|n| (n.clone(), 0))
            .chain([(PROSPECT.to_owned(), 0)])
            .collect(),
        offer_uplift: snapshot.offer_uplift,
        ..KpiSet::default()
    };
    let (mut repeat, mut scored, mut churning) = (0u64, 0u64, 0u64);
    let (mut clv_sum, mut clv_n) = (0.0f64, 0u64);
    for b in &snapshot.customers {
        let col = |name: &str| b.column_by_name(name).expect("customers column");
        let freq = col("frequency").as_primitive::<Int64Type>();
        let last = col("last_purchase").as_primitive::<TimestampMillisecondType>();
        let p_alive = col("p_alive").as_primitive::<Float64Type>();
        let clv = col("clv").as_primitive::<Float64Type>();
        let seg = col("rfm_segment").as_string::<i32>();
        let r = col("r_score").as_primitive::<UInt8Type>();
        let f = col("f_score").as_primitive::<UInt8Type>();
        for i in 0..b.num_rows() {
            *k.segments.entry(seg.value(i).to_owned()).or_default() += 1;
            if freq.value(i) < 1 {
                k.prospects += 1;
                continue;
            }
            k.customers += 1;
            if freq.value(i) >= 2 {
                repeat += 1;
            }
            if let Some(t) = as_of
                && last.is_valid(i)
                && t - last.value(i) <= opts.active_window_ms
            {
                k.active_customers += 1;
            }
            if r.is_valid(i) && f.is_valid(i) {
                let (ri, fi) = (usize::from(r.value(i)), usize::from(f.value(i)));
                if (1..=5).contains(&ri) && (1..=5).contains(&fi) {
                    k.rfm_grid[ri - 1][fi - 1] += 1;
                }
            }
            if p_alive.is_valid(i) {
                scored += 1;
                if p_alive.value(i) < CHURN_P_ALIVE {
                    churning += 1;
                }
            }
            if clv.is_valid(i) {
                clv_sum += clv.value(i);
                clv_n += 1;
            }
        }
    }
    let pop = &snapshot.population;
    k.avg_order_value = ratio(micros_to_f64(pop.gross_micros), pop.orders as f64);
    k.repeat_purchase_rate = ratio(repeat as f64, k.customers as f64);
    k.conversion_rate = ratio(k.customers as f64, (k.customers + k.prospects) as f64);
    k.predicted_churn_rate = ratio(churning as f64, scored as f64);
    if clv_n > 0 {
        k.total_clv = Some(clv_sum);
        k.avg_clv = Some(clv_sum / clv_n as f64);
    }
    if let Some(t) = as_of {
        let month = month_index(t);
        if let Some(&(active, kept)) = pop.month_pairs.get(&(month - 1)) {
            k.retention_rate = ratio(kept as f64, active as f64);
            k.churn_rate = k.retention_rate.map(|r| 1.0 - r);
        }
        let series = DailySeries::new(&snapshot.daily);
        let w = series.window(day_index(t));
        k.new_customers_30d = w.new_customers;
        k.revenue_30d = micros_to_f64(w.revenue_micros);
        k.orders_30d = w.orders;
        k.offer_acceptance_rate_30d = ratio(w.offers_accepted as f64, w.offers_shown as f64);
    }
    k
}

/// One row of the cohort retention matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CohortRow {
    /// The first-purchase month, `YYYY-MM`.
    pub cohort: String,
    pub customers: u64,
    /// `retention[k]`: share of the cohort with a purchase k months after its first month,
    /// for k = 0 (always 1) up to as_of's month.
    pub retention: Vec<f64>,
}

/// `YYYY-MM` of a month index (months since 1970-01).
pub fn month_label(month: i32) -> String {
    format!(
        "{:04}-{:02}",
        1970 + month.div_euclid(12),
        month.rem_euclid(12) + 1
    )
}

/// The cohort matrix: first-purchase month × months since, up to as_of's month.
pub fn cohorts(stats: &PopulationStats, as_of: Option<Millis>) -> Vec<CohortRow> {
    let Some(t) = as_of else {
        return Vec::new();
    };
    let now = month_index(t);
    stats
        .cohorts
        .range(..=now)
        .filter(|(_, c)| c.customers > 0)
        .map(|(&month, c)| CohortRow {
            cohort: month_label(month),
            customers: c.customers,
            retention: (0..=(now - month) as usize)
                .map(|k| c.active.get(k).copied().unwrap_or(0) as f64 / c.customers as f64)
                .collect(),
        })
        .collect()
}

/// One day of the KPI history: that day's totals, and the KPIs that can be computed exactly for
/// the end of that day from the daily totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayKpis {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    #[serde(skip)]
    pub day: i32,
    pub revenue: f64,
    pub refunded: f64,
    pub orders: u64,
    pub refunds: u64,
    pub new_customers: i64,
    pub interactions: u64,
    pub offers_shown: u64,
    pub offers_accepted: u64,
    pub offers_declined: u64,
    /// That day's revenue / orders.
    pub avg_order_value: Option<f64>,
    /// Customers whose first purchase is on or before this day.
    pub customers: i64,
    pub new_customers_30d: i64,
    pub revenue_30d: f64,
    pub orders_30d: u64,
    pub offer_acceptance_rate_30d: Option<f64>,
}

/// Sums over a window of days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowTotals {
    pub new_customers: i64,
    pub revenue_micros: i128,
    pub orders: u64,
    pub offers_shown: u64,
    pub offers_accepted: u64,
}

/// The daily totals in day order with prefix sums, for rolling windows in O(log n).
pub struct DailySeries<'a> {
    days: Vec<(i32, &'a DailyTotals)>,
    /// `prefix[i]`: sums over `days[..i]`.
    prefix: Vec<WindowTotals>,
}

impl<'a> DailySeries<'a> {
    pub fn new(daily: &'a [(i32, DailyTotals)]) -> Self {
        let mut days: Vec<(i32, &DailyTotals)> = daily.iter().map(|(d, t)| (*d, t)).collect();
        days.sort_by_key(|(d, _)| *d);
        let mut prefix = Vec::with_capacity(days.len() + 1);
        let mut acc = WindowTotals::default();
        prefix.push(acc);
        for (_, t) in &days {
            acc.new_customers += t.new_customers;
            acc.revenue_micros += i128::from(t.revenue.micros());
            acc.orders += t.orders;
            acc.offers_shown += t.offers_shown;
            acc.offers_accepted += t.offers_accepted;
            prefix.push(acc);
        }
        Self { days, prefix }
    }

    pub fn first_day(&self) -> Option<i32> {
        self.days.first().map(|(d, _)| *d)
    }

    /// Sums over every day up to and including `day`.
    fn upto(&self, day: i32) -> WindowTotals {
        self.prefix[self.days.partition_point(|(d, _)| *d <= day)]
    }

    /// Sums over the [`WINDOW_DAYS`] days ending with `day`.
    pub fn window(&self, day: i32) -> WindowTotals {
        let (hi, lo) = (self.upto(day), self.upto(day - WINDOW_DAYS));
        WindowTotals {
            new_customers: hi.new_customers - lo.new_customers,
            revenue_micros: hi.revenue_micros - lo.revenue_micros,
            orders: hi.orders - lo.orders,
            offers_shown: hi.offers_shown - lo.offers_shown,
            offers_accepted: hi.offers_accepted - lo.offers_accepted,
        }
    }

    /// The history row of `day` (zero totals when nothing happened that day).
    pub fn day(&self, day: i32) -> DayKpis {
        let zero = DailyTotals::default();
        let t = match self.days.binary_search_by_key(&day, |(d, _)| *d) {
            Ok(i) => self.days[i].1,
            Err(_) => &zero,
        };
        let w = self.window(day);
        DayKpis {
            date: day_label(day),
            day,
            revenue: t.revenue.as_f64(),
            refunded: t.refunded.as_f64(),
            orders: t.orders,
            refunds: t.refunds,
            new_customers: t.new_customers,
            interactions: t.interactions,
            offers_shown: t.offers_shown,
            offers_accepted: t.offers_accepted,
            offers_declined: t.offers_declined,
            avg_order_value: ratio(t.revenue.as_f64(), t.orders as f64),
            customers: self.upto(day).new_customers,
            new_customers_30d: w.new_customers,
            revenue_30d: micros_to_f64(w.revenue_micros),
            orders_30d: w.orders,
            offer_acceptance_rate_30d: ratio(w.offers_accepted as f64, w.offers_shown as f64),
        }
    }

    /// One row per stored day, in day order (the `kpi_daily` table).
    pub fn stored_days(&self) -> Vec<DayKpis> {
        self.days.iter().map(|(d, _)| self.day(*d)).collect()
    }
}

/// `YYYY-MM-DD` of a day index (days since 1970-01-01).
pub fn day_label(day: i32) -> String {
    chrono::DateTime::from_timestamp_millis(i64::from(day) * MILLIS_PER_DAY)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| day.to_string())
}

/// The last `days` days up to as_of's day, every day present (zeros where nothing happened),
/// starting no earlier than the first day with data.
pub fn history(snapshot: &Snapshot, days: u32) -> Vec<DayKpis> {
    let Some(t) = snapshot.as_of else {
        return Vec::new();
    };
    let series = DailySeries::new(&snapshot.daily);
    let Some(first) = series.first_day() else {
        return Vec::new();
    };
    let end = day_index(t);
    let start = (end - i32::try_from(days).unwrap_or(i32::MAX) + 1).max(first);
    (start..=end).map(|d| series.day(d)).collect()
}

/// An objective with its target resolved and its dates parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedObjective {
    pub target: f64,
    pub start: Option<Millis>,
    pub deadline: Millis,
}

/// RFC 3339, or `YYYY-MM-DD` (midnight UTC).
pub fn parse_time(text: &str) -> Option<Millis> {
    parse_rfc3339(text).or_else(|| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc().timestamp_millis())
    })
}

/// Checks one `[[objectives]]` entry; the error names it and the key at fault.
pub fn resolve_objective(o: &ObjectiveConfig) -> Result<ResolvedObjective, String> {
    let at = |key: &str, msg: String| format!("[[objectives]] `{}`: {key}: {msg}", o.name);
    if !OBJECTIVE_KPIS.contains(&o.kpi.as_str()) {
        return Err(at(
            "kpi",
            format!(
                "unknown KPI `{}` (one of: {})",
                o.kpi,
                OBJECTIVE_KPIS.join(", ")
            ),
        ));
    }
    if !o.baseline.is_finite() {
        return Err(at("baseline", "must be a finite number".into()));
    }
    let target = match &o.target {
        NumberOrString::Number(v) => *v,
        NumberOrString::Text(text) => {
            let t = text.trim();
            match t.strip_suffix('%') {
                Some(pct) => {
                    let p: f64 = pct.trim().parse().map_err(|_| {
                        at(
                            "target",
                            format!("`{text}` is not a relative change like \"-25%\""),
                        )
                    })?;
                    o.baseline * (1.0 + p / 100.0)
                }
                None => t.parse().map_err(|_| {
                    at(
                        "target",
                        format!("`{text}` is neither a number nor a change like \"-25%\""),
                    )
                })?,
            }
        }
    };
    if !target.is_finite() {
        return Err(at("target", "must be finite".into()));
    }
    let deadline = parse_time(&o.deadline).ok_or_else(|| {
        at(
            "deadline",
            format!("`{}` is not RFC 3339 or YYYY-MM-DD", o.deadline),
        )
    })?;
    let start = match &o.start {
        Some(s) => Some(
            parse_time(s)
                .ok_or_else(|| at("start", format!("`{s}` is not RFC 3339 or YYYY-MM-DD")))?,
        ),
        None => None,
    };
    if start.is_some_and(|s| s >= deadline) {
        return Err(at("start", "must be before the deadline".into()));
    }
    Ok(ResolvedObjective {
        target,
        start,
        deadline,
    })
}

/// Checks every `[[objectives]]` entry (for config loading).
pub fn validate_objectives(objectives: &[ObjectiveConfig]) -> Result<(), String> {
    objectives
        .iter()
        .try_for_each(|o| resolve_objective(o).map(|_| ()))
}

/// Where one objective stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectiveStatus {
    pub name: String,
    pub kpi: String,
    /// The KPI now; null when the KPI is null.
    pub current: Option<f64>,
    pub baseline: f64,
    /// The absolute target (a relative one resolved against the baseline).
    pub target: Option<f64>,
    /// (current − baseline) / (target − baseline): 0 at the baseline, 1 at the target; not
    /// clamped. Null when target = baseline.
    pub progress: Option<f64>,
    /// Whether current is at or past `expected` in the direction of the target.
    pub on_track: Option<bool>,
    /// The value a straight line from the baseline at `start` to the target at `deadline`
    /// reaches at as_of.
    pub expected: Option<f64>,
    /// RFC 3339; the configured start, else the first day with data.
    pub start: Option<String>,
    /// RFC 3339.
    pub deadline: Option<String>,
    /// Why the entry could not be evaluated (an invalid config entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Progress of every objective. `data_start` is the start of the first day with data, the
/// line's start for objectives without `start`.
pub fn objectives(
    configs: &[ObjectiveConfig],
    kpis: &KpiSet,
    data_start: Option<Millis>,
) -> Vec<ObjectiveStatus> {
    configs
        .iter()
        .map(|o| {
            let current = kpis.value(&o.kpi).flatten();
            let mut s = ObjectiveStatus {
                name: o.name.clone(),
                kpi: o.kpi.clone(),
                current,
                baseline: o.baseline,
                target: None,
                progress: None,
                on_track: None,
                expected: None,
                start: None,
                deadline: None,
                error: None,
            };
            let r = match resolve_objective(o) {
                Ok(r) => r,
                Err(e) => {
                    s.error = Some(e);
                    return s;
                }
            };
            let to_text = patron_core::time::to_rfc3339;
            s.target = Some(r.target);
            s.deadline = Some(to_text(r.deadline));
            let start = r.start.or(data_start);
            s.start = start.map(to_text);
            let span = r.target - o.baseline;
            s.progress = current
                .filter(|_| span != 0.0)
                .map(|c| (c - o.baseline) / span);
            if let (Some(now), Some(start)) = (kpis.as_of, start) {
                let frac = if r.deadline > start {
                    ((now - start) as f64 / (r.deadline - start) as f64).clamp(0.0, 1.0)
                } else {
                    1.0
                };
                let expected = o.baseline + span * frac;
                s.expected = Some(expected);
                s.on_track = current.map(|c| {
                    if span < 0.0 {
                        c <= expected
                    } else {
                        c >= expected
                    }
                });
            }
            s
        })
        .collect()
}

/// The start of the first day with daily totals.
pub fn data_start(snapshot: &Snapshot) -> Option<Millis> {
    snapshot
        .daily
        .iter()
        .map(|(d, _)| *d)
        .min()
        .map(|d| i64::from(d) * MILLIS_PER_DAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use patron_core::money::Money;
    use patron_core::time::parse_rfc3339;

    fn ms(text: &str) -> Millis {
        parse_time(text).unwrap()
    }

    fn state(purchases: &[(&str, f64)]) -> CustomerState {
        let mut s = CustomerState::default();
        for (ts, amount) in purchases {
            let t = parse_rfc3339(ts).unwrap();
            s.frequency += 1;
            s.gross = s.gross.saturating_add(Money::from_f64(*amount).unwrap());
            s.first_purchase = Some(s.first_purchase.map_or(t, |f| f.min(t)));
            s.last_purchase = Some(s.last_purchase.map_or(t, |l| l.max(t)));
            s.activity.set(month_index(t));
        }
        s
    }

    #[test]
    fn cohorts_and_month_pairs_from_the_bitmaps() {
        let mut stats = PopulationStats::default();
        // January cohort: one active Jan+Feb+Apr, one only in January.
        stats.add(&state(&[
            ("2025-01-05T00:00:00Z", 10.0),
            ("2025-02-05T00:00:00Z", 20.0),
            ("2025-04-05T00:00:00Z", 30.0),
        ]));
        stats.add(&state(&[("2025-01-20T00:00:00Z", 5.0)]));
        // February cohort: Feb and Mar.
        stats.add(&state(&[
            ("2025-02-10T00:00:00Z", 1.0),
            ("2025-03-10T00:00:00Z", 1.0),
        ]));
        stats.add(&CustomerState::default());
        assert_eq!(stats.orders, 6);
        assert_eq!(stats.gross_micros, 67_000_000);
        let rows = cohorts(&stats, Some(ms("2025-04-30T00:00:00Z")));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].cohort, "2025-01");
        assert_eq!(rows[0].customers, 2);
        assert_eq!(rows[0].retention, vec![1.0, 0.5, 0.0, 0.5]);
        assert_eq!(rows[1].cohort, "2025-02");
        assert_eq!(rows[1].retention, vec![1.0, 1.0, 0.0]);
        // January: 2 active, 1 also in February. February: 2 active, 1 also in March.
        let jan = month_index(ms("2025-01-01"));
        assert_eq!(stats.month_pairs[&jan], (2, 1));
        assert_eq!(stats.month_pairs[&(jan + 1)], (2, 1));
        assert_eq!(stats.month_pairs[&(jan + 3)], (1, 0));
        // A cohort after as_of's month is not reported.
        assert_eq!(cohorts(&stats, Some(ms("2025-01-31T00:00:00Z"))).len(), 1);
    }

    #[test]
    fn rolling_windows_cover_thirty_days_ending_on_the_day() {
        let day = |d: i32, orders: u64, revenue: f64, new: i64| {
            (
                d,
                DailyTotals {
                    orders,
                    revenue: Money::from_f64(revenue).unwrap(),
                    new_customers: new,
                    offers_shown: orders,
                    offers_accepted: 1,
                    ..DailyTotals::default()
                },
            )
        };
        let daily = vec![
            day(100, 2, 10.0, 1),
            day(129, 3, 5.5, 2),
            day(130, 1, 1.0, 0),
        ];
        let s = DailySeries::new(&daily);
        // Day 129's window is 100..=129; day 130's is 101..=130.
        assert_eq!(s.window(129).orders, 5);
        assert_eq!(s.window(130).orders, 4);
        assert_eq!(s.window(130).revenue_micros, 6_500_000);
        let row = s.day(130);
        assert_eq!(row.customers, 3);
        assert_eq!(row.new_customers_30d, 2);
        assert_eq!(row.offer_acceptance_rate_30d, Some(0.5));
        let empty = s.day(115);
        assert_eq!((empty.orders, empty.customers), (0, 1));
        assert_eq!(empty.avg_order_value, None);
        assert_eq!(s.stored_days().len(), 3);
        assert_eq!(day_label(0), "1970-01-01");
        assert_eq!(month_label(12 * 55 + 2), "2025-03");
    }

    fn objective(kpi: &str, baseline: f64, target: NumberOrString) -> ObjectiveConfig {
        ObjectiveConfig {
            name: "o".into(),
            kpi: kpi.into(),
            baseline,
            target,
            deadline: "2025-12-31".into(),
            start: Some("2025-01-01".into()),
        }
    }

    #[test]
    fn objectives_resolve_relative_targets_and_compare_with_the_line() {
        let kpis = KpiSet {
            as_of: Some(ms("2025-07-02T00:00:00Z")),
            churn_rate: Some(0.36),
            customers: 150,
            ..KpiSet::default()
        };
        // Halfway (182 of 364 days): the line is at 0.4 − 0.1 · 0.5 = 0.35.
        let o = objective("churn_rate", 0.4, NumberOrString::Text("-25%".into()));
        let s = &objectives(&[o], &kpis, None)[0];
        assert!((s.target.unwrap() - 0.3).abs() < 1e-12);
        assert!((s.expected.unwrap() - 0.35).abs() < 1e-12);
        assert!((s.progress.unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(s.on_track, Some(false));
        let up = objective("customers", 100.0, NumberOrString::Number(200.0));
        let s = &objectives(&[up], &kpis, None)[0];
        assert_eq!(s.progress, Some(0.5));
        assert_eq!(s.on_track, Some(true));
        assert_eq!(s.deadline.as_deref(), Some("2025-12-31T00:00:00Z"));
        // Unknown KPIs and bad targets are config errors that name the entry and key.
        let bad = objective("nope", 1.0, NumberOrString::Number(2.0));
        assert!(validate_objectives(&[bad]).unwrap_err().contains("kpi"));
        let bad = objective("churn_rate", 1.0, NumberOrString::Text("less".into()));
        assert!(
            validate_objectives(std::slice::from_ref(&bad))
                .unwrap_err()
                .contains("target")
        );
        assert!(objectives(&[bad], &kpis, None)[0].error.is_some());
    }
}
