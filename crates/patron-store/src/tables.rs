//! Table definitions. See `docs/STATE_FORMAT.md` for the key encoding and invariants.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};

use crate::{Result, StoreError};

/// Bumped on any incompatible change to a table or record encoding.
pub const FORMAT_VERSION: u32 = 1;

/// customer_id -> [`crate::codec`] profile record (owning source partition + state).
pub const CUSTOMERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("customers");
/// merged id (anonymous or previous id) -> canonical customer_id.
pub const ALIASES: TableDefinition<'_, &str, &str> = TableDefinition::new("aliases");
/// (source, partition) -> position record (next offset and the log's incarnation).
pub const POSITIONS: TableDefinition<'_, (&str, u32), &[u8]> = TableDefinition::new("positions");
/// Epoch day -> daily totals record.
pub const DAILY: TableDefinition<'_, i32, &[u8]> = TableDefinition::new("daily_totals");
/// Named singletons: format version, counters, as_of, fitted models.
pub const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

pub const META_FORMAT: &str = "format_version";
pub const META_COUNTERS: &str = "counters";
pub const META_CLV_MODEL: &str = "clv_model";

pub(crate) fn initialise(db: &Database, path: &Path) -> Result<()> {
    {
        let read = db.begin_read()?;
        if let Ok(meta) = read.open_table(META)
            && let Some(v) = meta.get(META_FORMAT)?
        {
            let bytes = v.value();
            let found = u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]));
            if found != FORMAT_VERSION {
                return Err(StoreError::Version {
                    path: path.to_path_buf(),
                    found,
                    expected: FORMAT_VERSION,
                });
            }
            return Ok(());
        }
    }
    let write = db.begin_write()?;
    {
        write.open_table(CUSTOMERS)?;
        write.open_table(ALIASES)?;
        write.open_table(POSITIONS)?;
        write.open_table(DAILY)?;
        let mut meta = write.open_table(META)?;
        meta.insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())?;
    }
    write.commit()?;
    Ok(())
}
