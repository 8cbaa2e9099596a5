//! Table definitions. See `docs/STATE_FORMAT.md` for the key encoding and invariants.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition, TableHandle};

use crate::{Result, StoreError};

/// Bumped on any incompatible change to a table or record encoding. Version 2 keeps links and
/// tombstones per scope (`alias_links`, `id_tombstones`); a version 1 store is moved to it on
/// open, and a build that reads only version 1 refuses the result rather than run without its
/// links.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format this build opens (and moves to [`FORMAT_VERSION`]).
const OLDEST_FORMAT: u32 = 1;

/// customer_id -> [`crate::codec`] profile record (owning source partition + state).
pub const CUSTOMERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("customers");
/// (merged id, scope) -> the id it was merged into. The scope is the source partition whose
/// records made the link: with identity routing, a partition's records follow only the links
/// its own records made, so what a partition does is a function of its log whatever else the
/// store holds (docs/ARCHITECTURE.md, Identity). [`LEGACY_SCOPE`] holds links of a store
/// written before scopes.
pub const ALIASES: TableDefinition<'_, (&str, u32), &str> = TableDefinition::new("alias_links");
/// The scope of links and tombstones carried over from a store written before they were kept
/// per partition (the tables `aliases` and `tombstones`).
pub const LEGACY_SCOPE: u32 = u32::MAX;
/// Before scopes: merged id -> the id it was merged into. Moved to [`ALIASES`] on open.
const UNSCOPED_ALIASES: TableDefinition<'_, &str, &str> = TableDefinition::new("aliases");
/// Before scopes: erased id -> erasure time. Moved to [`TOMBSTONES`] on open.
const UNSCOPED_TOMBSTONES: TableDefinition<'_, &str, i64> = TableDefinition::new("tombstones");
/// (source, partition) -> position record (next offset and the log's incarnation).
pub const POSITIONS: TableDefinition<'_, (&str, u32), &[u8]> = TableDefinition::new("positions");
/// Epoch day -> daily totals record.
pub const DAILY: TableDefinition<'_, i32, &[u8]> = TableDefinition::new("daily_totals");
/// Dead-letter outbox: sequence number -> [`crate::DeadLetterRecord`], committed with the
/// positions that passed the rejected records and removed once the dead-letter topic has them.
pub const DEAD_LETTERS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("dead_letters");
/// Route outbox: sequence number -> [`crate::RoutedRecord`], identity records for the source
/// topic (handoffs, merged states, forwarded events), committed with the positions that produced
/// them and removed once the topic has them.
pub const ROUTE_OUTBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("route_outbox");
/// Changelog outbox: sequence number -> the keys one checkpoint changed (each with its source
/// partition), removed once the changelog topic holds their values and a position marker.
pub const CHANGELOG_OUTBOX: TableDefinition<'_, u64, &[u8]> =
    TableDefinition::new("changelog_outbox");
/// (erased id, scope) -> erasure time (epoch ms); ids are canonical ids and their aliases, and
/// the scope is as in [`ALIASES`]. Events for such an id with a `ts` at or before it are
/// dropped, so a replay of old events cannot bring the customer back.
pub const TOMBSTONES: TableDefinition<'_, (&str, u32), i64> = TableDefinition::new("id_tombstones");
/// Offer catalog: offer id -> the offer as JSON (the `[[offers]]` fields).
pub const OFFER_CATALOG: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("offer_catalog");
/// (customer id, offer id) -> [`crate::ContactRecord`]: recent impressions and the last decline,
/// for contact policy.
pub const OFFER_CONTACTS: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("offer_contacts");
/// (offer id, rfm segment) -> [`crate::OfferCounts`]: the learning counts of each arm.
pub const OFFER_STATS: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("offer_stats");
/// Epoch day of event time -> the full KPI set (JSON) as last computed while that day was the
/// newest, so `/v1/kpis/history` can show figures that later state overwrites.
pub const KPI_SNAPSHOTS: TableDefinition<'_, i32, &[u8]> = TableDefinition::new("kpi_snapshots");
/// Named singletons: format version, counters, as_of, fitted models.
pub const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

pub const META_FORMAT: &str = "format_version";
pub const META_COUNTERS: &str = "counters";
pub const META_CLV_MODEL: &str = "clv_model";
/// The next dead-letter sequence number (u64, little-endian).
pub const META_DEAD_LETTER_SEQ: &str = "dead_letter_seq";
/// The dead-letter topic offset of the last delivery the store knows of (i64, little-endian).
pub const META_DEAD_LETTER_OFFSET: &str = "dead_letter_offset";
/// The next route outbox sequence number (u64, little-endian).
pub const META_ROUTE_SEQ: &str = "route_seq";
/// The next changelog outbox sequence number (u64, little-endian).
pub const META_CHANGELOG_SEQ: &str = "changelog_seq";
/// 1 while every piece of state the store holds is in the changelog, its outbox or the seed in
/// progress (a writer tracking changes since the store was empty, or since it began a seed); 0 once a
/// writer committed without tracking them (a replay, `serve` with the changelog off).
pub const META_CHANGELOG_COMPLETE: &str = "changelog_complete";
/// The changelog seed in progress ([`crate::changelog::ChangelogSeed`], encoded as an `Option`;
/// `None` or absent: no seed owed).
pub const META_CHANGELOG_SEED: &str = "changelog_seed";
/// [`crate::ErasureCounters`]: customers erased and events dropped by tombstones.
pub const META_ERASURES: &str = "erasures";

pub(crate) fn initialise(db: &Database, path: &Path) -> Result<()> {
    {
        let read = db.begin_read()?;
        if let Ok(meta) = read.open_table(META)
            && let Some(v) = meta.get(META_FORMAT)?
        {
            let bytes = v.value();
            let found = u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]));
            if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&found) {
                return Err(StoreError::Version {
                    path: path.to_path_buf(),
                    found,
                    expected: FORMAT_VERSION,
                });
            }
            let unscoped = read
                .list_tables()?
                .any(|t| matches!(t.name(), "aliases" | "tombstones"));
            if !unscoped
                && found == FORMAT_VERSION
                && read.open_table(ALIASES).is_ok()
                && read.open_table(DEAD_LETTERS).is_ok()
                && read.open_table(TOMBSTONES).is_ok()
                && read.open_table(OFFER_CATALOG).is_ok()
                && read.open_table(OFFER_CONTACTS).is_ok()
                && read.open_table(OFFER_STATS).is_ok()
                && read.open_table(KPI_SNAPSHOTS).is_ok()
                && read.open_table(ROUTE_OUTBOX).is_ok()
                && read.open_table(CHANGELOG_OUTBOX).is_ok()
            {
                return Ok(());
            }
            // A store from before the outbox, tombstones, offers or scoped links: add the
            // tables, and move unscoped links and tombstones into theirs.
            drop(read);
            let write = db.begin_write()?;
            open_later_tables(&write)?;
            scope_identity_tables(&write)?;
            {
                let mut meta = write.open_table(META)?;
                meta.insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())?;
            }
            write.commit()?;
            return Ok(());
        }
    }
    let write = db.begin_write()?;
    {
        write.open_table(CUSTOMERS)?;
        write.open_table(POSITIONS)?;
        write.open_table(DAILY)?;
        open_later_tables(&write)?;
        let mut meta = write.open_table(META)?;
        meta.insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())?;
    }
    write.commit()?;
    Ok(())
}

/// Tables added after format version 1 was fixed; created on open when missing.
fn open_later_tables(write: &redb::WriteTransaction) -> Result<()> {
    write.open_table(ALIASES)?;
    write.open_table(DEAD_LETTERS)?;
    write.open_table(TOMBSTONES)?;
    write.open_table(OFFER_CATALOG)?;
    write.open_table(OFFER_CONTACTS)?;
    write.open_table(OFFER_STATS)?;
    write.open_table(KPI_SNAPSHOTS)?;
    write.open_table(ROUTE_OUTBOX)?;
    write.open_table(CHANGELOG_OUTBOX)?;
    Ok(())
}

/// Moves the links and tombstones of a store written before scopes into the scoped tables,
/// under [`LEGACY_SCOPE`], and drops the old tables.
fn scope_identity_tables(write: &redb::WriteTransaction) -> Result<()> {
    let names: Vec<String> = write.list_tables()?.map(|t| t.name().to_owned()).collect();
    if names.iter().any(|n| n == "aliases") {
        move_to_legacy_scope(write, UNSCOPED_ALIASES, ALIASES)?;
    }
    if names.iter().any(|n| n == "tombstones") {
        move_to_legacy_scope(write, UNSCOPED_TOMBSTONES, TOMBSTONES)?;
    }
    Ok(())
}

/// Copies every entry of `old` into `new` under [`LEGACY_SCOPE`], then deletes `old`.
fn move_to_legacy_scope<V: redb::Value + 'static>(
    write: &redb::WriteTransaction,
    old: TableDefinition<'_, &str, V>,
    new: TableDefinition<'_, (&str, u32), V>,
) -> Result<()> {
    use redb::ReadableTable;
    {
        let from = write.open_table(old)?;
        let mut to = write.open_table(new)?;
        for entry in from.iter()? {
            let (id, value) = entry?;
            to.insert((id.value(), LEGACY_SCOPE), value.value())?;
        }
    }
    write.delete_table(old)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    /// A store written before scopes: its links and tombstones carry over under the legacy
    /// scope, and the old tables go.
    #[test]
    fn unscoped_links_and_tombstones_move_to_the_legacy_scope() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        {
            let db = Database::create(&path).unwrap();
            let write = db.begin_write().unwrap();
            {
                let mut meta = write.open_table(META).unwrap();
                meta.insert(META_FORMAT, 1u32.to_le_bytes().as_slice())
                    .unwrap();
                write.open_table(CUSTOMERS).unwrap();
                write.open_table(POSITIONS).unwrap();
                write.open_table(DAILY).unwrap();
                let mut aliases = write.open_table(UNSCOPED_ALIASES).unwrap();
                aliases.insert("anon-1", "carol").unwrap();
                aliases.insert("carol", "carol-renamed").unwrap();
                let mut tombstones = write.open_table(UNSCOPED_TOMBSTONES).unwrap();
                tombstones.insert("gone", 1_234).unwrap();
            }
            write.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let r = store.reader().unwrap();
        assert_eq!(r.resolve("anon-1").unwrap(), "carol-renamed");
        assert_eq!(
            r.all_aliases().unwrap(),
            vec![
                (("anon-1".to_owned(), LEGACY_SCOPE), "carol".to_owned()),
                (
                    ("carol".to_owned(), LEGACY_SCOPE),
                    "carol-renamed".to_owned()
                ),
            ]
        );
        assert_eq!(r.tombstone("gone").unwrap(), Some(1_234));
        assert_eq!(r.tombstone_in("gone", LEGACY_SCOPE).unwrap(), Some(1_234));
        drop(r);
        drop(store);
        let db = Database::open(&path).unwrap();
        let read = db.begin_read().unwrap();
        let names: Vec<String> = read
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n == "aliases" || n == "tombstones"),
            "{names:?}"
        );
        let meta = read.open_table(META).unwrap();
        let version = meta.get(META_FORMAT).unwrap().unwrap().value().to_vec();
        assert_eq!(version, 2u32.to_le_bytes(), "moved to format 2");
    }
}
