//! The cached scoring view.
//!
//! RFM scores rank a customer against the whole population, and segment membership needs
//! those scores, so they cannot come from one point lookup. A [`View`] reads the store once
//! (the `customers` and `segments` tables of `patron-query`, the RFM distribution and the
//! stored CLV model) and is shared by every request for at most `[kpi] refresh_interval`
//! (at least 1 s). Building one is a full scan, so only one request builds at a time; while it
//! does, the others keep answering from the previous view.
//!
//! A view is only rebuilt when the store has changed since (or when scores run on the wall
//! clock), so an idle store is never rescanned.
//!
//! Profiles still read their state from the latest committed snapshot; only the ranking they are scored
//! against may be up to one refresh interval old (the contract allows a streaming
//! approximation of the ranks).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use patron_core::clv::ClvOptions;
use patron_core::config::{Clock, PatronConfig};
use patron_core::rfm::{PROSPECT, RfmMap};
use patron_core::time::{Millis, now_millis};
use patron_query::clv::{StoredModel, load_model};
use patron_query::kpi::{self, KpiOptions, KpiSet};
use patron_query::snapshot::{CompiledPredicate, customers_schema};
use patron_query::{Snapshot, SnapshotOptions};
use patron_store::Store;

use crate::ApiError;
use crate::offers::OfferPlan;

pub struct View {
    pub snapshot: Snapshot,
    pub rfm_map: RfmMap,
    pub model: Option<StoredModel>,
    pub clv_options: Option<ClvOptions>,
    /// User-defined segments, compiled against the `customers` schema.
    pub predicates: Vec<(String, CompiledPredicate)>,
    pub built: Instant,
    /// How long building it took; rebuilds are spaced by a multiple of it.
    pub build_time: Duration,
    /// The KPI set of this snapshot (`GET /v1/kpis`), computed with the view so no request
    /// scans for it.
    pub kpis: KpiSet,
    /// Wall-clock time the view was built, the KPIs' `computed_at`.
    pub computed_at: Millis,
    /// The store's generation when the build started ([`Store::generation`]).
    pub generation: u64,
    /// Unique per build in this process (cached profiles name the view they were scored on).
    pub id: u64,
    /// The offer catalog with every customer's eligibility, for decisions on this view's
    /// generation (event clock only: on the wall clock `as_of` moves on between requests).
    pub offers: Option<OfferPlan>,
}

static NEXT_VIEW_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl View {
    pub fn build(store: &Store, config: &PatronConfig) -> Result<Self, ApiError> {
        let started = Instant::now();
        let generation = store.generation();
        let model = load_model(store).map_err(ApiError::internal)?;
        let clv_options = model.as_ref().map(|m| m.options(&config.clv));
        let mut opts = SnapshotOptions::from_config(config);
        opts.clv = model.as_ref().zip(clv_options).map(|(m, o)| (m.model(), o));
        // The offer plan's decisions read each customer's top categories from the view (it
        // is built on the event clock only, where they are exact for its generation); without
        // offers the ranking would be wasted.
        if config.scoring.clock == Clock::Event
            && !store
                .offer_catalog()
                .map_err(ApiError::internal)?
                .is_empty()
        {
            opts.top_categories = Some(patron_query::snapshot::TopCategoryOptions {
                k: config.engagement.top_categories,
                half_life_ms: crate::customers::half_life_ms(config),
            });
        }
        // The per-customer tables live in a file beside the store, mapped: a view over
        // millions of customers would otherwise be most of the server's heap (twice over while
        // a rebuild runs).
        let snapshot = Snapshot::build_beside_store(store, &opts).map_err(ApiError::internal)?;
        let schema = customers_schema();
        let predicates = config
            .segments
            .iter()
            .map(|s| {
                CompiledPredicate::compile(&s.predicate, &schema)
                    .map(|p| (s.name.clone(), p))
                    .map_err(|e| ApiError::internal(format!("segment `{}`: {e}", s.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kpis = kpi::compute(&snapshot, &KpiOptions::from_config(config));
        let offers = match config.scoring.clock {
            Clock::Event => OfferPlan::build(store, &snapshot, generation).unwrap_or_else(|e| {
                tracing::warn!(
                    code = e.code,
                    "offer plan not built; decisions evaluate per request"
                );
                None
            }),
            Clock::Wall => None,
        };
        Ok(Self {
            kpis,
            computed_at: now_millis(),
            snapshot,
            rfm_map: opts.rfm_map,
            model,
            clv_options,
            predicates,
            built: Instant::now(),
            build_time: started.elapsed(),
            generation,
            id: NEXT_VIEW_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            offers,
        })
    }

    /// Whether `name` is a segment: an RFM segment of the map, `Prospect`, or a user segment.
    pub fn has_segment(&self, name: &str) -> bool {
        if name == PROSPECT || self.predicates.iter().any(|(n, _)| n == name) {
            return true;
        }
        let names = self.snapshot.segments.column(0).as_string::<i32>();
        (0..names.len()).any(|i| names.value(i) == name)
    }
}

/// Rebuilds are at least this many build times apart, so a large store's scan never takes more
/// than a quarter of a core however short `[kpi] refresh_interval` is.
const BUILD_TIME_SPACING: u32 = 4;

/// The current view, shared by every request. A request never waits for a rebuild once a view
/// exists: a stale view is answered at once and rebuilt in the background (one build at a
/// time). Only the very first view, or the first after [`ViewCache::invalidate`], is waited for.
#[derive(Default)]
pub struct ViewCache {
    current: Arc<RwLock<Option<Arc<View>>>>,
    building: Arc<tokio::sync::Mutex<()>>,
}

impl ViewCache {
    fn current(&self) -> Option<Arc<View>> {
        self.current.read().expect("view lock").clone()
    }

    /// Whether `view` is due for a rebuild: it is older than the refresh interval, and the store
    /// has had a commit since (or scores are against the wall clock, which moves on its own).
    fn is_stale(view: &View, store: &Store, config: &PatronConfig) -> bool {
        if config.scoring.clock == Clock::Event && store.generation() == view.generation {
            return false;
        }
        let max_age = config
            .kpi
            .refresh_interval
            .max(Duration::from_secs(1))
            .max(view.build_time * BUILD_TIME_SPACING);
        view.built.elapsed() >= max_age
    }

    /// Drops the cached view, so the next request reads the store again (after a refit).
    pub fn invalidate(&self) {
        *self.current.write().expect("view lock") = None;
    }

    /// The current view; a stale one is answered as it is while a rebuild starts behind it.
    pub async fn get(
        &self,
        store: &Store,
        config: &Arc<PatronConfig>,
    ) -> Result<Arc<View>, ApiError> {
        match self.current() {
            Some(v) => {
                if Self::is_stale(&v, store, config)
                    && let Ok(guard) = self.building.clone().try_lock_owned()
                {
                    let (slot, store, config) =
                        (self.current.clone(), store.clone(), config.clone());
                    tokio::spawn(async move {
                        let _guard = guard;
                        match build(store, config).await {
                            Ok(view) => *slot.write().expect("view lock") = Some(view),
                            Err(e) => tracing::warn!(code = e.code, "view rebuild failed"),
                        }
                    });
                }
                Ok(v)
            }
            None => self.refresh(store, config).await,
        }
    }

    /// Rebuilds now when there is no view or it is stale, waiting for it; the background
    /// refresher's entry point.
    pub async fn refresh(
        &self,
        store: &Store,
        config: &Arc<PatronConfig>,
    ) -> Result<Arc<View>, ApiError> {
        let _guard = self.building.lock().await;
        if let Some(v) = self.current().filter(|v| !Self::is_stale(v, store, config)) {
            return Ok(v);
        }
        let view = build(store.clone(), config.clone()).await?;
        *self.current.write().expect("view lock") = Some(view.clone());
        Ok(view)
    }
}

async fn build(store: Store, config: Arc<PatronConfig>) -> Result<Arc<View>, ApiError> {
    tokio::task::spawn_blocking(move || {
        let view = View::build(&store, &config)?;
        tracing::info!(
            generation = view.generation,
            customers = view
                .snapshot
                .customers
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            build_ms = view.build_time.as_millis() as u64,
            customer_mb = view.snapshot.customer_bytes() >> 20,
            spilled_mb = view.snapshot.customers_spilled >> 20,
            "scoring view built"
        );
        // The KPI set of as_of's day, for the history (the last build of a day wins).
        if let Some(as_of) = view.snapshot.as_of {
            let json = serde_json::to_vec(&crate::kpis::KpisResponse::new(
                &view.kpis,
                view.computed_at,
            ))
            .map_err(ApiError::internal)?;
            store
                .put_kpi_snapshot(patron_core::time::day_index(as_of), &json)
                .map_err(ApiError::internal)?;
        }
        Ok(Arc::new(view))
    })
    .await
    .map_err(ApiError::internal)?
}
