//! Scans of the `customers` table as Arrow record batches of the stored (base) columns.
//!
//! Derived columns (recency, scores, segments, CLV) need the whole population or a model and
//! are added by `patron-query`; this layer only turns records into columns.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use patron_core::state::CustomerState;

use crate::{Result, StoreReader};

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The stored columns of every profile, in this order.
pub fn base_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("partition", DataType::UInt32, false),
        Field::new("first_purchase", timestamp_type(), true),
        Field::new("last_purchase", timestamp_type(), true),
        Field::new("frequency", DataType::Int64, false),
        Field::new("monetary", DataType::Float64, false),
        Field::new("gross", DataType::Float64, false),
        Field::new("avg_order_value", DataType::Float64, true),
        Field::new("avg_repeat_value", DataType::Float64, true),
        Field::new("first_seen", timestamp_type(), true),
        Field::new("last_seen", timestamp_type(), true),
        Field::new("traits", DataType::Utf8, false),
    ]))
}

/// Accumulates profiles into base-column batches.
pub struct BaseColumns {
    customer_id: StringBuilder,
    partition: UInt32Builder,
    first_purchase: TimestampMillisecondBuilder,
    last_purchase: TimestampMillisecondBuilder,
    frequency: Int64Builder,
    monetary: Float64Builder,
    gross: Float64Builder,
    avg_order_value: Float64Builder,
    avg_repeat_value: Float64Builder,
    first_seen: TimestampMillisecondBuilder,
    last_seen: TimestampMillisecondBuilder,
    traits: StringBuilder,
    rows: usize,
}

impl Default for BaseColumns {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

impl BaseColumns {
    pub fn with_capacity(n: usize) -> Self {
        let ts = || TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        Self {
            customer_id: StringBuilder::with_capacity(n, n * 12),
            partition: UInt32Builder::with_capacity(n),
            first_purchase: ts(),
            last_purchase: ts(),
            frequency: Int64Builder::with_capacity(n),
            monetary: Float64Builder::with_capacity(n),
            gross: Float64Builder::with_capacity(n),
            avg_order_value: Float64Builder::with_capacity(n),
            avg_repeat_value: Float64Builder::with_capacity(n),
            first_seen: ts(),
            last_seen: ts(),
            traits: StringBuilder::with_capacity(n, n * 2),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn push(&mut self, customer_id: &str, scope: u32, s: &CustomerState) {
        self.customer_id.append_value(customer_id);
        self.partition.append_value(scope);
        self.first_purchase.append_option(s.first_purchase);
        self.last_purchase.append_option(s.last_purchase);
        self.frequency.append_value(i64::from(s.frequency));
        self.monetary.append_value(s.monetary().as_f64());
        self.gross.append_value(s.gross.as_f64());
        self.avg_order_value
            .append_option(s.avg_order_value().map(|m| m.as_f64()));
        self.avg_repeat_value
            .append_option(s.avg_repeat_value().map(|m| m.as_f64()));
        self.first_seen
            .append_option((s.first_seen != i64::MAX).then_some(s.first_seen));
        self.last_seen
            .append_option((s.last_seen != i64::MIN).then_some(s.last_seen));
        if s.traits.is_empty() {
            self.traits.append_value("{}");
        } else {
            self.traits.append_value(s.traits_json());
        }
        self.rows += 1;
    }

    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.customer_id.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.first_purchase.finish()),
            Arc::new(self.last_purchase.finish()),
            Arc::new(self.frequency.finish()),
            Arc::new(self.monetary.finish()),
            Arc::new(self.gross.finish()),
            Arc::new(self.avg_order_value.finish()),
            Arc::new(self.avg_repeat_value.finish()),
            Arc::new(self.first_seen.finish()),
            Arc::new(self.last_seen.finish()),
            Arc::new(self.traits.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(base_schema(), columns)
    }
}

/// Every profile as batches of at most `batch_rows` rows, in customer-id order.
pub fn base_batches(reader: &StoreReader, batch_rows: usize) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let mut cols = BaseColumns::with_capacity(batch_rows);
    let mut err = None;
    reader.for_each_profile(|id, scope, state| {
        cols.push(id, scope, &state);
        if cols.len() >= batch_rows {
            match cols.finish() {
                Ok(b) => out.push(b),
                Err(e) => err = Some(e),
            }
        }
    })?;
    if !cols.is_empty() {
        match cols.finish() {
            Ok(b) => out.push(b),
            Err(e) => err = Some(e),
        }
    }
    if let Some(e) = err {
        return Err(crate::StoreError::Corrupt {
            table: "customers",
            key: String::new(),
            reason: e.to_string(),
        });
    }
    Ok(out)
}
