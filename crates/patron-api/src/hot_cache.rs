//! What hot customers' requests have in common, kept between requests.
//!
//! On the event clock a profile is a pure function of the committed state (the store's
//! generation) and of the scoring view it is ranked against (RFM population, user segments, CLV
//! model). Its JSON can therefore be answered again for as long as both are unchanged: a
//! customer asked for thousands of times a second is scored once per commit or view rebuild
//! instead of on every request. The same holds for everything in an offer decision except its
//! draws and its id ([`crate::offers`]). Every entry carries the [`Tag`] it was made under, and
//! a different tag is a miss, so one commit or rebuild retires every entry at once (they then
//! age out under the cache's eviction policy). On the wall clock recency moves with every
//! request, so nothing is cached.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use patron_core::config::{Clock, PatronConfig};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use serde::Serialize;
use utoipa::ToSchema;

/// What an entry was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// The store generation of the read snapshot.
    pub generation: u64,
    /// The scoring view's id.
    pub view: u64,
}

/// A cached value's size in memory, roughly, in bytes.
pub trait Weigh {
    fn weigh(&self) -> u64;
}

impl Weigh for Bytes {
    fn weigh(&self) -> u64 {
        self.len() as u64
    }
}

#[derive(Clone)]
struct Entry<V> {
    tag: Tag,
    value: V,
}

/// Entries weigh their bytes (key, value, and bookkeeping).
#[derive(Clone)]
struct ByBytes;

/// Bookkeeping per entry beyond its key and value, roughly.
const ENTRY_OVERHEAD: u64 = 64;
/// A typical entry (a rich profile's JSON), to size the table.
const TYPICAL_ENTRY: u64 = 1536;

impl<V: Weigh> Weighter<String, Entry<V>> for ByBytes {
    fn weight(&self, key: &String, entry: &Entry<V>) -> u64 {
        key.len() as u64 + entry.value.weigh() + ENTRY_OVERHEAD
    }
}

/// Values by key, each answered only under the [`Tag`] it was made under.
pub struct TaggedCache<V> {
    cache: Option<Cache<String, Entry<V>, ByBytes>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Serialized profiles (`[api] profile_cache_mb`).
pub type ProfileCache = TaggedCache<Bytes>;

/// Counters for `/v1/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CacheStats {
    /// `false` when its size is 0 or on the wall clock.
    pub enabled: bool,
    pub entries: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

impl<V: Weigh + Clone> TaggedCache<V> {
    /// A cache of at most `capacity_bytes` (0: none).
    pub fn new(capacity_bytes: u64) -> Self {
        let cache = (capacity_bytes > 0).then(|| {
            let items = (capacity_bytes / TYPICAL_ENTRY).max(16) as usize;
            Cache::with_weighter(items, capacity_bytes, ByBytes)
        });
        Self {
            cache,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// `mb` MiB (`[api] profile_cache_mb` or `decision_cache_mb`), and none on the wall clock.
    pub fn for_config(config: &PatronConfig, mb: u64) -> Self {
        let bytes = match config.scoring.clock {
            Clock::Event => mb.saturating_mul(1 << 20),
            Clock::Wall => 0,
        };
        Self::new(bytes)
    }

    /// The value made for `key` under `tag`, if there is one.
    pub fn get(&self, key: &str, tag: Tag) -> Option<V> {
        self.get_if(key, tag, |_| true)
    }

    /// [`Self::get`], when the value also passes `fresh`.
    pub fn get_if(&self, key: &str, tag: Tag, fresh: impl FnOnce(&V) -> bool) -> Option<V> {
        let cache = self.cache.as_ref()?;
        match cache.get(key) {
            Some(entry) if entry.tag == tag && fresh(&entry.value) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(entry.value)
            }
            _ => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn insert(&self, key: &str, tag: Tag, value: V) {
        if let Some(cache) = &self.cache {
            cache.insert(key.to_owned(), Entry { tag, value });
        }
    }

    pub fn stats(&self) -> CacheStats {
        let (entries, bytes, capacity_bytes) = self
            .cache
            .as_ref()
            .map_or((0, 0, 0), |c| (c.len() as u64, c.weight(), c.capacity()));
        CacheStats {
            enabled: self.cache.is_some(),
            entries,
            bytes,
            capacity_bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Tag = Tag {
        generation: 1,
        view: 1,
    };

    #[test]
    fn an_entry_answers_only_under_its_own_tag() {
        let cache = ProfileCache::new(1 << 20);
        assert!(cache.get("c1", A).is_none());
        cache.insert("c1", A, Bytes::from_static(b"{\"x\":1}"));
        assert_eq!(cache.get("c1", A).as_deref(), Some(&b"{\"x\":1}"[..]));
        let after_commit = Tag { generation: 2, ..A };
        let after_rebuild = Tag { view: 2, ..A };
        assert!(cache.get("c1", after_commit).is_none());
        assert!(cache.get("c1", after_rebuild).is_none());
        assert!(cache.get("c2", A).is_none());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 4, 1));
    }

    #[test]
    fn it_stays_within_its_bytes_and_can_be_off() {
        let cache = ProfileCache::new(64 * 1024);
        let body = Bytes::from(vec![b'x'; 1000]);
        for i in 0..1000 {
            cache.insert(&format!("c{i}"), A, body.clone());
        }
        let s = cache.stats();
        assert!(s.bytes <= 64 * 1024, "{} bytes", s.bytes);
        assert!(s.entries < 1000 && s.entries > 0, "{} entries", s.entries);

        let off = ProfileCache::new(0);
        off.insert("c1", A, body);
        assert!(off.get("c1", A).is_none());
        assert!(!off.stats().enabled);
    }

    #[test]
    fn the_wall_clock_caches_nothing() {
        let mut config = PatronConfig::default();
        config.scoring.clock = Clock::Wall;
        assert!(!ProfileCache::for_config(&config, 64).stats().enabled);
        config.scoring.clock = Clock::Event;
        assert!(ProfileCache::for_config(&config, 64).stats().enabled);
        assert!(!ProfileCache::for_config(&config, 0).stats().enabled);
    }
}
