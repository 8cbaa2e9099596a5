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

/// Encodes an export piece by piece, so a large one can be streamed: each [`write`] returns the
/// bytes ready so far (for Parquet, one row group per call), and [`finish`] the rest (the
/// Parquet footer). Memory stays at about one batch whatever the export's size.
///
/// [`write`]: ChunkedExport::write
/// [`finish`]: ChunkedExport::finish
pub struct ChunkedExport {
    encoder: ChunkedEncoder,
    schema: Arc<Schema>,
    rows: u64,
}

enum ChunkedEncoder {
    Csv {
        header: bool,
    },
    Parquet {
        // Boxed: the writer is large and the enum is moved around.
        writer: Box<parquet::arrow::ArrowWriter<SharedBuffer>>,
        buffer: SharedBuffer,
    },
}

/// A `Write` sink the encoder owns one handle to while the caller drains the other.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChunkedExport {
    /// An encoder for batches of `schema` (list columns are fine: CSV writes them as JSON).
    pub fn new(format: ExportFormat, schema: Arc<Schema>) -> Result<Self> {
        let encoder = match format {
            ExportFormat::Csv => ChunkedEncoder::Csv { header: true },
            ExportFormat::Parquet => {
                let buffer = SharedBuffer::default();
                let writer = Box::new(parquet::arrow::ArrowWriter::try_new(
                    buffer.clone(),
                    schema.clone(),
                    None,
                )?);
                ChunkedEncoder::Parquet { writer, buffer }
            }
        };
        Ok(Self {
            encoder,
            schema,
            rows: 0,
        })
    }

    /// Encodes one batch and returns the bytes produced.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<Vec<u8>> {
        self.rows += batch.num_rows() as u64;
        match &mut self.encoder {
            ChunkedEncoder::Csv { header } => {
                let mut out = Vec::new();
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(*header)
                    .build(&mut out);
                w.write(&flatten_lists(batch)?)?;
                drop(w);
                *header = false;
                Ok(out)
            }
            ChunkedEncoder::Parquet { writer, buffer } => {
                writer.write(batch)?;
                // Close the row group, then push it through the writer's own buffering, so
                // its bytes reach our buffer now.
                writer.flush()?;
                writer.sync().map_err(|e| QueryError::Io {
                    path: "<export stream>".into(),
                    source: e,
                })?;
                Ok(buffer.take())
            }
        }
    }

    /// Ends the export: the CSV header of an empty export, or the Parquet footer.
    pub fn finish(self) -> Result<Vec<u8>> {
        match self.encoder {
            ChunkedEncoder::Csv { header } => {
                if !header {
                    return Ok(Vec::new());
                }
                let names: Vec<&str> = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                Ok(format!("{}\n", names.join(",")).into_bytes())
            }
            ChunkedEncoder::Parquet { writer, buffer } => {
                writer.close()?;
                Ok(buffer.take())
            }
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn batch(from: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let ids: Vec<i64> = (from..from + n).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("c{i}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn chunked_parquet_yields_a_row_group_per_write_and_reads_back_whole() {
        let parts = [batch(0, 100), batch(100, 50), batch(150, 7)];
        let mut enc = ChunkedExport::new(ExportFormat::Parquet, parts[0].schema()).unwrap();
        let mut file = Vec::new();
        for p in &parts {
            let chunk = enc.write(p).unwrap();
            assert!(!chunk.is_empty(), "each write streams its row group");
            file.extend(chunk);
        }
        assert_eq!(enc.rows(), 157);
        file.extend(enc.finish().unwrap());
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes_of(file))
                .unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 3);
        let got: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let want = arrow::compute::concat_batches(&parts[0].schema(), &parts).unwrap();
        let got = arrow::compute::concat_batches(&parts[0].schema(), &got).unwrap();
        assert_eq!(got, want);
    }

    fn bytes_of(v: Vec<u8>) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&v).unwrap();
        f
    }

    #[test]
    fn chunked_csv_writes_the_header_once_or_alone_when_empty() {
        let mut enc = ChunkedExport::new(ExportFormat::Csv, batch(0, 1).schema()).unwrap();
        let a = String::from_utf8(enc.write(&batch(0, 2)).unwrap()).unwrap();
        let b = String::from_utf8(enc.write(&batch(2, 1)).unwrap()).unwrap();
        assert_eq!(a, "id,name\n0,c0\n1,c1\n");
        assert_eq!(b, "2,c2\n");
        assert!(enc.finish().unwrap().is_empty());
        let empty = ChunkedExport::new(ExportFormat::Csv, batch(0, 1).schema()).unwrap();
        assert_eq!(empty.finish().unwrap(), b"id,name\n");
    }
}
