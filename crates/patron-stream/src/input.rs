//! File inputs as batches of positioned records.
//!
//! Every input becomes the same thing: records of JSON bytes, each with the offset it starts at
//! (bytes for JSONL and CSV, rows for Parquet). The offset after a batch is the position to
//! checkpoint. CSV rows and Parquet rows are turned into native JSON events so that one decoder
//! applies one set of validation rules to every source.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use xxhash_rust::xxh3::Xxh3;

use crate::{Result, StreamError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl InputFormat {
    /// From the file extension; `None` when it says nothing.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let name = name.trim_end_matches(".gz");
        if name.ends_with(".jsonl") || name.ends_with(".ndjson") || name.ends_with(".json") {
            Some(Self::Jsonl)
        } else if name.ends_with(".csv") || name.ends_with(".tsv") {
            Some(Self::Csv)
        } else if name.ends_with(".parquet") || name.ends_with(".pq") {
            Some(Self::Parquet)
        } else {
            None
        }
    }
}

/// How CSV columns map onto event fields.
#[derive(Debug, Clone)]
pub struct CsvMapping {
    pub customer_col: String,
    pub ts_col: String,
    /// `rfc3339` (default), `unix`, `unix_ms`, or a chrono strftime pattern such as `%Y-%m-%d %H:%M:%S`.
    pub ts_format: String,
    pub amount_col: String,
    pub delimiter: u8,
    /// Column holding `purchase` or `refund`; all rows are purchases without it.
    pub type_col: Option<String>,
    pub event_id_col: Option<String>,
    pub currency_col: Option<String>,
    pub order_id_col: Option<String>,
}

impl Default for CsvMapping {
    fn default() -> Self {
        Self {
            customer_col: "customer_id".into(),
            ts_col: "ts".into(),
            ts_format: "rfc3339".into(),
            amount_col: "amount".into(),
            delimiter: b',',
            type_col: None,
            event_id_col: None,
            currency_col: None,
            order_id_col: None,
        }
    }
}

/// One record: its JSON payload, and for converted inputs the original text.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub offset: u64,
    pub payload: Range<usize>,
    pub original: Option<Range<usize>>,
}

/// Records sharing one buffer. `end_offset` is where reading resumes after this batch.
#[derive(Debug, Default)]
pub struct RawBatch {
    pub buf: Vec<u8>,
    pub records: Vec<RawRecord>,
    pub end_offset: u64,
    /// Progress in bytes of the input file.
    pub end_byte: u64,
}

impl RawBatch {
    pub fn payload(&self, r: &RawRecord) -> &[u8] {
        &self.buf[r.payload.clone()]
    }

    /// What a dead letter should carry: the original row for converted inputs.
    pub fn original(&self, r: &RawRecord) -> &[u8] {
        &self.buf[r.original.clone().unwrap_or_else(|| r.payload.clone())]
    }
}

/// A file's identity: a digest of its first 64 KiB. A re-run of the same content, under any
/// name, maps to the same checkpointed position; appending to a large file keeps its identity.
pub fn fingerprint(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| io(path, e))?;
    let mut head = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        let k = f.read(&mut head[n..]).map_err(|e| io(path, e))?;
        if k == 0 || n + k == head.len() {
            n += k;
            break;
        }
        n += k;
    }
    let mut h = Xxh3::new();
    h.update(&head[..n]);
    Ok(format!("{:016x}", h.digest()))
}

fn io(path: &Path, e: std::io::Error) -> StreamError {
    StreamError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Reads newline-delimited records in batches of about `batch_bytes`.
pub struct JsonlReader {
    path: PathBuf,
    file: BufReader<File>,
    offset: u64,
    carry: Vec<u8>,
    batch_bytes: usize,
    eof: bool,
}

impl JsonlReader {
    pub fn open(path: &Path, start: u64, batch_bytes: usize) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| io(path, e))?;
        file.seek(SeekFrom::Start(start)).map_err(|e| io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: BufReader::with_capacity(1 << 20, file),
            offset: start,
            carry: Vec::new(),
            batch_bytes,
            eof: false,
        })
    }

    pub fn next_batch(&mut self) -> Result<Option<RawBatch>> {
        if self.eof && self.carry.is_empty() {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.carry);
        let want = self.batch_bytes.max(buf.len() + 1);
        let start_len = buf.len();
        buf.resize(want, 0);
        let mut filled = start_len;
        while filled < want && !self.eof {
            let k = self
                .file
                .read(&mut buf[filled..])
                .map_err(|e| io(&self.path, e))?;
            if k == 0 {
                self.eof = true;
            }
            filled += k;
        }
        buf.truncate(filled);
        // Everything after the last newline waits for the next batch, unless the file ended.
        let cut = if self.eof {
            buf.len()
        } else {
            match memchr::memrchr(b'\n', &buf) {
                Some(i) => i + 1,
                None => {
                    // One line longer than the batch: grow until its end is in the buffer.
                    self.carry = buf;
                    self.batch_bytes *= 2;
                    return self.next_batch();
                }
            }
        };
        self.carry = buf[cut..].to_vec();
        buf.truncate(cut);
        let mut records = Vec::new();
        let mut line_start = 0usize;
        for nl in memchr::memchr_iter(b'\n', &buf)
            .chain((cut > 0 && buf[cut - 1] != b'\n').then_some(cut))
        {
            let mut end = nl;
            if end > line_start && buf[end - 1] == b'\r' {
                end -= 1;
            }
            if buf[line_start..end]
                .iter()
                .any(|b| !b.is_ascii_whitespace())
            {
                records.push(RawRecord {
                    offset: self.offset + line_start as u64,
                    payload: line_start..end,
                    original: None,
                });
            }
            line_start = nl + 1;
        }
        self.offset += cut as u64;
        Ok(Some(RawBatch {
            buf,
            records,
            end_offset: self.offset,
            end_byte: self.offset,
        }))
    }
}

/// Reads CSV rows and maps them to native events.
pub struct CsvInput {
    path: PathBuf,
    reader: csv::Reader<File>,
    columns: CsvColumns,
    mapping: CsvMapping,
    fingerprint: String,
    rows_per_batch: usize,
    done: bool,
}

struct CsvColumns {
    customer: usize,
    ts: usize,
    amount: usize,
    kind: Option<usize>,
    event_id: Option<usize>,
    currency: Option<usize>,
    order_id: Option<usize>,
}

impl CsvInput {
    pub fn open(path: &Path, start: u64, mapping: &CsvMapping, fingerprint: &str) -> Result<Self> {
        let file = File::open(path).map_err(|e| io(path, e))?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(mapping.delimiter)
            .flexible(true)
            .from_reader(file);
        let headers = reader
            .headers()
            .map_err(|e| StreamError::Input {
                path: path.to_path_buf(),
                message: format!("cannot read CSV header: {e}"),
            })?
            .clone();
        let find = |flag: &str, name: &str| -> Result<usize> {
            headers
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| {
                    let cols: Vec<&str> = headers.iter().collect();
                    StreamError::Usage(format!(
                        "{}: {flag} `{name}` is not a column of the CSV header (columns: {})",
                        path.display(),
                        cols.join(", ")
                    ))
                })
        };
        let opt =
            |flag: &str, name: &Option<String>| name.as_ref().map(|n| find(flag, n)).transpose();
        let columns = CsvColumns {
            customer: find("--customer-col", &mapping.customer_col)?,
            ts: find("--ts-col", &mapping.ts_col)?,
            amount: find("--amount-col", &mapping.amount_col)?,
            kind: opt("--type-col", &mapping.type_col)?,
            event_id: opt("--event-id-col", &mapping.event_id_col)?,
            currency: opt("--currency-col", &mapping.currency_col)?,
            order_id: opt("--order-id-col", &mapping.order_id_col)?,
        };
        if start > 0 {
            let mut pos = csv::Position::new();
            pos.set_byte(start);
            reader.seek(pos).map_err(|e| StreamError::Input {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            columns,
            mapping: mapping.clone(),
            fingerprint: fingerprint.to_owned(),
            rows_per_batch: 20_000,
            done: false,
        })
    }

    fn convert_ts(&self, text: &str) -> String {
        let t = text.trim();
        let from_ms = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).map(|d| d.to_rfc3339());
        let converted = match self.mapping.ts_format.as_str() {
            "rfc3339" | "" => None,
            "unix" => t
                .parse::<f64>()
                .ok()
                .and_then(|s| from_ms((s * 1000.0).round() as i64)),
            "unix_ms" => t.parse::<i64>().ok().and_then(from_ms),
            fmt => DateTime::parse_from_str(t, fmt)
                .map(|d| d.to_rfc3339())
                .ok()
                .or_else(|| {
                    NaiveDateTime::parse_from_str(t, fmt)
                        .ok()
                        .map(|d| d.and_utc().to_rfc3339())
                })
                .or_else(|| {
                    NaiveDate::parse_from_str(t, fmt)
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|d| d.and_utc().to_rfc3339())
                }),
        };
        // Unparseable text passes through so the decoder rejects it, naming `ts`.
        converted.unwrap_or_else(|| t.to_owned())
    }

    pub fn next_batch(&mut self) -> Result<Option<RawBatch>> {
        if self.done {
            return Ok(None);
        }
        let mut batch = RawBatch::default();
        let mut record = csv::ByteRecord::new();
        for _ in 0..self.rows_per_batch {
            let offset = self.reader.position().byte();
            let more =
                self.reader
                    .read_byte_record(&mut record)
                    .map_err(|e| StreamError::Input {
                        path: self.path.clone(),
                        message: format!("CSV: {e}"),
                    })?;
            if !more {
                self.done = true;
                break;
            }
            let field =
                |i: usize| String::from_utf8_lossy(record.get(i).unwrap_or_default()).into_owned();
            let c = &self.columns;
            let mut obj = Map::new();
            let event_id = c
                .event_id
                .map(field)
                .unwrap_or_else(|| format!("csv-{}-{offset}", self.fingerprint));
            obj.insert("event_id".into(), Value::String(event_id));
            obj.insert(
                "type".into(),
                Value::String(c.kind.map(field).unwrap_or_else(|| "purchase".into())),
            );
            obj.insert("customer_id".into(), Value::String(field(c.customer)));
            obj.insert("ts".into(), Value::String(self.convert_ts(&field(c.ts))));
            obj.insert(
                "amount".into(),
                Value::String(field(c.amount).trim().to_owned()),
            );
            for (col, key) in [(c.currency, "currency"), (c.order_id, "order_id")] {
                if let Some(v) = col.map(field).filter(|v| !v.is_empty()) {
                    obj.insert(key.into(), Value::String(v));
                }
            }
            let payload_start = batch.buf.len();
            serde_json::to_writer(&mut batch.buf, &Value::Object(obj))
                .expect("writing to a Vec cannot fail");
            let payload = payload_start..batch.buf.len();
            let original_start = batch.buf.len();
            for (i, f) in record.iter().enumerate() {
                if i > 0 {
                    batch.buf.push(self.mapping.delimiter);
                }
                batch.buf.extend_from_slice(f);
            }
            batch.records.push(RawRecord {
                offset,
                payload,
                original: Some(original_start..batch.buf.len()),
            });
        }
        batch.end_offset = self.reader.position().byte();
        batch.end_byte = batch.end_offset;
        if batch.records.is_empty() && self.done {
            return Ok(None);
        }
        Ok(Some(batch))
    }
}

/// Reads Parquet rows (columns named as the native event fields) as JSON records.
pub struct ParquetInput {
    path: PathBuf,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    row: u64,
    total_rows: u64,
    file_bytes: u64,
}

impl ParquetInput {
    pub fn open(path: &Path, start_row: u64) -> Result<Self> {
        let file = File::open(path).map_err(|e| io(path, e))?;
        let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bad = |e: parquet::errors::ParquetError| StreamError::Input {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(bad)?;
        let total_rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let reader = builder
            .with_offset(start_row as usize)
            .with_batch_size(8192)
            .build()
            .map_err(bad)?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            row: start_row,
            total_rows,
            file_bytes,
        })
    }

    pub fn next_batch(&mut self) -> Result<Option<RawBatch>> {
        let Some(rb) = self.reader.next() else {
            return Ok(None);
        };
        let rb = rb.map_err(|e| StreamError::Input {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer
            .write(&rb)
            .and_then(|_| writer.finish())
            .map_err(|e| StreamError::Input {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        let buf = writer.into_inner();
        let mut records = Vec::with_capacity(rb.num_rows());
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &buf) {
            records.push(RawRecord {
                offset: self.row,
                payload: start..nl,
                original: None,
            });
            self.row += 1;
            start = nl + 1;
        }
        let end_byte =
            (self.file_bytes as f64 * self.row as f64 / self.total_rows.max(1) as f64) as u64;
        Ok(Some(RawBatch {
            buf,
            records,
            end_offset: self.row,
            end_byte,
        }))
    }
}

/// Any of the inputs.
pub enum Input {
    Jsonl(JsonlReader),
    Csv(Box<CsvInput>),
    Parquet(Box<ParquetInput>),
}

impl Input {
    pub fn next_batch(&mut self) -> Result<Option<RawBatch>> {
        match self {
            Input::Jsonl(r) => r.next_batch(),
            Input::Csv(r) => r.next_batch(),
            Input::Parquet(r) => r.next_batch(),
        }
    }
}
