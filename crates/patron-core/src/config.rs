//! The configuration model: every section and key of DESIGN.md, with defaults.
//!
//! These are plain serde structs. Loading (file, then `PATRON__SECTION__KEY` environment
//! overrides) happens in the binary; this module only says what a valid config is. Every struct
//! denies unknown fields so a typo is an error that names the key, not a silent default.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::rfm::{RfmMap, RfmRule};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatronConfig {
    pub store: StoreConfig,
    pub source: SourceConfig,
    pub checkpoint: CheckpointConfig,
    pub ingest: IngestConfig,
    pub money: MoneyConfig,
    pub scoring: ScoringConfig,
    pub clv: ClvConfig,
    pub engagement: EngagementConfig,
    pub kpi: KpiConfig,
    pub api: ApiConfig,
    pub offers: OffersSection,
    pub rfm: RfmConfig,
    pub segments: Vec<SegmentConfig>,
    pub objectives: Vec<ObjectiveConfig>,
}

/// `[store] cache_mb` by default.
pub const DEFAULT_STORE_CACHE_MB: usize = 256;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Path of the redb file.
    pub path: String,
    /// redb's page cache (reads, and writes buffered until a commit), in MiB. redb's own
    /// default is 1 GiB, which a server reading a large store fills; the file stays in the
    /// operating system's cache either way (docs/BENCHMARKS.md, Server memory).
    pub cache_mb: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: "patron.redb".into(),
            cache_mb: DEFAULT_STORE_CACHE_MB,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Embedded,
    Kafka,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub dlq_topic: String,
    /// Keep each partition's state in `<topic>-changelog` (compacted), so an instance taking
    /// a partition over restores it from there instead of reading the topic from its start.
    pub changelog: bool,
    /// Keys per changelog round while the changelog catches up on a store it did not follow (a
    /// replayed store's first `serve`): bounds the records queued in memory and the writer's
    /// pause per round; the seed goes on where it was after a restart.
    pub changelog_seed_batch: usize,
    /// How long the group waits for an instance that stopped heartbeating before its partitions
    /// go to the others (Kafka's `session.timeout.ms`). Shorter: a crashed instance's partitions
    /// resume sooner; too short for the network: healthy instances are evicted. Keep it at 6 s
    /// or more with tansu 0.6, which holds a joining member for 3 s (docs/ARCHITECTURE.md).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kind: SourceKind::Embedded,
            brokers: String::new(),
            topic: "patron.events".into(),
            group_id: "patron".into(),
            dlq_topic: "patron.dead-letters".into(),
            changelog: true,
            changelog_seed_batch: 100_000,
            session_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// How often `serve` commits. Within 2 s of reading a backlog it also commits as soon as it
    /// has applied everything the log holds, at least 100 ms apart.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Records applied between two checkpoints at most. Large by default: `serve` checkpoints
    /// by `interval`, and a replay paces its checkpoints by their cost (at least 10 s apart,
    /// and applying about nine times as long as the next checkpoint is expected to take) and is
    /// bounded by its profile cache (each checkpoint rewrites most profiles when events are in
    /// time order, so frequent ones cost far more than they save).
    pub max_events: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            max_events: 50_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub max_event_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: 64 * 1024,
            max_future_skew: Duration::from_secs(24 * 3600),
            dedup_window: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MoneyConfig {
    pub base_currency: String,
    /// Units of base currency per unit of the keyed currency.
    pub fx_rates: BTreeMap<String, f64>,
    pub max_amount: f64,
}

impl Default for MoneyConfig {
    fn default() -> Self {
        Self {
            base_currency: "USD".into(),
            fx_rates: BTreeMap::new(),
            max_amount: 1_000_000.0,
        }
    }
}

impl MoneyConfig {
    pub fn max_amount_money(&self) -> Money {
        Money::from_f64(self.max_amount).unwrap_or(Money::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    #[default]
    Event,
    Wall,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringConfig {
    pub clock: Clock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    Day,
    #[default]
    Week,
}

impl TimeUnit {
    pub fn days(self) -> f64 {
        match self {
            TimeUnit::Day => 1.0,
            TimeUnit::Week => 7.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClvConfig {
    pub time_unit: TimeUnit,
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    pub margin: f64,
    pub discount_rate: f64,
    #[serde(with = "humantime_serde")]
    pub refit_interval: Duration,
}

impl Default for ClvConfig {
    fn default() -> Self {
        Self {
            time_unit: TimeUnit::Week,
            horizon: Duration::from_secs(365 * 24 * 3600),
            margin: 0.3,
            discount_rate: 0.1,
            refit_interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngagementConfig {
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    pub top_categories: usize,
}

impl Default for EngagementConfig {
    fn default() -> Self {
        Self {
            half_life: Duration::from_secs(14 * 24 * 3600),
            top_categories: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KpiConfig {
    #[serde(with = "humantime_serde")]
    pub active_window: Duration,
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for KpiConfig {
    fn default() -> Self {
        Self {
            active_window: Duration::from_secs(90 * 24 * 3600),
            refresh_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Marketing,
    Admin,
    Ingest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the key; the key itself is never stored.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// A request still running after this gets 503 `timeout` (SQL has its own, shorter limit).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Memory for serialized profiles of hot customers, in MiB (0: no cache). Entries are only
    /// answered while the store and the scoring view are the ones they were made from.
    pub profile_cache_mb: u64,
    /// Memory for hot customers' offer-decision inputs (eligibility, contact policy, arm
    /// posteriors, withheld offers), in MiB (0: no cache). Same rule as `profile_cache_mb`;
    /// each decision still draws and ranks afresh.
    pub decision_cache_mb: u64,
    pub metrics_key: Option<String>,
    /// The URL other instances reach this one's API at, for forwarding requests to the
    /// instance that holds a customer. Default: `http://` + the bound address, unless it binds
    /// every interface (then set it).
    pub advertised_url: Option<String>,
    pub keys: Vec<ApiKeyConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            request_timeout: Duration::from_secs(30),
            profile_cache_mb: 64,
            decision_cache_mb: 32,
            metrics_key: None,
            advertised_url: None,
            keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exploration {
    #[default]
    Thompson,
    Greedy,
}

/// DESIGN.md names both `[offers] exploration` and a `[[offers]]` catalog, but TOML cannot hold
/// a table and an array of tables under one name. Either form is accepted: a bare `[[offers]]`
/// array (exploration stays at its default, or `PATRON__OFFERS__EXPLORATION` is not usable), or a
/// table `[offers] exploration = ...` with the catalog in `[[offers.catalog]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OffersSection {
    Catalog(Vec<OfferConfig>),
    Table(OffersTable),
}

impl Default for OffersSection {
    fn default() -> Self {
        OffersSection::Table(OffersTable::default())
    }
}

impl OffersSection {
    pub fn exploration(&self) -> Exploration {
        match self {
            OffersSection::Catalog(_) => Exploration::default(),
            OffersSection::Table(t) => t.exploration,
        }
    }

    pub fn seed(&self) -> Option<u64> {
        match self {
            OffersSection::Catalog(_) => None,
            OffersSection::Table(t) => t.seed,
        }
    }

    pub fn response_window(&self) -> Duration {
        match self {
            OffersSection::Catalog(_) => OffersTable::default().response_window,
            OffersSection::Table(t) => t.response_window,
        }
    }

    pub fn affinity_boost(&self) -> f64 {
        match self {
            OffersSection::Catalog(_) => OffersTable::default().affinity_boost,
            OffersSection::Table(t) => t.affinity_boost,
        }
    }

    pub fn catalog(&self) -> &[OfferConfig] {
        match self {
            OffersSection::Catalog(c) => c,
            OffersSection::Table(t) => &t.catalog,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OffersTable {
    pub exploration: Exploration,
    /// Seeds Thompson sampling, for reproducible tests; unset draws from the OS.
    pub seed: Option<u64>,
    /// Added to an offer's score when its category is among the customer's top categories,
    /// as a share of the offer's value.
    pub affinity_boost: f64,
    /// An impression with no answer after this long counts as a decline (at most 31 days).
    #[serde(with = "humantime_serde")]
    pub response_window: Duration,
    pub catalog: Vec<OfferConfig>,
}

impl Default for OffersTable {
    fn default() -> Self {
        Self {
            exploration: Exploration::default(),
            seed: None,
            affinity_boost: 0.1,
            response_window: Duration::from_secs(86_400),
            catalog: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferConfig {
    pub id: String,
    pub name: String,
    #[serde(default = "default_true_predicate")]
    pub eligible: String,
    pub value: f64,
    #[serde(default)]
    pub cost: f64,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub max_impressions: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub cooldown_after_decline: Option<Duration>,
    #[serde(default)]
    pub starts: Option<String>,
    #[serde(default)]
    pub ends: Option<String>,
    #[serde(default)]
    pub holdout: f64,
}

fn default_true_predicate() -> String {
    "true".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RfmConfig {
    /// Replaces the default segment map when non-empty.
    pub map: Vec<RfmRule>,
}

impl RfmConfig {
    pub fn segment_map(&self) -> RfmMap {
        if self.map.is_empty() {
            RfmMap::default()
        } else {
            RfmMap::new(self.map.clone())
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    pub name: String,
    /// A SQL predicate over the `customers` table.
    #[serde(rename = "where")]
    pub predicate: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    pub name: String,
    pub kpi: String,
    pub baseline: f64,
    /// An absolute value (`0.2`) or a relative change (`"-25%"`).
    pub target: toml_like::NumberOrString,
    pub deadline: String,
    #[serde(default)]
    pub start: Option<String>,
}

/// Small helper types for keys that accept either a number or a string.
pub mod toml_like {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum NumberOrString {
        Number(f64),
        Text(String),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config/default.toml` documents every key; it must parse and say exactly the defaults.
    #[test]
    fn shipped_default_toml_equals_the_built_in_defaults() {
        let text = include_str!("../../../config/default.toml");
        let parsed: PatronConfig = toml::from_str(text).expect("config/default.toml parses");
        let as_json = |c: &PatronConfig| serde_json::to_value(c).unwrap();
        assert_eq!(as_json(&parsed), as_json(&PatronConfig::default()));
    }

    #[test]
    fn offers_accept_an_array_or_a_table() {
        let array: PatronConfig =
            toml::from_str("[[offers]]\nid = \"a\"\nname = \"A\"\nvalue = 1.0\n")
                .expect("array form");
        assert_eq!(array.offers.catalog().len(), 1);
        let table: PatronConfig = toml::from_str(
            "[offers]\nexploration = \"greedy\"\n[[offers.catalog]]\nid = \"a\"\nname = \"A\"\nvalue = 1.0\n",
        )
        .expect("table form");
        assert_eq!(table.offers.exploration(), Exploration::Greedy);
        assert_eq!(table.offers.catalog().len(), 1);
    }
}
