//! Offer records: each customer's contact history per offer, and the learning counts per
//! (offer, rfm segment). Both are written by the pipeline in its checkpoints; the catalog is
//! written by the API in its own small transactions.

use patron_core::time::Millis;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::tables::OFFER_CATALOG;
use crate::{Result, Store, codec};

/// Impressions kept per (customer, offer): enough for any sane `max_impressions`.
pub const MAX_REMEMBERED_IMPRESSIONS: usize = 64;

/// One customer's history with one offer, from `offer_*` interactions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRecord {
    /// Times the offer was shown, oldest first; at most [`MAX_REMEMBERED_IMPRESSIONS`].
    pub shown: Vec<Millis>,
    pub last_declined: Option<Millis>,
    pub last_accepted: Option<Millis>,
}

impl ContactRecord {
    pub fn note_shown(&mut self, ts: Millis) {
        let at = self.shown.partition_point(|t| *t <= ts);
        self.shown.insert(at, ts);
        if self.shown.len() > MAX_REMEMBERED_IMPRESSIONS {
            self.shown.remove(0);
        }
    }

    pub fn note_declined(&mut self, ts: Millis) {
        self.last_declined = Some(self.last_declined.map_or(ts, |t| t.max(ts)));
    }

    pub fn note_accepted(&mut self, ts: Millis) {
        self.last_accepted = Some(self.last_accepted.map_or(ts, |t| t.max(ts)));
    }

    /// Impressions in the window `(now - window, now]`.
    pub fn shown_within(&self, now: Millis, window_ms: i64) -> usize {
        let from = now.saturating_sub(window_ms);
        self.shown
            .iter()
            .filter(|t| **t > from && **t <= now)
            .count()
    }
}

/// The feedback counts of one (offer, segment) arm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferCounts {
    pub shown: u64,
    pub accepted: u64,
    pub declined: u64,
    /// Impressions per hour of event time (hours since the epoch, ascending) over the last
    /// [`MAX_RESPONSE_HOURS`], so a decision can tell impressions still awaiting an answer from
    /// those whose silence counts as a decline.
    pub recent: Vec<(i64, u64)>,
}

/// The longest `[offers] response_window` the per-hour impression counts can serve (31 days).
pub const MAX_RESPONSE_HOURS: i64 = 31 * 24;

const HOUR_MS: i64 = 3_600_000;

impl OfferCounts {
    pub fn note_shown(&mut self, ts: Millis) {
        self.shown += 1;
        let hour = ts.div_euclid(HOUR_MS);
        let at = self.recent.partition_point(|(h, _)| *h < hour);
        match self.recent.get_mut(at) {
            Some((h, n)) if *h == hour => *n += 1,
            _ => self.recent.insert(at, (hour, 1)),
        }
        let newest = self.recent.last().map_or(hour, |(h, _)| *h);
        self.recent
            .retain(|(h, _)| *h > newest - MAX_RESPONSE_HOURS);
    }

    /// Impressions older than `window_ms` before `now` (to the hour): their answer is due.
    pub fn matured(&self, now: Millis, window_ms: i64) -> u64 {
        let cutoff = now.saturating_sub(window_ms).div_euclid(HOUR_MS);
        let young: u64 = self
            .recent
            .iter()
            .filter(|(h, _)| *h >= cutoff)
            .map(|(_, n)| n)
            .sum();
        self.shown.saturating_sub(young)
    }

    /// When [`Self::matured`] next changes after `now`, if it can without a new impression:
    /// when the hour of the oldest impression still young comes of age.
    pub fn next_maturing(&self, now: Millis, window_ms: i64) -> Option<Millis> {
        let cutoff = now.saturating_sub(window_ms).div_euclid(HOUR_MS);
        let (hour, _) = self.recent.iter().find(|(h, _)| *h >= cutoff)?;
        Some((hour + 1).saturating_mul(HOUR_MS).saturating_add(window_ms))
    }
}

impl Store {
    /// Every offer in the stored catalog, as (id, JSON), in id order.
    pub fn offer_catalog(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OFFER_CATALOG)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Adds or replaces catalog entries, and removes `remove`, in one transaction.
    pub fn write_offers(&self, upsert: &[(String, Vec<u8>)], remove: &[String]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(OFFER_CATALOG)?;
            for (id, json) in upsert {
                table.insert(id.as_str(), json.as_slice())?;
            }
            for id in remove {
                table.remove(id.as_str())?;
            }
        }
        txn.commit()?;
        self.committed();
        Ok(())
    }
}

impl Store {
    /// Keeps `json` as the KPI snapshot of event day `day` (replacing an earlier one).
    pub fn put_kpi_snapshot(&self, day: i32, json: &[u8]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(crate::tables::KPI_SNAPSHOTS)?;
            table.insert(day, json)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The KPI snapshots of days `from..=to`.
    pub fn kpi_snapshots(&self, from: i32, to: i32) -> Result<Vec<(i32, Vec<u8>)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(crate::tables::KPI_SNAPSHOTS)?;
        let mut out = Vec::new();
        for entry in table.range(from..=to)? {
            let (k, v) = entry?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }
}

impl crate::StoreReader {
    /// The contact history of `customer` with `offer`.
    pub fn contact(&self, customer: &str, offer: &str) -> Result<Option<ContactRecord>> {
        let Some(table) = &self.offer_contacts else {
            return Ok(None);
        };
        match table.get((customer, offer))? {
            Some(v) => Ok(Some(codec::decode_pair(
                "offer_contacts",
                (customer, offer),
                v.value(),
            )?)),
            None => Ok(None),
        }
    }

    /// Every contact record of `customer`, by offer id.
    pub fn contacts_of(&self, customer: &str) -> Result<Vec<(String, ContactRecord)>> {
        let mut out = Vec::new();
        let Some(table) = &self.offer_contacts else {
            return Ok(out);
        };
        for entry in table.range((customer, "")..)? {
            let (k, v) = entry?;
            let (c, offer) = k.value();
            if c != customer {
                break;
            }
            out.push((
                offer.to_owned(),
                codec::decode_pair("offer_contacts", (c, offer), v.value())?,
            ));
        }
        Ok(out)
    }

    /// Every customer with a contact record, each once, in id order.
    pub fn contacted_customers(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        let Some(table) = &self.offer_contacts else {
            return Ok(out);
        };
        for entry in table.iter()? {
            let (k, _) = entry?;
            let (customer, _) = k.value();
            if out.last().is_none_or(|last| last != customer) {
                out.push(customer.to_owned());
            }
        }
        Ok(out)
    }

    /// Calls `f` with every (customer, offer) pair that has an impression, in key order,
    /// without collecting them (millions at scale).
    pub fn for_each_shown_pair(&self, mut f: impl FnMut(&str, &str)) -> Result<()> {
        let Some(table) = &self.offer_contacts else {
            return Ok(());
        };
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (customer, offer) = k.value();
            let record: ContactRecord =
                codec::decode_pair("offer_contacts", (customer, offer), v.value())?;
            if !record.shown.is_empty() {
                f(customer, offer);
            }
        }
        Ok(())
    }

    /// The counts of one (offer, segment) arm.
    pub fn offer_counts(&self, offer: &str, segment: &str) -> Result<Option<OfferCounts>> {
        let Some(table) = &self.offer_stats else {
            return Ok(None);
        };
        match table.get((offer, segment))? {
            Some(v) => Ok(Some(codec::decode_pair(
                "offer_stats",
                (offer, segment),
                v.value(),
            )?)),
            None => Ok(None),
        }
    }

    /// Every arm's counts: (offer id, segment, counts), in key order.
    pub fn all_offer_counts(&self) -> Result<Vec<(String, String, OfferCounts)>> {
        let mut out = Vec::new();
        let Some(table) = &self.offer_stats else {
            return Ok(out);
        };
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (offer, segment) = k.value();
            out.push((
                offer.to_owned(),
                segment.to_owned(),
                codec::decode_pair("offer_stats", (offer, segment), v.value())?,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_maturing_instant_is_when_the_oldest_young_hour_comes_of_age() {
        let window = 2 * HOUR_MS;
        let mut counts = OfferCounts::default();
        counts.note_shown(10 * HOUR_MS + 5); // hour 10
        counts.note_shown(12 * HOUR_MS + 7); // hour 12
        let now = 11 * HOUR_MS; // cutoff hour 9: both young
        assert_eq!(counts.matured(now, window), 0);
        let next = counts.next_maturing(now, window).unwrap();
        assert_eq!(next, 11 * HOUR_MS + window);
        assert_eq!(counts.matured(next - 1, window), 0);
        assert_eq!(counts.matured(next, window), 1);
        let then = counts.next_maturing(next, window).unwrap();
        assert_eq!(then, 13 * HOUR_MS + window);
        assert_eq!(counts.matured(then - 1, window), 1);
        assert_eq!(counts.matured(then, window), 2);
        assert_eq!(counts.next_maturing(then, window), None);
    }

    #[test]
    fn impressions_stay_ordered_and_bounded() {
        let mut c = ContactRecord::default();
        for ts in (0..100).rev() {
            c.note_shown(ts * 10);
        }
        assert_eq!(c.shown.len(), MAX_REMEMBERED_IMPRESSIONS);
        assert!(c.shown.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*c.shown.last().unwrap(), 990);
        // (990 - 50, 990] holds 950..=990: five impressions.
        assert_eq!(c.shown_within(990, 50), 5);
    }

    #[test]
    fn impressions_mature_after_the_response_window() {
        let h = HOUR_MS;
        let mut arm = OfferCounts::default();
        for ts in [0, h / 2, 5 * h, 10 * h] {
            arm.note_shown(ts);
        }
        assert_eq!(arm.recent, vec![(0, 2), (5, 1), (10, 1)]);
        // At hour 10 with a 4-hour window: hours 6.. are young, so 3 have matured.
        assert_eq!(arm.matured(10 * h, 4 * h), 3);
        assert_eq!(
            arm.matured(10 * h, 0),
            3,
            "this hour's impression is still young"
        );
        assert_eq!(arm.matured(100 * h, 4 * h), 4);
        // Old hours are dropped, but still counted as matured.
        arm.note_shown((MAX_RESPONSE_HOURS + 20) * h);
        assert_eq!(arm.recent.len(), 1);
        assert_eq!(arm.matured((MAX_RESPONSE_HOURS + 20) * h, h), 4);
    }
}
