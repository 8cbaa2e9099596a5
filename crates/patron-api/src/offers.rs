//! Next-best offers: the catalog (`/v1/offers/catalog`) and decisions
//! (`GET /v1/customers/{id}/offers`).
//!
//! The catalog lives in the store; `[[offers]]` from config is written into it at start-up.
//! Each offer's eligibility predicate is compiled once per catalog version into a physical
//! expression over the `customers` schema, the same columns as in SQL. With each scoring view
//! an [`OfferPlan`] evaluates every predicate over the view's whole population at once; a
//! decision on the view's own generation, or for a customer unchanged since the view, then
//! only looks up the customer's bit. Otherwise (a change to the customer since the view, the
//! wall clock, a predicate calling `now()`) the predicates run on the customer's one-row batch
//! per request.
//!
//! A decision, per offer: validity window, channel, eligibility, then the holdout (a stable hash
//! of customer and offer), then contact policy from the committed contact history
//! (`max_impressions` per `window`, `cooldown_after_decline`). What survives is scored
//! P(accept) × value − cost + affinity boost, where P(accept) comes from the Beta posterior of
//! the (offer, rfm_segment) arm: its mean (`greedy`) or one draw (`thompson`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use arrow::array::BooleanBufferBuilder;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::buffer::BooleanBuffer;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use patron_core::config::{Exploration, OfferConfig, Role};
use patron_core::offer::{Posterior, in_holdout};
use patron_core::time::{Millis, now_millis, parse_rfc3339};
use patron_query::Snapshot;
use patron_query::snapshot::{CompiledPredicate, customers_schema};
use patron_store::{ContactRecord, OfferCounts, Store};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use crate::customers::{find, json_body, profile_and_row, top_categories};
use crate::decision_json::{CustomerJson, Ranked, RankedJson, rounded};
use crate::error::{ErrorBody, JsonBody};
use crate::hot_cache::{Tag, Weigh};
use crate::{ApiError, ApiState};

/// An offer as the API shows and takes it: the `[[offers]]` fields.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// Must match the path on PUT (may be omitted there).
    #[serde(default)]
    pub id: String,
    pub name: String,
    /// SQL predicate over the `customers` table's columns; default `true`.
    #[serde(default = "always")]
    pub eligible: String,
    /// Margin if accepted, base currency.
    pub value: f64,
    #[serde(default)]
    pub cost: f64,
    /// Channels it may be offered on; empty means every channel.
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub category: Option<String>,
    /// At most this many impressions per `window`.
    #[serde(default)]
    pub max_impressions: Option<u32>,
    /// e.g. `"7days"`.
    #[serde(default)]
    pub window: Option<String>,
    /// No offer again for this long after a decline, e.g. `"30days"`.
    #[serde(default)]
    pub cooldown_after_decline: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub starts: Option<String>,
    #[serde(default)]
    pub ends: Option<String>,
    /// Share of eligible customers held out as control, in [0, 1).
    #[serde(default)]
    pub holdout: f64,
}

fn always() -> String {
    "true".to_owned()
}

impl From<&OfferConfig> for Offer {
    fn from(c: &OfferConfig) -> Self {
        let text =
            |d: Option<std::time::Duration>| d.map(|d| humantime::format_duration(d).to_string());
        Self {
            id: c.id.clone(),
            name: c.name.clone(),
            eligible: c.eligible.clone(),
            value: c.value,
            cost: c.cost,
            channels: c.channels.clone(),
            category: c.category.clone(),
            max_impressions: c.max_impressions,
            window: text(c.window),
            cooldown_after_decline: text(c.cooldown_after_decline),
            starts: c.starts.clone(),
            ends: c.ends.clone(),
            holdout: c.holdout,
        }
    }
}

/// One catalog entry, checked and ready to decide with.
pub struct CompiledOffer {
    pub offer: Offer,
    predicate: CompiledPredicate,
    starts: Option<Millis>,
    ends: Option<Millis>,
    window_ms: Option<i64>,
    cooldown_ms: Option<i64>,
    /// Its JSON as a ranked offer, less the per-request numbers.
    ranked: RankedJson,
    /// The entries that do not depend on the customer or the request, serialized once.
    not_active: Box<RawValue>,
    off_channel: Box<RawValue>,
    not_eligible: Box<RawValue>,
    held_out: Box<RawValue>,
}

/// Checks every field and compiles the predicate; the error names the field at fault.
pub fn compile(offer: Offer) -> Result<CompiledOffer, String> {
    if offer.id.trim().is_empty() || offer.id.len() > 200 {
        return Err("`id` must be 1 to 200 characters".into());
    }
    if offer.name.trim().is_empty() {
        return Err("`name` must not be empty".into());
    }
    for (field, v) in [("value", offer.value), ("cost", offer.cost)] {
        if !v.is_finite() || v < 0.0 {
            return Err(format!("`{field}` must be a finite number ≥ 0, got {v}"));
        }
    }
    if !(0.0..1.0).contains(&offer.holdout) {
        return Err(format!(
            "`holdout` must be in [0, 1), got {}",
            offer.holdout
        ));
    }
    let duration = |field: &str, v: &Option<String>| -> Result<Option<i64>, String> {
        v.as_deref()
            .map(|text| {
                humantime::parse_duration(text)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .map_err(|e| format!("`{field}`: `{text}` is not a duration ({e})"))
            })
            .transpose()
    };
    let window_ms = duration("window", &offer.window)?;
    let cooldown_ms = duration("cooldown_after_decline", &offer.cooldown_after_decline)?;
    if offer.max_impressions.is_some() && window_ms.is_none() {
        return Err("`max_impressions` needs a `window`".into());
    }
    let instant = |field: &str, v: &Option<String>| -> Result<Option<Millis>, String> {
        v.as_deref()
            .map(|text| {
                parse_rfc3339(text)
                    .ok_or_else(|| format!("`{field}`: `{text}` is not an RFC 3339 time"))
            })
            .transpose()
    };
    let starts = instant("starts", &offer.starts)?;
    let ends = instant("ends", &offer.ends)?;
    if let (Some(s), Some(e)) = (starts, ends)
        && e <= s
    {
        return Err("`ends` must be after `starts`".into());
    }
    let schema = customers_schema();
    let predicate = CompiledPredicate::compile(&offer.eligible, &schema)
        .map_err(|e| format!("`eligible`: {e}"))?;
    // A predicate that is not boolean (`monetary + 1`) fails here, not on the first request.
    predicate
        .evaluate(&arrow::array::RecordBatch::new_empty(schema))
        .map_err(|e| format!("`eligible`: {e}"))?;
    let entry = |holdout: bool, reason: String| {
        withheld_entry(&offer.id, holdout, reason).map_err(|e| e.to_string())
    };
    let reason_tail = format!(
        " × value {} − cost {}",
        rounded(offer.value, 2),
        rounded(offer.cost, 2)
    );
    Ok(CompiledOffer {
        ranked: RankedJson::new(&offer, &reason_tail).map_err(|e| e.to_string())?,
        not_active: entry(false, "not_active: outside starts/ends".into())?,
        off_channel: entry(
            false,
            format!("channel: offered only on {}", offer.channels.join(", ")),
        )?,
        not_eligible: entry(false, format!("not_eligible: {}", offer.eligible))?,
        held_out: entry(
            true,
            format!(
                "holdout: in the {:.0}% control group",
                offer.holdout * 100.0
            ),
        )?,
        offer,
        predicate,
        starts,
        ends,
        window_ms,
        cooldown_ms,
    })
}

/// The compiled catalog, rebuilt only when the catalog changes.
#[derive(Default)]
pub struct OfferBook {
    current: RwLock<Option<Arc<Book>>>,
    /// Decisions made, to derive seeded draws.
    decisions: AtomicU64,
    /// Decisions whose eligibility came from the view's [`OfferPlan`].
    planned: AtomicU64,
    /// Of those, decisions made after a commit, for a customer unchanged since the view.
    planned_unchanged: AtomicU64,
}

/// Decision counters for `/v1/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionStats {
    pub decisions: u64,
    /// Eligibility read from the scoring view's plan: nothing committed since the view, or the
    /// customer's stored record unchanged since it.
    pub planned: u64,
    /// Of `planned`, those made after a commit (customer unchanged since the view).
    pub planned_unchanged: u64,
    /// Eligibility evaluated on the customer's own row.
    pub evaluated: u64,
}

impl OfferBook {
    pub fn invalidate(&self) {
        *self.current.write().expect("offer book lock") = None;
    }

    pub fn stats(&self) -> DecisionStats {
        let decisions = self.decisions.load(Ordering::Relaxed);
        let planned = self.planned.load(Ordering::Relaxed);
        DecisionStats {
            decisions,
            planned,
            planned_unchanged: self.planned_unchanged.load(Ordering::Relaxed),
            evaluated: decisions.saturating_sub(planned),
        }
    }

    pub fn get(&self, store: &Store) -> Result<Arc<Book>, ApiError> {
        if let Some(c) = self.current.read().expect("offer book lock").clone() {
            return Ok(c);
        }
        let compiled = Arc::new(compile_catalog(store)?);
        *self.current.write().expect("offer book lock") = Some(compiled.clone());
        Ok(compiled)
    }
}

/// A compiled catalog, in id order, and a hash of the stored entries it was compiled from.
pub struct Book {
    offers: Vec<CompiledOffer>,
    /// Equal fingerprints, equal catalogs.
    fingerprint: u64,
}

impl std::ops::Deref for Book {
    type Target = [CompiledOffer];

    fn deref(&self) -> &[CompiledOffer] {
        &self.offers
    }
}

/// The stored catalog, compiled, in id order.
fn compile_catalog(store: &Store) -> Result<Book, ApiError> {
    let mut offers = Vec::new();
    let mut fingerprint = 0u64;
    for (id, json) in store.offer_catalog().map_err(ApiError::internal)? {
        fingerprint = xxhash_rust::xxh3::xxh3_64_with_seed(
            &json,
            xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), fingerprint),
        );
        let offer: Offer = serde_json::from_slice(&json)
            .map_err(|e| ApiError::internal(format!("stored offer `{id}`: {e}")))?;
        // Stored offers were checked on the way in; one that no longer compiles (a schema
        // change) is left out and logged rather than failing every decision.
        match compile(offer) {
            Ok(c) => offers.push(c),
            Err(e) => tracing::error!("stored offer `{id}` is skipped: {e}"),
        }
    }
    Ok(Book {
        offers,
        fingerprint,
    })
}

/// The catalog as a scoring view saw it, with every offer's eligibility decided for the view's
/// whole population in one vectorized pass per predicate, and every arm's counts.
///
/// It answers exactly for decisions whose read snapshot has the view's generation: equal
/// generations mean equal data, so the customer's row in the view is exactly the row a
/// per-request evaluation would build (same state, same ranking population, same `as_of` on the
/// event clock). After a commit it still answers eligibility for customers whose stored record
/// is unchanged (the snapshot's digests) while the catalog is too (the [`Book`] fingerprint),
/// as of the view's event clock; contact history and arm counts are then read per decision.
pub struct OfferPlan {
    pub book: Arc<Book>,
    /// Per offer, per snapshot batch: the rows that are eligible (a null result is not).
    eligible: Vec<Vec<BooleanBuffer>>,
    /// Per offer: its arms' counts by rfm segment.
    arms: Vec<HashMap<String, OfferCounts>>,
    /// Per snapshot batch: the rows with a contact history (most customers have none, and
    /// need no read for it).
    contacted: Vec<BooleanBuffer>,
}

impl OfferPlan {
    /// The plan for `snapshot`, read from the store at `generation`. `None` when a commit
    /// slipped in while it was read (it would mix two generations), or when a predicate calls a
    /// function such as `now()`, whose answer cannot be computed ahead.
    pub fn build(
        store: &Store,
        snapshot: &Snapshot,
        generation: u64,
    ) -> Result<Option<Self>, ApiError> {
        // Compiled from the store rather than taken from the `OfferBook`, whose cached copy may
        // trail a catalog commit: the generation check below then covers the catalog too.
        let book = compile_catalog(store)?;
        if book.iter().any(|c| c.predicate.is_volatile()) {
            return Ok(None);
        }
        let eligible = book
            .iter()
            .map(|c| {
                snapshot
                    .customers
                    .iter()
                    .map(|batch| {
                        let mask = c.predicate.evaluate(batch).map_err(ApiError::internal)?;
                        Ok(match mask.nulls() {
                            Some(valid) => mask.values() & valid.inner(),
                            None => mask.values().clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let at: HashMap<&str, usize> = book
            .iter()
            .enumerate()
            .map(|(i, c)| (c.offer.id.as_str(), i))
            .collect();
        let mut arms = vec![HashMap::new(); book.len()];
        let reader = store.reader().map_err(ApiError::internal)?;
        for (offer, segment, counts) in reader.all_offer_counts().map_err(ApiError::internal)? {
            if let Some(&i) = at.get(offer.as_str()) {
                arms[i].insert(segment, counts);
            }
        }
        let mut contacted: Vec<BooleanBufferBuilder> = snapshot
            .customers
            .iter()
            .map(|b| {
                let mut bits = BooleanBufferBuilder::new(b.num_rows());
                bits.append_n(b.num_rows(), false);
                bits
            })
            .collect();
        for customer in reader.contacted_customers().map_err(ApiError::internal)? {
            if let Some((batch, row)) = snapshot.customer_row(&customer) {
                contacted[batch].set_bit(row, true);
            }
        }
        if store.generation() != generation {
            return Ok(None);
        }
        Ok(Some(Self {
            book: Arc::new(book),
            eligible,
            arms,
            contacted: contacted.iter_mut().map(|b| b.finish()).collect(),
        }))
    }
}

/// What a decision needs to know about the customer, from the view's plan or from their own
/// row.
struct Subject<'a> {
    rfm_segment: String,
    /// Top categories by decayed spend.
    top_categories: Vec<String>,
    eligibility: Eligibility<'a>,
}

enum Eligibility<'a> {
    /// The customer's bits in the view's [`OfferPlan`].
    Planned {
        plan: &'a OfferPlan,
        batch: usize,
        row: usize,
        /// Nothing committed since the view: its contact flags and arm counts are current too.
        exact: bool,
    },
    /// The customer's one-row `customers` batch, each predicate evaluated on it.
    Row(RecordBatch),
}

impl Subject<'_> {
    /// Whether the customer may have a contact history to read (the plan knows they have none).
    fn may_have_contacts(&self) -> bool {
        match &self.eligibility {
            Eligibility::Planned {
                plan,
                batch,
                row,
                exact: true,
            } => plan.contacted[*batch].value(*row),
            Eligibility::Planned { exact: false, .. } | Eligibility::Row(_) => true,
        }
    }

    /// Whether offer number `i` of the book, `c`, is eligible.
    fn eligible(&self, i: usize, c: &CompiledOffer) -> Result<bool, ApiError> {
        match &self.eligibility {
            Eligibility::Planned {
                plan, batch, row, ..
            } => Ok(plan.eligible[i][*batch].value(*row)),
            Eligibility::Row(row) => {
                let mask = c.predicate.evaluate(row).map_err(ApiError::internal)?;
                Ok(mask.is_valid(0) && mask.value(0))
            }
        }
    }

    /// The (offer `i`, rfm segment) arm's posterior at `now`, and when it may next change
    /// without a commit (an impression's answer falling due).
    fn posterior(
        &self,
        i: usize,
        c: &CompiledOffer,
        reader: &patron_store::StoreReader,
        now: Millis,
        response_window_ms: i64,
    ) -> Result<(Posterior, Option<Millis>), ApiError> {
        let of = |counts: &OfferCounts| {
            let posterior = Posterior::from_counts(
                counts.matured(now, response_window_ms),
                counts.accepted,
                counts.declined,
            );
            (posterior, counts.next_maturing(now, response_window_ms))
        };
        Ok(match &self.eligibility {
            Eligibility::Planned {
                plan, exact: true, ..
            } => plan.arms[i]
                .get(&self.rfm_segment)
                .map_or_else(|| of(&OfferCounts::default()), of),
            Eligibility::Planned { exact: false, .. } | Eligibility::Row(_) => of(&reader
                .offer_counts(&c.offer.id, &self.rfm_segment)
                .map_err(ApiError::internal)?
                .unwrap_or_default()),
        })
    }
}

/// Writes `[[offers]]` from config into the store's catalog (config wins for its ids).
pub fn seed_catalog(store: &Store, catalog: &[OfferConfig]) -> Result<usize, String> {
    let mut upsert = Vec::new();
    for c in catalog {
        let offer = Offer::from(c);
        compile(offer.clone()).map_err(|e| format!("[[offers]] `{}`: {e}", c.id))?;
        let json = serde_json::to_vec(&offer).map_err(|e| e.to_string())?;
        upsert.push((offer.id, json));
    }
    store
        .write_offers(&upsert, &[])
        .map_err(|e| e.to_string())?;
    Ok(upsert.len())
}

/// The whole catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct Catalog {
    pub offers: Vec<Offer>,
}

/// The offer catalog.
#[utoipa::path(get, path = "/v1/offers/catalog", tag = "offers",
    responses(
        (status = 200, description = "every offer", body = Catalog),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key is not an admin key", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_catalog(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Catalog>, ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let book = state.offers.get(&state.store)?;
    Ok(Json(Catalog {
        offers: book.iter().map(|c| c.offer.clone()).collect(),
    }))
}

/// One offer.
#[utoipa::path(get, path = "/v1/offers/catalog/{id}", tag = "offers",
    params(("id" = String, Path, description = "offer id")),
    responses(
        (status = 200, description = "the offer", body = Offer),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key is not an admin key", body = ErrorBody),
        (status = 404, description = "no such offer", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_offer(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Offer>, ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let book = state.offers.get(&state.store)?;
    book.iter()
        .find(|c| c.offer.id == id)
        .map(|c| Json(c.offer.clone()))
        .ok_or_else(|| ApiError::not_found(format!("no offer `{id}`")))
}

/// Add or replace an offer. It is checked first: a bad predicate, duration or time is a 400
/// naming the field.
#[utoipa::path(put, path = "/v1/offers/catalog/{id}", tag = "offers",
    params(("id" = String, Path, description = "offer id")),
    request_body = Offer,
    responses(
        (status = 200, description = "replaced", body = Offer),
        (status = 201, description = "added", body = Offer),
        (status = 400, description = "invalid offer; the message names the field", body = ErrorBody),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key is not an admin key", body = ErrorBody),
        (status = 413, description = "body over [api] max_body_bytes", body = ErrorBody),
        (status = 415, description = "the body is not sent as application/json", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put_offer(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(mut offer): JsonBody<Offer>,
) -> Result<(StatusCode, Json<Offer>), ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    if offer.id.is_empty() {
        offer.id = id.clone();
    } else if offer.id != id {
        return Err(ApiError::bad_request(
            "invalid_offer",
            format!("`id` is `{}` but the path says `{id}`", offer.id),
        ));
    }
    compile(offer.clone()).map_err(|e| ApiError::bad_request("invalid_offer", e))?;
    let existed = state
        .offers
        .get(&state.store)?
        .iter()
        .any(|c| c.offer.id == id);
    let json = serde_json::to_vec(&offer).map_err(ApiError::internal)?;
    state
        .store
        .write_offers(&[(id, json)], &[])
        .map_err(ApiError::internal)?;
    state.offers.invalidate();
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(offer)))
}

/// Remove an offer.
#[utoipa::path(delete, path = "/v1/offers/catalog/{id}", tag = "offers",
    params(("id" = String, Path, description = "offer id")),
    responses(
        (status = 200, description = "removed; the offer as it was", body = Offer),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key is not an admin key", body = ErrorBody),
        (status = 404, description = "no such offer", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete_offer(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Offer>, ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let book = state.offers.get(&state.store)?;
    let Some(found) = book.iter().find(|c| c.offer.id == id) else {
        return Err(ApiError::not_found(format!("no offer `{id}`")));
    };
    state
        .store
        .write_offers(&[], std::slice::from_ref(&id))
        .map_err(ApiError::internal)?;
    state.offers.invalidate();
    Ok(Json(found.offer.clone()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DecisionParams {
    /// Only offers allowed on this channel (offers with no channels are allowed everywhere).
    pub channel: Option<String>,
    /// How many offers to return, 1 to 50 (default 3).
    pub limit: Option<usize>,
    /// Also list every offer not made and why (`suppressed`); default false.
    pub explain: Option<bool>,
}

/// Ranked offers for one customer, with why each was or was not offered.
///
/// The body's documented shape; [`crate::decision_json`] writes it without building this value,
/// and a test holds the two equal.
#[derive(Debug, Serialize, ToSchema)]
pub struct Decision<'a> {
    pub customer_id: &'a str,
    /// The segment whose learned acceptance rates were used.
    pub rfm_segment: &'a str,
    /// Carry it on offer_shown / offer_accepted / offer_declined events.
    pub decision_id: String,
    /// `thompson` or `greedy`.
    pub exploration: &'static str,
    /// Best first.
    pub offers: Vec<RankedOffer<'a>>,
    /// Eligible offers this customer is held out of (control group): not offered.
    #[schema(value_type = Vec<Withheld>)]
    pub held_out: &'a RawValue,
    /// With `explain=true` only: offers not made, and why (`not_active`, `channel`,
    /// `not_eligible`, `capped`, `cooldown`).
    #[schema(value_type = Option<Vec<Withheld>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<&'a RawValue>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RankedOffer<'a> {
    pub offer_id: &'a str,
    pub name: &'a str,
    /// p_accept × value − cost + affinity_boost (ranked unrounded; shown, like p_accept and
    /// affinity_boost, rounded to 6 decimals).
    pub score: f64,
    pub p_accept: f64,
    pub value: f64,
    pub cost: f64,
    pub affinity_boost: f64,
    pub category: Option<&'a str>,
    /// Always false here; held-out offers are listed under `held_out`.
    pub holdout: bool,
    /// The score's parts in words.
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Withheld {
    pub offer_id: String,
    pub holdout: bool,
    pub reason: String,
}

/// A [`Withheld`] entry as JSON.
fn withheld_entry(
    offer_id: &str,
    holdout: bool,
    reason: String,
) -> serde_json::Result<Box<RawValue>> {
    serde_json::value::to_raw_value(&Withheld {
        offer_id: offer_id.to_owned(),
        holdout,
        reason,
    })
}

/// A withheld entry whose reason depends on the request.
fn withheld(offer: &Offer, reason: String) -> Result<Cow<'static, RawValue>, ApiError> {
    withheld_entry(&offer.id, false, reason)
        .map(Cow::Owned)
        .map_err(ApiError::internal)
}

/// The next-best offers for a customer.
#[utoipa::path(get, path = "/v1/customers/{id}/offers", tag = "offers",
    params(("id" = String, Path, description = "customer id, or an alias of one"), DecisionParams),
    responses(
        (status = 200, description = "ranked offers with explanations", body = Decision<'static>),
        (status = 400, description = "limit out of range, or a malformed query string", body = ErrorBody),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not marketing or admin", body = ErrorBody),
        (status = 404, description = "no such customer", body = ErrorBody),
        (status = 502, description = "the customer is held by another instance, which did not answer", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn decide(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<String>,
    query: Result<Query<DecisionParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    state.auth.require(&headers, Role::Marketing)?;
    let Query(params) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = params.limit.unwrap_or(3);
    if !(1..=50).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to 50, got {limit}"),
        ));
    }
    let view = state.views.get(&state.store, &state.config).await?;
    let reader = state.store.snapshot().map_err(ApiError::internal)?;
    let now = now_millis();
    let tag = Tag {
        generation: reader.generation(),
        view: view.id,
    };
    // The channel first: it cannot contain the separator, which a customer id may.
    let key = format!(
        "{}\u{1f}{id}",
        params.channel.as_deref().unwrap_or_default()
    );
    let prepared = match state.decisions.get_if(&key, tag, |p| now < p.valid_until) {
        Some(p) => p,
        None => {
            let p = match prepare(&state, view, reader, &id, params.channel.as_deref(), now) {
                Ok(p) => Arc::new(p),
                Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
                    return crate::forward::elsewhere(&state, &headers, &uri, &id, e).await;
                }
                Err(e) => return Err(e),
            };
            if p.planned {
                state.decisions.insert(&key, tag, p.clone());
            }
            p
        }
    };
    if prepared.planned {
        state.offers.planned.fetch_add(1, Ordering::Relaxed);
    }
    if prepared.since_commit {
        state
            .offers
            .planned_unchanged
            .fetch_add(1, Ordering::Relaxed);
    }

    let exploration = state.config.offers.exploration();
    let n = state.offers.decisions.fetch_add(1, Ordering::Relaxed);
    // Draws need no cryptographic strength; a small generator seeded per decision is enough.
    let mut rng = match state.config.offers.seed() {
        Some(seed) => SmallRng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        None => SmallRng::from_rng(&mut rand::rng()),
    };
    let exploration_name = match exploration {
        Exploration::Thompson => "thompson",
        Exploration::Greedy => "greedy",
    };
    let token = rng.random();
    // Candidates are scored first; only the `limit` best are written.
    let mut ranked: Vec<Ranked<'_>> = prepared
        .candidates
        .iter()
        .map(|e| {
            let c = &prepared.book[e.offer];
            let o = &c.offer;
            let p_accept = match (exploration, &e.draw) {
                (Exploration::Thompson, Some(beta)) => beta.sample(&mut rng),
                _ => e.posterior.mean(),
            };
            let affinity_boost = e
                .affine
                .then(|| state.config.offers.affinity_boost() * o.value);
            Ranked {
                json: &c.ranked,
                score: p_accept * o.value - o.cost + affinity_boost.unwrap_or(0.0),
                p_accept,
                alpha: e.posterior.alpha,
                beta: e.posterior.beta,
                affinity_boost,
            }
        })
        .collect();
    // Candidates come in catalog order, which is id order, and the sort is stable: ties go
    // to the smaller id.
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    ranked.truncate(limit);
    let held_out = prepared.held_out.get();
    let suppressed = params
        .explain
        .unwrap_or(false)
        .then(|| prepared.suppressed.get());
    let mut body = Vec::with_capacity(
        256 + held_out.len()
            + suppressed.map_or(0, str::len)
            + ranked.len() * prepared.ranked_bytes,
    );
    crate::decision_json::write(
        &mut body,
        &prepared.customer,
        token,
        exploration_name,
        &ranked,
        held_out,
        suppressed,
    );
    Ok(json_body(Bytes::from(body)))
}

/// Everything in a decision but its draws, ranking and id: what a hot customer's decisions
/// share while the store, the view and the clock's relevant instants stay put.
pub struct Prepared {
    /// The catalog the offer numbers below refer to.
    book: Arc<Book>,
    customer: CustomerJson,
    /// Offers that passed every check, in catalog order.
    candidates: Vec<Eligible>,
    /// JSON arrays of [`Withheld`].
    held_out: Box<RawValue>,
    suppressed: Box<RawValue>,
    /// The first instant at which a validity window, a contact window or cooldown, or an arm's
    /// pending impressions could change an answer above.
    valid_until: Millis,
    /// Made from the view's [`OfferPlan`] (only those are cached).
    planned: bool,
    /// Planned after a commit, for a customer unchanged since the view.
    since_commit: bool,
    /// The longest ranked offer's JSON, a hint for the body's capacity.
    ranked_bytes: usize,
}

impl Weigh for Arc<Prepared> {
    fn weigh(&self) -> u64 {
        (std::mem::size_of::<Prepared>()
            + self.customer.weight()
            + self.candidates.len() * std::mem::size_of::<Eligible>()
            + self.held_out.get().len()
            + self.suppressed.get().len()) as u64
    }
}

/// An offer that passed every check, before its draw.
struct Eligible {
    /// Its number in the book.
    offer: usize,
    posterior: Posterior,
    /// The posterior as a distribution to draw from (always there for counts plus one).
    draw: Option<Beta<f64>>,
    /// Its category is among the customer's top categories.
    affine: bool,
}

/// Decides everything about `id`'s offers that does not need a draw.
fn prepare(
    state: &ApiState,
    view: Arc<crate::view::View>,
    reader: Arc<patron_store::StoreReader>,
    id: &str,
    channel: Option<&str>,
    now: Millis,
) -> Result<Prepared, ApiError> {
    // On the view's own generation its plan and snapshot hold everything a decision reads
    // about the customer (row, segment, top categories, whether it has contacts): only the
    // alias table is read. Equal generations mean equal data, so an id missing from the
    // snapshot is missing from the store.
    let exact = reader.generation() == view.generation;
    if exact
        && let Some(plan) = &view.offers
        && let Some(top) = &view.snapshot.top_categories
    {
        let customer = reader.resolve(id).map_err(ApiError::internal)?;
        let Some((batch, row)) = view.snapshot.customer_row(&customer) else {
            return Err(ApiError::not_found(format!("no customer `{id}`")));
        };
        let subject = Subject {
            rfm_segment: view_segment(&view, batch, row)?,
            top_categories: top.of(batch, row).map(str::to_owned).collect(),
            eligibility: Eligibility::Planned {
                plan,
                batch,
                row,
                exact,
            },
        };
        return prepare_subject(
            state,
            &reader,
            customer,
            plan.book.clone(),
            subject,
            channel,
            now,
        );
    }
    let found = find(state, view.clone(), &reader, id)?;
    let s = &found.stored.state;
    let customer = &found.stored.customer_id;
    // Otherwise the plan answers for a customer in the view when a commit came since but left
    // this customer's stored record and the catalog as they were. Then eligibility and
    // rfm_segment are the view's, as of its event clock (the same lag as segment membership),
    // while the contact history and arm counts are read now. Otherwise the customer's own row
    // is built and every predicate runs on it.
    let mut planned = None;
    if let Some(plan) = &view.offers
        && let Some((batch, row)) = view.snapshot.customer_row(customer)
        && (exact
            || (view.snapshot.digests.get(batch, row) == Some(found.stored.digest)
                && state.offers.get(&state.store)?.fingerprint == plan.book.fingerprint))
    {
        planned = Some((plan, batch, row));
    }
    let (book, subject) = match planned {
        Some((plan, batch, row)) => {
            let top_categories = top_categories(&state.config, s, found.as_of)
                .into_iter()
                .map(|(category, _)| category)
                .collect();
            let subject = Subject {
                rfm_segment: view_segment(&view, batch, row)?,
                top_categories,
                eligibility: Eligibility::Planned {
                    plan,
                    batch,
                    row,
                    exact,
                },
            };
            (plan.book.clone(), subject)
        }
        None => {
            let (p, row) = profile_and_row(
                &view,
                &state.config,
                customer.clone(),
                found.stored.scope,
                s,
                found.as_of,
                true,
            )?;
            let subject = Subject {
                rfm_segment: p.rfm_segment,
                top_categories: p.affinity.into_iter().map(|a| a.category).collect(),
                eligibility: Eligibility::Row(row.expect("asked for the row")),
            };
            (state.offers.get(&state.store)?, subject)
        }
    };
    prepare_subject(
        state,
        &reader,
        customer.clone(),
        book,
        subject,
        channel,
        now,
    )
}

/// The rfm segment of the view's `customers` row.
fn view_segment(view: &crate::view::View, batch: usize, row: usize) -> Result<String, ApiError> {
    let segments = view.snapshot.customers[batch]
        .column_by_name("rfm_segment")
        .ok_or_else(|| ApiError::internal("no rfm_segment column"))?
        .as_string::<i32>();
    Ok(segments.value(row).to_owned())
}

/// The rest of [`prepare`], once the customer's segment, categories and eligibility source
/// are known: validity, channel, eligibility, holdout, contact policy and posteriors.
fn prepare_subject(
    state: &ApiState,
    reader: &patron_store::StoreReader,
    customer: String,
    book: Arc<Book>,
    subject: Subject<'_>,
    channel: Option<&str>,
    now: Millis,
) -> Result<Prepared, ApiError> {
    let customer = &customer;
    let contacts: HashMap<String, ContactRecord> = if subject.may_have_contacts() {
        reader
            .contacts_of(customer)
            .map_err(ApiError::internal)?
            .into_iter()
            .collect()
    } else {
        HashMap::new()
    };
    let response_window_ms =
        i64::try_from(state.config.offers.response_window().as_millis()).unwrap_or(i64::MAX);
    // The earliest future instant that matters.
    let mut valid_until = Millis::MAX;
    let mut until = |t: Millis| {
        if t > now {
            valid_until = valid_until.min(t);
        }
    };
    let mut candidates = Vec::new();
    let mut held_out: Vec<Cow<'_, RawValue>> = Vec::new();
    let mut suppressed: Vec<Cow<'_, RawValue>> = Vec::new();
    for (i, c) in book.iter().enumerate() {
        let o = &c.offer;
        c.starts.into_iter().chain(c.ends).for_each(&mut until);
        if c.starts.is_some_and(|t| now < t) || c.ends.is_some_and(|t| now >= t) {
            suppressed.push(Cow::Borrowed(&c.not_active));
            continue;
        }
        if let Some(ch) = channel
            && !o.channels.is_empty()
            && !o.channels.iter().any(|allowed| allowed == ch)
        {
            suppressed.push(Cow::Borrowed(&c.off_channel));
            continue;
        }
        if !subject.eligible(i, c)? {
            suppressed.push(Cow::Borrowed(&c.not_eligible));
            continue;
        }
        if in_holdout(customer, &o.id, o.holdout) {
            held_out.push(Cow::Borrowed(&c.held_out));
            continue;
        }
        if let Some(contact) = contacts.get(&o.id) {
            if let Some(window) = c.window_ms {
                // An impression enters the window when it happens and leaves it `window` later.
                for &t in &contact.shown {
                    until(t);
                    until(t.saturating_add(window));
                }
            }
            if let (Some(cool), Some(declined)) = (c.cooldown_ms, contact.last_declined) {
                until(declined.saturating_add(cool));
            }
            if let (Some(max), Some(window)) = (o.max_impressions, c.window_ms) {
                let seen = contact.shown_within(now, window);
                if seen >= max as usize {
                    suppressed.push(withheld(
                        o,
                        format!(
                            "capped: shown {seen} times in the last {}",
                            o.window.as_deref().unwrap_or_default()
                        ),
                    )?);
                    continue;
                }
            }
            if let (Some(cool), Some(declined)) = (c.cooldown_ms, contact.last_declined)
                && now < declined.saturating_add(cool)
            {
                suppressed.push(withheld(
                    o,
                    format!(
                        "cooldown: declined within the last {}",
                        o.cooldown_after_decline.as_deref().unwrap_or_default()
                    ),
                )?);
                continue;
            }
        }
        let (posterior, matures_at) = subject.posterior(i, c, reader, now, response_window_ms)?;
        matures_at.into_iter().for_each(&mut until);
        let affine = o
            .category
            .as_ref()
            .is_some_and(|cat| subject.top_categories.contains(cat));
        candidates.push(Eligible {
            offer: i,
            draw: Beta::new(posterior.alpha, posterior.beta).ok(),
            posterior,
            affine,
        });
    }
    let held_out = serde_json::value::to_raw_value(&held_out).map_err(ApiError::internal)?;
    let suppressed = serde_json::value::to_raw_value(&suppressed).map_err(ApiError::internal)?;
    Ok(Prepared {
        customer: CustomerJson::new(customer, &subject.rfm_segment).map_err(ApiError::internal)?,
        ranked_bytes: candidates
            .iter()
            .map(|e| book[e.offer].ranked.capacity_hint())
            .max()
            .unwrap_or(0),
        planned: matches!(subject.eligibility, Eligibility::Planned { .. }),
        since_commit: matches!(
            subject.eligibility,
            Eligibility::Planned { exact: false, .. }
        ),
        book,
        candidates,
        held_out,
        suppressed,
        valid_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(eligible: &str) -> Offer {
        Offer {
            id: "o1".into(),
            name: "Ten off".into(),
            eligible: eligible.into(),
            value: 10.0,
            cost: 1.0,
            channels: vec![],
            category: None,
            max_impressions: Some(3),
            window: Some("7days".into()),
            cooldown_after_decline: Some("30days".into()),
            starts: None,
            ends: None,
            holdout: 0.1,
        }
    }

    #[test]
    fn a_good_offer_compiles() {
        let c = compile(offer("frequency >= 2 AND rfm_segment <> 'Lost'")).unwrap();
        assert_eq!(c.window_ms, Some(7 * 86_400_000));
        assert_eq!(c.cooldown_ms, Some(30 * 86_400_000));
    }

    /// The hand-written body is exactly serde's serialization of [`Decision`], the type the
    /// OpenAPI document shows, for text that needs escaping and numbers of every kind.
    #[test]
    fn a_written_decision_is_the_documented_type() {
        let mut tricky = offer("true");
        tricky.id = "o\"1\\é".into();
        tricky.name = "Ten \"off\"\n".into();
        tricky.category = Some("home & garden".into());
        tricky.value = 12.5;
        tricky.cost = 0.0;
        let tricky = compile(tricky).unwrap();
        let plain = compile(offer("true")).unwrap();
        let segment = "Can't \"Lose\"";
        let customer = CustomerJson::new("c\"42", segment).unwrap();
        let ranked = [
            Ranked {
                json: &tricky.ranked,
                score: 7.25,
                p_accept: 0.612_345_67,
                alpha: 3.0,
                beta: 7.0,
                affinity_boost: Some(1.875),
            },
            Ranked {
                json: &plain.ranked,
                score: -0.5,
                p_accept: 0.05,
                alpha: 1.0,
                beta: 12.0,
                affinity_boost: None,
            },
        ];
        let held_out = r#"[{"offer_id":"h","holdout":true,"reason":"holdout: 10%"}]"#;
        let mut body = Vec::new();
        crate::decision_json::write(
            &mut body, &customer, 0xabc, "thompson", &ranked, held_out, None,
        );
        let written: serde_json::Value = serde_json::from_slice(&body).unwrap();

        let expected = Decision {
            customer_id: "c\"42",
            rfm_segment: segment,
            decision_id: patron_core::offer::decision_id(0xabc, segment),
            exploration: "thompson",
            offers: vec![
                RankedOffer {
                    offer_id: "o\"1\\é",
                    name: "Ten \"off\"\n",
                    score: 7.25,
                    // Rounded to six decimals.
                    p_accept: 0.612_346,
                    value: 12.5,
                    cost: 0.0,
                    affinity_boost: 1.875,
                    category: Some("home & garden"),
                    holdout: false,
                    reason: "p_accept 0.6123 (thompson of Beta(3, 7) for Can't \"Lose\") × value \
                             12.5 − cost 0 + affinity 1.88 (top category)"
                        .into(),
                },
                RankedOffer {
                    offer_id: "o1",
                    name: "Ten off",
                    score: -0.5,
                    p_accept: 0.05,
                    value: 10.0,
                    cost: 1.0,
                    affinity_boost: 0.0,
                    category: None,
                    holdout: false,
                    reason: "p_accept 0.05 (thompson of Beta(1, 12) for Can't \"Lose\") × value \
                             10 − cost 1"
                        .into(),
                },
            ],
            held_out: &RawValue::from_string(held_out.into()).unwrap(),
            suppressed: None,
        };
        assert_eq!(written, serde_json::to_value(&expected).unwrap());

        let suppressed = r#"[{"offer_id":"s","holdout":false,"reason":"not_active: x"}]"#;
        let explained = RawValue::from_string(suppressed.into()).unwrap();
        let mut body = Vec::new();
        crate::decision_json::write(
            &mut body,
            &customer,
            0xabc,
            "thompson",
            &ranked,
            held_out,
            Some(suppressed),
        );
        let written: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let expected = Decision {
            suppressed: Some(&explained),
            ..expected
        };
        assert_eq!(written, serde_json::to_value(&expected).unwrap());
    }

    #[test]
    fn errors_name_the_field() {
        let err = |o: Offer| compile(o).err().expect("refused");
        assert!(err(offer("no_such_column > 1")).starts_with("`eligible`"));
        assert!(err(offer("monetary + 1")).starts_with("`eligible`"));
        let mut o = offer("true");
        o.window = Some("a fortnight".into());
        assert!(err(o).starts_with("`window`"));
        let mut o = offer("true");
        o.holdout = 1.0;
        assert!(err(o).starts_with("`holdout`"));
        let mut o = offer("true");
        o.value = f64::NAN;
        assert!(err(o).starts_with("`value`"));
        let mut o = offer("true");
        o.starts = Some("2025-02-01T00:00:00Z".into());
        o.ends = Some("2025-01-01T00:00:00Z".into());
        assert!(err(o).contains("`ends`"));
    }
}
