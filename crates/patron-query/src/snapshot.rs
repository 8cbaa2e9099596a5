//! The SQL tables, derived from one read snapshot as of one instant.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Builder, Float64Builder, Int64Array,
    Int64Builder, ListBuilder, RecordBatch, StringArray, StringBuilder, UInt8Builder, UInt64Array,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimestampMillisecondType,
    UInt64Type,
};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, Volatility};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::prelude::SessionContext;
use patron_core::clv::{ClvModel, ClvOptions};
use patron_core::config::{Clock, PatronConfig, SegmentConfig};
use patron_core::money::Money;
use patron_core::rfm::{PROSPECT, Quintiles, RfmDistribution, RfmMap};
use patron_core::state::CustomerState;
use patron_core::time::{MILLIS_PER_DAY, Millis, now_millis};
use patron_store::scan::{BaseColumns, timestamp_type};
use patron_store::{DailyTotals, Store, StoreReader};

use crate::kpi::{DailySeries, DayKpis, PopulationStats};
use crate::spill::BatchSink;
use crate::{QueryError, Result};

/// What a snapshot is computed against.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Overrides the configured clock.
    pub as_of: Option<Millis>,
    pub clock: Clock,
    pub rfm_map: RfmMap,
    pub segments: Vec<SegmentConfig>,
    /// The fitted model and scoring options; CLV columns are null without one.
    pub clv: Option<(ClvModel, ClvOptions)>,
    pub batch_rows: usize,
    /// Also rank every customer's categories by decayed spend as of the snapshot's clock (the
    /// API's scoring views, for offers' affinity); `None` skips the work.
    pub top_categories: Option<TopCategoryOptions>,
    /// Keep the per-customer tables in unnamed files in this directory, mapped, instead of on
    /// the heap ([`crate::spill`]); `None` keeps them in memory.
    pub spill_dir: Option<PathBuf>,
}

/// How [`CustomerState::top_categories`] is asked, as `[engagement]` configures it.
#[derive(Debug, Clone, Copy)]
pub struct TopCategoryOptions {
    pub k: usize,
    pub half_life_ms: f64,
}

impl SnapshotOptions {
    pub fn from_config(config: &PatronConfig) -> Self {
        Self {
            as_of: None,
            clock: config.scoring.clock,
            rfm_map: config.rfm.segment_map(),
            segments: config.segments.clone(),
            clv: None,
            batch_rows: 65_536,
            top_categories: None,
            spill_dir: None,
        }
    }
}

/// The tables as of `as_of`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub as_of: Option<Millis>,
    pub customers: Vec<RecordBatch>,
    /// Bytes of the file [`Self::customers`] maps when it was spilled ([`crate::spill`]), 0
    /// when it is on the heap.
    pub customers_spilled: usize,
    /// The population the RFM scores of [`Self::customers`] rank against (every customer with
    /// a purchase), for scoring single profiles alike.
    pub distribution: RfmDistribution,
    pub segments: RecordBatch,
    pub kpi_daily: RecordBatch,
    pub offer_stats: RecordBatch,
    /// Conversion of treated minus holdout customers, over the catalog's offers with a holdout
    /// (`None` until both groups have members).
    pub offer_uplift: Option<f64>,
    /// The daily totals, by day index (the exact money behind `kpi_daily`).
    pub daily: Vec<(i32, DailyTotals)>,
    /// Aggregates of the stored states for the KPIs (activity bitmaps, exact gross).
    pub population: PopulationStats,
    /// The stored record digest behind every `customers` row, by (batch, row).
    pub digests: ProfileDigests,
    /// Every row's top categories, when [`SnapshotOptions::top_categories`] asked for them.
    pub top_categories: Option<TopCategories>,
}

/// Per `customers` row, its customer's top `k` categories by decayed spend as of the
/// snapshot's clock, best first: [`CustomerState::top_categories`] for every row at once.
#[derive(Clone)]
pub struct TopCategories {
    k: usize,
    /// Category names; rows hold indexes into it.
    names: Vec<String>,
    /// Per batch, `k` slots per row, [`TopCategories::NONE`] where a customer has fewer.
    slots: Vec<Vec<u32>>,
}

impl TopCategories {
    const NONE: u32 = u32::MAX;

    fn new(k: usize) -> Self {
        Self {
            k,
            names: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// The row's categories, best first.
    pub fn of(&self, batch: usize, row: usize) -> impl Iterator<Item = &str> {
        let slots = self
            .slots
            .get(batch)
            .and_then(|b| b.get(row * self.k..(row + 1) * self.k))
            .unwrap_or_default();
        slots
            .iter()
            .take_while(|&&i| i != Self::NONE)
            .map(|&i| self.names[i as usize].as_str())
    }
}

impl std::fmt::Debug for TopCategories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TopCategories(k {}, {} names)", self.k, self.names.len())
    }
}

/// Builds [`TopCategories`] while the states are scanned.
struct TopCategoryScan {
    options: TopCategoryOptions,
    at: Millis,
    index: std::collections::HashMap<String, u32>,
    out: TopCategories,
}

impl TopCategoryScan {
    fn push(&mut self, batch: usize, state: &CustomerState) {
        if self.out.slots.len() <= batch {
            self.out.slots.resize_with(batch + 1, Vec::new);
        }
        let slots = &mut self.out.slots[batch];
        let start = slots.len();
        slots.resize(start + self.options.k, TopCategories::NONE);
        let top = state.top_categories(self.options.k, self.at, self.options.half_life_ms);
        for (slot, (name, _)) in slots[start..].iter_mut().zip(top) {
            let next = self.index.len() as u32;
            *slot = *self.index.entry(name).or_insert_with_key(|name| {
                self.out.names.push(name.clone());
                next
            });
        }
    }
}

/// Per `customers` batch, the [`patron_store::StoredProfile::digest`] of each row's record: a
/// reader can tell whether a customer changed since the snapshot without rebuilding the row.
/// Spilled with the tables when they are (8 bytes a customer, 80 MB at 10M).
#[derive(Clone, Default)]
pub struct ProfileDigests {
    batches: Vec<UInt64Array>,
    spilled: bool,
}

impl ProfileDigests {
    pub fn get(&self, batch: usize, row: usize) -> Option<u64> {
        let digests = self.batches.get(batch)?;
        (row < digests.len()).then(|| digests.value(row))
    }

    /// Heap bytes (none when spilled: the mapping is the page cache's).
    fn heap_bytes(&self) -> usize {
        if self.spilled {
            return 0;
        }
        self.batches.iter().map(|d| d.len() * 8).sum()
    }

    /// The one-column schema of a digest batch (built once).
    fn schema() -> SchemaRef {
        static SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(|| {
            Arc::new(Schema::new(vec![Field::new(
                "digest",
                DataType::UInt64,
                false,
            )]))
        });
        SCHEMA.clone()
    }
}

impl std::fmt::Debug for ProfileDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows: usize = self.batches.iter().map(|d| d.len()).sum();
        write!(f, "ProfileDigests({rows} rows)")
    }
}

/// The `customers` table's schema (built once; every caller shares it).
pub fn customers_schema() -> SchemaRef {
    static SCHEMA: std::sync::LazyLock<SchemaRef> =
        std::sync::LazyLock::new(build_customers_schema);
    SCHEMA.clone()
}

fn build_customers_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("first_purchase", timestamp_type(), true),
        Field::new("last_purchase", timestamp_type(), true),
        Field::new("frequency", DataType::Int64, false),
        Field::new("monetary", DataType::Float64, false),
        Field::new("avg_order_value", DataType::Float64, true),
        Field::new("recency_days", DataType::Float64, true),
        Field::new("r_score", DataType::UInt8, true),
        Field::new("f_score", DataType::UInt8, true),
        Field::new("m_score", DataType::UInt8, true),
        Field::new("rfm_segment", DataType::Utf8, false),
        Field::new("p_alive", DataType::Float64, true),
        Field::new("expected_purchases", DataType::Float64, true),
        Field::new("expected_avg_value", DataType::Float64, true),
        Field::new("clv", DataType::Float64, true),
        Field::new(
            "segments",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("traits", DataType::Utf8, false),
    ]))
}

impl Snapshot {
    /// Heap bytes the per-customer parts hold (the `customers` batches unless they were
    /// spilled, the digests and the top categories); the other tables are a row per segment,
    /// day or arm.
    pub fn customer_bytes(&self) -> usize {
        let batches: usize = if self.customers_spilled > 0 {
            0
        } else {
            self.customers
                .iter()
                .map(RecordBatch::get_array_memory_size)
                .sum()
        };
        let digests = self.digests.heap_bytes();
        let top = self.top_categories.as_ref().map_or(0, |t| {
            t.slots.iter().map(|s| s.capacity() * 4).sum::<usize>()
        });
        batches + digests + top
    }

    /// [`Self::build`] with the per-customer tables spilled to the store's own directory
    /// ([`crate::spill`]), which has room for the store; in memory if that directory cannot
    /// take the file (a read-only mount, say), with a warning.
    pub fn build_beside_store(store: &Store, opts: &SnapshotOptions) -> Result<Self> {
        let dir = match store.path().parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let spilled = SnapshotOptions {
            spill_dir: Some(dir),
            ..opts.clone()
        };
        match Self::build(store, &spilled) {
            Err(QueryError::Io { path, source }) => {
                tracing::warn!(dir = %path.display(), error = %source, "cannot spill the customers table; building it in memory");
                Self::build(store, opts)
            }
            built => built,
        }
    }

    /// Reads the store once and derives every table.
    pub fn build(store: &Store, opts: &SnapshotOptions) -> Result<Self> {
        let reader = store.reader()?;
        let counters = reader.counters()?;
        let as_of = opts.as_of.or(match opts.clock {
            Clock::Event => counters.as_of,
            Clock::Wall => Some(now_millis()),
        });
        let mut categories = opts.top_categories.map(|options| TopCategoryScan {
            options,
            at: as_of.unwrap_or_else(now_millis),
            index: Default::default(),
            out: TopCategories::new(options.k),
        });
        let spill = opts.spill_dir.as_deref();
        let mut base = BatchSink::new(spill, &patron_store::scan::base_schema())?;
        let mut digests = BatchSink::new(spill, &ProfileDigests::schema())?;
        let population = scan(
            &reader,
            opts.batch_rows,
            &mut base,
            &mut digests,
            categories.as_mut(),
        )?;
        let (digests, digests_spilled) = digests.finish()?;
        let digests = ProfileDigests {
            batches: digests
                .iter()
                .map(|b| b.column(0).as_primitive::<UInt64Type>().clone())
                .collect(),
            spilled: digests_spilled > 0,
        };
        let daily = reader.daily_all()?;
        let arms = reader.all_offer_counts()?;
        let catalog = store.offer_catalog()?;

        // Each batch is derived and written on before the next, so with a spill directory the
        // heap never holds more than one batch of either table.
        let (base, _) = base.finish()?;
        let dist = distribution(&base);
        let user_segments = UserSegments::compile(&opts.segments)?;
        let mut customers = BatchSink::new(spill, &customers_schema())?;
        for b in &base {
            customers.push(user_segments.add(derive(b, &dist, as_of, opts)?)?)?;
        }
        drop(base);
        let (customers, customers_spilled) = customers.finish()?;
        let segments = segments_table(&customers, &opts.rfm_map, &opts.segments)?;
        let offer_uplift = offer_uplift(&reader, &customers, &catalog, as_of)?;
        drop(reader);
        Ok(Self {
            offer_uplift,
            as_of,
            customers,
            customers_spilled,
            distribution: dist,
            segments,
            kpi_daily: kpi_daily_table(&daily)?,
            offer_stats: offer_stats_table(&arms)?,
            daily,
            population,
            digests,
            top_categories: categories.map(|c| c.out),
        })
    }

    pub fn customer_count(&self) -> usize {
        self.customers.iter().map(|b| b.num_rows()).sum()
    }

    /// Where `customer_id` is in [`Self::customers`], as (batch, row): a binary search, since
    /// the batches hold the ids in ascending byte order (the store's key order).
    pub fn customer_row(&self, customer_id: &str) -> Option<(usize, usize)> {
        find_row(&self.customers, customer_id)
    }
}

/// [`Snapshot::customer_row`] over `customers`.
fn find_row(customers: &[RecordBatch], customer_id: &str) -> Option<(usize, usize)> {
    // The last batch whose first id is not after the one sought.
    let batch = customers
        .partition_point(|b| {
            b.num_rows() > 0 && b.column(0).as_string::<i32>().value(0) <= customer_id
        })
        .checked_sub(1)?;
    let col = customers[batch].column(0).as_string::<i32>();
    let (mut lo, mut hi) = (0, col.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match col.value(mid).cmp(customer_id) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some((batch, mid)),
        }
    }
    None
}

/// Every profile as base-column batches of at most `batch_rows` rows, in customer-id order,
/// with a batch of their records' digests for each, and the KPI aggregates of the same states
/// (one decode per profile).
fn scan(
    reader: &StoreReader,
    batch_rows: usize,
    out: &mut BatchSink,
    digests_out: &mut BatchSink,
    mut categories: Option<&mut TopCategoryScan>,
) -> Result<PopulationStats> {
    let mut batches = 0;
    let mut digests = Vec::with_capacity(batch_rows);
    let mut stats = PopulationStats::default();
    let mut cols = BaseColumns::with_capacity(batch_rows);
    let mut err = None;
    let mut flush = |cols: &mut BaseColumns, digests: &mut Vec<u64>| -> Result<()> {
        out.push(cols.finish()?)?;
        let column = UInt64Array::from(std::mem::replace(digests, Vec::with_capacity(batch_rows)));
        digests_out.push(RecordBatch::try_new(
            ProfileDigests::schema(),
            vec![Arc::new(column)],
        )?)
    };
    reader.for_each_profile_digest(|id, scope, digest, state| {
        stats.add(&state);
        cols.push(id, scope, &state);
        if let Some(c) = categories.as_deref_mut() {
            c.push(batches, &state);
        }
        digests.push(digest);
        if cols.len() >= batch_rows && err.is_none() {
            match flush(&mut cols, &mut digests) {
                Ok(()) => batches += 1,
                Err(e) => err = Some(e),
            }
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    if !cols.is_empty() {
        flush(&mut cols, &mut digests)?;
    }
    Ok(stats)
}

fn distribution(base: &[RecordBatch]) -> RfmDistribution {
    // One measure's values at a time, sized exactly: 80 MB at most at 10M customers, where
    // three arrays grown by doubling reached several hundred.
    let purchasers: usize = base
        .iter()
        .map(|b| {
            let f = b
                .column_by_name("frequency")
                .expect("base column")
                .as_primitive::<Int64Type>();
            f.values().iter().filter(|&&v| v >= 1).count()
        })
        .sum();
    fn measure<T: Ord + Copy>(
        base: &[RecordBatch],
        purchasers: usize,
        name: &str,
        value: impl Fn(&ArrayRef, &[usize], &mut Vec<T>),
    ) -> Quintiles<T> {
        let mut values = Vec::with_capacity(purchasers);
        for b in base {
            let f = b
                .column_by_name("frequency")
                .expect("base column")
                .as_primitive::<Int64Type>();
            let rows: Vec<usize> = (0..b.num_rows()).filter(|&i| f.value(i) >= 1).collect();
            value(
                b.column_by_name(name).expect("base column"),
                &rows,
                &mut values,
            );
        }
        Quintiles::of(values)
    }
    RfmDistribution::from_quintiles(
        measure(base, purchasers, "last_purchase", |c, rows, out| {
            let c = c.as_primitive::<TimestampMillisecondType>();
            out.extend(rows.iter().map(|&i| c.value(i)));
        }),
        measure(base, purchasers, "frequency", |c, rows, out| {
            let c = c.as_primitive::<Int64Type>();
            out.extend(rows.iter().map(|&i| c.value(i) as u32));
        }),
        measure(base, purchasers, "monetary", |c, rows, out| {
            let c = c.as_primitive::<Float64Type>();
            out.extend(
                rows.iter()
                    .map(|&i| Money::from_f64(c.value(i)).unwrap_or_default().0),
            );
        }),
    )
}

/// Base columns -> the `customers` columns (without user segments yet).
fn derive(
    b: &RecordBatch,
    dist: &RfmDistribution,
    as_of: Option<Millis>,
    opts: &SnapshotOptions,
) -> Result<RecordBatch> {
    let n = b.num_rows();
    let col = |name: &str| b.column_by_name(name).expect("base column").clone();
    let first = col("first_purchase");
    let last = col("last_purchase");
    let lp = last.as_primitive::<TimestampMillisecondType>();
    let fp = first.as_primitive::<TimestampMillisecondType>();
    let freq = b
        .column_by_name("frequency")
        .expect("base column")
        .as_primitive::<Int64Type>();
    let monetary = b
        .column_by_name("monetary")
        .expect("base column")
        .as_primitive::<Float64Type>();
    let repeat_avg = b
        .column_by_name("avg_repeat_value")
        .expect("base column")
        .as_primitive::<Float64Type>();

    let mut recency = Float64Builder::with_capacity(n);
    let (mut r, mut f, mut m) = (
        UInt8Builder::with_capacity(n),
        UInt8Builder::with_capacity(n),
        UInt8Builder::with_capacity(n),
    );
    let mut seg = StringBuilder::with_capacity(n, n * 12);
    let (mut p_alive, mut exp_p, mut exp_v, mut clv) = (
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
    );
    for i in 0..n {
        if freq.value(i) < 1 || lp.is_null(i) {
            recency.append_null();
            r.append_null();
            f.append_null();
            m.append_null();
            seg.append_value(PROSPECT);
            p_alive.append_null();
            exp_p.append_null();
            exp_v.append_null();
            clv.append_null();
            continue;
        }
        let last_ms = lp.value(i);
        match as_of {
            Some(t) => recency.append_value((t - last_ms) as f64 / MILLIS_PER_DAY as f64),
            None => recency.append_null(),
        }
        let s = dist.scores(
            last_ms,
            freq.value(i) as u32,
            Money::from_f64(monetary.value(i)).unwrap_or_default(),
        );
        r.append_value(s.r);
        f.append_value(s.f);
        m.append_value(s.m);
        seg.append_value(opts.rfm_map.segment(s.r, s.f));
        match (&opts.clv, as_of) {
            (Some((model, copts)), Some(t)) => {
                let unit = |ms: i64| ms as f64 / MILLIS_PER_DAY as f64 / copts.time_unit_days;
                let first_ms = fp.value(i);
                let x = (freq.value(i) - 1) as f64;
                let mean = if repeat_avg.is_null(i) {
                    0.0
                } else {
                    repeat_avg.value(i)
                };
                let v = model.score(
                    x,
                    unit(last_ms - first_ms),
                    unit((t - first_ms).max(0)),
                    mean,
                    copts,
                );
                p_alive.append_value(v.p_alive);
                exp_p.append_value(v.expected_purchases);
                exp_v.append_value(v.expected_avg_value);
                clv.append_value(v.clv);
            }
            _ => {
                p_alive.append_null();
                exp_p.append_null();
                exp_v.append_null();
                clv.append_null();
            }
        }
    }
    let empty_lists = {
        let mut lb = ListBuilder::new(StringBuilder::new());
        for _ in 0..n {
            lb.append(true);
        }
        lb.finish()
    };
    let columns: Vec<ArrayRef> = vec![
        col("customer_id"),
        first,
        last.clone(),
        col("frequency"),
        col("monetary"),
        col("avg_order_value"),
        Arc::new(recency.finish()),
        Arc::new(r.finish()),
        Arc::new(f.finish()),
        Arc::new(m.finish()),
        Arc::new(seg.finish()),
        Arc::new(p_alive.finish()),
        Arc::new(exp_p.finish()),
        Arc::new(exp_v.finish()),
        Arc::new(clv.finish()),
        Arc::new(empty_lists),
        col("traits"),
    ];
    Ok(RecordBatch::try_new(customers_schema(), columns)?)
}

/// A user-defined segment's predicate compiled once against the `customers` schema.
pub struct CompiledPredicate {
    expr: Arc<dyn datafusion::physical_expr::PhysicalExpr>,
    /// It calls functions (`now()`), so its value may change without the row changing.
    volatile: bool,
}

impl CompiledPredicate {
    pub fn compile(sql: &str, schema: &SchemaRef) -> std::result::Result<Self, String> {
        let ctx = SessionContext::new();
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
        let expr = ctx
            .parse_sql_expr(sql, &df_schema)
            .map_err(|e| e.to_string())?;
        // Coerce and fold constants once (`monetary > 500` compares with 500.0, not with a cast
        // made on every evaluation). Not for expressions that call functions: folding would
        // freeze `now()` at compile time.
        let calls_functions = expr
            .exists(|e| Ok(matches!(e, Expr::ScalarFunction(_))))
            .map_err(|e| e.to_string())?;
        // `now()` is stable (one value per query) and `random()` volatile: either way the
        // answer for a row is not fixed by the row.
        let volatile = expr
            .exists(|e| {
                Ok(matches!(e, Expr::ScalarFunction(f)
                    if f.func.signature().volatility != Volatility::Immutable))
            })
            .map_err(|e| e.to_string())?;
        let expr = if calls_functions {
            expr
        } else {
            let simplifier = ExprSimplifier::new(
                SimplifyContext::builder()
                    .with_schema(Arc::new(df_schema.clone()))
                    .build(),
            );
            let coerced = simplifier
                .coerce(expr, &df_schema)
                .map_err(|e| e.to_string())?;
            simplifier.simplify(coerced).map_err(|e| e.to_string())?
        };
        let phys = ctx
            .create_physical_expr(expr, &df_schema)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            expr: phys,
            volatile,
        })
    }

    /// Whether it calls a function that is not immutable, such as `now()`: then a result
    /// computed earlier for the same row may no longer hold.
    pub fn is_volatile(&self) -> bool {
        self.volatile
    }

    /// Which rows match; a null result counts as no match.
    pub fn evaluate(&self, batch: &RecordBatch) -> std::result::Result<BooleanArray, String> {
        let v = self.expr.evaluate(batch).map_err(|e| e.to_string())?;
        let arr = v.into_array(batch.num_rows()).map_err(|e| e.to_string())?;
        arr.as_boolean_opt()
            .cloned()
            .ok_or_else(|| format!("predicate is {}, not boolean", arr.data_type()))
    }
}

/// The configured segments' predicates, compiled once for every batch of a build.
struct UserSegments<'a> {
    segments: &'a [SegmentConfig],
    compiled: Vec<CompiledPredicate>,
    schema: SchemaRef,
}

impl<'a> UserSegments<'a> {
    fn compile(segments: &'a [SegmentConfig]) -> Result<Self> {
        let schema = customers_schema();
        let compiled = segments
            .iter()
            .map(|s| {
                CompiledPredicate::compile(&s.predicate, &schema).map_err(|message| {
                    QueryError::SegmentPredicate {
                        name: s.name.clone(),
                        message,
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            segments,
            compiled,
            schema,
        })
    }

    /// `b` with its `segments` column filled in.
    fn add(&self, b: RecordBatch) -> Result<RecordBatch> {
        if self.segments.is_empty() {
            return Ok(b);
        }
        let matches = self
            .compiled
            .iter()
            .zip(self.segments)
            .map(|(c, s)| {
                c.evaluate(&b)
                    .map_err(|message| QueryError::SegmentPredicate {
                        name: s.name.clone(),
                        message,
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut lb = ListBuilder::new(StringBuilder::new());
        for row in 0..b.num_rows() {
            for (mask, s) in matches.iter().zip(self.segments) {
                if mask.is_valid(row) && mask.value(row) {
                    lb.values().append_value(&s.name);
                }
            }
            lb.append(true);
        }
        let seg_idx = self.schema.index_of("segments").expect("segments column");
        let mut cols = b.columns().to_vec();
        cols[seg_idx] = Arc::new(lb.finish());
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

fn segments_table(
    customers: &[RecordBatch],
    map: &RfmMap,
    user: &[SegmentConfig],
) -> Result<RecordBatch> {
    #[derive(Default)]
    struct Agg {
        customers: i64,
        revenue: f64,
        clv_sum: f64,
        clv_n: i64,
    }
    let mut aggs: BTreeMap<String, Agg> = BTreeMap::new();
    let mut order: Vec<String> = map.segment_names();
    order.extend(user.iter().map(|s| s.name.clone()));
    for b in customers {
        let seg = b
            .column_by_name("rfm_segment")
            .expect("column")
            .as_string::<i32>();
        let money = b
            .column_by_name("monetary")
            .expect("column")
            .as_primitive::<Float64Type>();
        let clv = b
            .column_by_name("clv")
            .expect("column")
            .as_primitive::<Float64Type>();
        let lists = b
            .column_by_name("segments")
            .expect("column")
            .as_list::<i32>();
        for i in 0..b.num_rows() {
            let mut add = |name: &str| {
                let a = aggs.entry(name.to_owned()).or_default();
                a.customers += 1;
                a.revenue += money.value(i);
                if clv.is_valid(i) {
                    a.clv_sum += clv.value(i);
                    a.clv_n += 1;
                }
            };
            add(seg.value(i));
            let l = lists.value(i);
            let names = l.as_string::<i32>();
            for j in 0..names.len() {
                add(names.value(j));
            }
        }
    }
    for name in aggs.keys() {
        if !order.contains(name) {
            order.push(name.clone());
        }
    }
    let mut name_b = StringBuilder::new();
    let mut count_b = Int64Builder::new();
    let mut rev_b = Float64Builder::new();
    let mut clv_b = Float64Builder::new();
    for name in order {
        let a = aggs.remove(&name).unwrap_or_default();
        name_b.append_value(&name);
        count_b.append_value(a.customers);
        rev_b.append_value(a.revenue);
        clv_b.append_option((a.clv_n > 0).then(|| a.clv_sum / a.clv_n as f64));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("customers", DataType::Int64, false),
        Field::new("revenue", DataType::Float64, false),
        Field::new("avg_clv", DataType::Float64, true),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(name_b.finish()),
            Arc::new(count_b.finish()),
            Arc::new(rev_b.finish()),
            Arc::new(clv_b.finish()),
        ],
    )?)
}

/// One row per stored day: that day's totals, then the KPIs exact for the end of that day
/// (see [`DayKpis`]).
fn kpi_daily_table(daily: &[(i32, DailyTotals)]) -> Result<RecordBatch> {
    let rows = DailySeries::new(daily).stored_days();
    let mut t = Columns::default();
    let mut day = Date32Builder::with_capacity(rows.len());
    rows.iter().for_each(|r| day.append_value(r.day));
    t.push(
        Field::new("day", DataType::Date32, false),
        Arc::new(day.finish()),
    );
    t.float("revenue", false, &rows, |r| Some(r.revenue));
    t.float("refunded", false, &rows, |r| Some(r.refunded));
    t.int("orders", &rows, |r| r.orders as i64);
    t.int("refunds", &rows, |r| r.refunds as i64);
    t.int("new_customers", &rows, |r| r.new_customers);
    t.int("interactions", &rows, |r| r.interactions as i64);
    t.int("offers_shown", &rows, |r| r.offers_shown as i64);
    t.int("offers_accepted", &rows, |r| r.offers_accepted as i64);
    t.int("offers_declined", &rows, |r| r.offers_declined as i64);
    t.int("customers", &rows, |r| r.customers);
    t.int("new_customers_30d", &rows, |r| r.new_customers_30d);
    t.float("revenue_30d", false, &rows, |r| Some(r.revenue_30d));
    t.int("orders_30d", &rows, |r| r.orders_30d as i64);
    t.float("avg_order_value", true, &rows, |r| r.avg_order_value);
    t.float("offer_acceptance_rate_30d", true, &rows, |r| {
        r.offer_acceptance_rate_30d
    });
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(t.fields)),
        t.cols,
    )?)
}

#[derive(Default)]
struct Columns {
    fields: Vec<Field>,
    cols: Vec<ArrayRef>,
}

impl Columns {
    fn push(&mut self, field: Field, col: ArrayRef) {
        self.fields.push(field);
        self.cols.push(col);
    }

    fn int(&mut self, name: &str, rows: &[DayKpis], f: impl Fn(&DayKpis) -> i64) {
        let mut b = Int64Builder::with_capacity(rows.len());
        rows.iter().for_each(|r| b.append_value(f(r)));
        self.push(
            Field::new(name, DataType::Int64, false),
            Arc::new(b.finish()),
        );
    }

    /// A float column; nullable when `f` can return `None` (a rate of an empty window).
    fn float(
        &mut self,
        name: &str,
        nullable: bool,
        rows: &[DayKpis],
        f: impl Fn(&DayKpis) -> Option<f64>,
    ) {
        let mut b = Float64Builder::with_capacity(rows.len());
        rows.iter().for_each(|r| b.append_option(f(r)));
        self.push(
            Field::new(name, DataType::Float64, nullable),
            Arc::new(b.finish()),
        );
    }
}

/// One row per learning arm: (offer, the segment its decisions were made in).
fn offer_stats_table(arms: &[(String, String, patron_store::OfferCounts)]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("offer_id", DataType::Utf8, false),
        Field::new("rfm_segment", DataType::Utf8, false),
        Field::new("shown", DataType::Int64, false),
        Field::new("accepted", DataType::Int64, false),
        Field::new("declined", DataType::Int64, false),
    ]));
    let count = |f: fn(&patron_store::OfferCounts) -> u64| {
        Arc::new(Int64Array::from_iter_values(
            arms.iter()
                .map(|(_, _, c)| i64::try_from(f(c)).unwrap_or(i64::MAX)),
        )) as ArrayRef
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            arms.iter().map(|a| a.0.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            arms.iter().map(|a| a.1.as_str()),
        )),
        count(|c| c.shown),
        count(|c| c.accepted),
        count(|c| c.declined),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `offer_uplift`: for every offer with a holdout, the customers its predicate admits now are
/// split by the holdout hash. Treated are those outside the holdout who were shown the offer;
/// control are those inside it. Conversion is a purchase in the 30 days before as_of; the
/// groups are pooled over offers, and the answer is treated minus control.
fn offer_uplift(
    reader: &StoreReader,
    customers: &[RecordBatch],
    catalog: &[(String, Vec<u8>)],
    as_of: Option<Millis>,
) -> Result<Option<f64>> {
    let Some(as_of) = as_of.filter(|_| !customers.is_empty()) else {
        return Ok(None);
    };
    let since = as_of - 30 * MILLIS_PER_DAY;
    let schema = customers_schema();
    let lasts: Vec<_> = customers
        .iter()
        .map(|b| {
            b.column_by_name("last_purchase")
                .expect("last_purchase")
                .as_primitive::<TimestampMillisecondType>()
        })
        .collect();
    let converted = |batch: usize, row: usize| {
        let last = lasts[batch];
        u64::from(last.is_valid(row) && last.value(row) > since)
    };
    // Per offer with a holdout: its share and which rows are eligible, batch by batch.
    let mut offers: std::collections::HashMap<&str, (f64, Vec<BooleanArray>)> = Default::default();
    let (mut treated, mut control) = ((0u64, 0u64), (0u64, 0u64));
    for (id, json) in catalog {
        let Ok(offer) = serde_json::from_slice::<serde_json::Value>(json) else {
            continue;
        };
        let holdout = offer["holdout"].as_f64().unwrap_or(0.0);
        if holdout <= 0.0 {
            continue;
        }
        let eligible = offer["eligible"].as_str().unwrap_or("true");
        let Ok(predicate) = CompiledPredicate::compile(eligible, &schema) else {
            continue;
        };
        let mut masks = Vec::with_capacity(customers.len());
        for (batch, b) in customers.iter().enumerate() {
            // A batch the predicate cannot evaluate counts no one.
            let mask = predicate
                .evaluate(b)
                .unwrap_or_else(|_| BooleanArray::from(vec![false; b.num_rows()]));
            let ids = b
                .column_by_name("customer_id")
                .expect("customer_id")
                .as_string::<i32>();
            for row in 0..b.num_rows() {
                if mask.is_valid(row)
                    && mask.value(row)
                    && patron_core::offer::in_holdout(ids.value(row), id, holdout)
                {
                    control.0 += 1;
                    control.1 += converted(batch, row);
                }
            }
            masks.push(mask);
        }
        offers.insert(id.as_str(), (holdout, masks));
    }
    // Treated: shown the offer, outside its holdout, eligible. The impressions are streamed
    // from the store; collected, they were the largest allocation of a view at scale.
    if !offers.is_empty() {
        reader.for_each_shown_pair(|customer, offer| {
            let Some((holdout, masks)) = offers.get(offer) else {
                return;
            };
            if patron_core::offer::in_holdout(customer, offer, *holdout) {
                return;
            }
            let Some((batch, row)) = find_row(customers, customer) else {
                return;
            };
            let mask = &masks[batch];
            if mask.is_valid(row) && mask.value(row) {
                treated.0 += 1;
                treated.1 += converted(batch, row);
            }
        })?;
    }
    if treated.0 == 0 || control.0 == 0 {
        return Ok(None);
    }
    let rate = |(n, c): (u64, u64)| c as f64 / n as f64;
    Ok(Some(rate(treated) - rate(control)))
}
