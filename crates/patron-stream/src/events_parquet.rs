//! Native events as Parquet: the column layout `patron generate` writes and `replay` reads.
//!
//! One column per native field. `items` is a list of structs; free-form objects (`traits`,
//! `properties`) have no fixed schema and are not carried. Amounts are strings so decimal text
//! survives exactly. Only the native form fits this layout (Segment Spec messages and invalid
//! lines have no place in it).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

use crate::{Result, StreamError};

pub fn events_schema() -> SchemaRef {
    let s = |name: &str| Field::new(name, DataType::Utf8, true);
    let item = Fields::from(vec![
        s("sku"),
        s("category"),
        Field::new("quantity", DataType::Float64, true),
        Field::new("unit_price", DataType::Float64, true),
    ]);
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("ts", DataType::Utf8, false),
        s("customer_id"),
        s("anonymous_id"),
        s("amount"),
        s("currency"),
        s("order_id"),
        Field::new(
            "items",
            DataType::List(Arc::new(Field::new("item", DataType::Struct(item), true))),
            true,
        ),
        s("kind"),
        s("offer_id"),
        s("channel"),
        s("previous_id"),
    ]))
}

/// Writes native JSON events (one per item) to a Parquet file; returns the rows written.
pub fn write_events_parquet<'a>(lines: impl Iterator<Item = &'a [u8]>, path: &Path) -> Result<u64> {
    let bad = |m: String| StreamError::Input {
        path: path.to_path_buf(),
        message: m,
    };
    let schema = events_schema();
    let file = File::create(path).map_err(|e| StreamError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)
        .map_err(|e| bad(e.to_string()))?;
    let mut decoder = arrow::json::ReaderBuilder::new(schema)
        .with_coerce_primitive(true)
        .with_batch_size(16_384)
        .build_decoder()
        .map_err(|e| bad(e.to_string()))?;
    let mut rows = 0u64;
    let mut pending = 0usize;
    for line in lines {
        decoder
            .decode(line)
            .map_err(|e| bad(format!("event {rows}: {e}")))?;
        rows += 1;
        pending += 1;
        if pending == 16_384 {
            if let Some(batch) = decoder.flush().map_err(|e| bad(e.to_string()))? {
                writer.write(&batch).map_err(|e| bad(e.to_string()))?;
            }
            pending = 0;
        }
    }
    if let Some(batch) = decoder.flush().map_err(|e| bad(e.to_string()))? {
        writer.write(&batch).map_err(|e| bad(e.to_string()))?;
    }
    writer.close().map_err(|e| bad(e.to_string()))?;
    Ok(rows)
}
