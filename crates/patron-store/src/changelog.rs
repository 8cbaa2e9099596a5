//! The store's side of the changelog: which keys changed (the changelog outbox), and putting a
//! partition's state back from a changelog image.
//!
//! Each checkpoint that changed state adds one outbox row: the keys it touched, each with the
//! source partition whose records changed it. The changelog writer (in `patron-stream`) reads
//! those keys' values from a snapshot taken after the commit, produces them with a position
//! marker, and removes the row in a later checkpoint once the topic acknowledged all of it.
//! The row holds keys only, so a row costs one small insert per checkpoint, whatever the
//! number of profiles it touched.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{PositionRecord, SourcePosition, remove_contacts_of};
use crate::codec;
use crate::offers::ContactRecord;
use crate::reader::StoreReader;
use crate::tables::*;
use crate::{Result, Store};

/// What kind of state a changelog key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    /// A profile (`customers`), by canonical id.
    Profile,
    /// An alias link (`aliases`), by merged id.
    Alias,
    /// A tombstone (`tombstones`), by erased id.
    Tombstone,
    /// Every contact record of one customer (`offer_contacts`), by customer id.
    Contacts,
}

/// One changed key and the source partition whose state it is part of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChangedKey {
    pub partition: u32,
    pub kind: ChangeKind,
    pub key: String,
}

/// Where a changelog seed (every key of a store the changelog did not follow, sent a slice at
/// a time) goes on: the table it is in, and the last key it sent there (`None`: from the
/// table's start). Kept in `meta/changelog_seed` until the last slice is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeedCursor {
    Profiles(Option<String>),
    Aliases(Option<(String, u32)>),
    Tombstones(Option<(String, u32)>),
    Contacts(Option<String>),
}

impl SeedCursor {
    /// A seed from the first key of the store.
    pub const START: SeedCursor = SeedCursor::Profiles(None);
}

/// A changelog seed under way (`meta/changelog_seed`): where it goes on, and the partitions
/// whose keys before the cursor are all in the changelog. A partition owned since is not among
/// them (its keys were passed over while another instance had it), and the seed starts again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangelogSeed {
    pub cursor: SeedCursor,
    pub covers: BTreeSet<u32>,
}

impl ChangelogSeed {
    /// A seed from the first key of the store, for the partitions owned when it sends it.
    pub fn start() -> Self {
        Self {
            cursor: SeedCursor::START,
            covers: BTreeSet::new(),
        }
    }

    /// Where a round owning `owned` takes its slice from: on from the cursor when every owned
    /// partition is covered, else from the first key again, for the owned partitions.
    pub fn for_round(mut self, owned: &BTreeSet<u32>) -> Self {
        if self.cursor == SeedCursor::START || !owned.is_subset(&self.covers) {
            self.cursor = SeedCursor::START;
            self.covers = owned.clone();
        }
        self
    }
}

/// A partition's state as a changelog holds it, to put in place of the store's own.
#[derive(Debug, Clone, Default)]
pub struct PartitionImage {
    pub partition: u32,
    /// Profile records (as encoded in `customers`), by canonical id.
    pub profiles: Vec<(String, Vec<u8>)>,
    /// Alias links made by the partition's records; `None`: the link went. They replace every
    /// link of the partition's scope.
    pub aliases: Vec<(String, Option<String>)>,
    /// Tombstones of the partition's scope, replacing the store's.
    pub tombstones: Vec<(String, i64)>,
    /// Every contact record of a customer; `None` removes the customer's records.
    pub contacts: Vec<(String, Option<ContactsValue>)>,
    /// The positions the image is the state at: the source partition's and the identity marks
    /// received into it. They replace every position of this partition whose source starts with
    /// `source_prefix`.
    pub positions: Vec<SourcePosition>,
    pub source_prefix: String,
    /// Keys to produce again (the changelog holds values for them that no marker confirmed).
    pub resend: Vec<ChangedKey>,
}

/// What a restore replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Profiles of the partition the store held before, dropped.
    pub dropped: u64,
    pub profiles: u64,
    pub aliases: u64,
}

/// The value a changelog record carries for a contact key.
pub type ContactsValue = Vec<(String, ContactRecord)>;

impl Store {
    /// Replaces the store's state of `image.partition` with the image, in one transaction:
    /// the partition's profiles go, the image's come in, links, tombstones and contacts are
    /// set as the image says, and the partition's positions become the image's. `next_seq`
    /// numbers the outbox row of `image.resend`.
    pub fn restore_partition(&self, image: &PartitionImage, next_seq: u64) -> Result<RestoreStats> {
        let txn = self.db.begin_write()?;
        let stats = write_image(&txn, image, next_seq)?;
        txn.commit()?;
        self.committed();
        Ok(stats)
    }
}

fn write_image(
    txn: &WriteTransaction,
    image: &PartitionImage,
    next_seq: u64,
) -> Result<RestoreStats> {
    let mut stats = RestoreStats::default();
    let mut customers = txn.open_table(CUSTOMERS)?;
    let mut stale = Vec::new();
    for entry in customers.iter()? {
        let (k, v) = entry?;
        if codec::profile_scope(k.value(), v.value())? == image.partition {
            stale.push(k.value().to_owned());
        }
    }
    for id in &stale {
        customers.remove(id.as_str())?;
    }
    stats.dropped = stale.len() as u64;
    for (id, record) in &image.profiles {
        customers.insert(id.as_str(), record.as_slice())?;
        stats.profiles += 1;
    }
    // The partition's links and tombstones are those its records made (their scope), so the
    // image replaces them whole: a link this store made for the partition in an earlier life,
    // which the image no longer has, must not be followed.
    let mut aliases = txn.open_table(ALIASES)?;
    drop_scope(&mut aliases, image.partition)?;
    for (from, to) in &image.aliases {
        if let Some(to) = to {
            aliases.insert((from.as_str(), image.partition), to.as_str())?;
            stats.aliases += 1;
        }
    }
    let mut tombstones = txn.open_table(TOMBSTONES)?;
    drop_scope(&mut tombstones, image.partition)?;
    for (id, at) in &image.tombstones {
        tombstones.insert((id.as_str(), image.partition), *at)?;
    }
    let mut contacts = txn.open_table(OFFER_CONTACTS)?;
    for (customer, records) in &image.contacts {
        remove_contacts_of(&mut contacts, customer)?;
        for (offer, record) in records.iter().flatten() {
            contacts.insert(
                (customer.as_str(), offer.as_str()),
                codec::encode(record).as_slice(),
            )?;
        }
    }
    let mut positions = txn.open_table(POSITIONS)?;
    let mut replaced = Vec::new();
    for entry in positions.iter()? {
        let (k, _) = entry?;
        let (source, partition) = k.value();
        if partition == image.partition && source.starts_with(image.source_prefix.as_str()) {
            replaced.push(source.to_owned());
        }
    }
    for source in &replaced {
        positions.remove((source.as_str(), image.partition))?;
    }
    for p in &image.positions {
        positions.insert(
            (p.source.as_str(), image.partition),
            codec::encode(&PositionRecord {
                next_offset: p.next_offset,
                incarnation: p.incarnation.clone(),
            })
            .as_slice(),
        )?;
    }
    if !image.resend.is_empty() {
        let mut outbox = txn.open_table(CHANGELOG_OUTBOX)?;
        outbox.insert(next_seq, codec::encode(&image.resend).as_slice())?;
        let mut meta = txn.open_table(META)?;
        meta.insert(META_CHANGELOG_SEQ, (next_seq + 1).to_le_bytes().as_slice())?;
    }
    Ok(stats)
}

/// Visits the keys of a table keyed by (id, scope) after `after`, as changes of `kind` in their
/// scope's partition (those of the legacy scope are passed over, but count), until `left` runs
/// out: then returns the last key, or `None` at the table's end.
fn scoped_keys_after<V: redb::Value + 'static>(
    table: &redb::ReadOnlyTable<(&'static str, u32), V>,
    after: Option<(String, u32)>,
    kind: ChangeKind,
    left: &mut usize,
    visit: &mut impl FnMut(ChangedKey),
) -> Result<Option<(String, u32)>> {
    let range = match &after {
        Some((id, scope)) => {
            table.range::<(&str, u32)>((Excluded((id.as_str(), *scope)), Unbounded))?
        }
        None => table.iter()?,
    };
    for entry in range {
        let (k, _) = entry?;
        let (id, scope) = k.value();
        if scope != LEGACY_SCOPE {
            visit(ChangedKey {
                partition: scope,
                kind,
                key: id.to_owned(),
            });
        }
        *left -= 1;
        if *left == 0 {
            return Ok(Some((id.to_owned(), scope)));
        }
    }
    Ok(None)
}

/// Removes every entry of `scope` from a table keyed by (id, scope).
fn drop_scope<V: redb::Value + 'static>(
    table: &mut redb::Table<'_, (&'static str, u32), V>,
    scope: u32,
) -> Result<()> {
    let mut stale = Vec::new();
    for entry in table.iter()? {
        let (key, _) = entry?;
        let (id, s) = key.value();
        if s == scope {
            stale.push(id.to_owned());
        }
    }
    for id in &stale {
        table.remove((id.as_str(), scope))?;
    }
    Ok(())
}

impl StoreReader {
    /// The changelog outbox: per checkpoint, the keys it changed, not yet acknowledged.
    pub fn pending_changes(&self) -> Result<Vec<(u64, Vec<ChangedKey>)>> {
        self.decode_all(CHANGELOG_OUTBOX, "changelog_outbox")
    }

    /// The changelog outbox's row numbers only, without decoding the keys they hold (a seed's
    /// row holds every key of the store).
    pub fn pending_change_seqs(&self) -> Result<Vec<u64>> {
        let table = self.txn.open_table(CHANGELOG_OUTBOX)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(entry?.0.value());
        }
        Ok(out)
    }

    /// The changelog seed in progress: where the next slice of a store the changelog did not
    /// follow starts, or `None` when no seed is owed.
    pub fn changelog_seed(&self) -> Result<Option<ChangelogSeed>> {
        match self.meta(META_CHANGELOG_SEED)? {
            Some(v) => codec::decode("meta", META_CHANGELOG_SEED, &v),
            None => Ok(None),
        }
    }

    /// Visits the keys of the store's state after `from`, at most `limit` of them, with the
    /// partition each belongs to, as the changelog names them: profiles by their scope, links
    /// and tombstones by theirs (those of the legacy scope belong to no partition and are
    /// passed over, though they count), contact records by their customer's profile. Returns
    /// where the next slice starts, or `None` once every key was visited. One slice at a time,
    /// so a seed of 10M customers holds no list of them and sends no round of millions.
    pub fn state_keys_after(
        &self,
        from: &SeedCursor,
        limit: usize,
        mut visit: impl FnMut(ChangedKey),
    ) -> Result<Option<SeedCursor>> {
        let mut left = limit.max(1);
        let mut at = from.clone();
        loop {
            at = match at {
                SeedCursor::Profiles(after) => {
                    let range = match &after {
                        Some(id) => self
                            .customers
                            .range::<&str>((Excluded(id.as_str()), Unbounded))?,
                        None => self.customers.iter()?,
                    };
                    for entry in range {
                        let (k, v) = entry?;
                        let id = k.value();
                        visit(ChangedKey {
                            partition: codec::profile_scope(id, v.value())?,
                            kind: ChangeKind::Profile,
                            key: id.to_owned(),
                        });
                        left -= 1;
                        if left == 0 {
                            return Ok(Some(SeedCursor::Profiles(Some(id.to_owned()))));
                        }
                    }
                    SeedCursor::Aliases(None)
                }
                SeedCursor::Aliases(after) => {
                    let last = scoped_keys_after(
                        &self.aliases,
                        after,
                        ChangeKind::Alias,
                        &mut left,
                        &mut visit,
                    )?;
                    if last.is_some() {
                        return Ok(Some(SeedCursor::Aliases(last)));
                    }
                    SeedCursor::Tombstones(None)
                }
                SeedCursor::Tombstones(after) => {
                    let table = self.txn.open_table(TOMBSTONES)?;
                    let last = scoped_keys_after(
                        &table,
                        after,
                        ChangeKind::Tombstone,
                        &mut left,
                        &mut visit,
                    )?;
                    if last.is_some() {
                        return Ok(Some(SeedCursor::Tombstones(last)));
                    }
                    SeedCursor::Contacts(None)
                }
                SeedCursor::Contacts(after) => {
                    let Some(contacts) = &self.offer_contacts else {
                        return Ok(None);
                    };
                    // A customer's records are one key: start at the first of them, and pass
                    // over those of the customer the last slice ended with.
                    let start = after.as_deref().unwrap_or("");
                    let mut last = after.clone();
                    for entry in contacts.range((start, "")..)? {
                        let (k, _) = entry?;
                        let customer = k.value().0;
                        if last.as_deref() == Some(customer) {
                            continue;
                        }
                        last = Some(customer.to_owned());
                        // A customer's contacts go with its profile's partition (none without one).
                        if let Some(profile) = self.customers.get(customer)? {
                            visit(ChangedKey {
                                partition: codec::profile_scope(customer, profile.value())?,
                                kind: ChangeKind::Contacts,
                                key: customer.to_owned(),
                            });
                        }
                        left -= 1;
                        if left == 0 {
                            return Ok(Some(SeedCursor::Contacts(last)));
                        }
                    }
                    return Ok(None);
                }
            };
        }
    }

    /// The profile record stored under exactly `id`, as encoded (scope and state).
    pub fn profile_record(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.customers.get(id)?.map(|v| v.value().to_vec()))
    }

    /// The id `id` links to directly in `scope`, if it is an alias there.
    pub fn alias_in(&self, id: &str, scope: u32) -> Result<Option<String>> {
        Ok(self.aliases.get((id, scope))?.map(|v| v.value().to_owned()))
    }

    /// Every position whose source starts with `prefix`, for one partition.
    pub fn partition_positions(&self, prefix: &str, partition: u32) -> Result<Vec<SourcePosition>> {
        Ok(self
            .positions()?
            .into_iter()
            .filter(|p| p.partition == partition && p.source.starts_with(prefix))
            .collect())
    }
}

/// Groups changed keys by partition, each key once.
pub fn by_partition<'a>(
    rows: impl IntoIterator<Item = &'a ChangedKey>,
) -> BTreeMap<u32, Vec<(ChangeKind, &'a str)>> {
    let mut out: BTreeMap<u32, Vec<(ChangeKind, &'a str)>> = BTreeMap::new();
    for k in rows {
        out.entry(k.partition).or_default().push((k.kind, &k.key));
    }
    for keys in out.values_mut() {
        keys.sort_unstable();
        keys.dedup();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Checkpoint, ProfileWrite};
    use patron_core::state::CustomerState;

    fn state(frequency: u32) -> CustomerState {
        CustomerState {
            frequency,
            ..CustomerState::default()
        }
    }

    fn position(source: &str, partition: u32, next: u64) -> SourcePosition {
        SourcePosition {
            source: source.to_owned(),
            partition,
            next_offset: next,
            incarnation: String::new(),
        }
    }

    #[test]
    fn a_restore_replaces_one_partition_and_leaves_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb")).unwrap();
        store
            .commit(&Checkpoint {
                profiles: vec![
                    ProfileWrite::upsert("stale-in-1", 1, &state(9)),
                    ProfileWrite::upsert("kept-in-0", 0, &state(2)),
                ],
                links: vec![
                    (("anon-x".into(), 1), Some("stale-in-1".into())),
                    // Made by partition 1's records in an earlier life; the image has no such
                    // link any more.
                    (("anon-z".into(), 1), Some("stale-in-1".into())),
                    (("anon-k".into(), 0), Some("kept-in-0".into())),
                ],
                tombstones: vec![
                    (("old".into(), 1), Some(500)),
                    (("kept".into(), 0), Some(700)),
                ],
                positions: vec![
                    position("kafka:t", 1, 50),
                    position("kafka:t#route-from-0", 1, 7),
                    position("kafka:t#route-from-2", 1, 3),
                    position("kafka:t", 0, 80),
                ],
                ..Checkpoint::default()
            })
            .unwrap();
        let image = PartitionImage {
            partition: 1,
            profiles: vec![("c-1".into(), codec::encode_profile(1, &state(4)))],
            aliases: vec![
                ("anon-x".into(), None),
                ("anon-y".into(), Some("c-1".into())),
            ],
            tombstones: vec![("gone".into(), 1_000)],
            contacts: vec![(
                "c-1".into(),
                Some(vec![("o1".into(), ContactRecord::default())]),
            )],
            positions: vec![
                position("kafka:t", 1, 120),
                position("kafka:t#route-from-0", 1, 30),
            ],
            source_prefix: "kafka:t".into(),
            resend: vec![ChangedKey {
                partition: 1,
                kind: ChangeKind::Profile,
                key: "c-9".into(),
            }],
        };
        let stats = store.restore_partition(&image, 5).unwrap();
        assert_eq!(
            stats,
            RestoreStats {
                dropped: 1,
                profiles: 1,
                aliases: 1
            }
        );
        let r = store.reader().unwrap();
        assert!(r.profile_exact("stale-in-1").unwrap().is_none());
        assert_eq!(r.profile_exact("c-1").unwrap().unwrap().state.frequency, 4);
        assert_eq!(
            r.profile_exact("kept-in-0")
                .unwrap()
                .unwrap()
                .state
                .frequency,
            2
        );
        assert_eq!(r.alias_in("anon-x", 1).unwrap(), None);
        assert_eq!(r.alias_in("anon-z", 1).unwrap(), None, "stale links go");
        assert_eq!(r.alias_in("anon-y", 1).unwrap().as_deref(), Some("c-1"));
        assert_eq!(r.alias_in("anon-y", 0).unwrap(), None);
        assert_eq!(
            r.resolve("anon-k").unwrap(),
            "kept-in-0",
            "other scopes stay"
        );
        assert_eq!(r.tombstone_in("gone", 1).unwrap(), Some(1_000));
        assert_eq!(r.tombstone("old").unwrap(), None, "stale tombstones go");
        assert_eq!(r.tombstone("kept").unwrap(), Some(700));
        assert_eq!(r.contacts_of("c-1").unwrap().len(), 1);
        let mut of_1: Vec<(String, u64)> = r
            .partition_positions("kafka:t", 1)
            .unwrap()
            .into_iter()
            .map(|p| (p.source, p.next_offset))
            .collect();
        of_1.sort();
        assert_eq!(
            of_1,
            vec![
                ("kafka:t".to_owned(), 120),
                ("kafka:t#route-from-0".to_owned(), 30)
            ],
            "the mark from partition 2 is gone with the old state"
        );
        assert_eq!(r.position("kafka:t", 0).unwrap().unwrap().next_offset, 80);
        assert_eq!(
            r.pending_changes().unwrap(),
            vec![(5, image.resend.clone())]
        );
    }

    /// Every key of the state once, in table order, whatever the slice size: the seed's
    /// slices, each starting where the last ended, add up to the whole store.
    #[test]
    fn seed_slices_visit_every_state_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb")).unwrap();
        let contact = |customer: &str, offer: &str| {
            (
                (customer.to_owned(), offer.to_owned()),
                ContactRecord::default(),
            )
        };
        store
            .commit(&Checkpoint {
                profiles: vec![
                    ProfileWrite::upsert("b", 1, &state(1)),
                    ProfileWrite::upsert("a", 0, &state(1)),
                    ProfileWrite::upsert("c", 2, &state(1)),
                ],
                links: vec![
                    (("anon-2".into(), 2), Some("c".into())),
                    (("anon-1".into(), 0), Some("a".into())),
                    (("old".into(), LEGACY_SCOPE), Some("a".into())),
                ],
                tombstones: vec![
                    (("gone".into(), 1), Some(5)),
                    (("x".into(), LEGACY_SCOPE), Some(6)),
                ],
                contacts: vec![
                    contact("c", "o2"),
                    contact("a", "o1"),
                    contact("a", "o2"),
                    // Contact records of a customer with no profile belong to no partition.
                    contact("ghost", "o1"),
                    contact("b", "o1"),
                ],
                ..Checkpoint::default()
            })
            .unwrap();
        let key = |partition, kind, key: &str| ChangedKey {
            partition,
            kind,
            key: key.to_owned(),
        };
        let expected = vec![
            key(0, ChangeKind::Profile, "a"),
            key(1, ChangeKind::Profile, "b"),
            key(2, ChangeKind::Profile, "c"),
            key(0, ChangeKind::Alias, "anon-1"),
            key(2, ChangeKind::Alias, "anon-2"),
            key(1, ChangeKind::Tombstone, "gone"),
            key(0, ChangeKind::Contacts, "a"),
            key(1, ChangeKind::Contacts, "b"),
            key(2, ChangeKind::Contacts, "c"),
        ];
        let reader = store.reader().unwrap();
        for limit in [1, 2, 3, 5, 100] {
            let mut visited = Vec::new();
            let mut from = Some(SeedCursor::START);
            let mut slices = 0;
            while let Some(at) = from {
                from = reader
                    .state_keys_after(&at, limit, |k| visited.push(k))
                    .unwrap();
                slices += 1;
                assert!(slices <= 20, "the seed ends (slices of {limit})");
            }
            assert_eq!(visited, expected, "slices of {limit}");
        }
        assert_eq!(
            reader
                .state_keys_after(&SeedCursor::Contacts(Some("c".into())), 10, |k| panic!(
                    "nothing after the last key: {k:?}"
                ))
                .unwrap(),
            None
        );
    }

    /// A round goes on from the cursor only when the seed covers every partition it owns; a
    /// partition owned since (or a seed not begun) sends it from the first key for them all.
    #[test]
    fn a_seed_starts_again_for_partitions_it_does_not_cover() {
        let halfway = SeedCursor::Profiles(Some("c5".into()));
        let seed = ChangelogSeed {
            cursor: halfway.clone(),
            covers: [0, 1, 2].into(),
        };
        let owned = |p: &[u32]| p.iter().copied().collect::<BTreeSet<u32>>();
        assert_eq!(
            seed.clone().for_round(&owned(&[0, 2])),
            seed,
            "covered: goes on"
        );
        assert_eq!(
            seed.clone().for_round(&owned(&[0, 3])),
            ChangelogSeed {
                cursor: SeedCursor::START,
                covers: owned(&[0, 3])
            },
            "partition 3 was passed over"
        );
        assert_eq!(
            ChangelogSeed::start().for_round(&owned(&[1, 2])),
            ChangelogSeed {
                cursor: SeedCursor::START,
                covers: owned(&[1, 2])
            },
            "a seed not begun covers what its first round owns"
        );
    }

    #[test]
    fn changed_keys_group_by_partition_once_each() {
        let key = |partition, kind, key: &str| ChangedKey {
            partition,
            kind,
            key: key.to_owned(),
        };
        let rows = [
            key(2, ChangeKind::Profile, "b"),
            key(0, ChangeKind::Alias, "a"),
            key(2, ChangeKind::Profile, "b"),
            key(2, ChangeKind::Profile, "a"),
        ];
        let grouped = by_partition(&rows);
        assert_eq!(grouped[&0], vec![(ChangeKind::Alias, "a")]);
        assert_eq!(
            grouped[&2],
            vec![(ChangeKind::Profile, "a"), (ChangeKind::Profile, "b")]
        );
    }
}
