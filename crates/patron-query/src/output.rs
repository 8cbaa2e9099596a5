//! Rendering query results (table, CSV, JSON) and exporting tables (Parquet, CSV).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::{QueryError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

/// CSV and text tables have no list type: lists become JSON arrays in a string.
pub fn flatten_lists(batch: &RecordBatch) -> Result<RecordBatch> {
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::List(_)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if let DataType::List(_) = f.data_type() {
            let list = c.as_list::<i32>();
            let mut b = StringBuilder::new();
            for i in 0..list.len() {
                if list.is_null(i) {
                    b.append_null();
                    continue;
                }
                let v = list.value(i);
                let items: Vec<serde_json::Value> = match v.as_string_opt::<i32>() {
                    Some(s) => (0..s.len())
                        .map(|j| serde_json::Value::String(s.value(j).to_owned()))
                        .collect(),
                    None => Vec::new(),
                };
                b.append_value(serde_json::Value::Array(items).to_string());
            }
            fields.push(Field::new(f.name(), DataType::Utf8, true));
            cols.push(Arc::new(b.finish()));
        } else {
            fields.push(f.as_ref().clone());
            cols.push(c.clone());
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

pub fn write_results(
    batches: &[RecordBatch],
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<()> {
    let flat: Vec<RecordBatch> = batches.iter().map(flatten_lists).collect::<Result<_>>()?;
    let io = |e: std::io::Error| QueryError::Io {
        path: "<stdout>".into(),
        source: e,
    };
    match format {
        OutputFormat::Table => {
            let text = arrow::util::pretty::pretty_format_batches(&flat)?;
            writeln!(out, "{text}").map_err(io)?;
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if flat.is_empty() {
                return Ok(());
            }
            for b in &flat {
                w.write(b)?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs)?;
            w.finish()?;
            drop(w);
            writeln!(out).map_err(io)?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Parquet,
    Csv,
}

/// Writes batches to `path`, replacing it atomically (a temp file renamed into place).
pub fn export(
    batches: &[RecordBatch],
    schema: Arc<Schema>,
    format: ExportFormat,
    path: &Path,
) -> Result<u64> {
    let io = |e: std::io::Error| QueryError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let tmp = path.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut rows = 0u64;
    match format {
        ExportFormat::Parquet => {
            let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
            for b in batches {
                rows += b.num_rows() as u64;
                w.write(b)?;
            }
            w.close()?;
        }
        ExportFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(std::io::BufWriter::new(file));
            for b in batches {
                rows += b.num_rows() as u64;
                w.write(&flatten_lists(b)?)?;
            }
            let mut inner = w.into_inner();
            inner.flush().map_err(io)?;
        }
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(rows)
}
