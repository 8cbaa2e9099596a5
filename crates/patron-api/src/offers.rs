//! Next-best offers: the catalog (`/v1/offers/catalog`) and decisions
//! (`GET /v1/customers/{id}/offers`).
//!
//! The catalog lives in the store; `[[offers]]` from config is written into it at start-up.
//! Each offer's eligibility predicate is compiled once per catalog version into a physical
//! expression over the `customers` schema, the same columns as in SQL, and evaluated against the
//! customer's one-row batch per request.
//!
//! A decision, per offer: validity window, channel, eligibility, then the holdout (a stable hash
//! of customer and offer), then contact policy from the committed contact history
//! (`max_impressions` per `window`, `cooldown_after_decline`). What survives is scored
//! P(accept) × value − cost + affinity boost, where P(accept) comes from the Beta posterior of
//! the (offer, rfm_segment) arm: its mean (`greedy`) or one draw (`thompson`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use arrow::array::Array;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use patron_core::config::{Exploration, OfferConfig, Role};
use patron_core::offer::{Posterior, decision_id, in_holdout};
use patron_core::time::{Millis, now_millis, parse_rfc3339};
use patron_query::snapshot::{CompiledPredicate, customers_schema};
use patron_store::{ContactRecord, Store};
use rand::{RngExt, SeedableRng};
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::customers::{lookup, profile_and_row};
use crate::error::{ErrorBody, JsonBody};
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
    /// Reasons that do not depend on the customer, written once.
    not_eligible: String,
    held_out: String,
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
    Ok(CompiledOffer {
        not_eligible: format!("not_eligible: {}", offer.eligible),
        held_out: format!(
            "holdout: in the {:.0}% control group",
            offer.holdout * 100.0
        ),
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
    current: RwLock<Option<Arc<Vec<CompiledOffer>>>>,
    /// Decisions made, to derive seeded draws.
    decisions: AtomicU64,
}

impl OfferBook {
    pub fn invalidate(&self) {
        *self.current.write().expect("offer book lock") = None;
    }

    pub fn get(&self, store: &Store) -> Result<Arc<Vec<CompiledOffer>>, ApiError> {
        if let Some(c) = self.current.read().expect("offer book lock").clone() {
            return Ok(c);
        }
        let mut offers = Vec::new();
        for (id, json) in store.offer_catalog().map_err(ApiError::internal)? {
            let offer: Offer = serde_json::from_slice(&json)
                .map_err(|e| ApiError::internal(format!("stored offer `{id}`: {e}")))?;
            // Stored offers were checked on the way in; one that no longer compiles (a schema
            // change) is left out and logged rather than failing every decision.
            match compile(offer) {
                Ok(c) => offers.push(c),
                Err(e) => tracing::error!("stored offer `{id}` is skipped: {e}"),
            }
        }
        let compiled = Arc::new(offers);
        *self.current.write().expect("offer book lock") = Some(compiled.clone());
        Ok(compiled)
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
}

/// Ranked offers for one customer, with why each was or was not offered.
#[derive(Debug, Serialize, ToSchema)]
pub struct Decision {
    pub customer_id: String,
    /// The segment whose learned acceptance rates were used.
    pub rfm_segment: String,
    /// Carry it on offer_shown / offer_accepted / offer_declined events.
    pub decision_id: String,
    /// `thompson` or `greedy`.
    pub exploration: String,
    /// Best first.
    pub offers: Vec<RankedOffer>,
    /// Eligible offers this customer is held out of (control group): not offered.
    pub held_out: Vec<Withheld>,
    /// Offers not made, and why: `not_active`, `channel`, `not_eligible`, `capped`, `cooldown`.
    pub suppressed: Vec<Withheld>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RankedOffer {
    pub offer_id: String,
    pub name: String,
    /// p_accept × value − cost + affinity_boost.
    pub score: f64,
    pub p_accept: f64,
    pub value: f64,
    pub cost: f64,
    pub affinity_boost: f64,
    pub category: Option<String>,
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

/// The next-best offers for a customer.
#[utoipa::path(get, path = "/v1/customers/{id}/offers", tag = "offers",
    params(("id" = String, Path, description = "customer id, or an alias of one"), DecisionParams),
    responses(
        (status = 200, description = "ranked offers with explanations", body = Decision),
        (status = 400, description = "limit out of range, or a malformed query string", body = ErrorBody),
        (status = 401, description = "missing or unknown key", body = ErrorBody),
        (status = 403, description = "the key's role is not marketing or admin", body = ErrorBody),
        (status = 404, description = "no such customer", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn decide(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<DecisionParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Decision>, ApiError> {
    state.auth.require(&headers, Role::Marketing)?;
    let Query(params) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = params.limit.unwrap_or(3);
    if !(1..=50).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to 50, got {limit}"),
        ));
    }
    let book = state.offers.get(&state.store)?;
    let found = lookup(&state, &id).await?;
    let s = &found.stored.state;
    let customer = found.stored.customer_id.clone();
    let (p, row) = profile_and_row(
        &found.view,
        &state.config,
        customer.clone(),
        found.stored.scope,
        s,
        found.as_of,
        true,
    )?;
    let row = row.expect("asked for the row");
    let contacts: HashMap<String, ContactRecord> = found
        .reader
        .contacts_of(&customer)
        .map_err(ApiError::internal)?
        .into_iter()
        .collect();
    let exploration = state.config.offers.exploration();
    let boost_share = state.config.offers.affinity_boost();
    let response_window_ms =
        i64::try_from(state.config.offers.response_window().as_millis()).unwrap_or(i64::MAX);
    let n = state.offers.decisions.fetch_add(1, Ordering::Relaxed);
    let mut rng = match state.config.offers.seed() {
        Some(seed) => {
            rand::rngs::StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        }
        None => rand::rngs::StdRng::from_rng(&mut rand::rng()),
    };
    let now = now_millis();
    let segment = p.rfm_segment.clone();
    let mut decision = Decision {
        customer_id: customer.clone(),
        rfm_segment: segment.clone(),
        decision_id: decision_id(rng.random(), &segment),
        exploration: match exploration {
            Exploration::Thompson => "thompson",
            Exploration::Greedy => "greedy",
        }
        .to_owned(),
        offers: Vec::new(),
        held_out: Vec::new(),
        suppressed: Vec::new(),
    };
    // Candidates are scored first; only the `limit` best are dressed for the response.
    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    for c in book.iter() {
        let o = &c.offer;
        let withhold = |reason: String| Withheld {
            offer_id: o.id.clone(),
            holdout: false,
            reason,
        };
        if c.starts.is_some_and(|t| now < t) || c.ends.is_some_and(|t| now >= t) {
            decision
                .suppressed
                .push(withhold("not_active: outside starts/ends".into()));
            continue;
        }
        if let Some(ch) = &params.channel
            && !o.channels.is_empty()
            && !o.channels.contains(ch)
        {
            decision
                .suppressed
                .push(withhold(format!("channel: not offered on `{ch}`")));
            continue;
        }
        let mask = c.predicate.evaluate(&row).map_err(ApiError::internal)?;
        if !(mask.is_valid(0) && mask.value(0)) {
            decision.suppressed.push(withhold(c.not_eligible.clone()));
            continue;
        }
        if in_holdout(&customer, &o.id, o.holdout) {
            decision.held_out.push(Withheld {
                offer_id: o.id.clone(),
                holdout: true,
                reason: c.held_out.clone(),
            });
            continue;
        }
        if let Some(contact) = contacts.get(&o.id) {
            if let (Some(max), Some(window)) = (o.max_impressions, c.window_ms) {
                let seen = contact.shown_within(now, window);
                if seen >= max as usize {
                    decision.suppressed.push(withhold(format!(
                        "capped: shown {seen} times in the last {}",
                        o.window.as_deref().unwrap_or_default()
                    )));
                    continue;
                }
            }
            if let (Some(cool), Some(declined)) = (c.cooldown_ms, contact.last_declined)
                && now < declined.saturating_add(cool)
            {
                decision.suppressed.push(withhold(format!(
                    "cooldown: declined within the last {}",
                    o.cooldown_after_decline.as_deref().unwrap_or_default()
                )));
                continue;
            }
        }
        let counts = found
            .reader
            .offer_counts(&o.id, &segment)
            .map_err(ApiError::internal)?
            .unwrap_or_default();
        let posterior = Posterior::from_counts(
            counts.matured(now, response_window_ms),
            counts.accepted,
            counts.declined,
        );
        let p_accept = match exploration {
            Exploration::Greedy => posterior.mean(),
            Exploration::Thompson => Beta::new(posterior.alpha, posterior.beta)
                .map(|b| b.sample(&mut rng))
                .unwrap_or_else(|_| posterior.mean()),
        };
        let affine = o
            .category
            .as_ref()
            .is_some_and(|cat| p.affinity.iter().any(|a| &a.category == cat));
        let affinity_boost = if affine { boost_share * o.value } else { 0.0 };
        candidates.push(Candidate {
            offer: c,
            score: p_accept * o.value - o.cost + affinity_boost,
            p_accept,
            posterior,
            affinity_boost,
            affine,
        });
    }
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.offer.offer.id.cmp(&b.offer.offer.id))
    });
    candidates.truncate(limit);
    decision.offers = candidates
        .into_iter()
        .map(|c| c.ranked(&decision.exploration, &segment))
        .collect();
    Ok(Json(decision))
}

/// `x` rounded to `digits` decimals.
fn rounded(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// An offer that passed every check, scored.
struct Candidate<'a> {
    offer: &'a CompiledOffer,
    score: f64,
    p_accept: f64,
    posterior: Posterior,
    affinity_boost: f64,
    /// The offer's category is among the customer's top categories.
    affine: bool,
}

impl Candidate<'_> {
    fn ranked(self, exploration: &str, segment: &str) -> RankedOffer {
        let o = &self.offer.offer;
        // Rounded, then printed shortest: fixed-precision float formatting costs more than the
        // rest of the decision.
        let mut reason = format!(
            "p_accept {} ({exploration} of Beta({}, {}) for {segment}) × value {} − cost {}",
            rounded(self.p_accept, 4),
            self.posterior.alpha,
            self.posterior.beta,
            rounded(o.value, 2),
            rounded(o.cost, 2),
        );
        if self.affine {
            reason.push_str(&format!(
                " + affinity {} (top category)",
                rounded(self.affinity_boost, 2)
            ));
        }
        RankedOffer {
            offer_id: o.id.clone(),
            name: o.name.clone(),
            score: self.score,
            p_accept: self.p_accept,
            value: o.value,
            cost: o.cost,
            affinity_boost: self.affinity_boost,
            category: o.category.clone(),
            holdout: false,
            reason,
        }
    }
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
