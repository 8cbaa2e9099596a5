//! Fitting BG/NBD and Gamma-Gamma on the store's customer summaries, and the stored model.
//!
//! Summaries per customer with at least one purchase: x = frequency − 1, t_x = last − first,
//! T = as_of − first (in the configured time unit), and the mean of the repeat purchases for
//! Gamma-Gamma. Times are rounded to whole days before grouping, as the published data sets
//! are, so identical summaries share one weighted row.

use std::time::Instant;

use patron_core::clv::{
    BgNbdFit, ClvModel, ClvOptions, FitOptions, GammaGammaFit, SpendRow, SummaryGrouper, fit_bgnbd,
    fit_gamma_gamma,
};
use patron_core::config::{ClvConfig, TimeUnit};
use patron_core::time::{MILLIS_PER_DAY, Millis};
use patron_store::Store;
use patron_store::tables::META_CLV_MODEL;
use serde::{Deserialize, Serialize};

use crate::{QueryError, Result};

/// A fit as stored in the store and reported by `patron fit` and `GET /v1/model`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredModel {
    pub time_unit: TimeUnit,
    pub as_of: Millis,
    pub fitted_at: Millis,
    pub fit_seconds: f64,
    pub bgnbd: BgNbdFit,
    pub gamma_gamma: GammaGammaFit,
}

impl StoredModel {
    pub fn model(&self) -> ClvModel {
        ClvModel {
            bg: self.bgnbd.params,
            gg: self.gamma_gamma.params,
        }
    }

    /// Scoring options for this model's time unit from `[clv]`.
    pub fn options(&self, clv: &ClvConfig) -> ClvOptions {
        ClvOptions {
            horizon_months: clv.horizon.as_secs_f64() / (30.0 * 86_400.0),
            time_unit_days: self.time_unit.days(),
            margin: clv.margin,
            annual_discount_rate: clv.discount_rate,
        }
    }
}

/// Fits both models on the store as of `as_of` (default: its event clock).
pub fn fit_store(store: &Store, as_of: Option<Millis>, time_unit: TimeUnit) -> Result<StoredModel> {
    let started = Instant::now();
    let reader = store.reader()?;
    let as_of = match as_of.or(reader.counters()?.as_of) {
        Some(t) => t,
        None => return Err(QueryError::NoCustomers),
    };
    let unit_ms = time_unit.days() * MILLIS_PER_DAY as f64;
    let whole_days =
        |ms: i64| (ms as f64 / MILLIS_PER_DAY as f64).round() * MILLIS_PER_DAY as f64 / unit_ms;
    // Grouped as they are read: ten million customers' triples would be hundreds of MB.
    let mut triples = SummaryGrouper::default();
    let mut customers = 0usize;
    let mut spend = Vec::new();
    reader.for_each_profile(|_, _, s| {
        let (Some(first), Some(last)) = (s.first_purchase, s.last_purchase) else {
            return;
        };
        let x = f64::from(s.frequency - 1);
        customers += 1;
        triples.push(
            x,
            whole_days(last - first),
            whole_days((as_of - first).max(0)),
        );
        if let Some(avg) = s.avg_repeat_value().filter(|a| a.0 > 0) {
            spend.push(SpendRow::new(x, avg.as_f64()));
        }
    })?;
    drop(reader);
    if customers == 0 {
        return Err(QueryError::NoCustomers);
    }
    let rows = triples.finish();
    let opts = FitOptions::default();
    let bgnbd = fit_bgnbd(&rows, &opts)?;
    let gamma_gamma = fit_gamma_gamma(&spend, &opts)?;
    Ok(StoredModel {
        time_unit,
        as_of,
        fitted_at: patron_core::time::now_millis(),
        fit_seconds: started.elapsed().as_secs_f64(),
        bgnbd,
        gamma_gamma,
    })
}

pub fn save_model(store: &Store, model: &StoredModel) -> Result<()> {
    let json = serde_json::to_vec(model).expect("model serialises");
    store.put_meta(META_CLV_MODEL, &json)?;
    Ok(())
}

/// The last stored model, if any (an unreadable one is treated as absent, never as garbage).
pub fn load_model(store: &Store) -> Result<Option<StoredModel>> {
    let bytes = store.reader()?.meta(META_CLV_MODEL)?;
    Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
}
